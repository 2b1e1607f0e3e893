"""In-use tracking: the kernel's mount table, Docker, leases and fencing, on a Clock with
the in-memory control service, and with real mounts in other mount namespaces, real
processes and a real btrfs (RealMountTests)."""

import os
import shutil
import signal
import subprocess
import tempfile
import uuid

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from powerstripflocker.clients.docker import DockerEngineClient, MemoryDockerEngine, Mount
from powerstripflocker.clients.flocker_memory import MemoryFlockerAPI
from powerstripflocker.core.fencing import Fencer
from powerstripflocker.core.inuse import UseTracker, dataset_of
from powerstripflocker.core.kernel_mounts import (
    KernelMounts, MountEntry, MountUse, locate, parse_mountinfo,
)
from powerstripflocker.core.lease_keeper import LeaseKeeper

from .agent.support import LoopBtrfs, MountedElsewhere, btrfs_skip_reason
from .support.dockerd import DockerDaemon, import_busybox_image, missing_requirements


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
        self.successResultOf(self.api.move_dataset(self.dataset.dataset_id, self.other.uuid))
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


MOUNTINFO = (
    "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
    "40 22 0:45 / /srv/btrfs rw,relatime shared:20 - btrfs /dev/loop3 rw,space_cache=v2\n"
    "41 22 0:45 /agent/datasets/ds1 /mnt/with\\040space rw - btrfs /dev/loop3 rw\n"
    "42 22 8:1 /var/lib/psf/datasets/ds2//deleted /data rw master:1 - ext4 /dev/sda1 rw\n"
    "short line\n"
)


def test_mountinfo_lines_give_device_root_and_unescaped_mount_point():
    entries = parse_mountinfo(MOUNTINFO)
    assert entries[2] == MountEntry("0:45", "/agent/datasets/ds1", "/mnt/with space")
    assert entries[3] == MountEntry("8:1", "/var/lib/psf/datasets/ds2", "/data")
    assert len(entries) == 4


def test_a_path_is_located_inside_the_file_system_of_its_longest_mount_point():
    entries = parse_mountinfo(MOUNTINFO)
    assert locate("/srv/btrfs/agent/datasets/ds1", entries) == ("0:45", "/agent/datasets/ds1")
    assert locate("/var/lib/psf/datasets/ds2", entries) == ("8:1", "/var/lib/psf/datasets/ds2")
    assert locate("/srv/btrfs", entries) == ("0:45", "/")


def test_dataset_of_matches_the_path_and_paths_below_it_only_not_siblings():
    paths = {"/d/1": "one"}
    assert dataset_of("/d/1/", paths) == "one"
    assert dataset_of("/d/1x", paths) is None


class FakeMounts:
    """KernelMounts' scan, from a dict the test sets: {dataset path: [MountUse]}."""

    def __init__(self):
        self.mounted = {}
        self.killed = []

    def scan(self, paths):
        return {dataset_id: list(self.mounted[path]) for path, dataset_id in paths.items()
                if self.mounted.get(path)}

    def users_in_namespace(self, use):
        return list(use.pids)

    def kill(self, pid, signal):
        self.killed.append(pid)
        for path, uses in self.mounted.items():
            self.mounted[path] = [u for u in uses if pid not in u.pids]


def container_namespace(pid=4242):
    return MountUse(f"mnt:[{pid}]", (pid, pid + 1), ("/data",))


