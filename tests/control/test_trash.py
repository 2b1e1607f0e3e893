"""Deleted data kept in the agents' trash: reports, GET /v1/state/trash and the restore
rules of POST /v1/configuration/datasets/ID/restore, decided in one transaction."""

from twisted.trial.unittest import TestCase

from powerstripflocker.cli.status import build_rows

from .helpers import NODE1, NODE2, at_once, flocker_schema, harness, new_id

DATASETS = "/v1/configuration/datasets"
DELETED_AT = 1_000_000.0
KEEP = 3600.0


def kept(dataset_id, deleted_at=DELETED_AT, generation=None, size=4096):
    entry = {"dataset_id": dataset_id, "deleted_at": deleted_at,
             "expires_at": deleted_at + KEEP, "bytes": size}
    if generation is not None:
        entry["generation"] = generation
    return entry


class TrashTests(TestCase):

    def setUp(self):
        self.h = harness(self)

    async def report(self, node, datasets=(), trash=None):
        body = {"host": "127.0.0.1" if node == NODE1 else "127.0.0.2",
                "agent_url": "http://127.0.0.1:4524", "datasets": list(datasets),
                "transfers": []}
        if trash is not None:
            body["trash"] = trash
        response, answer = await self.h.request(
            "PUT", f"/agent/v1/nodes/{node}", body, headers=self.h.agent_headers())
        return response.code, answer

    async def deleted(self, name="data", primary=NODE1):
        dataset = await self.h.create(primary=primary, metadata={"name": name})
        response, body = await self.h.request("DELETE",
                                              f"{DATASETS}/{dataset['dataset_id']}")
        self.assertEqual(response.code, 200, body)
        return dataset["dataset_id"]

    async def restore(self, dataset_id):
        return await self.h.request("POST", f"{DATASETS}/{dataset_id}/restore")

    async def test_a_reported_trash_is_listed_with_its_node_and_name_newest_first(self):
        first, second = await self.deleted("first"), await self.deleted("second")
        code, _ = await self.report(NODE1, trash=[kept(first), kept(second, DELETED_AT + 5)])
        self.assertEqual(code, 200)
        response, trash = await self.h.request("GET", "/v1/state/trash")
        self.assertEqual(response.code, 200)
        self.assertEqual([(e["dataset_id"], e["name"], e["node_uuid"], e["host"],
                           e["deleted"]) for e in trash],
                         [(second, "second", NODE1, "127.0.0.1", True),
                          (first, "first", NODE1, "127.0.0.1", True)])
        self.assertEqual(trash[1]["expires_at"], DELETED_AT + KEEP)
        response, named = await self.h.request("GET", "/v1/state/trash?name=first")
        self.assertEqual([e["dataset_id"] for e in named], [first])

    async def test_the_trash_is_not_in_v1_state_and_state_stays_valid(self):
        dataset_id = await self.deleted()
        live = await self.h.create(metadata={"name": "live"})
        await self.report(NODE1, datasets=[{"dataset_id": live["dataset_id"], "path": "/d"}],
                          trash=[kept(dataset_id)])
        response, state = await self.h.request("GET", "/v1/state/datasets")
        self.assertEqual(state, [{"dataset_id": live["dataset_id"], "primary": NODE1,
                                  "path": "/d"}])
        schema = flocker_schema()
        if schema is not None:
            schema("state_datasets_array").validate(state)

    async def test_a_malformed_trash_report_is_refused(self):
        dataset_id = new_id()
        for bad in ([{"dataset_id": dataset_id}], [dict(kept(dataset_id), path="/x")],
                    [dict(kept(dataset_id), bytes=-1)], "nope"):
            code, _ = await self.report(NODE1, trash=bad)
            self.assertEqual(code, 400, bad)

    async def test_restore_undeletes_on_the_node_keeping_it_and_moves_the_primary_there(self):
        dataset_id = await self.deleted(primary=NODE2)
        await self.report(NODE1, trash=[kept(dataset_id, generation=1)])
        generation = self.h.service.generation
        response, body = await self.restore(dataset_id)
        self.assertEqual(response.code, 200, body)
        self.assertEqual((body["deleted"], body["primary"]), (False, NODE1))
        stored = self.h.store.get_dataset(dataset_id)
        self.assertEqual((stored.deleted, stored.primary, stored.generation),
                         (False, NODE1, 2))
        self.assertGreater(self.h.service.generation, generation, "agents are woken")
        schema = flocker_schema()
        if schema is not None:
            schema("configuration_datasets").validate(body)

    async def test_restore_on_the_primary_keeps_the_generation(self):
        dataset_id = await self.deleted()
        await self.report(NODE1, trash=[kept(dataset_id)])
        response, body = await self.restore(dataset_id)
        self.assertEqual(response.code, 200, body)
        self.assertEqual(self.h.store.get_dataset(dataset_id).generation, 1)

    async def test_the_newest_copy_wins_when_two_nodes_keep_one(self):
        dataset_id = await self.deleted()
        await self.report(NODE1, trash=[kept(dataset_id, DELETED_AT + 60, generation=2)])
        await self.report(NODE2, trash=[kept(dataset_id, DELETED_AT, generation=3)])
        response, body = await self.restore(dataset_id)
        self.assertEqual(body["primary"], NODE2)

    async def test_a_node_still_holding_the_deleted_dataset_is_where_it_is_restored(self):
        dataset_id = await self.deleted()
        await self.report(NODE2, datasets=[{"dataset_id": dataset_id, "path": "/d"}])
        await self.report(NODE1, trash=[kept(dataset_id, generation=5)])
        response, body = await self.restore(dataset_id)
        self.assertEqual((response.code, body["primary"]), (200, NODE2))

    async def test_restore_of_what_no_node_keeps_is_404_and_changes_nothing(self):
        dataset_id = await self.deleted()
        await self.report(NODE1, trash=[kept(new_id())])
        before = self.h.snapshot()
        response, body = await self.restore(dataset_id)
        self.assertEqual(response.code, 404)
        self.assertIn("in no node's trash", body["description"])
        self.assertEqual(self.h.snapshot(), before)

    async def test_a_trash_of_a_node_no_longer_reporting_does_not_count(self):
        dataset_id = await self.deleted()
        await self.report(NODE1, trash=[kept(dataset_id)])
        self.h.clock.advance(self.h.state_expiry + 1)
        response, body = await self.restore(dataset_id)
        self.assertEqual(response.code, 404, body)

    async def test_restore_is_refused_while_a_live_dataset_has_the_name(self):
        dataset_id = await self.deleted("web")
        await self.report(NODE1, trash=[kept(dataset_id)])
        live = await self.h.create(metadata={"name": "web"})
        before = self.h.snapshot()
        response, body = await self.restore(dataset_id)
        self.assertEqual(response.code, 409)
        self.assertIn(live["dataset_id"], body["description"])
        self.assertEqual(self.h.snapshot(), before)

    async def test_only_one_of_two_deleted_datasets_of_a_name_can_come_back(self):
        older, newer = await self.deleted("web"), await self.deleted("web")
        await self.report(NODE1, trash=[kept(older), kept(newer, DELETED_AT + 1)])
        response, _ = await self.restore(newer)
        self.assertEqual(response.code, 200)
        response, body = await self.restore(older)
        self.assertEqual(response.code, 409, body)

    async def test_restore_of_a_live_dataset_is_409_and_of_an_unknown_one_404(self):
        live = await self.h.create(metadata={"name": "live"})
        response, body = await self.restore(live["dataset_id"])
        self.assertEqual(response.code, 409)
        self.assertIn("not deleted", body["description"])
        response, _ = await self.restore(new_id())
        self.assertEqual(response.code, 404)
        response, _ = await self.restore("not-a-uuid")
        self.assertEqual(response.code, 404)

    async def test_a_trash_report_survives_a_restart_of_the_control_service(self):
        dataset_id = await self.deleted()
        await self.report(NODE1, trash=[kept(dataset_id)])
        self.h.restart()
        response, trash = await self.h.request("GET", "/v1/state/trash")
        self.assertEqual([e["dataset_id"] for e in trash], [dataset_id])
        response, body = await self.restore(dataset_id)
        self.assertEqual(response.code, 200, body)

    async def test_the_cluster_view_names_each_nodes_trash(self):
        dataset_id = await self.deleted()
        await self.report(NODE1, trash=[kept(dataset_id)])
        [node] = at_once(self.h.service.cluster_view())["nodes"]
        self.assertEqual(node["trash"], [kept(dataset_id)])


