"""The IAsyncStore contract on EtcdStore over MemoryEtcd, and on AsyncStore over SQLite."""

import os

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from powerstripflocker.control.asyncstore import DECISION_ATTEMPTS, AsyncStore
from powerstripflocker.control.etcdstore import CONFLICT_PAUSE_CAP, EtcdStore
from powerstripflocker.control.store import Dataset, Lease, SQLiteStore, StoreBusy
from powerstripflocker.clients.etcd_memory import MemoryEtcd

from .async_store_contract import make_async_store_tests
from .helpers import NODE1, new_id


class MemoryEtcdStores:
    def __init__(self):
        self.etcd = MemoryEtcd(Clock())
        self.store = EtcdStore(self.etcd)

    def another(self):
        return EtcdStore(self.etcd)


async def open_memory_etcd_store(testcase):
    return MemoryEtcdStores()


class SQLiteStores:
    def __init__(self, testcase):
        self.testcase = testcase
        self.path = os.path.join(testcase.mktemp(), "control.db")
        self.store = AsyncStore(SQLiteStore(self.path))
        testcase.addCleanup(self.store.close)

    def another(self):
        other = AsyncStore(SQLiteStore(self.path, busy_timeout=0))
        self.testcase.addCleanup(other.close)
        return other


async def open_sqlite_store(testcase):
    return SQLiteStores(testcase)


class MemoryEtcdStoreContractTests(make_async_store_tests(open_memory_etcd_store)):
    pass


class AsyncSQLiteStoreContractTests(make_async_store_tests(open_sqlite_store)):
    pass


class DecisionLimitTests(TestCase):

    async def test_a_decision_whose_reads_keep_changing_ends_busy_having_changed_nothing(self):
        etcd = MemoryEtcd(Clock())
        store, other = EtcdStore(etcd), EtcdStore(etcd)
        runs = []

        async def outrun_every_time(view):
            runs.append(1)
            await view.datasets()
            await other.add_dataset(Dataset(new_id(), NODE1))
            await view.add_dataset(Dataset(new_id(), NODE1, {"name": "mine"}))

        with self.assertRaises(StoreBusy):
            await store.decide(outrun_every_time)
        self.assertEqual(len(runs), DECISION_ATTEMPTS)
        self.assertEqual(await store.datasets_named("mine"), [])
        self.assertEqual(len(await store.datasets()), DECISION_ATTEMPTS)

    def test_a_decision_run_again_after_a_conflict_waits_a_little_first(self):
        clock = Clock()
        etcd = MemoryEtcd(clock)
        store, other = EtcdStore(etcd, clock=clock), EtcdStore(etcd)
        runs = []

        async def outrun_once(view):
            runs.append(clock.seconds())
            await view.datasets()
            if len(runs) == 1:
                await other.add_dataset(Dataset(new_id(), NODE1))
            await view.add_dataset(Dataset(new_id(), NODE1, {"name": "mine"}))

        deciding = store.decide(outrun_once)
        self.assertEqual(len(runs), 1)
        self.assertNoResult(deciding)
        clock.advance(CONFLICT_PAUSE_CAP)
        self.successResultOf(deciding)
        self.assertEqual(len(runs), 2)
        self.assertEqual(len(self.successResultOf(store.datasets_named("mine"))), 1)

    async def test_a_decision_on_sqlite_may_wait_on_nothing_but_its_view(self):
        store = AsyncStore(SQLiteStore(":memory:"))
        self.addCleanup(store.close)

        async def waits_elsewhere(view):
            await view.add_dataset(Dataset(new_id(), NODE1))
            await Deferred()

        with self.assertRaises(RuntimeError):
            await store.decide(waits_elsewhere)
        self.assertEqual(await store.datasets(), [])


class EtcdGuardTests(TestCase):
    """A decision runs again when what it listed changed, and only then: a lease renewed
    elsewhere does not run again a claim that listed the datasets (issue 14: claims of
    different names through two replicas ended busy)."""

    def setUp(self):
        etcd = MemoryEtcd(Clock())
        self.store, self.other = EtcdStore(etcd), EtcdStore(etcd)
        self.mine, self.theirs = new_id(), new_id()

    async def decide_while_a_lease_changes_elsewhere(self, listing):
        runs = []

        async def claim_like(view):
            runs.append(1)
            await listing(view)
            await view.get_lease(self.mine)
            if len(runs) == 1:
                await self.other.put_lease(Lease(self.theirs, NODE1, 100.0))
            await view.put_lease(Lease(self.mine, NODE1, 50.0))

        await self.store.decide(claim_like)
        self.assertEqual(await self.store.get_lease(self.mine), Lease(self.mine, NODE1, 50.0))
        return len(runs)

    async def test_a_lease_changed_elsewhere_does_not_run_again_a_listing_of_datasets(self):
        runs = await self.decide_while_a_lease_changes_elsewhere(
            lambda view: view.datasets_named("mine"))
        self.assertEqual(runs, 1)

    async def test_a_lease_changed_elsewhere_runs_again_a_listing_of_leases(self):
        runs = await self.decide_while_a_lease_changes_elsewhere(lambda view: view.leases())
        self.assertEqual(runs, 2)

    async def test_a_dataset_added_elsewhere_runs_again_a_listing_of_datasets(self):
        runs = []

        async def lists_datasets(view):
            runs.append(1)
            await view.datasets()
            if len(runs) == 1:
                await self.other.add_dataset(Dataset(new_id(), NODE1))
            await view.put_lease(Lease(self.mine, NODE1, 50.0))

        await self.store.decide(lists_datasets)
        self.assertEqual(len(runs), 2)
