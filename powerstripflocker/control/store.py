"""The control service's persistence: IStore, and SQLiteStore, its embedded provider.

IStore is what the control service uses: datasets, leases, node reports, the
configuration tag, and transactions for decisions that read and then write (a
claim, a lease, a move). tests/control/store_contract.py is its contract.

SQLiteStore: one small transaction per change, WAL journal, synchronous calls
(local disk, a handful of rows): fast enough to run on the reactor thread. A
decision runs inside one ``with store.transaction():``; the changes it makes
join that transaction.
"""

import hashlib
import json
import os
import sqlite3
from dataclasses import dataclass, field

from zope.interface import Interface, implementer

SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    dataset_id TEXT NOT NULL UNIQUE,
    primary_node TEXT NOT NULL,
    metadata TEXT NOT NULL,
    maximum_size INTEGER,
    deleted INTEGER NOT NULL DEFAULT 0,
    manifested INTEGER NOT NULL DEFAULT 0,
    origin TEXT,
    generation INTEGER NOT NULL DEFAULT 1,
    replica_nodes TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS nodes (
    node_uuid TEXT PRIMARY KEY,
    report TEXT NOT NULL,
    received REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    dataset_id TEXT PRIMARY KEY,
    node_uuid TEXT NOT NULL,
    expiration REAL,
    claimed_until REAL
);
"""


@dataclass(frozen=True)
class Dataset:
    dataset_id: str
    primary: str
    metadata: dict = field(default_factory=dict)
    maximum_size: int | None = None
    deleted: bool = False
    manifested: bool = False
    # The primary the dataset was created with: the only node that may create it.
    origin: str | None = None
    # 1 at creation, +1 on every change of primary: agents retire older copies.
    generation: int = 1
    # The nodes chosen to hold copies besides the primary's (control/replicas.py).
    replica_nodes: tuple = ()

    def to_configuration(self):
        """The Flocker v1 configuration object (maximum_size omitted when unset)."""
        result = {
            "dataset_id": self.dataset_id,
            "primary": self.primary,
            "metadata": dict(self.metadata),
            "deleted": self.deleted,
        }
        if self.maximum_size is not None:
            result["maximum_size"] = self.maximum_size
        return result


@dataclass(frozen=True)
class Lease:
    dataset_id: str
    node_uuid: str
    expiration: float | None  # absolute time on the service's clock, None = never
    # Until when a hook's claim keeps the lease, whatever its holder's use: the path a
    # hook answered with must stay put until its container starts (and so is in use).
    claimed_until: float | None = None

    def to_json(self, now):
        expires = None if self.expiration is None else max(0.0, self.expiration - now)
        return {"dataset_id": self.dataset_id, "node_uuid": self.node_uuid, "expires": expires}


class DatasetExists(Exception):
    """add_dataset of a dataset_id the store already holds (deleted or not)."""


class StoreBusy(Exception):
    """Another handle on the same data is in the middle of a transaction."""


class IStore(Interface):
    """The cluster configuration (datasets, leases), node reports and the tag.

    Synchronous: every call returns its answer. Every change is durable when it
    returns (or, inside a transaction, when the outermost one ends). Lists come
    in a stable order: datasets oldest first, leases by dataset_id, node
    reports by node_uuid.
    """

    def close():
        """Release the store; no call after this one."""

    def transaction():
        """A context manager for a decision that reads and then writes.

        Everything done inside commits together when the block ends, or not at all
        when it raises (the exception passes through). Transactions nest: an inner
        one (and every changing call, which is one) joins the outermost. While one
        is open, another handle on the same data neither changes what it reads nor
        sees its changes: a change there raises StoreBusy (or waits for the end);
        a read there sees the state before it."""

    def datasets():
        """[Dataset], deleted ones too, oldest first."""

    def datasets_named(name):
        """[Dataset] whose metadata "name" is name, deleted ones too, oldest first."""

    def get_dataset(dataset_id):
        """The Dataset, or None."""

    def leases():
        """[Lease] by dataset_id, expired ones too until expire_leases drops them."""

    def get_lease(dataset_id):
        """The Lease, or None."""

    def configuration_tag():
        """A string that changes with every change of the datasets (not of their
        manifested flags) and leases (not of claimed_until), and only then. Two
        different states may have the same tag only if both hold the same content
        (as a restore brings back the content from before the deletion)."""

    def add_dataset(dataset):
        """Store a new Dataset (its manifested flag ignored: new datasets are not
        manifested); DatasetExists for a dataset_id already held."""

    def import_dataset(dataset):
        """Store a Dataset as it is, manifested flag and generation too (migrate copies
        a cluster so), after those already held; DatasetExists for a dataset_id held."""

    def set_primary(dataset_id, primary):
        """Change the primary and raise the generation by one, and drop the new primary
        from the replica nodes; nothing for the same primary or an unknown dataset."""

    def set_replica_nodes(dataset_id, nodes):
        """Replace the replica nodes (a sequence of node uuids); nothing for an unknown
        dataset. Not a change of the configuration tag (the v1 API does not show them)."""

    def mark_deleted(dataset_id):
        """Set deleted (nothing for an unknown dataset)."""

    def mark_restored(dataset_id):
        """Clear deleted (nothing for an unknown dataset)."""

    def mark_manifested(dataset_ids):
        """Set the manifested flags; returns, in the order given, the ids whose flag
        changed (not the unknown ones nor those already set)."""

    def put_lease(lease):
        """Create or replace the dataset's Lease (whether or not the dataset exists)."""

    def delete_lease(dataset_id):
        """Drop the lease (nothing when there is none)."""

    def expire_leases(now):
        """Drop the leases whose expiration is at or before now; returns them."""

    def node_reports():
        """[(node_uuid, report dict, received)] by node_uuid."""

    def put_node_report(node_uuid, report, received):
        """Create or replace node_uuid's report (a JSON-able dict) and when it came."""

    def touch_node_report(node_uuid, received):
        """Only the time of node_uuid's report (nothing when there is none)."""

    def delete_node_report(node_uuid):
        """Drop node_uuid's report (nothing when there is none)."""


