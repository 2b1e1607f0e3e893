"""EtcdClient through the loss of etcd's leader: a real three-member cluster on loopback,
its leader killed -9 in the middle of a stream of puts, transactions and a watch."""

import time

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from powerstripflocker.clients.etcd import Compare, EtcdUnavailable, OutcomeUnknown, Put
from powerstripflocker.clients.etcd_client import EtcdClient
from powerstripflocker.clients.etcd_endpoints import parse_endpoints

from .support.etcd import EtcdCluster
from .support.processes import free_port

CALL_TIMEOUT = 15.0
WRITERS = 4
OPERATIONS_PER_WRITER = 60
KILL_AFTER = 40  # operations acknowledged, over all writers, before the leader is killed


def leader_first(cluster, leader):
    """The cluster's endpoint list with the leader first, so that calls are on it when it
    dies."""
    others = [m for m in cluster.members if m is not leader]
    return "etcd://" + ",".join(m.address for m in [leader, *others])


async def until(predicate, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout:g}s")
        await deferLater(reactor, 0.02, lambda: None)


@pytest.mark.etcd
class LeaderLossTests(TestCase):
    def setUp(self):
        self.cluster = EtcdCluster().start()
        self.addCleanup(self.cluster.stop)
        self.leader = self.cluster.leader()

    def client(self, endpoint):
        etcd = EtcdClient(reactor, endpoint, call_timeout=CALL_TIMEOUT)
        self.addCleanup(etcd.close)
        return etcd

    async def test_calls_succeed_or_fail_clearly_and_no_acknowledged_put_is_lost(self):
        etcd = self.client(leader_first(self.cluster, self.leader) + "/stream")
        acknowledged_puts = {}
        applied_txns = {}
        failures = []
        latencies = []
        done = []
        killed = []

        async def writer(number):
            for i in range(OPERATIONS_PER_WRITER):
                key = f"{number}-{i}"
                started = time.monotonic()
                try:
                    if i % 2:
                        await etcd.put(f"puts/{key}", key)
                        acknowledged_puts[key] = key
                    else:
                        result = await etcd.txn(
                            [Compare(f"txns/{key}", "version", "==", 0)],
                            [Put(f"txns/{key}", key), Put(f"claims/{key}", str(number))])
                        self.assertTrue(result.succeeded, key)
                        applied_txns[key] = key
                except (OutcomeUnknown, EtcdUnavailable) as error:
                    failures.append((key, error))
                latencies.append(time.monotonic() - started)
                done.append(key)
                if len(done) == KILL_AFTER:
                    killed.append(deferToThread(self.cluster.kill, self.leader))

        await gatherResults([Deferred.fromCoroutine(writer(n)) for n in range(WRITERS)])
        await killed[0]
        self.assertFalse(self.leader.running)

        # At most the one call each writer had on the leader when it died is unknown.
        self.assertLessEqual(len(failures), WRITERS, failures)
        for key, error in failures:
            self.assertIsInstance(error, OutcomeUnknown, (key, error))
            self.assertIn(self.leader.address, str(error))
        self.assertLess(max(latencies), CALL_TIMEOUT + 1.0)

        survivors = [m for m in self.cluster.members if m.running]
        reader = self.client("etcd://" + ",".join(m.address for m in survivors) + "/stream")
        puts = {kv.key.decode(): kv.value.decode()
                for kv in (await reader.range("puts/", prefix=True)).kvs}
        self.assertEqual({f"puts/{k}": v for k, v in acknowledged_puts.items()}, puts)
        txns = {kv.key.decode() for kv in (await reader.range("txns/", prefix=True)).kvs}
        claims = {kv.key.decode() for kv in (await reader.range("claims/", prefix=True)).kvs}
        self.assertLessEqual({f"txns/{k}" for k in applied_txns}, txns)
        self.assertEqual({k.split("/", 1)[1] for k in txns}, {k.split("/", 1)[1] for k in claims})

        await deferToThread(self.cluster.restart, self.leader)
        rejoined = self.client(f"etcd://{self.leader.address}/stream")
        self.assertEqual(len((await rejoined.range("puts/", prefix=True)).kvs), len(puts))

    async def test_a_watch_delivers_every_event_in_order_across_the_leader_kill(self):
        endpoint = leader_first(self.cluster, self.leader) + "/watched"
        watcher, writer = self.client(endpoint), self.client(endpoint)
        events = []
        watch = watcher.watch("w/", events.extend, prefix=True)
        self.addCleanup(watch.stop)
        await watch.created
        acknowledged = []
        killed = None
        for i in range(150):
            if i == 50:
                killed = deferToThread(self.cluster.kill, self.leader)
            result = await writer.put(f"w/{i % 7}", str(i))
            acknowledged.append((result.revision, f"w/{i % 7}".encode(), str(i).encode()))
        await killed
        last = acknowledged[-1][0]
        await until(lambda: watch.next_revision > last, f"the watch past revision {last}")
        seen = [(e.revision, e.key, e.kv.value) for e in events]
        revisions = [revision for revision, _, _ in seen]
        self.assertEqual(revisions, sorted(set(revisions)), "in order, each once")
        self.assertLessEqual(set(acknowledged), set(seen))
        # anything more is a put repeated after its first answer was lost with the leader
        self.assertLessEqual({value for _, _, value in seen}, {v for _, _, v in acknowledged})
        self.assertLessEqual(len(seen) - len(acknowledged), 2)
        self.assertFalse(self.leader.running)


