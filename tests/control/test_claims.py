"""POST /v1/configuration/claims and the per-name reads, over HTTP in memory."""

import sqlite3

from twisted.trial.unittest import TestCase

from powerstripflocker.control.store import Lease, Store

from .helpers import NODE1, NODE2, flocker_schema, harness, header, new_id
from .test_api import SchemaChecks

CLAIMS = "/v1/configuration/claims"
DATASETS = "/v1/configuration/datasets"
SCHEMA = flocker_schema()


class ClaimTests(TestCase, SchemaChecks):

    def setUp(self):
        self.h = harness(self)

    async def claim(self, name, node, **fields):
        return await self.h.request("POST", CLAIMS, dict(fields, name=name, node_uuid=node))

    async def report_here(self, node, dataset_id, host, users=(), transfers=None):
        entry = {"dataset_id": dataset_id, "path": f"/srv/{node[:4]}/{dataset_id}"}
        if users:
            entry["users"] = list(users)
        await self.h.report(node, [entry], transfers, host=host)
        return entry["path"]

    async def test_a_new_name_is_created_on_the_claimant_then_leased_once_reported(self):
        response, body = await self.claim("db", NODE1, maximum_size=67108864)
        self.assertEqual(response.code, 202)
        dataset_id = body["dataset_id"]
        self.assertEqual(body, {"status": "creating", "dataset_id": dataset_id, "generation": 1})
        [dataset] = self.h.store.datasets()
        self.assertEqual((dataset.primary, dataset.origin, dataset.metadata,
                          dataset.maximum_size), (NODE1, NODE1, {"name": "db"}, 67108864))
        self.assertEqual(header(response, "X-Configuration-Tag"),
                         self.h.store.configuration_tag())
        response, again = await self.claim("db", NODE1)
        self.assertEqual((response.code, again), (202, body), "no report yet: still creating")
        self.assertEqual([(lease.node_uuid, lease.claimed_until) for lease in self.h.store.leases()],
                         [(NODE1, self.h.clock.seconds() + 30)], "the pending claim holds it")
        path = await self.report_here(NODE1, dataset_id, "10.0.0.1")
        response, ready = await self.claim("db", NODE1, expires=12.5)
        self.assertEqual((response.code, ready), (200, {
            "status": "ready", "dataset_id": dataset_id, "generation": 1, "path": path,
            "lease": {"dataset_id": dataset_id, "node_uuid": NODE1, "expires": 30.0}}),
            "a claim never cuts short the one its pending answers took")
        self.assertValid("lease", ready["lease"])
        self.h.clock.advance(10)
        tag, generation = self.h.store.configuration_tag(), self.h.service.generation
        _, held = await self.claim("db", NODE1)
        self.assertEqual(held["lease"]["expires"], 20.0,
                         "asked again with half its 30 s or more left: answered as it is")
        self.assertEqual((self.h.store.configuration_tag(), self.h.service.generation),
                         (tag, generation), "nothing written, no agent woken")
        self.h.clock.advance(5.5)
        _, renewed = await self.claim("db", NODE1)
        self.assertEqual(renewed["lease"]["expires"], 30.0,
                         "with less than half left: renewed for the default 30 s")
        self.h.clock.advance(30)
        self.assertEqual(self.h.store.leases(), [], "a claim lapses by itself")

    async def test_a_claim_of_a_name_on_another_node_moves_it_with_its_source_named(self):
        dataset = await self.h.create(primary=NODE1, metadata={"name": "db"})
        await self.report_here(NODE1, dataset["dataset_id"], "10.0.0.1")
        generation = self.h.service.generation
        response, body = await self.claim("db", NODE2)
        self.assertEqual((response.code, body), (202, {
            "status": "moving", "dataset_id": dataset["dataset_id"], "generation": 2,
            "from": {"node_uuid": NODE1, "host": "10.0.0.1"},
            "progress": {"bytes_done": 0, "bytes_total": None}}))
        self.assertEqual(self.h.store.get_dataset(dataset["dataset_id"]).primary, NODE2)
        self.assertGreater(self.h.service.generation, generation, "agents are woken")
        self.assertEqual([lease.node_uuid for lease in self.h.store.leases()], [NODE2],
                         "the claimant holds it while it moves")

    async def test_progress_and_a_stall_come_from_the_senders_report(self):
        dataset = await self.h.create(primary=NODE1, metadata={"name": "db"})
        dataset_id = dataset["dataset_id"]
        await self.report_here(NODE1, dataset_id, "198.18.0.2")
        await self.claim("db", NODE2)
        push = {"dataset_id": dataset_id, "direction": "push", "peer": NODE2,
                "bytes_done": 1024, "bytes_total": 4096, "attempts": 2}
        await self.report_here(NODE1, dataset_id, "198.18.0.2", transfers=[push])
        _, body = await self.claim("db", NODE2)
        self.assertEqual((body["status"], body["progress"], "stalled" in body),
                         ("moving", {"bytes_done": 1024, "bytes_total": 4096}, False))
        stalled = dict(push, attempts=5, stalled=True,
                       error="No space left on device on 198.18.0.3")
        await self.report_here(NODE1, dataset_id, "198.18.0.2", transfers=[stalled])
        response, body = await self.claim("db", NODE2)
        self.assertEqual((response.code, body), (202, {
            "status": "moving", "dataset_id": dataset_id, "generation": 2,
            "from": {"node_uuid": NODE1, "host": "198.18.0.2"},
            "progress": {"bytes_done": 1024, "bytes_total": 4096},
            "stalled": True, "error": "No space left on device on 198.18.0.3"}))
        code, view = await self.view()
        [sender] = [n for n in view["nodes"] if n["uuid"] == NODE1]
        self.assertEqual(sender["transfers"], [stalled], "the view passes what agents report")

    async def view(self):
        response, body = await self.h.request("GET", "/agent/v1/cluster?timeout=0")
        return response.code, body

    async def test_a_claim_of_a_name_leased_elsewhere_is_refused_naming_holder_and_users(self):
        dataset = await self.h.create(primary=NODE1, metadata={"name": "db"})
        await self.report_here(NODE1, dataset["dataset_id"], "198.18.0.2",
                               users=["web", "worker"])
        await self.claim("db", NODE1)
        before = self.h.snapshot()
        response, body = await self.claim("db", NODE2)
        self.assertEqual((response.code, body), (409, {
            "description": f"volume 'db' is in use on 198.18.0.2 (node {NODE1}, container "
                           f"web, container worker); stop it there first",
            "holder": {"node_uuid": NODE1, "host": "198.18.0.2", "users": ["web", "worker"]}}))
        self.assertEqual(self.h.snapshot(), before, "a refused claim changes nothing")

    async def test_a_holder_reporting_no_user_is_named_with_an_empty_list(self):
        dataset = await self.h.create(primary=NODE1, metadata={"name": "db"})
        await self.report_here(NODE1, dataset["dataset_id"], "198.18.0.2")
        await self.claim("db", NODE1)
        response, body = await self.claim("db", NODE2)
        self.assertEqual(response.code, 409)
        self.assertEqual(body["holder"], {"node_uuid": NODE1, "host": "198.18.0.2",
                                          "users": []})
        self.assertIn("powerstrip-flocker release db", body["description"])
        self.h.clock.advance(30)
        response, body = await self.claim("db", NODE2)
        self.assertEqual((response.code, body["status"]), (202, "moving"),
                         "once the claim lapses the name moves")

    async def test_a_claim_without_create_of_an_unknown_name_is_404_and_creates_nothing(self):
        response, body = await self.claim("nothing", NODE1, create=False)
        self.assertEqual((response.code, body), (404, {"description": "No dataset is named "
                                                                     "'nothing'."}))
        self.assertEqual(self.h.store.datasets(), [])

    async def test_a_deleted_dataset_does_not_own_its_name(self):
        old = await self.h.create(primary=NODE1, metadata={"name": "db"})
        await self.h.request("DELETE", f"{DATASETS}/{old['dataset_id']}")
        response, body = await self.claim("db", NODE2)
        self.assertEqual((response.code, body["status"]), (202, "creating"))
        self.assertNotEqual(body["dataset_id"], old["dataset_id"])

    async def test_the_smallest_id_owns_a_name_given_to_several_datasets(self):
        ids = sorted(new_id() for _ in range(3))
        for dataset_id in reversed(ids):
            await self.h.create(primary=NODE1, dataset_id=dataset_id, metadata={"name": "dup"})
        _, body = await self.claim("dup", NODE1)
        self.assertEqual(body["dataset_id"], ids[0])

    async def test_a_claim_asked_again_after_another_node_moved_it_is_refused(self):
        _, mine = await self.claim("db", NODE1)
        await self.h.report(NODE2, [], host="10.0.0.2")
        response, waiting = await self.claim("db", NODE2)
        self.assertEqual((response.code, waiting["holder"]["users"]), (409, []),
                         "NODE1's pending claim makes NODE2 wait")
        self.h.clock.advance(31)  # NODE1's hook gave up: its claim lapses
        _, theirs = await self.claim("db", NODE2)
        self.assertEqual(theirs["generation"], 2)
        before = self.h.snapshot()
        response, body = await self.claim("db", NODE1, generation=mine["generation"])
        self.assertEqual((response.code, body), (409, {
            "description": f"volume 'db' was claimed by 10.0.0.2 (node {NODE2}) while this "
                           f"node waited for it; run the container on one node at a time",
            "claimed_by": {"node_uuid": NODE2, "host": "10.0.0.2"}}))
        self.assertEqual(self.h.snapshot(), before)
        response, body = await self.claim("db", NODE2, generation=theirs["generation"])
        self.assertEqual((response.code, body["status"]), (202, "creating"),
                         "never reported anywhere yet: still being created")

    async def test_a_move_racing_a_claim_is_decided_by_whichever_comes_first(self):
        dataset = await self.h.create(primary=NODE1, metadata={"name": "db"})
        await self.report_here(NODE1, dataset["dataset_id"], "10.0.0.1")
        _, ready = await self.claim("db", NODE1)
        self.assertEqual(ready["status"], "ready")
        response, body = await self.h.request(
            "POST", f"{DATASETS}/{dataset['dataset_id']}", {"primary": NODE2})
        self.assertEqual((response.code, body["holder"]["node_uuid"]), (409, NODE1))
        # The other order: a move first, then the old primary's claim cannot lease it.
        other = await self.h.create(primary=NODE1, metadata={"name": "logs"})
        await self.h.request("POST", f"{DATASETS}/{other['dataset_id']}", {"primary": NODE2})
        response, body = await self.claim("logs", NODE1, generation=1)
        self.assertEqual(response.code, 409)
        self.assertEqual(self.h.store.get_lease(other["dataset_id"]), None)

    async def test_bad_claims_are_400_and_change_nothing(self):
        await self.h.create(primary=NODE1, metadata={"name": "db"})
        good = {"name": "db", "node_uuid": NODE1}
        cases = [
            {}, {"name": "db"}, {"node_uuid": NODE1}, dict(good, extra=1),
            dict(good, name=""), dict(good, name="a/b"), dict(good, name=".."),
            dict(good, name="-x"), dict(good, name="n" * 256), dict(good, name=7),
            dict(good, node_uuid="nope"), dict(good, node_uuid="0" * 36),
            dict(good, expires=0), dict(good, expires=-1), dict(good, expires=None),
            dict(good, expires="30"), dict(good, expires=10 ** 12),
            dict(good, maximum_size=1024), dict(good, maximum_size=67108864 + 1),
            dict(good, create="yes"), dict(good, generation=0), dict(good, generation=1.5),
        ]
        for body in cases:
            before = self.h.snapshot()
            response, answer = await self.h.request("POST", CLAIMS, body)
            self.assertEqual(response.code, 400, body)
            self.assertEqual(answer["description"],
                             "The provided JSON doesn't match the required schema.")
            self.assertTrue(answer["errors"])
            self.assertEqual(self.h.snapshot(), before, body)
        for raw in (b"{not json", b"[]", b'"db"'):
            response, _ = await self.h.request("POST", CLAIMS, raw=raw)
            self.assertEqual(response.code, 400, raw)
        response, _ = await self.h.request("POST", CLAIMS, raw=b" " * (1024 * 1024 + 1))
        self.assertEqual(response.code, 413)
        response, _ = await self.h.request("GET", CLAIMS)
        self.assertEqual(response.code, 405)