class FencingTests(SynchronousTestCase):
    """Leases kept from the kernel's truth, and fencing when they cannot be renewed."""

    LEASE = 30.0

    def setUp(self):
        self.clock = Clock()
        self.api = MemoryFlockerAPI(self.clock, convergence_delay=0)
        self.node = self.api.add_node("10.0.0.1")
        self.other = self.api.add_node("10.0.0.2")
        self.dataset = self.successResultOf(self.api.create_dataset(primary=self.node.uuid))
        self.dataset_id = self.dataset.dataset_id
        self.path = f"/var/lib/psf/datasets/{self.dataset_id}"
        self.mounts = FakeMounts()
        self.docker = MemoryDockerEngine(self.clock)
        self.lapses = []
        self.keeper = LeaseKeeper(self.api, self.node.uuid, self.clock,
                                  lease_seconds=self.LEASE, on_lapse=self.on_lapse)
        self.fencer = Fencer(self.clock, self.mounts, self.docker, kill=self.mounts.kill)
        self.tracker = UseTracker(None, self.keeper, lambda: {self.path: self.dataset_id},
                                  self.clock, mounts=self.mounts, fencer=self.fencer)
        self.addCleanup(self.tracker.stop)

    def on_lapse(self, dataset_id, reason):
        self.lapses.append((self.clock.seconds(), dataset_id, reason))
        self.tracker.fence(dataset_id, reason)

    def leases(self):
        return [(lease.dataset_id, lease.node_uuid)
                for lease in self.successResultOf(self.api.list_leases())]

    def taken_by_the_other_node(self):
        """The lease lapsed at the control service and the other node took the dataset."""
        self.successResultOf(self.api.release_lease(self.dataset_id))
        self.successResultOf(self.api.move_dataset(self.dataset_id, self.other.uuid))
        self.successResultOf(self.api.acquire_lease(self.dataset_id, self.other.uuid, 60))

    def mount(self, use=None):
        use = use or container_namespace()
        self.mounts.mounted.setdefault(self.path, []).append(use)
        return use

    def test_a_dataset_mounted_before_the_agent_starts_is_leased_at_once(self):
        self.mount()
        self.tracker.start()
        self.assertEqual(self.leases(), [(self.dataset_id, self.node.uuid)])
        self.assertEqual(self.tracker.users_of(self.dataset_id)[0][:8], "pid 4242")
        self.assertTrue(self.tracker.in_use(self.dataset_id))

    def test_the_lease_is_released_once_no_namespace_has_it_mounted(self):
        self.tracker.start()
        use = self.mount()
        self.clock.advance(0.5)
        self.assertEqual(len(self.leases()), 1)
        self.mounts.mounted[self.path].remove(use)
        self.clock.advance(0.5)
        self.assertEqual(self.leases(), [])
        self.assertEqual(self.tracker.in_use(self.dataset_id), [])

    def test_renewals_every_third_of_the_lease_keep_it(self):
        self.mount()
        self.tracker.start()
        self.clock.pump([1.0] * 120)
        self.assertEqual(len(self.leases()), 1)
        self.assertEqual(self.lapses, [])
        self.assertEqual(self.mounts.killed, [])

    def test_control_unreachable_fences_before_the_lease_could_expire_there(self):
        self.mount()
        self.tracker.start()
        self.clock.advance(1.0)
        self.api.unreachable = "partitioned"
        sent = 0.0      # the last renewal that got through: the acquisition at start
        self.clock.pump([0.25] * 200)
        [(fenced_at, dataset_id, reason)] = self.lapses
        self.assertEqual(dataset_id, self.dataset_id)
        self.assertAlmostEqual(fenced_at, sent + self.LEASE - self.LEASE / 4, delta=0.26)
        self.assertIn("no renewal", reason)
        self.assertEqual(self.mounts.killed, [4242, 4243])
        # the control service would have let it go only at sent + LEASE, later
        self.assertLess(fenced_at, sent + self.LEASE)

    def test_a_renewal_that_gets_through_before_the_deadline_postpones_fencing(self):
        self.mount()
        self.tracker.start()
        self.api.unreachable = "hiccup"
        self.clock.pump([0.5] * 30)         # 15 s: renewals failed, deadline at 22.5 s
        self.api.unreachable = None
        self.clock.pump([0.5] * 60)
        self.assertEqual(self.lapses, [])
        self.assertEqual(len(self.leases()), 1)

    def test_a_renewal_refused_because_another_node_holds_it_fences_at_once(self):
        self.mount()
        self.tracker.start()
        self.taken_by_the_other_node()
        self.clock.advance(self.LEASE / 3)
        [(fenced_at, _, reason)] = self.lapses
        self.assertEqual(fenced_at, self.LEASE / 3)
        self.assertIn("refused", reason)
        self.assertEqual(self.mounts.killed, [4242, 4243])

    def test_a_use_whose_first_lease_fails_is_fenced_at_once(self):
        self.api.unreachable = "down"
        self.tracker.start()
        self.mount()
        self.clock.advance(0.5)
        self.assertEqual([at for at, _, _ in self.lapses], [0.5])
        self.assertIn("could not be acquired", self.lapses[0][2])
        self.assertEqual(self.mounts.killed, [4242, 4243])

    def test_a_user_that_comes_back_after_fencing_is_checked_and_fenced_again(self):
        self.api.unreachable = "down"
        self.tracker.start()
        self.mount()
        self.clock.advance(0.5)
        self.mount(container_namespace(5000))        # a restart policy starts it again
        self.clock.advance(0.5)
        self.assertEqual(self.mounts.killed, [4242, 4243, 5000, 5001])

    def test_docker_containers_are_killed_through_the_daemon_first(self):
        self.tracker = UseTracker(self.docker, self.keeper,
                                  lambda: {self.path: self.dataset_id}, self.clock,
                                  mounts=self.mounts, fencer=self.fencer)
        self.tracker.start()
        web = self.docker.run("web", [Mount("bind", self.path, "/data")])
        self.assertEqual(self.tracker.users_of(self.dataset_id), [
            "web, since " + self.tracker.users_of(self.dataset_id)[0].split("since ")[1]])
        self.taken_by_the_other_node()
        self.clock.advance(self.LEASE / 3)
        self.assertEqual(len(self.lapses), 1)
        self.assertNotIn(web.id, [c.id for c in self.successResultOf(
            self.docker.running_containers())])
        self.assertEqual(self.fencer.fenced[-1]["stopped"][0][:14], "container web,")

    def test_a_daemon_that_does_not_answer_the_kill_is_bypassed_after_its_timeout(self):
        class HungDocker(MemoryDockerEngine):
            def kill(self, container_id):
                return Deferred()
        docker = HungDocker(self.clock)
        fencer = Fencer(self.clock, self.mounts, docker, docker_timeout=1.0,
                        kill=self.mounts.kill)
        self.tracker = UseTracker(docker, self.keeper, lambda: {self.path: self.dataset_id},
                                  self.clock, mounts=self.mounts, fencer=fencer)
        self.tracker.start()
        docker.run("web", [Mount("bind", self.path, "/data")])
        self.mount()
        self.clock.advance(0.5)
        self.taken_by_the_other_node()
        self.clock.advance(self.LEASE / 3)
        self.assertEqual(self.mounts.killed, [])
        self.clock.advance(1.0)
        self.assertEqual(self.mounts.killed, [4242, 4243])

    def test_the_node_stops_writing_before_another_node_can_get_the_lease(self):
        """The ordering of margin, expiry and stop: over many partition start times,
        the users are gone before the control service lets another node lease it."""
        self.mount()
        self.tracker.start()
        for offset in (0.0, 0.3, 3.1, 9.9, 10.0, 17.5):
            self.clock.advance(offset)
            self.api.unreachable = "partitioned"
            cut_at = self.clock.seconds()
            self.lapses.clear()
            while not self.lapses:
                self.clock.advance(0.1)
                self.assertLess(self.clock.seconds() - cut_at, self.LEASE)
            fenced_at = self.lapses[0][0]
            self.api.unreachable = None
            granted = self.successResultOf(self.api.list_leases())
            # what the control service still grants this node: never past the fencing
            [lease] = granted
            self.assertGreaterEqual(lease.expires, self.LEASE / 4 - 0.11,
                                    f"partition at {cut_at}: fenced at {fenced_at}")
            self.mount()
            self.clock.advance(0.5)