@implementer(IStore)
class SQLiteStore:
    """Datasets, leases and node reports in one SQLite file (or ":memory:")."""

    def __init__(self, path, busy_timeout=5.0):
        """busy_timeout: how long a transaction waits for another handle's to end
        before StoreBusy (blocking: one control service owns its file, so only a
        second process on the same file ever waits)."""
        if path != ":memory:":
            parent = os.path.dirname(os.path.abspath(path))
            os.makedirs(parent, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(
            path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(datasets)")}
        if "origin" not in columns:  # a database from before origins were recorded
            self._db.execute("ALTER TABLE datasets ADD COLUMN origin TEXT")
        if "generation" not in columns:  # a database from before generations
            self._db.execute(
                "ALTER TABLE datasets ADD COLUMN generation INTEGER NOT NULL DEFAULT 1")
        if "replica_nodes" not in columns:  # a database from before replicas
            self._db.execute(
                "ALTER TABLE datasets ADD COLUMN replica_nodes TEXT NOT NULL DEFAULT '[]'")
        lease_columns = {row[1] for row in self._db.execute("PRAGMA table_info(leases)")}
        if "claimed_until" not in lease_columns:  # a database from before claims
            self._db.execute("ALTER TABLE leases ADD COLUMN claimed_until REAL")
        # Claims and ?name= look datasets up by name: keep that lookup off a full scan.
        self._db.execute(
            "CREATE INDEX IF NOT EXISTS datasets_by_name "
            "ON datasets (json_extract(metadata, '$.name'))")
        self._tag = None
        self._tag_data_version = None
        self._depth = 0

    def close(self):
        self._db.close()

    def transaction(self):
        """A context manager: everything done inside commits together or not at all."""
        return _Transaction(self, tag_changes=True)

    def _transaction(self, tag_changes=True):
        return _Transaction(self, tag_changes)

    # -- reading ----------------------------------------------------------

    def datasets(self):
        rows = self._db.execute(
            f"SELECT {DATASET_COLUMNS} FROM datasets ORDER BY seq"
        ).fetchall()
        return [_dataset(row) for row in rows]

    def datasets_named(self, name):
        """Every dataset (deleted ones too) whose metadata name is name, oldest first."""
        rows = self._db.execute(
            f"SELECT {DATASET_COLUMNS} FROM datasets "
            "WHERE json_extract(metadata, '$.name') = ? ORDER BY seq", (name,)
        ).fetchall()
        return [_dataset(row) for row in rows]

    def get_dataset(self, dataset_id):
        row = self._db.execute(
            f"SELECT {DATASET_COLUMNS} FROM datasets WHERE dataset_id = ?", (dataset_id,)
        ).fetchone()
        return None if row is None else _dataset(row)

    def leases(self):
        rows = self._db.execute(
            "SELECT dataset_id, node_uuid, expiration, claimed_until FROM leases "
            "ORDER BY dataset_id"
        ).fetchall()
        return [Lease(*row) for row in rows]

    def get_lease(self, dataset_id):
        row = self._db.execute(
            "SELECT dataset_id, node_uuid, expiration, claimed_until FROM leases "
            "WHERE dataset_id = ?",
            (dataset_id,),
        ).fetchone()
        return None if row is None else Lease(*row)

    def configuration_tag(self):
        """32 hex chars, a hash of every dataset and lease (not of the manifested flags)."""
        # data_version moves when another handle commits, which this one's own
        # transactions (they clear _tag) cannot see.
        data_version = self._db.execute("PRAGMA data_version").fetchone()[0]
        if self._tag is None or self._tag_data_version != data_version:
            self._tag_data_version = data_version
            self._tag = configuration_tag_of(self.datasets(), self.leases())
        return self._tag

    # -- changing ---------------------------------------------------------

    def add_dataset(self, dataset):
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM datasets WHERE dataset_id = ?",
                          (dataset.dataset_id,)).fetchone():
                raise DatasetExists(dataset.dataset_id)
            db.execute(
                "INSERT INTO datasets (dataset_id, primary_node, metadata, maximum_size, deleted, "
                "origin, replica_nodes) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (dataset.dataset_id, dataset.primary, json.dumps(dataset.metadata),
                 dataset.maximum_size, int(dataset.deleted), dataset.origin,
                 json.dumps(list(dataset.replica_nodes))),
            )

    def import_dataset(self, dataset):
        with self._transaction() as db:
            self.add_dataset(dataset)
            db.execute("UPDATE datasets SET manifested = ?, generation = ? WHERE dataset_id = ?",
                       (int(dataset.manifested), dataset.generation, dataset.dataset_id))

    def set_primary(self, dataset_id, primary):
        """Change the primary and raise the generation (a no-op for the same primary)."""
        with self._transaction() as db:
            dataset = self.get_dataset(dataset_id)
            if dataset is None or dataset.primary == primary:
                return
            db.execute(
                "UPDATE datasets SET primary_node = ?, generation = generation + 1, "
                "replica_nodes = ? WHERE dataset_id = ?",
                (primary, json.dumps([n for n in dataset.replica_nodes if n != primary]),
                 dataset_id))

    def set_replica_nodes(self, dataset_id, nodes):
        with self._transaction(tag_changes=False) as db:
            db.execute("UPDATE datasets SET replica_nodes = ? WHERE dataset_id = ?",
                       (json.dumps(list(nodes)), dataset_id))

    def mark_deleted(self, dataset_id):
        with self._transaction() as db:
            db.execute("UPDATE datasets SET deleted = 1 WHERE dataset_id = ?", (dataset_id,))

    def mark_restored(self, dataset_id):
        with self._transaction() as db:
            db.execute("UPDATE datasets SET deleted = 0 WHERE dataset_id = ?", (dataset_id,))

    def mark_manifested(self, dataset_ids):
        """Set the manifested flag; returns the ids whose flag changed."""
        changed = []
        with self._transaction() as db:
            for dataset_id in dataset_ids:
                cursor = db.execute(
                    "UPDATE datasets SET manifested = 1 WHERE dataset_id = ? AND manifested = 0",
                    (dataset_id,),
                )
                if cursor.rowcount:
                    changed.append(dataset_id)
        return changed

    def put_lease(self, lease):
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO leases (dataset_id, node_uuid, expiration, claimed_until) "
                "VALUES (?, ?, ?, ?)",
                (lease.dataset_id, lease.node_uuid, lease.expiration, lease.claimed_until),
            )

    def delete_lease(self, dataset_id):
        with self._transaction() as db:
            db.execute("DELETE FROM leases WHERE dataset_id = ?", (dataset_id,))

    def expire_leases(self, now):
        """Drop leases whose expiration has passed; returns the dropped leases."""
        expired = [l for l in self.leases() if l.expiration is not None and l.expiration <= now]
        if expired:
            with self._transaction() as db:
                for lease in expired:
                    db.execute("DELETE FROM leases WHERE dataset_id = ?", (lease.dataset_id,))
        return expired

    # -- node reports (kept so that state survives a restart until it expires) --

    def node_reports(self):
        """[(node_uuid, report dict, received)]"""
        rows = self._db.execute(
            "SELECT node_uuid, report, received FROM nodes ORDER BY node_uuid"
        ).fetchall()
        return [(node_uuid, json.loads(report), received) for node_uuid, report, received in rows]

    def put_node_report(self, node_uuid, report, received):
        with self._transaction(tag_changes=False) as db:
            db.execute(
                "INSERT OR REPLACE INTO nodes (node_uuid, report, received) VALUES (?, ?, ?)",
                (node_uuid, json.dumps(report, sort_keys=True), received),
            )

    def touch_node_report(self, node_uuid, received):
        with self._transaction(tag_changes=False) as db:
            db.execute("UPDATE nodes SET received = ? WHERE node_uuid = ?", (received, node_uuid))

    def delete_node_report(self, node_uuid):
        with self._transaction(tag_changes=False) as db:
            db.execute("DELETE FROM nodes WHERE node_uuid = ?", (node_uuid,))