class PerNameReadTests(TestCase, SchemaChecks):

    def setUp(self):
        self.h = harness(self)

    async def test_datasets_of_one_name_in_the_list_shape_with_the_tag(self):
        wanted = await self.h.create(metadata={"name": "db"})
        await self.h.create(metadata={"name": "dbx"})
        await self.h.create()
        gone = await self.h.create(metadata={"name": "db"}, maximum_size=67108864)
        await self.h.request("DELETE", f"{DATASETS}/{gone['dataset_id']}")
        response, body = await self.h.request("GET", f"{DATASETS}?name=db")
        self.assertEqual(response.code, 200)
        self.assertEqual(body, [wanted, dict(gone, deleted=True)])
        self.assertValid("configuration_datasets_list", body)
        self.assertEqual(header(response, "X-Configuration-Tag"),
                         self.h.store.configuration_tag())
        response, body = await self.h.request("GET", f"{DATASETS}?name=%C3%A9t%C3%A9")
        self.assertEqual((response.code, body), (200, []))

    async def test_state_of_one_dataset(self):
        a, b = await self.h.create(), await self.h.create()
        await self.h.report(NODE1, [{"dataset_id": a["dataset_id"], "path": "/a"},
                                    {"dataset_id": b["dataset_id"], "path": "/b"}])
        response, body = await self.h.request(
            "GET", f"/v1/state/datasets?dataset_id={a['dataset_id'].upper()}")
        self.assertEqual(body, [{"dataset_id": a["dataset_id"], "primary": NODE1, "path": "/a"}])
        self.assertValid("state_datasets_array", body)


