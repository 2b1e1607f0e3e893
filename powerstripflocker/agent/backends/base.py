"""The storage backend contract and what the backends share (metadata on disk)."""

import json
import os
import re
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from zope.interface import Attribute, Interface

from powerstripflocker.agent.model import HANDED_OFF, PRIMARY, REPLICA, LocalDataset

log = Logger()


class BackendError(Exception):
    """A storage operation failed; the message says which and why."""


class Conflict(BackendError):
    """The operation contradicts what this node holds (e.g. a push of our own primary)."""


class MissingParent(BackendError):
    """An incremental receive names a parent snapshot this node does not hold."""


@dataclass
class SendPlan:
    """How to stream a dataset: argv writes the stream on stdout."""
    dataset_id: str
    format: str                  # "tar" or "btrfs"
    argv: list
    snapshot: Optional[str] = None     # btrfs: the read-only snapshot being sent
    parent: Optional[str] = None       # btrfs: incremental parent (held by the receiver)
    size: Optional[int] = None         # estimated stream size in bytes, if known
    maximum_size: Optional[int] = None


@dataclass
class ReceivePlan:
    """How to receive a stream: argv reads it on stdin; commit() -> the 'received' token."""
    dataset_id: str
    argv: list
    commit: Callable = field(repr=False)
    discard: Callable = field(repr=False)


class IStorageBackend(Interface):
    """Where a node's datasets live. Paths are stable: <data-root>/datasets/<dataset_id>.

    Datasets are held in one of three roles (model.PRIMARY, HANDED_OFF, REPLICA).
    Methods returning Deferreds/coroutines are marked async.
    """

    name = Attribute("'directory' or 'btrfs'")
    data_root = Attribute("the backend's root directory")
    formats = Attribute("stream formats this backend can receive, e.g. ('tar',)")

    def start():
        """async: check the data root and drop leftovers of interrupted receives."""

    def local_datasets():
        """dataset_id -> LocalDataset for every copy held here (synchronous)."""

    def path(dataset_id):
        """The dataset's path on this node (whether or not it exists)."""

    def create(dataset_id, maximum_size):
        """async: a new empty primary dataset (idempotent)."""

    def destroy(dataset_id):
        """async: remove every trace of the dataset here (idempotent)."""

    def snapshots(dataset_id):
        """Names of snapshots held here that can be incremental parents (may be [])."""

    def prepare_send(dataset_id, peer_snapshots):
        """async: a SendPlan for pushing our primary copy to a peer holding peer_snapshots."""

    def prepare_receive(dataset_id, format, parent, snapshot):
        """async: a ReceivePlan; raises Conflict / MissingParent / BackendError."""

    def acquire(dataset_id, received, maximum_size):
        """async: make the received copy this node's primary (idempotent for one token)."""

    def handoff(dataset_id, target, plan):
        """async: stop being primary after the target acquired it (data kept until cleanup)."""

    def cleanup(dataset_id):
        """async: the new primary reports it: delete the handed-off copy's data."""

    def abandon_send(plan):
        """async: a push of plan failed before the target acquired it: drop what
        prepare_send made for it (e.g. its snapshot)."""

    def record_generation(dataset_id, generation):
        """Keep the dataset's generation with the copy held here (synchronous; nothing
        is recorded for a dataset not held here)."""

    def known_generation(dataset_id):
        """The generation recorded with the copy held here (any role), or None."""

    def trash(dataset_id, deleted_at):
        """async: the dataset is deleted: keep its primary copy in the trash (recorded
        with deleted_at and its size) and remove every other trace of it here; fires
        with the TrashEntry, or None when no primary copy was held here."""

    def trashed():
        """Every TrashEntry kept here, oldest first (synchronous)."""

    def restore(dataset_id):
        """async: the most recently trashed copy of dataset_id becomes this node's
        primary again, data as it was; fires with its TrashEntry. Conflict when held here
        as primary already, BackendError when not in the trash here."""

    def purge(key):
        """async: remove the trash entry key, data and record (idempotent)."""


class GenerationRecords:
    """record_generation / known_generation over a backend's MetadataStore (self.meta)."""

    def record_generation(self, dataset_id, generation):
        if generation is not None and self.meta.get(dataset_id) is not None:
            self.meta.update(dataset_id, generation=generation)

    def known_generation(self, dataset_id):
        return (self.meta.get(dataset_id) or {}).get("generation")


