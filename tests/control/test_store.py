"""The SQLite store: durable, WAL, its tag is a function of the content."""

import os
import sqlite3

from twisted.trial.unittest import TestCase

from powerstripflocker.control.store import Dataset, Lease, Store

from .helpers import NODE1, NODE2, new_id


class StoreTests(TestCase):

    def setUp(self):
        self.path = os.path.join(self.mktemp(), "deeper", "control.db")

    def open(self):
        store = Store(self.path)
        self.addCleanup(store.close)
        return store

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
        tag = store.configuration_tag()
        store.close()
        again = self.open()
        self.assertEqual(again.datasets(), [
            Dataset(a.dataset_id, NODE2, {"name": "a"}, 67108864, False, True, generation=2),
            Dataset(b.dataset_id, NODE2, {}, None, True, False),
        ])
        self.assertEqual(again.leases(), [Lease(a.dataset_id, NODE2, 1234.5)])
        self.assertEqual(again.configuration_tag(), tag)

    def test_tag_ignores_manifested_flag_but_not_content(self):
        store = self.open()
        a = Dataset(new_id(), NODE1)
        empty = store.configuration_tag()
        store.add_dataset(a)
        created = store.configuration_tag()
        self.assertNotEqual(empty, created)
        self.assertEqual(store.mark_manifested([a.dataset_id]), [a.dataset_id])
        self.assertEqual(store.mark_manifested([a.dataset_id, new_id()]), [])
        self.assertEqual(store.configuration_tag(), created)
        store.put_lease(Lease(a.dataset_id, NODE1, None))
        self.assertNotEqual(store.configuration_tag(), created)

    def test_failed_change_rolls_back(self):
        store = self.open()
        a = Dataset(new_id(), NODE1)
        store.add_dataset(a)
        self.assertRaises(sqlite3.IntegrityError, store.add_dataset, Dataset(a.dataset_id, NODE2))
        self.assertEqual(store.datasets(), [a])
        store.add_dataset(Dataset(new_id(), NODE2))
        self.assertEqual(len(store.datasets()), 2)

    def test_expire_leases(self):
        store = self.open()
        store.put_lease(Lease("a", NODE1, 10.0))
        store.put_lease(Lease("b", NODE1, None))
        store.put_lease(Lease("c", NODE1, 11.0))
        self.assertEqual(store.expire_leases(10.0), [Lease("a", NODE1, 10.0)])
        self.assertEqual([l.dataset_id for l in store.leases()], ["b", "c"])
