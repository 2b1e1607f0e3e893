"""The control service on the etcd store: the Flocker contract suite (the one the SQLite
service passes, tests/control/test_flocker_contract.py) on an EtcdStore over the
in-memory etcd and over a real three-member cluster, and two replicas of the service on
one store agreeing on everything an agent or a client can see."""

import uuid

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from powerstripflocker.clients.etcd_client import EtcdClient
from powerstripflocker.clients.etcd import Range
from powerstripflocker.clients.etcd_memory import MemoryEtcd
from powerstripflocker.control.etcdstore import CHANGES_PER_DECISION, EtcdStore
from powerstripflocker.control.service import ControlService

from ..flocker_contract import make_flocker_api_tests
from ..support.etcd import SharedCluster
from .helpers import NODE1, NODE2, at_once, harness, header
from .test_flocker_contract import start_simulated_cluster


def _clock():
    clock = Clock()
    clock.advance(1_000_000)
    return clock


async def on_memory_etcd(testcase):
    clock = _clock()
    return await start_simulated_cluster(testcase, etcd=MemoryEtcd(clock), clock=clock)


def real_etcd(testcase):
    """A client of the shared real cluster, in a key prefix of the test's own."""
    url = f"{SharedCluster.get().endpoint}/test-{uuid.uuid4().hex[:12]}"
    client = EtcdClient(reactor, url)
    testcase.addCleanup(client.close)
    return client


async def on_real_etcd(testcase):
    return await start_simulated_cluster(testcase, etcd=real_etcd(testcase), listen=True)


class MemoryEtcdControlContractTests(make_flocker_api_tests(on_memory_etcd)):
    pass


@pytest.mark.etcd
class RealEtcdControlContractTests(make_flocker_api_tests(on_real_etcd)):
    @classmethod
    def tearDownClass(cls):
        SharedCluster.stop()