class _Transaction:
    def __init__(self, store, tag_changes):
        self.store = store
        self.tag_changes = tag_changes

    def __enter__(self):
        if self.store._depth == 0:
            try:
                self.store._db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as error:
                if error.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                    raise
                raise StoreBusy(f"{self.store.path}: {error}") from error
        self.store._depth += 1
        return self.store._db

    def __exit__(self, exc_type, exc, tb):
        self.store._depth -= 1
        if self.store._depth == 0:
            if exc_type is None:
                self.store._db.execute("COMMIT")
            else:
                self.store._db.execute("ROLLBACK")
        if self.tag_changes:
            self.store._tag = None
        return False


def configuration_tag_of(datasets, leases):
    """32 hex chars, a hash of the datasets (oldest first) and leases (by dataset_id)
    without manifested flags and claims: every store's tag, so that equal content has
    equal tags whichever store holds it."""
    document = {
        "datasets": [
            [d.dataset_id, d.primary, d.metadata, d.maximum_size, d.deleted] for d in datasets
        ],
        "leases": [[l.dataset_id, l.node_uuid, l.expiration] for l in leases],
    }
    encoded = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()[:32]


# The name the control service and the tests have always imported.
Store = SQLiteStore

DATASET_COLUMNS = (
    "dataset_id, primary_node, metadata, maximum_size, deleted, manifested, origin, generation, "
    "replica_nodes"
)


def _dataset(row):
    (dataset_id, primary, metadata, maximum_size, deleted, manifested, origin, generation,
     replica_nodes) = row
    return Dataset(
        dataset_id=dataset_id,
        primary=primary,
        metadata=json.loads(metadata),
        maximum_size=maximum_size,
        deleted=bool(deleted),
        manifested=bool(manifested),
        origin=origin,
        generation=generation,
        replica_nodes=tuple(json.loads(replica_nodes)),
    )