@pytest.mark.etcd
class StoppedMemberTests(TestCase):
    """A member stopped with SIGSTOP keeps its connections open and says nothing on them,
    as one behind a cut link does (no reset reaches the client): the watch streaming from
    it finds it silent, asks it for its status in vain, and resumes on another member."""

    def setUp(self):
        self.cluster = EtcdCluster().start()
        self.addCleanup(self.cluster.stop)

    def client(self, members, request_timeout=3.0):
        etcd = EtcdClient(reactor, "etcd://" + ",".join(m.address for m in members)
                          + "/stopped", request_timeout=request_timeout)
        self.addCleanup(etcd.close)
        return etcd

    async def test_a_watch_leaves_a_member_that_went_silent(self):
        leader = self.cluster.leader()
        stopped, other = [m for m in self.cluster.members if m is not leader]
        watcher = self.client([stopped, leader, other], request_timeout=1.0)
        writer = self.client([leader, other])
        events = []
        watch = watcher.watch("w/", events.extend, prefix=True)
        self.addCleanup(watch.stop)
        await watch.created
        before = await writer.put("w/before", "before")
        await until(lambda: watch.next_revision > before.revision, "the first event seen")
        await deferToThread(stopped.pause)
        self.addCleanup(deferToThread, stopped.resume)
        acknowledged = [(before.revision, b"w/before", b"before")]
        for i in range(10):
            result = await writer.put(f"w/{i}", str(i))
            acknowledged.append((result.revision, f"w/{i}".encode(), str(i).encode()))
        last = acknowledged[-1][0]
        await until(lambda: watch.next_revision > last, f"the watch past revision {last}",
                    timeout=60.0)
        self.assertEqual([(e.revision, e.key, e.kv.value) for e in events], acknowledged)


class Silent(Protocol):
    """Takes connections and requests and never answers."""


@pytest.mark.etcd
class UnansweringMemberTests(TestCase):
    """A member that accepts connections but never answers costs one request timeout."""

    def setUp(self):
        self.cluster = EtcdCluster().start()
        self.addCleanup(self.cluster.stop)
        self.silent = reactor.listenTCP(0, Factory.forProtocol(Silent), interface="127.0.0.1")
        self.addCleanup(self.silent.stopListening)

    async def test_a_call_moves_on_after_the_request_timeout(self):
        endpoint = (f"etcd://127.0.0.1:{self.silent.getHost().port},"
                    + self.cluster.endpoint[len("etcd://"):])
        etcd = EtcdClient(reactor, endpoint, request_timeout=0.5)
        self.addCleanup(etcd.close)
        started = time.monotonic()
        await etcd.put("k", "v")
        self.assertGreaterEqual(time.monotonic() - started, 0.5)
        self.assertLess(time.monotonic() - started, 3.0)
        self.assertEqual((await etcd.range("k")).kvs[0].value, b"v")


class NoMemberTests(TestCase):
    """Without any member up, every call and a watch end with EtcdUnavailable in time."""

    def setUp(self):
        self.endpoint = f"etcd://127.0.0.1:{free_port()},127.0.0.1:{free_port()}"

    async def test_a_call_fails_naming_the_members(self):
        etcd = EtcdClient(reactor, self.endpoint, call_timeout=2.0, backoff=0.05)
        self.addCleanup(etcd.close)
        with self.assertRaises(EtcdUnavailable) as raised:
            await etcd.put("k", "v")
        for url in parse_endpoints(self.endpoint).urls:
            self.assertIn(url, str(raised.exception))

    async def test_a_watch_ends_after_its_reconnect_timeout(self):
        etcd = EtcdClient(reactor, self.endpoint, backoff=0.05)
        self.addCleanup(etcd.close)
        started = time.monotonic()
        watch = etcd.watch("k", lambda events: None, reconnect_timeout=0.5)
        with self.assertRaises(EtcdUnavailable) as raised:
            await watch.ended
        self.assertIn("no member took the watch back", str(raised.exception))
        self.assertLess(time.monotonic() - started, 3.0)