class TwoReplicas(TestCase):
    """Replicas A and B of the control service on one MemoryEtcd, one clock."""

    def setUp(self):
        self.clock = _clock()
        self.etcd = MemoryEtcd(self.clock)
        self.a = harness(self, etcd=self.etcd, clock=self.clock, state_expiry=20.0)
        self.b = harness(self, etcd=self.etcd, clock=self.clock, state_expiry=20.0)

    async def test_a_create_through_one_replica_wakes_a_long_poll_on_the_other(self):
        polled = self.b.service.generation
        waiting = self.b.service.wait_for_change(polled, 30)
        await self.a.create(metadata={"name": "shared"})
        self.assertTrue(waiting.called)
        view = await self.b.service.cluster_view()
        self.assertEqual([d["metadata"] for d in view["datasets"]], [{"name": "shared"}])
        # Both replicas name the change by the same generation: the store's revision.
        self.assertEqual(self.a.service.generation, self.b.service.generation)
        self.assertNotEqual(view["generation"], polled)

    async def test_a_node_report_to_one_replica_is_state_on_the_other(self):
        dataset = await self.a.create(primary=NODE1)
        await self.a.report(NODE1, [{"dataset_id": dataset["dataset_id"], "path": "/p",
                                     "maximum_size": None}], host="10.0.0.1")
        response, state = await self.b.request("GET", "/v1/state/datasets")
        self.assertEqual([(s["dataset_id"], s["primary"]) for s in state],
                         [(dataset["dataset_id"], NODE1)])
        response, nodes = await self.b.request("GET", "/v1/state/nodes")
        self.assertEqual(nodes, [{"host": "10.0.0.1", "uuid": NODE1}])

    async def test_a_conditional_request_holds_across_replicas(self):
        response, _ = await self.a.request("GET", "/v1/configuration/datasets")
        tag = header(response, "X-Configuration-Tag")
        response, _ = await self.b.request("GET", "/v1/configuration/datasets")
        self.assertEqual(header(response, "X-Configuration-Tag"), tag)
        await self.a.create(metadata={"name": "first"})
        response, body = await self.b.request(
            "POST", "/v1/configuration/datasets", {"primary": NODE2},
            headers={"X-If-Configuration-Matches": tag})
        self.assertEqual(response.code, 412, body)
        self.assertEqual(len(await self.b.service.datasets()), 1)

    async def test_claims_of_one_name_through_both_replicas_make_one_dataset(self):
        first = await self.a.request("POST", "/v1/configuration/claims",
                                     {"name": "raced", "node_uuid": NODE1})
        second = await self.b.request("POST", "/v1/configuration/claims",
                                      {"name": "raced", "node_uuid": NODE2})
        self.assertEqual(first[0].code, 202, first[1])
        self.assertEqual(second[0].code, 409, second[1])
        self.assertEqual(second[1]["holder"]["node_uuid"], NODE1)
        self.assertEqual(len(await self.a.service.store.datasets_named("raced")), 1)

    async def test_a_lease_through_one_replica_refuses_a_move_through_the_other(self):
        dataset = await self.a.create(primary=NODE1)
        response, body = await self.a.request(
            "POST", "/v1/configuration/leases",
            {"dataset_id": dataset["dataset_id"], "node_uuid": NODE1, "expires": None})
        self.assertEqual(response.code, 201, body)
        response, body = await self.b.request(
            "POST", f"/v1/configuration/datasets/{dataset['dataset_id']}",
            {"primary": NODE2})
        self.assertEqual(response.code, 409, body)
        self.assertEqual((await self.a.service.datasets())[0].primary, NODE1)

    async def test_a_silent_node_lapses_from_the_store_by_itself(self):
        await self.a.report(NODE1, host="10.0.0.1")
        self.assertIn(NODE1, self.b.service.nodes)
        # Replica A stops (nobody deletes the report); its etcd lease lapses alone.
        await self.a.close()
        self.clock.advance(21)
        self.assertEqual(at_once(self.b.service.store.node_reports()), [])
        self.assertNotIn(NODE1, self.b.service.nodes)

    async def test_both_replicas_choose_the_same_replica_nodes_and_keep_them(self):
        node3 = "9a3f0c1e-2b4d-4e6f-8a0b-1c2d3e4f5a60"
        for node, host in ((NODE1, "10.0.0.1"), (NODE2, "10.0.0.2"), (node3, "10.0.0.3")):
            await self.a.report(node, host=host)
        response, claimed = await self.b.request(
            "POST", "/v1/configuration/claims", {"name": "kept", "node_uuid": NODE1,
                                                 "replicas": 1})
        self.assertEqual(response.code, 202, claimed)
        self.clock.advance(1)
        views = [at_once(h.service.cluster_view()) for h in (self.a, self.b)]
        self.assertEqual([v["datasets"][0]["replica_nodes"] for v in views], [[NODE2]] * 2)
        generation = self.a.service.generation
        self.clock.advance(3)
        self.assertEqual(self.a.service.generation, generation, "no replica undoes the other")
        # NODE2 goes silent: after the state expiry both see node3 chosen instead.
        for _ in range(25):
            self.clock.advance(1)
            for node, host in ((NODE1, "10.0.0.1"), (node3, "10.0.0.3")):
                await self.a.report(node, host=host)
        views = [at_once(h.service.cluster_view()) for h in (self.a, self.b)]
        self.assertEqual([v["datasets"][0]["replica_nodes"] for v in views], [[node3]] * 2)

    async def test_replicas_of_many_datasets_are_chosen_over_several_decisions(self):
        # As for manifested marks: at most CHANGES_PER_DECISION datasets per transaction.
        for _ in range(CHANGES_PER_DECISION + 20):
            await self.a.create(primary=NODE1, metadata={"replicas": "1"})
        await self.a.report(NODE1, host="10.0.0.1")
        await self.a.report(NODE2, host="10.0.0.2")
        self.clock.advance(1)
        self.assertEqual({d.replica_nodes for d in await self.b.service.datasets()},
                         {(NODE2,)})

    async def test_health_says_the_store_is_reachable(self):
        response, body = await self.a.request("GET", "/healthz", headers={})
        self.assertEqual((response.code, body), (200, {"store": "reachable"}))

    async def test_a_report_of_many_new_datasets_is_marked_over_several_reports(self):
        # etcd refuses a transaction of more than 128 operations: one report marks at
        # most CHANGES_PER_DECISION datasets manifested, the next ones the rest.
        ids = [(await self.a.create(primary=NODE1))["dataset_id"] for _ in range(150)]
        entries = [{"dataset_id": i, "path": f"/p/{i}", "maximum_size": None} for i in ids]
        await self.a.report(NODE1, entries)
        marked = [d for d in await self.a.service.datasets() if d.manifested]
        self.assertEqual(len(marked), CHANGES_PER_DECISION)
        await self.a.report(NODE1, entries)
        self.assertTrue(all(d.manifested for d in await self.a.service.datasets()))


