"""The btrfs backend: a subvolume per dataset; moves are snapshots + btrfs send/receive.

Layout under the data root (which must be on a btrfs file system):
  datasets/<id>             writable subvolume: the dataset (its path, stable across moves)
  snapshots/<id>/<snap>     read-only snapshots (own, or received from a peer); the newest
                            one shared with a peer is the parent of an incremental send
                            `btrfs receive` writes into snapshots/<id>/ directly: a
                            subvolume there that is not read-only is an interrupted receive
  meta/<id>.json            role, maximum_size, origin, last snapshot
  trash/<id>-<deleted-at>   a deleted dataset's subvolume, renamed there (no copy), kept
                            for the agent's --keep-deleted; <key>.json its record

A push: read-only snapshot of datasets/<id>, `btrfs send [-p parent]` streamed to the peer,
`btrfs receive` there; acquire = writable snapshot of the received one as datasets/<id>.
After handing off, the sender deletes datasets/<id> (once the new primary reports it) and
keeps the last snapshot as a read-only REPLICA, so a move back is incremental.

maximum_size is recorded and reported. With quota=True (--btrfs-quota) quotas are enabled
on the file system and each dataset's subvolume gets a qgroup limit on referenced bytes of
maximum_size, so writes beyond it fail with EDQUOT; without it the size is not enforced.
"""

import os
import time
import uuid

from twisted.logger import Logger
from zope.interface import implementer

from powerstripflocker.agent.model import HANDED_OFF, PRIMARY, REPLICA
from powerstripflocker.agent.streams.processes import CommandFailed, run
from powerstripflocker.agent.backends.base import (
    BackendError,
    Conflict,
    GenerationRecords,
    IStorageBackend,
    MetadataStore,
    MissingParent,
    ReceivePlan,
    SendPlan,
    TrashCan,
    check_name,
    local_from_meta,
    tree_size,
)
from twisted.internet.threads import deferToThread

log = Logger()


def _fstype(path):
    # The longest mount point that is a prefix of path, from /proc/self/mounts.
    path = os.path.realpath(path)
    best, fstype = "", None
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) < 3:
                continue
            mount_point = fields[1].replace("\\040", " ")
            if (path == mount_point or path.startswith(mount_point.rstrip("/") + "/")) \
                    and len(mount_point) >= len(best):
                best, fstype = mount_point, fields[2]
    return fstype


def new_snapshot_name():
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"-{time.time_ns() % 10**9:09d}-" \
        + uuid.uuid4().hex[:8]


