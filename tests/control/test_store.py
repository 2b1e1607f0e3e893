"""The SQLite store: the IStore contract on a file and in memory; durable, WAL, its tag
a function of the content."""

import os
import sqlite3

from twisted.trial.unittest import TestCase

from powerstripflocker.control.store import Dataset, Lease, SQLiteStore, Store

from .helpers import NODE1, NODE2, new_id
from .store_contract import make_store_tests


class SQLiteFile:
    def __init__(self, testcase):
        self.path = os.path.join(testcase.mktemp(), "control.db")
        self.store = self.open()
        testcase.addCleanup(self.close)
        self.handles = [self.store]

    def open(self, **options):
        return SQLiteStore(self.path, **options)

    def another(self):
        handle = self.open(busy_timeout=0)
        self.handles.append(handle)
        return handle

    def close(self):
        for handle in self.handles:
            handle.close()


class SQLiteMemory:
    def __init__(self, testcase):
        self.store = SQLiteStore(":memory:")
        testcase.addCleanup(self.store.close)

    def another(self):
        return None


class SQLiteFileContractTests(make_store_tests(SQLiteFile)):
    pass


class SQLiteMemoryContractTests(make_store_tests(SQLiteMemory)):
    # One connection is the whole of an in-memory database: these need a second
    # handle on the same data, which the file store's run of the suite covers.
    test_a_transaction_commits_everything_together = None
    test_a_decision_is_not_interleaved_with_another_handles = None
    test_a_handles_tag_follows_another_handles_changes = None


class StoreTests(TestCase):

    def setUp(self):
        self.path = os.path.join(self.mktemp(), "deeper", "control.db")

    def open(self):
        store = Store(self.path)
        self.addCleanup(store.close)
        return store

    def test_store_is_the_sqlite_store(self):
        self.assertIs(Store, SQLiteStore)

    def test_creates_parent_directory_and_uses_wal(self):
        self.open()
        self.assertTrue(os.path.exists(self.path))
        with sqlite3.connect(self.path) as db:
            self.assertEqual(db.execute("PRAGMA journal_mode").fetchone()[0], "wal")

    def test_everything_survives_reopening(self):
        store = self.open()
        a = Dataset(new_id(), NODE1, {"name": "a"}, 67108864)
        b = Dataset(new_id(), NODE2)
        store.add_dataset(a)
        store.add_dataset(b)
        store.mark_deleted(b.dataset_id)
        store.set_primary(a.dataset_id, NODE2)
        store.mark_manifested([a.dataset_id])
        store.put_lease(Lease(a.dataset_id, NODE2, 1234.5))
        store.put_node_report(NODE1, {"host": "a"}, 5.0)
        tag = store.configuration_tag()
        store.close()
        again = self.open()
        self.assertEqual(again.datasets(), [
            Dataset(a.dataset_id, NODE2, {"name": "a"}, 67108864, False, True, generation=2),
            Dataset(b.dataset_id, NODE2, {}, None, True, False),
        ])
        self.assertEqual(again.leases(), [Lease(a.dataset_id, NODE2, 1234.5)])
        self.assertEqual(again.node_reports(), [(NODE1, {"host": "a"}, 5.0)])
        self.assertEqual(again.configuration_tag(), tag)

    def test_equal_content_has_equal_tags(self):
        stores = [Store(":memory:"), Store(":memory:")]
        dataset_id = new_id()
        for store in stores:
            self.addCleanup(store.close)
            store.add_dataset(Dataset(dataset_id, NODE1, {"name": "a"}))
            store.put_lease(Lease(dataset_id, NODE1, None))
        self.assertEqual(stores[0].configuration_tag(), stores[1].configuration_tag())

    def test_a_database_from_before_replicas_gains_the_column(self):
        os.makedirs(os.path.dirname(self.path))
        dataset_id = new_id()
        with sqlite3.connect(self.path) as db:
            db.execute(
                "CREATE TABLE datasets (seq INTEGER PRIMARY KEY AUTOINCREMENT, dataset_id "
                "TEXT NOT NULL UNIQUE, primary_node TEXT NOT NULL, metadata TEXT NOT NULL, "
                "maximum_size INTEGER, deleted INTEGER NOT NULL DEFAULT 0, manifested "
                "INTEGER NOT NULL DEFAULT 0, origin TEXT, generation INTEGER NOT NULL "
                "DEFAULT 1)")
            db.execute("INSERT INTO datasets (dataset_id, primary_node, metadata) "
                       "VALUES (?, ?, '{}')", (dataset_id, NODE1))
        store = self.open()
        self.assertEqual(store.get_dataset(dataset_id), Dataset(dataset_id, NODE1))
        store.set_replica_nodes(dataset_id, [NODE2])
        self.assertEqual(store.get_dataset(dataset_id).replica_nodes, (NODE2,))