class GenerationTests(TestCase):

    async def test_the_view_shows_each_datasets_generation(self):
        h = harness(self)
        dataset = await h.create(primary=NODE1)
        await h.request("POST", f"{DATASETS}/{dataset['dataset_id']}", {"primary": NODE2})
        _, view = await h.request("GET", "/agent/v1/cluster?timeout=0")
        self.assertEqual([d["generation"] for d in view["datasets"]], [2])

    def test_an_older_database_gets_generation_1_for_every_dataset(self):
        path = self.mktemp()
        with sqlite3.connect(path) as db:
            db.executescript("""
                CREATE TABLE datasets (
                    seq INTEGER PRIMARY KEY AUTOINCREMENT, dataset_id TEXT NOT NULL UNIQUE,
                    primary_node TEXT NOT NULL, metadata TEXT NOT NULL, maximum_size INTEGER,
                    deleted INTEGER NOT NULL DEFAULT 0, manifested INTEGER NOT NULL DEFAULT 0);
            """)
            db.execute("INSERT INTO datasets (dataset_id, primary_node, metadata) "
                       "VALUES (?, ?, ?)", ("d1", NODE1, '{"name": "old"}'))
        db.close()
        store = Store(path)
        self.addCleanup(store.close)
        [dataset] = store.datasets_named("old")
        self.assertEqual((dataset.generation, dataset.origin), (1, None))
        store.set_primary("d1", NODE2)
        store.set_primary("d1", NODE2)
        self.assertEqual(store.get_dataset("d1").generation, 2)

    def test_an_older_databases_leases_are_kept_without_claims(self):
        path = self.mktemp()
        with sqlite3.connect(path) as db:
            db.executescript("""
                CREATE TABLE leases (dataset_id TEXT PRIMARY KEY, node_uuid TEXT NOT NULL,
                                     expiration REAL);
            """)
            db.execute("INSERT INTO leases VALUES (?, ?, ?)", ("d1", NODE1, 1000.0))
        db.close()
        store = Store(path)
        self.addCleanup(store.close)
        self.assertEqual(store.get_lease("d1"), Lease("d1", NODE1, 1000.0, None))
        store.put_lease(Lease("d1", NODE1, 1000.0, 990.0))
        self.assertEqual(store.leases(), [Lease("d1", NODE1, 1000.0, 990.0)])

    def test_a_failed_decision_leaves_nothing_behind(self):
        store = Store(":memory:")
        self.addCleanup(store.close)
        with self.assertRaises(RuntimeError):
            with store.transaction():
                store.add_dataset(store_dataset())
                raise RuntimeError("refused half way")
        self.assertEqual(store.datasets(), [])


def store_dataset():
    from powerstripflocker.control.store import Dataset
    return Dataset(new_id(), NODE1, {"name": "x"})