class StatusTests(TestCase):
    """status --all: a deleted dataset still in a trash says where and until when."""

    def test_a_deleted_dataset_in_a_trash_shows_its_node_and_removal_time(self):
        gone, purged = new_id(), new_id()
        configuration = [
            {"dataset_id": gone, "primary": NODE2, "metadata": {"name": "gone"},
             "deleted": True},
            {"dataset_id": purged, "primary": NODE1, "metadata": {"name": "purged"},
             "deleted": True}]
        cluster = {"nodes": [
            {"uuid": NODE1, "host": "10.0.0.1", "transfers": [],
             "trash": [kept(gone, 1_800_000_000.0)]},
            {"uuid": NODE2, "host": "10.0.0.2", "transfers": [],
             "trash": [kept(gone, 1_799_999_000.0)]}]}
        nodes = [{"uuid": NODE1, "host": "10.0.0.1"}, {"uuid": NODE2, "host": "10.0.0.2"}]
        rows = {row["name"]: row for row in build_rows(
            configuration, [], nodes, [], cluster, include_deleted=True,
            now=1_800_000_000.0 + 600)}
        self.assertEqual(rows["gone"]["state"],
                         "in trash on 10.0.0.1 until 09:00:00 UTC (50m00s left)")
        self.assertEqual(rows["purged"]["state"], "deleted")
        late = build_rows(configuration, [], nodes, [], cluster, include_deleted=True,
                          now=1_800_000_000.0 + KEEP)
        self.assertIn("(due for removal)", late[0]["state"])
        self.assertEqual(build_rows(configuration, [], nodes, [], cluster), [])
