from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from powerstripflocker.docker import MemoryDockerEngine, Mount
from powerstripflocker.flocker import MemoryFlockerAPI
from powerstripflocker.inuse import LeaseKeeper, UseTracker, dataset_of


class UseTrackerTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.api = MemoryFlockerAPI(self.clock, convergence_delay=0)
        self.node = self.api.add_node("10.0.0.1")
        self.other = self.api.add_node("10.0.0.2")
        self.dataset = self.successResultOf(self.api.create_dataset(primary=self.node.uuid))
        self.path = f"/var/lib/psf/datasets/{self.dataset.dataset_id}"
        self.docker = MemoryDockerEngine(self.clock)
        self.keeper = LeaseKeeper(self.api, self.node.uuid, self.clock, lease_seconds=30)
        self.tracker = UseTracker(self.docker, self.keeper,
                                  lambda: {self.path: self.dataset.dataset_id}, self.clock)
        self.addCleanup(self.tracker.stop)

    def leases(self):
        return [(l.dataset_id, l.node_uuid)
                for l in self.successResultOf(self.api.list_leases())]

    def run_container(self, name, source=None):
        return self.docker.run(name, [Mount("bind", source or self.path, "/data")])

    def test_a_running_container_holds_a_lease_until_it_stops(self):
        self.tracker.start()
        self.assertEqual(self.leases(), [])
        web = self.run_container("web")
        self.assertEqual(self.leases(), [(self.dataset.dataset_id, self.node.uuid)])
        [lease] = self.successResultOf(self.api.list_leases())
        self.assertEqual(lease.expires, 30)
        self.docker.stop(web)
        self.assertEqual(self.leases(), [])

    def test_containers_running_before_the_tracker_starts_are_found(self):
        self.run_container("early", source=self.path + "/subdir")
        self.tracker.start()
        self.assertEqual(self.leases(), [(self.dataset.dataset_id, self.node.uuid)])
        self.assertEqual(list(self.keeper.holders(self.dataset.dataset_id).values())[0][:7],
                         "early, ")

    def test_the_lease_is_released_only_when_the_last_user_stops(self):
        self.tracker.start()
        first, second = self.run_container("a"), self.run_container("b")
        self.docker.stop(first)
        self.assertEqual(len(self.leases()), 1)
        self.docker.stop(second)
        self.assertEqual(self.leases(), [])

    def test_binds_outside_datasets_take_no_lease(self):
        self.tracker.start()
        self.run_container("other", source="/srv/www")
        self.run_container("prefix", source=self.path + "-not-the-same")
        self.assertEqual(self.leases(), [])

    def test_leases_are_renewed_while_in_use_and_lapse_when_the_node_dies(self):
        self.tracker.start()
        self.run_container("long")
        self.clock.pump([5] * 24)
        self.assertEqual(len(self.leases()), 1, "renewed for two minutes")
        self.tracker.stop()
        self.clock.advance(31)
        self.assertEqual(self.leases(), [], "no renewals: the lease expired")

    def test_a_lease_held_elsewhere_is_left_alone(self):
        self.successResultOf(self.api.acquire_lease(self.dataset.dataset_id, self.other.uuid,
                                                    None))
        self.tracker.start()
        web = self.run_container("web")
        self.docker.stop(web)
        self.assertEqual(self.leases(), [(self.dataset.dataset_id, self.other.uuid)])


def test_dataset_of_matches_the_path_and_paths_below_it_only():
    paths = {"/d/1": "one", "/d/2/": "two"}
    assert dataset_of("/d/1", paths) == "one"
    assert dataset_of("/d/1/sub/dir", paths) == "one"
    assert dataset_of("/d/2", paths) == "two"
    assert dataset_of("/d/10", paths) is None
    assert dataset_of("/d", paths) is None


class StaleListTests(SynchronousTestCase):
    def test_a_container_that_died_is_stopped_even_while_docker_still_lists_it(self):
        clock = Clock()
        api = MemoryFlockerAPI(clock, convergence_delay=0)
        node = api.add_node("10.0.0.1")
        dataset = self.successResultOf(api.create_dataset(primary=node.uuid))
        docker = MemoryDockerEngine(clock)
        tracker = UseTracker(docker, LeaseKeeper(api, node.uuid, clock), lambda: {
            "/d": dataset.dataset_id}, clock)
        self.addCleanup(tracker.stop)
        tracker.start()
        web = docker.run("web", [Mount("bind", "/d", "/data")])
        self.assertEqual(len(self.successResultOf(api.list_leases())), 1)
        docker.emit_only("die", web)  # the event arrives; the list still shows it running
        self.assertEqual(self.successResultOf(api.list_leases()), [])
        docker.emit_only("start", web)  # a restart policy starts it again
        self.assertEqual(len(self.successResultOf(api.list_leases())), 1)
