from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from powerstripflocker.clients.flocker_memory import MemoryFlockerAPI
from powerstripflocker.cli.release import release


class ReleaseTests(SynchronousTestCase):
    def setUp(self):
        self.api = MemoryFlockerAPI(Clock())
        self.gone = self.api.add_node("10.0.0.9")
        self.dataset = self.successResultOf(self.api.create_dataset(
            primary=self.gone.uuid, metadata={"name": "db"}))

    def release(self, name):
        return self.successResultOf(Deferred.fromCoroutine(release(self.api, name)))

    def test_a_lease_is_released_and_the_line_names_its_holder(self):
        self.successResultOf(self.api.acquire_lease(self.dataset.dataset_id, self.gone.uuid, None))
        status, line = self.release("db")
        self.assertEqual(status, 0)
        self.assertIn(f"released the lease of 10.0.0.9 (node {self.gone.uuid})", line)
        self.assertEqual(self.successResultOf(self.api.list_leases()), [])

    def test_no_lease_and_unknown_names_say_so(self):
        self.assertEqual(self.release("db")[0], 0)
        self.assertIn("holds no lease", self.release("db")[1])
        self.assertEqual(self.release("nope"), (1, "no volume named 'nope'"))
