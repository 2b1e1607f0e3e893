"""One contract suite for the storage backends, run on the directory and btrfs backends."""

import os
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import replace

import pytest
from twisted.internet import reactor
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface.verify import verifyObject

from powerstripflocker.agent.backends import (
    BackendError, Conflict, IStorageBackend, MissingParent, make_backend,
)
from powerstripflocker.agent.model import HANDED_OFF, PRIMARY, REPLICA

from .support import LoopBtrfs, btrfs_skip_reason, fill_sample_tree, manifest

NODE_B = "22222222-2222-4222-8222-222222222222"


def pipe(send_argv, receive_argv, truncate_at=None):
    """Run sender | receiver (optionally cutting the stream); returns bytes moved."""
    sender = subprocess.Popen(send_argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    receiver = subprocess.Popen(receive_argv, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    moved = 0
    while True:
        chunk = sender.stdout.read(1 << 16)
        if not chunk:
            break
        if truncate_at is not None and moved + len(chunk) > truncate_at:
            receiver.stdin.write(chunk[:truncate_at - moved])
            moved = truncate_at
            sender.kill()
            break
        receiver.stdin.write(chunk)
        moved += len(chunk)
    receiver.stdin.close()
    sender.wait()
    receiver.wait()
    return moved, sender.returncode, receiver.returncode


def make_backend_tests(backend_name, make_roots):
    class BackendContract(TestCase):
        timeout = 120

        def setUp(self):
            self.root_a, self.root_b, cleanup = make_roots()
            self.addCleanup(cleanup)
            self.a = make_backend(backend_name, reactor, self.root_a)
            self.b = make_backend(backend_name, reactor, self.root_b)
            self.id = str(uuid.uuid4())

        async def start(self):
            await self.a.start()
            await self.b.start()

        async def move(self, source, target, dataset_id=None, truncate_at=None):
            """Push source's primary to target, acquire, hand off; returns (bytes, plan)."""
            dataset_id = dataset_id or self.id
            plan = await source.prepare_send(dataset_id, target.snapshots(dataset_id))
            receive = await target.prepare_receive(dataset_id, plan.format, plan.parent,
                                             plan.snapshot)
            moved, send_status, receive_status = pipe(plan.argv, receive.argv, truncate_at)
            if truncate_at is not None:
                r = receive.discard()
                if hasattr(r, "__await__"):
                    await r
                return moved, None
            self.assertEqual((send_status, receive_status), (0, 0))
            received = receive.commit()
            if hasattr(received, "__await__"):
                received = await received
            await target.acquire(dataset_id, received, plan.maximum_size)
            await source.handoff(dataset_id, "x", plan)
            return moved, plan, received

        def test_provides_the_interface(self):
            verifyObject(IStorageBackend, self.a)

        async def test_create_makes_an_empty_primary_at_a_stable_path(self):
            await self.start()
            await self.a.create(self.id, 67108864)
            path = self.a.path(self.id)
            self.assertEqual(path, os.path.join(self.root_a, "datasets", self.id))
            self.assertEqual(os.listdir(path), [])
            held = self.a.local_datasets()[self.id]
            self.assertEqual((held.role, held.path, held.maximum_size),
                             (PRIMARY, path, 67108864))

        async def test_the_generation_is_kept_with_the_copy_across_restarts(self):
            await self.start()
            await self.a.create(self.id, None)
            self.assertIsNone(self.a.local_datasets()[self.id].generation)
            self.a.record_generation(self.id, 3)
            again = make_backend(backend_name, reactor, self.root_a)
            self.assertEqual(again.local_datasets()[self.id].generation, 3)
            self.assertEqual(again.known_generation(self.id), 3)
            await self.move(self.a, self.b)
            self.assertEqual(self.a.known_generation(self.id), 3, "kept when handed off")
            other = str(uuid.uuid4())
            self.a.record_generation(other, 4)
            self.assertIsNone(self.a.known_generation(other), "nothing held: nothing kept")
            self.assertNotIn(other, self.a.local_datasets())

        async def test_create_is_idempotent(self):
            await self.start()
            await self.a.create(self.id, None)
            with open(os.path.join(self.a.path(self.id), "f"), "w") as f:
                f.write("keep me")
            await self.a.create(self.id, None)
            self.assertEqual(os.listdir(self.a.path(self.id)), ["f"])

        async def test_destroy_removes_everything_and_is_idempotent(self):
            await self.start()
            await self.a.create(self.id, None)
            fill_sample_tree(self.a.path(self.id), random_bytes=4096)
            await self.a.destroy(self.id)
            self.assertFalse(os.path.lexists(self.a.path(self.id)))
            self.assertEqual(self.a.local_datasets(), {})
            await self.a.destroy(self.id)

        async def test_move_preserves_tree_modes_mtimes_symlinks_and_empty_dirs(self):
            await self.start()
            await self.a.create(self.id, None)
            fill_sample_tree(self.a.path(self.id))
            before = manifest(self.a.path(self.id))
            await self.move(self.a, self.b)
            self.assertEqual(manifest(self.b.path(self.id)), before)
            self.assertEqual(self.b.local_datasets()[self.id].role, PRIMARY)
            self.assertEqual(self.b.local_datasets()[self.id].origin, "received")

        async def test_handed_off_copy_is_kept_until_cleanup(self):
            await self.start()
            await self.a.create(self.id, None)
            fill_sample_tree(self.a.path(self.id), random_bytes=4096)
            before = manifest(self.a.path(self.id))
            await self.move(self.a, self.b)
            self.assertEqual(self.a.local_datasets()[self.id].role, HANDED_OFF)
            self.assertEqual(manifest(self.a.path(self.id)), before)
            await self.a.cleanup(self.id)
            self.assertFalse(os.path.lexists(self.a.path(self.id)))
            self.assertNotIn(self.a.local_datasets().get(self.id, None) and
                             self.a.local_datasets()[self.id].role, (PRIMARY, HANDED_OFF))

        async def test_cleanup_refuses_a_primary(self):
            await self.start()
            await self.a.create(self.id, None)
            with self.assertRaises(Conflict):
                await self.a.cleanup(self.id)
            self.assertTrue(os.path.isdir(self.a.path(self.id)))

        async def test_receive_refused_when_already_primary(self):
            await self.start()
            await self.a.create(self.id, None)
            await self.b.create(self.id, None)
            with self.assertRaises(Conflict):
                await self.b.prepare_receive(self.id, self.b.formats[0], None, "s")

        async def test_unknown_format_is_refused(self):
            await self.start()
            with self.assertRaises(BackendError):
                await self.b.prepare_receive(self.id, "zip", None, "s")

        async def test_interrupted_receive_leaves_source_intact_and_target_empty(self):
            await self.start()
            await self.a.create(self.id, None)
            fill_sample_tree(self.a.path(self.id), random_bytes=2 << 20)
            before = manifest(self.a.path(self.id))
            await self.move(self.a, self.b, truncate_at=300_000)
            self.assertEqual(manifest(self.a.path(self.id)), before)
            self.assertEqual(self.a.local_datasets()[self.id].role, PRIMARY)
            self.assertNotIn(self.id, self.b.local_datasets())
            # and a retry goes through
            await self.move(self.a, self.b)
            self.assertEqual(manifest(self.b.path(self.id)), before)

        async def test_leftovers_of_a_crashed_receive_are_dropped_at_start(self):
            await self.start()
            await self.a.create(self.id, None)
            fill_sample_tree(self.a.path(self.id), random_bytes=2 << 20)
            plan = await self.a.prepare_send(self.id, [])
            receive = await self.b.prepare_receive(self.id, plan.format, plan.parent, plan.snapshot)
            pipe(plan.argv, receive.argv, truncate_at=300_000)
            # the receiving agent "dies" here; a new one starts on the same root
            b2 = make_backend(backend_name, reactor, self.root_b)
            await b2.start()
            self.assertEqual(b2.snapshots(self.id), [])
            staging = os.path.join(self.root_b, "staging", self.id)
            self.assertEqual(os.listdir(staging) if os.path.isdir(staging) else [], [])
            self.assertNotIn(self.id, b2.local_datasets())
            await self.move(self.a, b2)
            self.assertEqual(manifest(b2.path(self.id)), manifest(self.a.path(self.id)))

        async def test_acquire_is_idempotent_for_one_push(self):
            await self.start()
            await self.a.create(self.id, None)
            moved, plan, received = await self.move(self.a, self.b)
            await self.b.acquire(self.id, received, None)
            with self.assertRaises(Conflict):
                await self.b.acquire(self.id, "something-else", None)

        async def test_acquire_of_nothing_received_fails(self):
            await self.start()
            with self.assertRaises(BackendError):
                await self.b.acquire(self.id, "never-received", None)
            self.assertNotIn(self.id, self.b.local_datasets())

        async def test_acquire_refuses_path_like_tokens(self):
            await self.start()
            for token in ("..", "../x", "/etc", ".hidden", "a/b", ""):
                with self.assertRaises(BackendError):
                    await self.b.acquire(self.id, token, None)
            self.assertNotIn(self.id, self.b.local_datasets())

        async def test_abandoned_send_leaves_the_primary_intact(self):
            await self.start()
            await self.a.create(self.id, None)
            fill_sample_tree(self.a.path(self.id), random_bytes=4096)
            before = manifest(self.a.path(self.id))
            plan = await self.a.prepare_send(self.id, [])
            await self.a.abandon_send(plan)
            self.assertEqual(self.a.snapshots(self.id), [])
            self.assertEqual(manifest(self.a.path(self.id)), before)
            self.assertEqual(self.a.local_datasets()[self.id].role, PRIMARY)

        async def test_move_back_replaces_the_stale_copy(self):
            await self.start()
            await self.a.create(self.id, None)
            fill_sample_tree(self.a.path(self.id), random_bytes=64 * 1024)
            await self.move(self.a, self.b)
            with open(os.path.join(self.b.path(self.id), "new-on-b"), "w") as f:
                f.write("written on b")
            after = manifest(self.b.path(self.id))
            # a has not cleaned up yet (b's report has not arrived); the move back wins
            await self.move(self.b, self.a)
            self.assertEqual(manifest(self.a.path(self.id)), after)
            self.assertEqual(self.a.local_datasets()[self.id].role, PRIMARY)

        async def test_maximum_size_is_recorded_and_travels(self):
            await self.start()
            await self.a.create(self.id, 134217728)
            await self.move(self.a, self.b)
            self.assertEqual(self.b.local_datasets()[self.id].maximum_size, 134217728)

        # -- the trash: deleted data kept for a while ----------------------------

        async def test_a_trashed_primary_is_kept_with_its_record_and_restored_intact(self):
            await self.start()
            await self.a.create(self.id, 134217728)
            fill_sample_tree(self.a.path(self.id), random_bytes=64 * 1024)
            self.a.record_generation(self.id, 4)
            before = manifest(self.a.path(self.id))
            entry = await self.a.trash(self.id, 1_800_000_000.25)
            self.assertEqual((entry.dataset_id, entry.deleted_at, entry.generation,
                              entry.maximum_size), (self.id, 1_800_000_000.25, 4, 134217728))
            self.assertEqual(entry.key, f"{self.id}-20270115T080000.250Z")
            self.assertGreater(entry.bytes, 64 * 1024)
            self.assertFalse(os.path.lexists(self.a.path(self.id)))
            self.assertNotIn(self.id, self.a.local_datasets())
            self.assertEqual(self.a.trashed(), [entry])
            kept = os.path.join(self.root_a, "trash", entry.key)
            self.assertEqual(manifest(kept), before, "kept under trash/, as it was")
            restarted = make_backend(backend_name, reactor, self.root_a)
            await restarted.start()
            self.assertEqual(restarted.trashed(), [entry], "a restart keeps the trash")
            restored = await restarted.restore(self.id)
            self.assertEqual(restored.key, entry.key)
            self.assertEqual(manifest(restarted.path(self.id)), before)
            held = restarted.local_datasets()[self.id]
            self.assertEqual((held.role, held.maximum_size, held.generation),
                             (PRIMARY, 134217728, 4))
            self.assertEqual(restarted.trashed(), [])
            self.assertFalse(os.path.lexists(kept))

        async def test_a_restored_copy_moves_like_any_primary(self):
            await self.start()
            await self.a.create(self.id, None)
            fill_sample_tree(self.a.path(self.id), random_bytes=64 * 1024)
            await self.a.trash(self.id, 1_800_000_000.0)
            await self.a.restore(self.id)
            before = manifest(self.a.path(self.id))
            await self.move(self.a, self.b)
            self.assertEqual(manifest(self.b.path(self.id)), before)

        async def test_only_a_primary_goes_to_the_trash(self):
            await self.start()
            await self.a.create(self.id, None)
            await self.move(self.a, self.b)
            self.assertIsNone(await self.a.trash(self.id, 1_800_000_000.0),
                              "a handed-off copy is not the dataset")
            self.assertEqual((self.a.trashed(), self.a.local_datasets()), ([], {}))
            self.assertFalse(os.path.lexists(self.a.path(self.id)))
            self.assertIsNone(await self.a.trash(str(uuid.uuid4()), 1_800_000_000.0))

        async def test_restore_refuses_what_is_not_in_the_trash_or_already_primary(self):
            await self.start()
            with self.assertRaises(BackendError):
                await self.a.restore(self.id)
            await self.a.create(self.id, None)
            await self.a.trash(self.id, 1_800_000_000.0)
            await self.a.create(self.id, None)
            with self.assertRaises(Conflict):
                await self.a.restore(self.id)
            self.assertEqual(len(self.a.trashed()), 1, "the kept copy stays kept")

        async def test_the_latest_of_two_trashed_copies_is_restored(self):
            await self.start()
            for deleted_at, content in ((1_800_000_000.0, "old"), (1_800_000_100.0, "new")):
                await self.a.create(self.id, None)
                with open(os.path.join(self.a.path(self.id), "f"), "w") as f:
                    f.write(content)
                await self.a.trash(self.id, deleted_at)
            self.assertEqual([e.deleted_at for e in self.a.trashed()],
                             [1_800_000_000.0, 1_800_000_100.0])
            await self.a.restore(self.id)
            with open(os.path.join(self.a.path(self.id), "f")) as f:
                self.assertEqual(f.read(), "new")
            self.assertEqual([e.deleted_at for e in self.a.trashed()], [1_800_000_000.0])

        async def test_purge_removes_an_entry_and_is_idempotent(self):
            await self.start()
            await self.a.create(self.id, None)
            fill_sample_tree(self.a.path(self.id), random_bytes=4096)
            entry = await self.a.trash(self.id, 1_800_000_000.0)
            await self.a.purge(entry.key)
            await self.a.purge(entry.key)
            self.assertEqual(self.a.trashed(), [])
            self.assertEqual(os.listdir(os.path.join(self.root_a, "trash")), [])
            with self.assertRaises(BackendError):
                await self.a.purge("../datasets")

        async def test_start_finishes_an_interrupted_restore_and_drops_unrecorded_leftovers(
                self):
            await self.start()
            await self.a.create(self.id, None)
            fill_sample_tree(self.a.path(self.id), random_bytes=4096)
            before = manifest(self.a.path(self.id))
            entry = await self.a.trash(self.id, 1_800_000_000.0)
            # the agent dies after marking the entry restoring, before the rename
            self.a._put_trash_record(replace(entry, restoring=True))
            leftover = os.path.join(self.root_a, "trash", uuid.uuid4().hex)
            os.makedirs(os.path.join(leftover, "inside"))
            restarted = make_backend(backend_name, reactor, self.root_a)
            await restarted.start()
            self.assertEqual(manifest(restarted.path(self.id)), before)
            self.assertEqual(restarted.local_datasets()[self.id].role, PRIMARY)
            self.assertEqual(restarted.trashed(), [])
            self.assertEqual(os.listdir(os.path.join(self.root_a, "trash")), [])

        async def test_start_drops_the_record_of_a_trash_interrupted_before_its_rename(self):
            await self.start()
            await self.a.create(self.id, None)
            other = str(uuid.uuid4())
            await self.a.create(other, None)
            entry = await self.a.trash(other, 1_800_000_000.0)
            os.rename(os.path.join(self.root_a, "trash", entry.key),
                      self.a.path(other))
            self.a.meta.put(other, {"role": PRIMARY})
            restarted = make_backend(backend_name, reactor, self.root_a)
            await restarted.start()
            self.assertEqual(restarted.trashed(), [])
            self.assertEqual(restarted.local_datasets()[other].role, PRIMARY,
                             "still primary: its delete is done again")

    BackendContract.__name__ = BackendContract.__qualname__ = \
        f"{backend_name.capitalize()}BackendContract"
    return BackendContract


def _directory_roots():
    base = tempfile.mkdtemp(prefix="psf-agent-")
    return (os.path.join(base, "a"), os.path.join(base, "b"),
            lambda: shutil.rmtree(base, ignore_errors=True))


class DirectoryBackendTests(make_backend_tests("directory", _directory_roots)):
    pass


class _BtrfsFilesystems:
    """Two loop-mounted btrfs file systems shared by the btrfs tests of this module."""
    filesystems = None

    @classmethod
    def roots(cls):
        reason = btrfs_skip_reason()
        if reason:
            raise SkipTest(reason)
        if cls.filesystems is None:
            cls.filesystems = [LoopBtrfs().create("512M"), LoopBtrfs().create("512M")]
        name = uuid.uuid4().hex
        a = os.path.join(cls.filesystems[0].mount_point, name)
        b = os.path.join(cls.filesystems[1].mount_point, name)
        return a, b, lambda: None

    @classmethod
    def destroy(cls):
        for fs in cls.filesystems or []:
            fs.destroy()
        cls.filesystems = None


@pytest.fixture(scope="module", autouse=True)
def _destroy_btrfs_filesystems():
    yield
    _BtrfsFilesystems.destroy()


@pytest.mark.btrfs
class BtrfsBackendTests(make_backend_tests("btrfs", _BtrfsFilesystems.roots)):

    async def test_move_back_after_a_small_change_is_incremental(self):
        await self.start()
        await self.a.create(self.id, None)
        fill_sample_tree(self.a.path(self.id), random_bytes=20 << 20)
        first, plan, _ = await self.move(self.a, self.b)
        self.assertIsNone(plan.parent)
        self.assertGreater(first, 20 << 20)
        await self.a.cleanup(self.id)
        self.assertEqual(self.a.local_datasets()[self.id].role, REPLICA)
        self.assertEqual(self.a.snapshots(self.id), [plan.snapshot])
        with open(os.path.join(self.b.path(self.id), "nested", "change.bin"), "wb") as f:
            f.write(os.urandom(1 << 20))
        expected = manifest(self.b.path(self.id))
        second, plan2, _ = await self.move(self.b, self.a)
        self.assertEqual(plan2.parent, plan.snapshot)
        self.assertLess(second, 2 << 20)
        self.assertEqual(manifest(self.a.path(self.id)), expected)
        # and a third move, parent = the snapshot b received back... is incremental too
        await self.b.cleanup(self.id)
        with open(os.path.join(self.a.path(self.id), "third.bin"), "wb") as f:
            f.write(os.urandom(1 << 20))
        third, plan3, _ = await self.move(self.a, self.b)
        self.assertEqual(plan3.parent, plan2.snapshot)
        self.assertLess(third, 2 << 20)
        self.assertEqual(manifest(self.b.path(self.id)), manifest(self.a.path(self.id)))

    async def test_received_but_never_acquired_copy_is_a_replica_a_delete_removes(self):
        await self.start()
        await self.a.create(self.id, None)
        plan = await self.a.prepare_send(self.id, [])
        receive = await self.b.prepare_receive(self.id, plan.format, plan.parent, plan.snapshot)
        pipe(plan.argv, receive.argv)
        await receive.commit()
        self.assertEqual(self.b.local_datasets()[self.id].role, REPLICA)
        await self.b.destroy(self.id)
        self.assertEqual(self.b.snapshots(self.id), [])
        self.assertNotIn(self.id, self.b.local_datasets())

    async def test_receive_refuses_path_like_snapshot_names(self):
        await self.start()
        for name in ("..", "../x", ".x", "a/b"):
            with self.assertRaises(BackendError):
                await self.b.prepare_receive(self.id, "btrfs", None, name)
            with self.assertRaises(BackendError):
                await self.b.prepare_receive(self.id, "btrfs", name, "ok-name")

    async def test_quota_enforces_maximum_size_and_follows_a_move(self):
        import errno
        filesystems = [LoopBtrfs().create("512M"), LoopBtrfs().create("512M")]
        for fs in filesystems:
            self.addCleanup(fs.destroy)
        self.a = make_backend("btrfs", reactor, filesystems[0].mount_point + "/a",
                              btrfs_quota=True)
        self.b = make_backend("btrfs", reactor, filesystems[1].mount_point + "/b",
                              btrfs_quota=True)
        await self.start()
        await self.a.create(self.id, 64 * 1024 * 1024)

        def overfill(path):
            with self.assertRaises(OSError) as raised:
                with open(os.path.join(path, "too-big"), "wb") as f:
                    for _ in range(24):
                        f.write(os.urandom(4 << 20))
                        f.flush()
                        os.fsync(f.fileno())
            self.assertEqual(raised.exception.errno, errno.EDQUOT)
            os.unlink(os.path.join(path, "too-big"))

        overfill(self.a.path(self.id))
        with open(os.path.join(self.a.path(self.id), "fits"), "wb") as f:
            f.write(os.urandom(8 << 20))
        await self.move(self.a, self.b)
        overfill(self.b.path(self.id))

    async def test_receive_with_a_missing_parent_is_refused(self):
        await self.start()
        with self.assertRaises(MissingParent):
            await self.b.prepare_receive(self.id, "btrfs", "no-such-snapshot", "s2")

    async def test_start_refuses_a_root_that_is_not_btrfs(self):
        base = tempfile.mkdtemp(prefix="psf-notbtrfs-", dir="/tmp")
        self.addCleanup(shutil.rmtree, base, True)
        backend = make_backend("btrfs", reactor, base)
        if os.statvfs(base) and _fs_type(base) == "btrfs":
            raise SkipTest("/tmp is btrfs here")
        with self.assertRaises(BackendError):
            await backend.start()


def _fs_type(path):
    from powerstripflocker.agent.backends.btrfs import _fstype
    return _fstype(path)