class SilentEtcd:
    """An etcd none of whose members answers: every read waits (until cancelled)."""

    def range(self, key, prefix=False, limit=0, revision=0):
        return Deferred()


class FollowerTests(TestCase):

    def test_a_replica_stops_at_once_while_its_store_does_not_answer(self):
        clock = _clock()
        service = ControlService(EtcdStore(SilentEtcd()), clock)
        at_once(service.start())
        at_once(service.stop())


class CountingEtcd:
    """A MemoryEtcd that counts the requests a replica makes of it."""

    def __init__(self, etcd):
        self._etcd = etcd
        self.requests = []  # ("range", key) or ("txn", (range keys...), writes?)

    def range(self, key, *args, **kwargs):
        self.requests.append(("range", key))
        return self._etcd.range(key, *args, **kwargs)

    def txn(self, compare, success, failure=()):
        self.requests.append(("txn", tuple(op.key for op in success if isinstance(op, Range)),
                              any(not isinstance(op, Range) for op in success)))
        return self._etcd.txn(compare, success, failure)

    def __getattr__(self, name):
        return getattr(self._etcd, name)


class RoundTripTests(TestCase):
    """What a replica asks of etcd: each request is a round trip."""

    def setUp(self):
        self.clock = _clock()
        self.etcd = CountingEtcd(MemoryEtcd(self.clock))
        self.h = harness(self, etcd=self.etcd, clock=self.clock)

    async def test_a_claim_of_a_volume_here_is_one_read_and_at_most_one_write(self):
        dataset = (await self.h.request("POST", "/v1/configuration/claims",
                                        {"name": "here", "node_uuid": NODE1}))[1]
        await self.h.report(NODE1, [{"dataset_id": dataset["dataset_id"], "path": "/p",
                                     "maximum_size": None}])
        claim = {"name": "here", "node_uuid": NODE1}
        del self.etcd.requests[:]
        response, body = await self.h.request("POST", "/v1/configuration/claims", claim)
        self.assertEqual(body["status"], "ready")
        self.assertEqual(self.etcd.requests, [
            ("txn", (b"config/guard", b"datasets/", b"config/leases-guard", b"leases/"),
             False)], "read in one request; its claim is fresh: nothing written")
        self.clock.advance(20)
        del self.etcd.requests[:]
        await self.h.request("POST", "/v1/configuration/claims", claim)
        self.assertEqual([request[0] for request in self.etcd.requests], ["txn", "txn"])
        self.assertTrue(self.etcd.requests[1][2], "renewed: one write")

    async def test_the_sweep_reads_the_leases_alone(self):
        del self.etcd.requests[:]
        await self.h.service.sweep()
        self.assertEqual(self.etcd.requests,
                         [("txn", (b"config/leases-guard", b"leases/"), False)])

    async def test_the_sweep_reads_the_datasets_once_after_a_dataset_changed(self):
        leases_alone = [("txn", (b"config/leases-guard", b"leases/"), False)]
        dataset = await self.h.create(primary=NODE1)
        await self.h.service.sweep()
        del self.etcd.requests[:]
        await self.h.service.sweep()
        self.assertEqual(self.etcd.requests, leases_alone)
        # A lease changes nothing the replica choice reads.
        await self.h.request("POST", "/v1/configuration/leases", {
            "dataset_id": dataset["dataset_id"], "node_uuid": NODE1, "expires": None})
        del self.etcd.requests[:]
        await self.h.service.sweep()
        self.assertEqual(self.etcd.requests, leases_alone)
        await self.h.create(primary=NODE1)
        del self.etcd.requests[:]
        await self.h.service.sweep()
        self.assertEqual(self.etcd.requests, [
            ("txn", (b"config/leases-guard", b"leases/"), False),
            ("txn", (b"config/guard", b"datasets/", b"config/leases-guard", b"leases/"),
             False)])
        del self.etcd.requests[:]
        await self.h.service.sweep()
        self.assertEqual(self.etcd.requests, leases_alone)
