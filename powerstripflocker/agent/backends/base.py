"""The storage backend contract and what the backends share (metadata on disk)."""

import json
import os
import re
import uuid
from dataclasses import dataclass, field
from typing import Callable, Optional

from zope.interface import Attribute, Interface

from ..model import HANDED_OFF, PRIMARY, REPLICA, LocalDataset


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


class GenerationRecords:
    """record_generation / known_generation over a backend's MetadataStore (self.meta)."""

    def record_generation(self, dataset_id, generation):
        if generation is not None and self.meta.get(dataset_id) is not None:
            self.meta.update(dataset_id, generation=generation)

    def known_generation(self, dataset_id):
        return (self.meta.get(dataset_id) or {}).get("generation")


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
        tmp = self._file(dataset_id) + f".{uuid.uuid4().hex}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._file(dataset_id))
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
