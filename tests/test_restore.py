"""powerstrip-flocker restore NAME against the real control service (in memory, over
StubTreq): which deleted dataset it picks, its one line, and its refusals."""

import time

from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import TestCase

from powerstripflocker.clients.flocker_client import FlockerClient
from powerstripflocker.cli.restore import restore

from .control.helpers import BASE, NODE1, NODE2, harness

DATASETS = "/v1/configuration/datasets"


class RestoreCommandTests(TestCase):

    def setUp(self):
        self.h = harness(self)
        self.api = FlockerClient(self.h.clock, BASE, http_client=self.h.treq)
        self.trash = {NODE1: [], NODE2: []}
        self.live = {NODE1: [], NODE2: []}

    async def report(self, node):
        host = "10.0.0.1" if node == NODE1 else "10.0.0.2"
        body = {"host": host, "agent_url": "http://127.0.0.1:4524",
                "datasets": self.live[node], "transfers": []}
        if self.trash[node]:
            body["trash"] = self.trash[node]
        response, answer = await self.h.request("PUT", f"/agent/v1/nodes/{node}", body)
        self.assertEqual(response.code, 200, answer)

    async def deleted(self, name, node=NODE1, deleted_at=None):
        dataset = await self.h.create(primary=node, metadata={"name": name})
        dataset_id = dataset["dataset_id"]
        response, _ = await self.h.request("DELETE", f"{DATASETS}/{dataset_id}")
        self.assertEqual(response.code, 200)
        deleted_at = time.time() - 60 if deleted_at is None else deleted_at
        self.trash[node].append({"dataset_id": dataset_id, "deleted_at": deleted_at,
                                 "expires_at": deleted_at + 3600, "bytes": 10})
        await self.report(node)
        return dataset_id

    def agent_restores(self):
        """Make the API's restore act as the agents do: the keeper reports it at once."""
        restore_dataset = self.api.restore_dataset

        async def restored_and_reported(dataset_id):
            restored = await restore_dataset(dataset_id)
            node = restored.primary
            self.trash[node] = [e for e in self.trash[node] if e["dataset_id"] != dataset_id]
            self.live[node].append({"dataset_id": dataset_id, "path": f"/d/{dataset_id}"})
            await self.report(node)
            return restored

        self.api.restore_dataset = restored_and_reported

    async def test_the_most_recently_deleted_of_a_name_comes_back_on_its_keeper(self):
        await self.deleted("db", NODE1, time.time() - 600)
        newest = await self.deleted("db", NODE2, time.time() - 60)
        self.agent_restores()
        status, line = await restore(self.api, self.h.clock, "db", timeout=1)
        self.assertEqual(status, 0, line)
        self.assertEqual(line, f"restored volume 'db' (dataset {newest}, deleted 60s ago) "
                               f"on 10.0.0.2 at /d/{newest}")
        self.assertFalse(self.h.store.get_dataset(newest).deleted)

    async def test_nothing_kept_says_so(self):
        status, line = await restore(self.api, self.h.clock, "db", timeout=1)
        self.assertEqual(status, 1)
        self.assertIn("no deleted volume named 'db' is kept in any node's trash", line)

    async def test_a_live_volume_is_not_restored(self):
        live = await self.h.create(metadata={"name": "db"})
        status, line = await restore(self.api, self.h.clock, "db", timeout=1)
        self.assertEqual((status, line), (1, f"volume 'db' is not deleted (dataset "
                                              f"{live['dataset_id']}); nothing to restore"))

    async def test_a_name_used_again_since_is_refused_with_the_live_dataset(self):
        await self.deleted("db")
        live = await self.h.create(metadata={"name": "db"})
        status, line = await restore(self.api, self.h.clock, "db", timeout=1)
        self.assertEqual(status, 1)
        self.assertIn("cannot restore 'db'", line)
        self.assertIn(f"is used by dataset {live['dataset_id']} now", line)

    async def test_a_restore_its_node_does_not_report_in_time_says_where_to_look(self):
        dataset_id = await self.deleted("db")
        pending = restore(self.api, self.h.clock, "db", timeout=1)
        result = []

        async def run():
            result.append(await pending)

        done = ensureDeferred(run())
        for _ in range(10):
            self.h.clock.advance(0.2)
            self.h.treq.flush()
        await done
        [(status, line)] = result
        self.assertEqual(status, 1)
        self.assertIn(f"(dataset {dataset_id}) is restored in the configuration, but "
                      "10.0.0.1 has not reported it within 1s", line)