@dataclass(frozen=True)
class TrashEntry:
    """A deleted dataset's primary copy kept in <data-root>/trash/<key>."""
    dataset_id: str
    deleted_at: float            # the agent's clock (seconds since the epoch)
    bytes: int
    key: str
    maximum_size: Optional[int] = None
    generation: Optional[int] = None
    origin: str = "created"
    restoring: bool = False      # set just before the copy goes back to datasets/<id>

    def to_record(self):
        return {"dataset_id": self.dataset_id, "deleted_at": self.deleted_at,
                "bytes": self.bytes, "key": self.key, "maximum_size": self.maximum_size,
                "generation": self.generation, "origin": self.origin,
                "restoring": self.restoring}

    @classmethod
    def from_record(cls, record):
        return cls(dataset_id=record["dataset_id"], deleted_at=float(record["deleted_at"]),
                   bytes=int(record.get("bytes") or 0), key=record["key"],
                   maximum_size=record.get("maximum_size"),
                   generation=record.get("generation"),
                   origin=record.get("origin", "created"),
                   restoring=bool(record.get("restoring", False)))


def trash_key(dataset_id, deleted_at):
    """<dataset_id>-<UTC time of the delete, to the millisecond>: a plain name."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(deleted_at))
    return f"{dataset_id}-{stamp}.{int(deleted_at * 1000) % 1000:03d}Z"


class TrashCan:
    """trash / trashed / restore / purge, shared by the backends.

    Layout: <data-root>/trash/<key> is the kept copy (a directory or a btrfs subvolume,
    renamed there from datasets/<id>: same file system, no data copied) and
    <key>.json its record. The record is written before the rename and removed after
    it, so a crash in between leaves something start() can finish (recover_trash()).
    The backend provides self.meta, self.path(), async _discard(path) (remove a
    dataset's tree) and async _discard_traces(dataset_id) (what else it keeps of a
    dataset: staging areas, snapshots).
    """

    def _init_trash(self):
        self.trash_dir = os.path.join(self.data_root, "trash")
        os.makedirs(self.trash_dir, exist_ok=True)
        # trashed() is asked on every convergence and report: read the records once,
        # again only after this backend changed them.
        self._trashed = None

    def _trash_path(self, key):
        return os.path.join(self.trash_dir, check_name(key, "trash key"))

    def _trash_record(self, key):
        return self._trash_path(key) + ".json"

    def _put_trash_record(self, entry):
        self._trashed = None
        _write_json(self._trash_record(entry.key), entry.to_record())
        _fsync_dir(self.trash_dir)

    def _drop_trash_record(self, key):
        self._trashed = None
        try:
            os.unlink(self._trash_record(key))
        except FileNotFoundError:
            pass

    def trashed(self):
        if self._trashed is None:
            self._trashed = self._read_trash_records()
        return list(self._trashed)

    def _read_trash_records(self):
        entries = []
        for name in os.listdir(self.trash_dir):
            if not name.endswith(".json"):
                continue
            try:
                with open(os.path.join(self.trash_dir, name), encoding="utf-8") as f:
                    entries.append(TrashEntry.from_record(json.load(f)))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return sorted(entries, key=lambda entry: (entry.deleted_at, entry.key))

    async def trash(self, dataset_id, deleted_at):
        record = self.meta.get(dataset_id)
        path = self.path(dataset_id)
        if record is None or record.get("role") != PRIMARY or not os.path.isdir(path):
            await self.destroy(dataset_id)
            return None
        size = await deferToThread(tree_size, path)
        entry = TrashEntry(dataset_id=dataset_id, deleted_at=deleted_at, bytes=size,
                           key=trash_key(dataset_id, deleted_at),
                           maximum_size=record.get("maximum_size"),
                           generation=record.get("generation"),
                           origin=record.get("origin", "created"))
        self._put_trash_record(entry)
        os.rename(path, self._trash_path(entry.key))
        self.meta.delete(dataset_id)
        await self._discard_traces(dataset_id)
        return entry

    async def restore(self, dataset_id):
        record = self.meta.get(dataset_id)
        if record is not None and record.get("role") == PRIMARY:
            raise Conflict(f"dataset {dataset_id} is already held here as primary")
        kept = [entry for entry in self.trashed() if entry.dataset_id == dataset_id
                and os.path.lexists(self._trash_path(entry.key))]
        if not kept:
            raise BackendError(f"dataset {dataset_id} is not in the trash here")
        entry = replace(kept[-1], restoring=True)
        self._put_trash_record(entry)
        # A handed-off copy or a replica left here is older than what was deleted.
        await self.destroy(dataset_id)
        self._finish_restore(entry)
        return entry

    def _finish_restore(self, entry):
        """Meta first, then the rename, then the record: each step can be redone."""
        self.meta.put(entry.dataset_id, {
            "role": PRIMARY, "maximum_size": entry.maximum_size, "origin": entry.origin,
            "generation": entry.generation})
        os.rename(self._trash_path(entry.key), self.path(entry.dataset_id))
        self._drop_trash_record(entry.key)

    async def purge(self, key):
        await self._discard(self._trash_path(key))
        self._drop_trash_record(key)

    async def recover_trash(self):
        """At start: finish interrupted trashes and restores, drop what is not recorded
        (leftovers of deletions interrupted before trash entries existed)."""
        recorded = set()
        for entry in self.trashed():
            kept = os.path.lexists(self._trash_path(entry.key))
            if not kept:
                # Restored (the rename was done), or never moved here (the trash was
                # interrupted: the copy is still in datasets/ and its delete is redone).
                self._drop_trash_record(entry.key)
                continue
            recorded.add(entry.key)
            if not entry.restoring:
                continue
            if os.path.lexists(self.path(entry.dataset_id)):
                # Interrupted before a stale copy there was removed: convergence
                # decides the restore again.
                self._put_trash_record(replace(entry, restoring=False))
            else:
                log.info("finishing the restore of {dataset_id} from the trash",
                         dataset_id=entry.dataset_id)
                self._finish_restore(entry)
                recorded.discard(entry.key)
        for name in os.listdir(self.trash_dir):
            if name not in recorded and not name.endswith(".json"):
                log.info("removing {path}: not a recorded trash entry",
                         path=os.path.join(self.trash_dir, name))
                await self._discard(os.path.join(self.trash_dir, name))


def _write_json(path, document):
    tmp = path + f".{uuid.uuid4().hex}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(document, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_name(name, what="name"):
    """Snapshot names and received tokens become path components: allow only plain names."""
    if not isinstance(name, str) or not SAFE_NAME.match(name) or ".." in name:
        raise BackendError(f"invalid {what} {name!r}")
    return name


class MetadataStore:
    """One small JSON file per dataset under <root>/meta, written atomically."""

    def __init__(self, root):
        self.root = os.path.join(root, "meta")
        os.makedirs(self.root, exist_ok=True)

    def _file(self, dataset_id):
        return os.path.join(self.root, f"{dataset_id}.json")

    def get(self, dataset_id):
        try:
            with open(self._file(dataset_id), encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def put(self, dataset_id, record):
        _write_json(self._file(dataset_id), record)
        _fsync_dir(self.root)

    def update(self, dataset_id, **changes):
        record = self.get(dataset_id) or {}
        record.update(changes)
        self.put(dataset_id, record)
        return record

    def delete(self, dataset_id):
        try:
            os.unlink(self._file(dataset_id))
        except FileNotFoundError:
            pass

    def all(self):
        records = {}
        for name in os.listdir(self.root):
            if name.endswith(".json"):
                dataset_id = name[:-len(".json")]
                record = self.get(dataset_id)
                if record is not None:
                    records[dataset_id] = record
        return records


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


ROLES = (PRIMARY, HANDED_OFF, REPLICA)


def local_from_meta(backend, records):
    datasets = {}
    for dataset_id, record in records.items():
        role = record.get("role")
        if role not in ROLES:
            continue
        datasets[dataset_id] = LocalDataset(
            dataset_id=dataset_id, role=role, path=backend.path(dataset_id),
            maximum_size=record.get("maximum_size"), handed_to=record.get("handed_to"),
            origin=record.get("origin", "created"), generation=record.get("generation"),
        )
    return datasets


def tree_size(path):
    """Sum of regular file sizes under path plus 512 bytes per entry (a tar estimate)."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            total += 512
            if not os.path.islink(full) and os.path.isfile(full):
                total += (st.st_size + 511) // 512 * 512
    return total + 1024