def _mount_skip_reason():
    if os.geteuid() != 0:
        return "needs root to mount in a new mount namespace"
    if shutil.which("unshare") is None:
        return "needs unshare (util-linux)"
    return None


@pytest.mark.integration
class RealMountTests(SynchronousTestCase):
    def setUp(self):
        reason = _mount_skip_reason()
        if reason:
            raise SkipTest(reason)
        self.root = tempfile.mkdtemp(prefix="psf-inuse-")
        self.addCleanup(shutil.rmtree, self.root, True)
        self.dataset_id = str(uuid.uuid4())
        self.path = os.path.join(self.root, "datasets", self.dataset_id)
        os.makedirs(os.path.join(self.path, "sub"))
        os.makedirs(self.path + "-sibling")
        self.mounts = KernelMounts()

    def elsewhere(self, source):
        mounted = MountedElsewhere(source)
        self.addCleanup(mounted.stop)
        return mounted

    def scan(self):
        return self.mounts.scan({self.path: self.dataset_id}).get(self.dataset_id, [])

    def test_a_bind_in_another_namespace_is_found_with_its_processes(self):
        self.assertEqual(self.scan(), [])
        mounted = self.elsewhere(self.path)
        [use] = self.scan()
        self.assertIn(mounted.process.pid, use.pids)
        self.assertEqual(use.mount_points, (mounted.target,))
        self.assertFalse(use.shared)
        self.assertTrue(use.describe().startswith(f"pid {mounted.process.pid} ("))
        mounted.stop()
        self.assertEqual(self.scan(), [])

    def test_a_directory_below_the_dataset_counts_its_parent_and_sibling_do_not(self):
        self.elsewhere(os.path.join(self.path, "sub"))
        self.elsewhere(self.path + "-sibling")
        self.elsewhere(os.path.join(self.root, "datasets"))
        [use] = self.scan()
        self.assertEqual(len(use.mount_points), 1)

    def test_a_btrfs_subvolume_bound_elsewhere_is_found_by_its_path_in_the_file_system(self):
        reason = btrfs_skip_reason()
        if reason:
            raise SkipTest(reason)
        fs = LoopBtrfs(size="256M").create("256M")
        self.addCleanup(fs.destroy)
        path = os.path.join(fs.mount_point, "agent", "datasets", self.dataset_id)
        os.makedirs(os.path.dirname(path))
        subprocess.run(["btrfs", "subvolume", "create", path], check=True,
                       capture_output=True)
        paths = {path: self.dataset_id}
        self.assertEqual(self.mounts.scan(paths), {}, "the file system's own mount")
        mounted = self.elsewhere(path)
        [use] = self.mounts.scan(paths)[self.dataset_id]
        self.assertIn(mounted.process.pid, use.pids)
        mounted.stop()
        self.assertEqual(self.mounts.scan(paths), {})

    def fencing_tracker(self, api_unreachable=True):
        clock = Clock()
        api = MemoryFlockerAPI(clock, convergence_delay=0)
        node = api.add_node("10.0.0.1")
        api.unreachable = "partitioned" if api_unreachable else None
        tracker = None

        def fence(dataset_id, reason):
            tracker.fence(dataset_id, reason)

        keeper = LeaseKeeper(api, node.uuid, clock, lease_seconds=6, on_lapse=fence)
        tracker = UseTracker(None, keeper, lambda: {self.path: self.dataset_id}, clock,
                             mounts=self.mounts, fencer=Fencer(clock, self.mounts))
        self.addCleanup(tracker.stop)
        return tracker

    def test_fencing_kills_the_processes_of_a_namespace_that_has_it_mounted(self):
        writer = self.elsewhere(self.path)
        bystander = subprocess.Popen(["sleep", "600"])
        self.addCleanup(bystander.wait)
        self.addCleanup(bystander.kill)
        self.fencing_tracker().start()      # a restarted agent, dockerd dead, control away
        self.assertEqual(writer.process.wait(timeout=10), -9)
        self.assertIsNone(bystander.poll())
        self.assertEqual(self.scan(), [])

    def test_in_a_shared_namespace_only_the_processes_working_in_the_mount_are_killed(self):
        target = tempfile.mkdtemp(prefix="psf-bind-")
        subprocess.run(["mount", "--bind", self.path, target], check=True)
        self.addCleanup(os.rmdir, target)
        self.addCleanup(subprocess.run, ["umount", "-l", target], check=False)
        inside = subprocess.Popen(["sleep", "600"], cwd=target)
        outside = subprocess.Popen(["sleep", "600"])
        for process in (inside, outside):
            self.addCleanup(process.wait)
            self.addCleanup(process.kill)
        [use] = self.scan()
        self.assertTrue(use.shared)
        self.assertEqual(self.mounts.users_in_namespace(use), [inside.pid])


