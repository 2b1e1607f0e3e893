"""The control service's replica placement (issue 15, placement only): counts at
creation (claims, v1 creates, the cluster default), the sweep's choice of nodes as nodes
come and go, moves, and the agents' cluster view. On SQLite, on a Clock."""

from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from .helpers import NODE1, NODE2, harness

NODE3 = "9a3f0c1e-2b4d-4e6f-8a0b-1c2d3e4f5a60"
NODE4 = "f1e2d3c4-b5a6-4978-8a6b-5c4d3e2f1a09"
HOSTS = {NODE1: "10.0.0.1", NODE2: "10.0.0.2", NODE3: "10.0.0.3", NODE4: "10.0.0.4"}
CLAIMS = "/v1/configuration/claims"
EXPIRY = 20.0


class ReplicaPlacementTests(TestCase):

    def setUp(self):
        self.h = harness(self, state_expiry=EXPIRY, default_replicas=2)
        self.reporting = set()

    async def report(self, *nodes):
        self.reporting.update(nodes)
        for node in sorted(self.reporting):
            await self.h.report(node, host=HOSTS[node])

    async def run_for(self, seconds):
        """Advance the clock a second at a time, the reporting nodes reporting every 5 s."""
        for second in range(int(seconds)):
            self.h.clock.advance(1)
            if second % 5 == 4:
                await self.report()

    async def claim(self, name, node=NODE1, **fields):
        response, answer = await self.h.request(
            "POST", CLAIMS, dict(fields, name=name, node_uuid=node))
        self.assertIn(response.code, (200, 202), answer)
        return answer["dataset_id"]

    async def placed(self, dataset_id):
        """(replicas wanted, replica nodes) of the dataset in the agents' cluster view."""
        view = await self.h.service.cluster_view()
        [entry] = [d for d in view["datasets"] if d["dataset_id"] == dataset_id]
        return entry["replicas"], entry["replica_nodes"]

    async def test_a_claim_with_the_default_gets_both_other_nodes(self):
        await self.report(NODE1, NODE2, NODE3)
        dataset_id = await self.claim("web")
        self.assertEqual(
            self.h.store.get_dataset(dataset_id).metadata, {"name": "web", "replicas": "2"})
        generation = self.h.service.generation
        await self.run_for(1)
        self.assertEqual(await self.placed(dataset_id), (2, sorted([NODE2, NODE3])))
        self.assertNotEqual(self.h.service.generation, generation, "agents are woken")
        # Nothing changed: the next sweeps choose the same and wake nobody.
        generation = self.h.service.generation
        await self.run_for(3)
        self.assertEqual(await self.placed(dataset_id), (2, sorted([NODE2, NODE3])))
        self.assertEqual(self.h.service.generation, generation)

    async def test_a_claims_own_count_and_the_least_loaded_nodes(self):
        await self.report(NODE1, NODE2, NODE3, NODE4)
        first = await self.claim("one", replicas=1)
        await self.run_for(1)
        second = await self.claim("two", replicas=1)
        none = await self.claim("none", replicas=0)
        await self.run_for(1)
        self.assertEqual(self.h.store.get_dataset(none).metadata["replicas"], "0")
        [(_, [a]), (_, [b]), (_, c)] = [await self.placed(i) for i in (first, second, none)]
        self.assertEqual((a, c), (min(NODE2, NODE3, NODE4), []))
        self.assertNotEqual(a, b, "the second goes to a node holding no replica yet")

    async def test_a_node_that_stops_reporting_is_replaced_by_a_live_one(self):
        await self.report(NODE1, NODE2, NODE3, NODE4)
        dataset_id = await self.claim("web", replicas=1)
        await self.run_for(1)
        [(_, [chosen])] = [await self.placed(dataset_id)]
        lines = []
        globalLogPublisher.addObserver(lines.append)
        self.addCleanup(globalLogPublisher.removeObserver, lines.append)
        self.reporting.discard(chosen)
        await self.run_for(EXPIRY + 7)
        [(_, [instead])] = [await self.placed(dataset_id)]
        self.assertNotIn(instead, (chosen, NODE1))
        said = [event["log_format"].format(**event) for event in lines
                if "replicas on" in event.get("log_format", "")]
        self.assertEqual(said, [
            f"dataset {dataset_id}: replicas on {HOSTS[instead]} ({instead[:8]}) "
            f"(was {chosen}: {chosen[:8]} not reporting)"])

    async def test_with_no_live_node_left_the_place_is_dropped(self):
        await self.report(NODE1, NODE2, NODE3)
        dataset_id = await self.claim("web")
        await self.run_for(1)
        self.reporting.discard(NODE3)
        await self.run_for(EXPIRY + 7)
        self.assertEqual(await self.placed(dataset_id), (2, [NODE2]))
        await self.report(NODE3)
        await self.run_for(1)
        self.assertEqual(await self.placed(dataset_id), (2, sorted([NODE2, NODE3])))

    async def test_a_move_removes_the_new_primary_from_the_replicas(self):
        await self.report(NODE1, NODE2, NODE3)
        dataset_id = await self.claim("web", replicas=1)
        await self.run_for(1)
        [(_, [replica])] = [await self.placed(dataset_id)]
        await self.h.request("DELETE", f"/v1/configuration/leases/{dataset_id}")
        response, _ = await self.h.request(
            "POST", f"/v1/configuration/datasets/{dataset_id}", {"primary": replica})
        self.assertEqual(response.code, 200)
        self.assertEqual(await self.placed(dataset_id), (1, []))
        await self.run_for(1)
        # The old primary holds no replica: the least loaded, first by uuid, of the rest.
        self.assertEqual(await self.placed(dataset_id),
                         (1, [min({NODE1, NODE2, NODE3} - {replica})]))

    async def test_a_v1_create_keeps_its_count_or_gets_the_default(self):
        await self.report(NODE1, NODE2, NODE3)
        given = await self.h.create(metadata={"name": "a", "replicas": "1"})
        default = await self.h.create(metadata={"name": "b"})
        self.assertEqual((given["metadata"], default["metadata"]),
                         ({"name": "a", "replicas": "1"}, {"name": "b", "replicas": "2"}))
        await self.run_for(1)
        self.assertEqual(len((await self.placed(given["dataset_id"]))[1]), 1)

    async def test_a_bad_count_is_refused_and_creates_nothing(self):
        for metadata in ({"replicas": "-1"}, {"replicas": "x"}, {"replicas": "17"}):
            response, answer = await self.h.request(
                "POST", "/v1/configuration/datasets", {"primary": NODE1, "metadata": metadata})
            self.assertEqual(response.code, 400)
            self.assertIn("invalid replica count", answer["description"])
        for replicas in (-1, "2", 1.5, 17):
            response, answer = await self.h.request(
                "POST", CLAIMS, {"name": "v", "node_uuid": NODE1, "replicas": replicas})
            self.assertEqual(response.code, 400, answer)
        self.assertEqual(self.h.store.datasets(), [])

    async def test_a_deleted_dataset_keeps_no_replica_nodes(self):
        await self.report(NODE1, NODE2, NODE3)
        dataset_id = await self.claim("web")
        await self.run_for(1)
        await self.h.request("DELETE", f"/v1/configuration/leases/{dataset_id}")
        response, _ = await self.h.request("DELETE", f"/v1/configuration/datasets/{dataset_id}")
        self.assertEqual(response.code, 200)
        await self.run_for(1)
        self.assertEqual(self.h.store.get_dataset(dataset_id).replica_nodes, ())

    async def test_a_restarted_service_keeps_choices_until_nodes_had_time_to_report(self):
        await self.report(NODE1, NODE2, NODE3)
        dataset_id = await self.claim("web")
        await self.run_for(1)
        await self.h.close()
        self.h.clock.advance(3 * EXPIRY)  # down so long that every stored report is stale
        self.h.open()
        self.reporting = set()
        await self.report(NODE1)
        await self.run_for(1)
        self.assertEqual(await self.placed(dataset_id), (2, sorted([NODE2, NODE3])))
        await self.report(NODE2)
        await self.run_for(EXPIRY)
        self.assertEqual(await self.placed(dataset_id), (2, [NODE2]))


class DefaultReplicasOptionTests(TestCase):

    def parse(self, *arguments):
        from powerstripflocker.cli.main import build_parser
        return build_parser().parse_args(["control", *arguments])

    def test_default_is_none_and_a_count_is_taken(self):
        self.assertEqual(self.parse().default_replicas, 0)
        self.assertEqual(self.parse("--default-replicas", "2").default_replicas, 2)

    def test_a_bad_count_exits_naming_it(self):
        for bad in ("-1", "x", "17"):
            with self.assertRaises(SystemExit):
                self.parse("--default-replicas", bad)