@implementer(IStorageBackend)
class BtrfsBackend(GenerationRecords, TrashCan):
    name = "btrfs"
    formats = ("btrfs",)

    def __init__(self, reactor, data_root, quota=False):
        self.reactor = reactor
        self.quota = quota
        self.data_root = os.path.abspath(data_root)
        self.datasets_dir = os.path.join(self.data_root, "datasets")
        self.snapshots_dir = os.path.join(self.data_root, "snapshots")
        for d in (self.datasets_dir, self.snapshots_dir):
            os.makedirs(d, exist_ok=True)
        self.meta = MetadataStore(self.data_root)
        self._init_trash()

    async def start(self):
        if _fstype(self.data_root) != "btrfs":
            raise BackendError(f"{self.data_root} is not on a btrfs file system")
        if self.quota:
            await self._btrfs("quota", "enable", self.data_root)
        for dataset_id in os.listdir(self.snapshots_dir):
            await self._drop_partial_receives(dataset_id)
        await self.recover_trash()

    def local_datasets(self):
        return local_from_meta(self, self.meta.all())

    def path(self, dataset_id):
        return os.path.join(self.datasets_dir, dataset_id)

    def _snapdir(self, dataset_id):
        return os.path.join(self.snapshots_dir, dataset_id)

    async def _btrfs(self, *args):
        return await run(self.reactor, ["btrfs", *args])

    async def _delete_subvolume(self, path):
        if os.path.lexists(path):
            await self._btrfs("subvolume", "delete", "--commit-after", path)

    async def create(self, dataset_id, maximum_size):
        record = self.meta.get(dataset_id)
        if record is not None and record.get("role") == PRIMARY:
            return
        path = self.path(dataset_id)
        await self._delete_subvolume(path)
        await self._btrfs("subvolume", "create", path)
        await self._limit(path, maximum_size)
        self.meta.put(dataset_id, {"role": PRIMARY, "maximum_size": maximum_size,
                                   "origin": "created"})

    async def _limit(self, path, maximum_size):
        if self.quota and maximum_size:
            await self._btrfs("qgroup", "limit", str(int(maximum_size)), path)

    async def destroy(self, dataset_id):
        self.meta.delete(dataset_id)
        await self._delete_subvolume(self.path(dataset_id))
        await self._discard_traces(dataset_id)

    async def _discard_traces(self, dataset_id):
        # Snapshots are incremental parents only: a restored copy moves in full once.
        for name in self.snapshots(dataset_id):
            await self._delete_subvolume(os.path.join(self._snapdir(dataset_id), name))
        _rmdir(self._snapdir(dataset_id))

    async def _discard(self, path):
        if not os.path.lexists(path):
            return
        if os.path.isdir(path) and not os.path.islink(path):
            try:
                await self._delete_subvolume(path)
                return
            except CommandFailed:
                pass          # a plain directory, not a subvolume
        await deferToThread(_rmtree, path)

    def snapshots(self, dataset_id):
        try:
            return sorted(os.listdir(self._snapdir(dataset_id)))
        except FileNotFoundError:
            return []

    async def prepare_send(self, dataset_id, peer_snapshots):
        record = self.meta.get(dataset_id)
        if record is None or record.get("role") != PRIMARY:
            raise Conflict(f"dataset {dataset_id} is not held here as primary")
        common = sorted(set(self.snapshots(dataset_id)) & set(peer_snapshots))
        parent = common[-1] if common else None
        snapshot = new_snapshot_name()
        os.makedirs(self._snapdir(dataset_id), exist_ok=True)
        snap_path = os.path.join(self._snapdir(dataset_id), snapshot)
        await self._btrfs("subvolume", "snapshot", "-r", self.path(dataset_id), snap_path)
        argv = ["btrfs", "send", "-q"]
        size = None
        if parent is not None:
            argv += ["-p", os.path.join(self._snapdir(dataset_id), parent)]
        else:
            size = await deferToThread(tree_size, snap_path)
        argv.append(snap_path)
        return SendPlan(dataset_id=dataset_id, format="btrfs", argv=argv, snapshot=snapshot,
                        parent=parent, size=size, maximum_size=record.get("maximum_size"))

    async def prepare_receive(self, dataset_id, format, parent, snapshot):
        if format != "btrfs":
            raise BackendError(f"the btrfs backend cannot receive format {format!r}")
        if not snapshot:
            raise BackendError("a btrfs push must name its snapshot")
        check_name(snapshot, "snapshot name")
        if parent is not None:
            check_name(parent, "parent snapshot name")
        record = self.meta.get(dataset_id)
        if record is not None and record.get("role") == PRIMARY:
            raise Conflict(f"dataset {dataset_id} is already held here as primary")
        await self._drop_partial_receives(dataset_id)
        if parent is not None and parent not in self.snapshots(dataset_id):
            raise MissingParent(f"parent snapshot {parent} of {dataset_id} is not held here")
        snapdir = self._snapdir(dataset_id)
        os.makedirs(snapdir, exist_ok=True)
        if os.path.lexists(os.path.join(snapdir, snapshot)):
            raise Conflict(f"snapshot {snapshot} of {dataset_id} is already held here")

        async def commit():
            # btrfs receive makes the subvolume read-only only once the stream is complete.
            received = os.path.join(snapdir, snapshot)
            if not os.path.isdir(received) or not await self._read_only(received):
                raise BackendError(f"btrfs receive did not complete snapshot {snapshot}")
            if self.meta.get(dataset_id) is None:
                # Not acquired yet: known as a replica, so a delete of the dataset removes it.
                self.meta.put(dataset_id, {"role": REPLICA, "origin": "received",
                                           "last_snapshot": snapshot})
            return snapshot

        async def discard():
            await self._drop_partial_receives(dataset_id)

        return ReceivePlan(dataset_id, ["btrfs", "receive", snapdir], commit, discard)

    async def _read_only(self, path):
        out = await self._btrfs("property", "get", "-ts", path, "ro")
        return out.strip() == b"ro=true"

    async def _drop_partial_receives(self, dataset_id):
        """Subvolumes under snapshots/<id> that are not read-only are interrupted receives."""
        for name in self.snapshots(dataset_id):
            full = os.path.join(self._snapdir(dataset_id), name)
            try:
                if await self._read_only(full):
                    continue
            except CommandFailed:
                pass
            log.info("dropping the partial receive {path}", path=full)
            try:
                await self._delete_subvolume(full)
            except CommandFailed:
                await deferToThread(_rmtree, full)

    async def acquire(self, dataset_id, received, maximum_size):
        record = self.meta.get(dataset_id)
        if record is not None and record.get("role") == PRIMARY:
            if record.get("received") == received:
                return
            raise Conflict(f"dataset {dataset_id} is already held here as primary")
        check_name(received, "snapshot name")
        snap_path = os.path.join(self._snapdir(dataset_id), received)
        if not os.path.isdir(snap_path):
            raise BackendError(f"no received snapshot {received} of dataset {dataset_id} here")
        path = self.path(dataset_id)
        await self._delete_subvolume(path)
        await self._btrfs("subvolume", "snapshot", snap_path, path)
        await self._limit(path, maximum_size)
        self.meta.put(dataset_id, {"role": PRIMARY, "maximum_size": maximum_size,
                                   "origin": "received", "received": received,
                                   "last_snapshot": received})
        await self._prune(dataset_id, keep=received)

    async def handoff(self, dataset_id, target, plan):
        self.meta.update(dataset_id, role=HANDED_OFF, handed_to=target,
                         last_snapshot=plan.snapshot if plan is not None else None)

    async def abandon_send(self, plan):
        if plan.snapshot:
            check_name(plan.snapshot, "snapshot name")
            await self._delete_subvolume(os.path.join(self._snapdir(plan.dataset_id),
                                                      plan.snapshot))

    async def cleanup(self, dataset_id):
        record = self.meta.get(dataset_id)
        if record is not None and record.get("role") != HANDED_OFF:
            raise Conflict(f"dataset {dataset_id} is {record.get('role')} here, not handed off")
        await self._delete_subvolume(self.path(dataset_id))
        keep = (record or {}).get("last_snapshot")
        await self._prune(dataset_id, keep=keep)
        if keep and keep in self.snapshots(dataset_id):
            self.meta.update(dataset_id, role=REPLICA)
        else:
            self.meta.delete(dataset_id)

    async def _prune(self, dataset_id, keep):
        for name in self.snapshots(dataset_id):
            if name != keep:
                await self._delete_subvolume(os.path.join(self._snapdir(dataset_id), name))


def _rmdir(path):
    try:
        os.rmdir(path)
    except OSError:
        pass


def _rmtree(path):
    import shutil
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