class ReleaseRaceTests(SynchronousTestCase):
    def test_a_lease_granted_after_its_users_stopped_is_released(self):
        clock = Clock()
        api = MemoryFlockerAPI(clock, convergence_delay=0, latency=1.0)
        node = api.add_node("10.0.0.1")
        created = api.create_dataset(primary=node.uuid)
        clock.advance(1.0)
        dataset = self.successResultOf(created)
        keeper = LeaseKeeper(api, node.uuid, clock, lease_seconds=30)
        # the acquisition is on its way, and the user is gone already
        Deferred.fromCoroutine(keeper.hold(dataset.dataset_id, "mount:a"))
        Deferred.fromCoroutine(keeper.release(dataset.dataset_id, "mount:a"))
        clock.advance(1.0)      # granted
        clock.advance(1.0)      # and released
        listed = api.list_leases()
        clock.advance(1.0)
        self.assertEqual(self.successResultOf(listed), [])


@pytest.mark.e2e
class DockerFencingTests(TestCase):
    """Fencing a container of a real dockerd: through the daemon while it answers, by
    its mount namespace once the daemon is dead (the container keeps running under its
    shim)."""

    timeout = 180

    def setUp(self):
        problem = missing_requirements()
        if problem:
            raise SkipTest(f"needs a real dockerd: {problem}")
        self.daemon = DockerDaemon().start()
        self.addCleanup(self.daemon.stop)
        import_busybox_image(self.daemon.host)
        self.root = tempfile.mkdtemp(prefix="psf-fence-")
        self.addCleanup(shutil.rmtree, self.root, True)
        self.dataset_id = str(uuid.uuid4())
        self.path = os.path.join(self.root, "datasets", self.dataset_id)
        os.makedirs(self.path)
        self.api = MemoryFlockerAPI(reactor, convergence_delay=0)
        node = self.api.add_node("10.0.0.1")
        self.successResultOf(self.api.create_dataset(primary=node.uuid,
                                                     dataset_id=self.dataset_id))
        self.engine = DockerEngineClient(reactor, self.daemon.host, timeout=2.0)
        self.addCleanup(self.engine.close)
        mounts = KernelMounts()
        self.fencer = Fencer(reactor, mounts, self.engine, docker_timeout=1.0)
        self.keeper = LeaseKeeper(self.api, node.uuid, reactor, lease_seconds=3.0,
                                  on_lapse=lambda d, reason: self.tracker.fence(d, reason))
        self.tracker = UseTracker(self.engine, self.keeper,
                                  lambda: {self.path: self.dataset_id}, reactor,
                                  mounts=mounts, fencer=self.fencer, poll_seconds=0.2)
        self.addCleanup(self.tracker.stop)

    def run_writer(self):
        self.daemon.run("run", "-d", "--name", "writer", "-v", f"{self.path}:/data",
                        "busybox", "sh", "-c",
                        "while true; do date >> /data/log; sleep 0.1; done")

    def log_size(self):
        try:
            return os.path.getsize(os.path.join(self.path, "log"))
        except FileNotFoundError:
            return 0

    async def until(self, condition, what, timeout=30.0):
        waited = 0.0
        while not condition():
            if waited >= timeout:
                raise AssertionError(f"not {what} after {timeout}s")
            await deferLater(reactor, 0.1, lambda: None)
            waited += 0.1

    async def written_to_the_end(self):
        """The log stops growing (checked over a second)."""
        before = self.log_size()
        await deferLater(reactor, 1.0, lambda: None)
        return self.log_size() == before

    async def test_a_container_is_killed_through_its_daemon(self):
        self.run_writer()
        self.tracker.start()
        await self.until(lambda: self.tracker.users_of(self.dataset_id)[:1] and
                         self.tracker.users_of(self.dataset_id)[0].startswith("writer, "),
                         "the writer named by Docker")
        self.api.unreachable = "partitioned"
        await self.until(lambda: self.fencer.fenced, "fenced", timeout=10)
        self.assertTrue(self.fencer.fenced[0]["stopped"][0].startswith("container writer"))
        self.assertTrue(await self.written_to_the_end())
        ps = self.daemon.run("ps", "-q", "--filter", "name=writer").stdout.strip()
        self.assertEqual(ps, b"")

    async def test_with_the_daemon_dead_the_container_is_killed_by_its_namespace(self):
        self.run_writer()
        os.kill(self.daemon.process.pid, signal.SIGKILL)      # dockerd only, not its shims
        self.daemon.process.wait()
        await self.until(lambda: self.log_size() > 0, "the writer writing")
        self.tracker.start()        # a restarted agent: dockerd does not answer
        await self.until(lambda: self.tracker.in_use(self.dataset_id), "in use")
        self.assertTrue(self.tracker.in_use(self.dataset_id)[0].startswith("pid "))
        self.api.unreachable = "partitioned"
        await self.until(lambda: self.fencer.fenced, "fenced", timeout=10)
        self.assertTrue(await self.written_to_the_end())
        self.assertEqual(KernelMounts().scan({self.path: self.dataset_id}), {})

    def test_a_user_starting_while_the_previous_ones_release_is_on_its_way_gets_a_lease(self):
        clock = Clock()
        api = MemoryFlockerAPI(clock, convergence_delay=0, latency=1.0)
        node = api.add_node("10.0.0.1")
        created = api.create_dataset(primary=node.uuid)
        clock.advance(1.0)
        dataset_id = self.successResultOf(created).dataset_id
        keeper = LeaseKeeper(api, node.uuid, clock, lease_seconds=30)
        Deferred.fromCoroutine(keeper.hold(dataset_id, "mount:a"))
        clock.advance(1.0)                  # leased
        Deferred.fromCoroutine(keeper.release(dataset_id, "mount:a"))   # DELETE on its way
        Deferred.fromCoroutine(keeper.hold(dataset_id, "mount:b"))      # a new user
        clock.advance(1.0)                  # released
        clock.advance(1.0)                  # leased again
        listed = api.list_leases()
        clock.advance(1.0)
        self.assertEqual([lease.dataset_id for lease in self.successResultOf(listed)],
                         [dataset_id])
        self.assertIsNotNone(keeper.deadline(dataset_id))
