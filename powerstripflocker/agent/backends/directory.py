"""The directory backend: a plain folder per dataset; moves stream a tar of it.

Layout under the data root:
  datasets/<id>/            the dataset (its path, stable across moves)
  meta/<id>.json            role (primary / handed-off), maximum_size, origin
  staging/<id>/<token>/     an incoming push being extracted
  staging/<id>/<token>.complete   marker: that push was received completely
  trash/<id>-<deleted-at>   a deleted dataset, kept for the agent's --keep-deleted
  trash/<id>-<deleted-at>.json    its record (see base.TrashCan)
  removing/<random>         a tree being deleted (renamed here first: atomic)

maximum_size is recorded and reported but not enforced (a plain directory has no quota).
"""

import os
import shutil
import uuid

from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from zope.interface import implementer

from powerstripflocker.agent.model import HANDED_OFF, PRIMARY
from powerstripflocker.agent.backends.base import (
    BackendError,
    Conflict,
    GenerationRecords,
    IStorageBackend,
    MetadataStore,
    ReceivePlan,
    SendPlan,
    TrashCan,
    check_name,
    local_from_meta,
    tree_size,
)

log = Logger()

TAR_CREATE = ["tar", "--create", "--file=-", "--format=posix", "--numeric-owner",
              "--sparse", "--one-file-system"]
TAR_EXTRACT = ["tar", "--extract", "--file=-", "--numeric-owner", "--preserve-permissions",
               "--same-owner"]


@implementer(IStorageBackend)
class DirectoryBackend(GenerationRecords, TrashCan):
    name = "directory"
    formats = ("tar",)

    def __init__(self, reactor, data_root):
        self.reactor = reactor
        self.data_root = os.path.abspath(data_root)
        self.datasets_dir = os.path.join(self.data_root, "datasets")
        self.staging_dir = os.path.join(self.data_root, "staging")
        self.removing_dir = os.path.join(self.data_root, "removing")
        for d in (self.datasets_dir, self.staging_dir, self.removing_dir):
            os.makedirs(d, exist_ok=True)
        self.meta = MetadataStore(self.data_root)
        self._init_trash()

    async def start(self):
        # Receives (complete or not) that were never acquired and half-deleted trees are
        # leftovers of a crash; a sender whose push was not acquired pushes again.
        for dataset_id in os.listdir(self.staging_dir):
            await self._remove(os.path.join(self.staging_dir, dataset_id))
        for name in os.listdir(self.removing_dir):
            await deferToThread(_rm, os.path.join(self.removing_dir, name))
        await self.recover_trash()

    def local_datasets(self):
        return local_from_meta(self, self.meta.all())

    def path(self, dataset_id):
        return os.path.join(self.datasets_dir, dataset_id)

    async def create(self, dataset_id, maximum_size):
        record = self.meta.get(dataset_id)
        if record is not None and record.get("role") == PRIMARY:
            return
        path = self.path(dataset_id)
        if os.path.exists(path):
            await self._remove(path)
        os.mkdir(path, 0o755)
        self.meta.put(dataset_id, {"role": PRIMARY, "maximum_size": maximum_size,
                                   "origin": "created"})

    async def destroy(self, dataset_id):
        self.meta.delete(dataset_id)
        await self._remove(self.path(dataset_id))
        await self._remove(os.path.join(self.staging_dir, dataset_id))

    def snapshots(self, dataset_id):
        return []

    async def prepare_send(self, dataset_id, peer_snapshots):
        record = self.meta.get(dataset_id)
        if record is None or record.get("role") != PRIMARY:
            raise Conflict(f"dataset {dataset_id} is not held here as primary")
        path = self.path(dataset_id)
        size = await deferToThread(tree_size, path)
        return SendPlan(
            dataset_id=dataset_id, format="tar", argv=TAR_CREATE + ["-C", path, "."],
            size=size, maximum_size=record.get("maximum_size"),
        )

    async def prepare_receive(self, dataset_id, format, parent, snapshot):
        if format != "tar":
            raise BackendError(f"the directory backend cannot receive format {format!r}")
        record = self.meta.get(dataset_id)
        if record is not None and record.get("role") == PRIMARY:
            raise Conflict(f"dataset {dataset_id} is already held here as primary")
        staging = os.path.join(self.staging_dir, dataset_id)
        # A new push supersedes whatever an earlier one left behind.
        await self._remove(staging)
        token = uuid.uuid4().hex
        target = os.path.join(staging, token)
        os.makedirs(target)

        def commit():
            with open(target + ".complete", "w"):
                pass
            return token

        def discard():
            shutil.rmtree(staging, ignore_errors=True)

        return ReceivePlan(dataset_id, TAR_EXTRACT + ["-C", target], commit, discard)

    async def acquire(self, dataset_id, received, maximum_size):
        record = self.meta.get(dataset_id)
        if record is not None and record.get("role") == PRIMARY:
            if record.get("received") == received:
                return
            raise Conflict(f"dataset {dataset_id} is already held here as primary")
        check_name(received, "push token")
        staging = os.path.join(self.staging_dir, dataset_id)
        tree = os.path.join(staging, received)
        if not os.path.exists(tree + ".complete"):
            raise BackendError(f"no complete push {received} of dataset {dataset_id} here")
        path = self.path(dataset_id)
        if os.path.lexists(path):
            # A stale handed-off copy: the newer one just arrived.
            await self._remove(path)
        os.rename(tree, path)
        self.meta.put(dataset_id, {"role": PRIMARY, "maximum_size": maximum_size,
                                   "origin": "received", "received": received})
        await self._remove(staging)

    async def handoff(self, dataset_id, target, plan):
        self.meta.update(dataset_id, role=HANDED_OFF, handed_to=target)

    async def abandon_send(self, plan):
        pass

    async def cleanup(self, dataset_id):
        record = self.meta.get(dataset_id)
        if record is not None and record.get("role") != HANDED_OFF:
            raise Conflict(f"dataset {dataset_id} is {record.get('role')} here, not handed off")
        await self._remove(self.path(dataset_id))
        self.meta.delete(dataset_id)

    async def _remove(self, path):
        """Rename into removing/ (atomic), then delete in a thread."""
        if not os.path.lexists(path):
            return
        doomed = os.path.join(self.removing_dir, uuid.uuid4().hex)
        os.rename(path, doomed)
        await deferToThread(_rm, doomed)

    async def _discard(self, path):
        await self._remove(path)

    async def _discard_traces(self, dataset_id):
        await self._remove(os.path.join(self.staging_dir, dataset_id))


def _rm(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
