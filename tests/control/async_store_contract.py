"""One contract suite for IAsyncStore, run on EtcdStore (over MemoryEtcd and over a
real three-member etcd cluster) and on AsyncStore over SQLite; the same cases as
store_contract.py's for IStore, with decide() for transactions.

make_async_store_tests(open_store) builds a trial TestCase. open_store(testcase) is
awaited and returns a harness with:
  store       a fresh, empty IAsyncStore provider, closed at the test's cleanup
  another()   a second store on the same data, as another replica or process would
              open it, whose changes never wait for another's decision (they raise
              StoreBusy at once, or go ahead and make that decision run again)
"""

from twisted.internet.defer import gatherResults
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from powerstripflocker.control.asyncstore import IAsyncStore
from powerstripflocker.control.store import Dataset, DatasetExists, Lease, StoreBusy

from .helpers import NODE1, NODE2, new_id

# Ids whose sorted order is not their creation order below.
FIRST, SECOND, THIRD = ("c0000000-0000-4000-8000-000000000003",
                        "a0000000-0000-4000-8000-000000000001",
                        "b0000000-0000-4000-8000-000000000002")
NODE3 = "9a3f0c1e-2b4d-4e6f-8a0b-1c2d3e4f5a60"


def make_async_store_tests(open_store):
    class AsyncStoreContract(TestCase):

        async def open(self):
            return await open_store(self)

        def another(self, harness):
            other = harness.another()
            if other is None:
                self.skipTest("this store has only one handle on its data")
            return other

        async def test_provides_the_interface(self):
            self.assertTrue(verifyObject(IAsyncStore, (await self.open()).store))

        async def test_a_new_store_is_empty(self):
            store = (await self.open()).store
            self.assertEqual(
                (await store.datasets(), await store.leases(), await store.node_reports(),
                 await store.datasets_named("x"), await store.get_dataset(FIRST), await store.get_lease(FIRST)),
                ([], [], [], [], None, None))

        # datasets

        async def test_datasets_read_back_oldest_first(self):
            store = (await self.open()).store
            first = Dataset(FIRST, NODE1, {"name": "a", "size": "big"}, 67108864, origin=NODE1)
            second = Dataset(SECOND, NODE2, origin=NODE2)
            await store.add_dataset(first)
            await store.add_dataset(second)
            self.assertEqual(await store.datasets(), [first, second])
            self.assertEqual(await store.get_dataset(FIRST), first)
            self.assertEqual((await store.get_dataset(SECOND)).generation, 1)

        async def test_a_new_dataset_is_not_manifested_whatever_it_says(self):
            store = (await self.open()).store
            await store.add_dataset(Dataset(FIRST, NODE1, manifested=True))
            self.assertFalse((await store.get_dataset(FIRST)).manifested)

        async def test_an_imported_dataset_keeps_its_flags_and_generation_and_comes_last(self):
            store = (await self.open()).store
            await store.add_dataset(Dataset(FIRST, NODE1))
            imported = Dataset(SECOND, NODE2, {"name": "b"}, 1024, True, True, NODE1, 7)
            await store.import_dataset(imported)
            self.assertEqual(await store.datasets(), [Dataset(FIRST, NODE1), imported])
            with self.assertRaises(DatasetExists):
                await store.import_dataset(Dataset(FIRST, NODE2))
            self.assertEqual(await store.get_dataset(FIRST), Dataset(FIRST, NODE1))

        async def test_a_store_is_empty_until_it_holds_anything(self):
            for change in (lambda store: store.add_dataset(Dataset(FIRST, NODE1)),
                           lambda store: store.put_lease(Lease(FIRST, NODE1, None)),
                           lambda store: store.put_node_report(NODE1, {"host": "h"}, 5.0)):
                store = (await self.open()).store
                self.assertTrue(await store.is_empty())
                await change(store)
                self.assertFalse(await store.is_empty())

        async def test_a_dataset_id_held_already_is_refused_and_changes_nothing(self):
            store = (await self.open()).store
            kept = Dataset(FIRST, NODE1, {"name": "a"})
            await store.add_dataset(kept)
            await store.mark_deleted(FIRST)
            tag = await store.configuration_tag()
            with self.assertRaises(DatasetExists):
                await store.add_dataset(Dataset(FIRST, NODE2))
            self.assertEqual(await store.datasets(), [Dataset(FIRST, NODE1, {"name": "a"}, deleted=True)])
            self.assertEqual(await store.configuration_tag(), tag)
            await store.add_dataset(Dataset(SECOND, NODE2))
            self.assertEqual(len(await store.datasets()), 2)

        async def test_datasets_named_are_every_one_of_that_name_oldest_first(self):
            store = (await self.open()).store
            await store.add_dataset(Dataset(FIRST, NODE1, {"name": "x"}))
            await store.add_dataset(Dataset(SECOND, NODE1, {"name": "y"}))
            await store.add_dataset(Dataset(THIRD, NODE2, {"name": "x"}))
            await store.add_dataset(Dataset("d0000000-0000-4000-8000-000000000004", NODE2))
            await store.mark_deleted(FIRST)
            self.assertEqual([d.dataset_id for d in await store.datasets_named("x")], [FIRST, THIRD])
            self.assertEqual((await store.datasets_named("x"))[0].deleted, True)
            self.assertEqual([d.dataset_id for d in await store.datasets_named("y")], [SECOND])
            self.assertEqual(await store.datasets_named("z"), [])

        async def test_a_new_primary_raises_the_generation_once(self):
            store = (await self.open()).store
            await store.add_dataset(Dataset(FIRST, NODE1, origin=NODE1))
            await store.set_primary(FIRST, NODE2)
            await store.set_primary(FIRST, NODE2)
            moved = await store.get_dataset(FIRST)
            self.assertEqual((moved.primary, moved.generation, moved.origin), (NODE2, 2, NODE1))
            await store.set_primary(FIRST, NODE1)
            self.assertEqual((await store.get_dataset(FIRST)).generation, 3)

        async def test_replica_nodes_are_kept_outside_the_tag(self):
            store = (await self.open()).store
            await store.add_dataset(Dataset(FIRST, NODE1, origin=NODE1))
            self.assertEqual((await store.get_dataset(FIRST)).replica_nodes, ())
            tag = await store.configuration_tag()
            await store.set_replica_nodes(FIRST, [NODE3, NODE2])
            self.assertEqual((await store.get_dataset(FIRST)).replica_nodes, (NODE3, NODE2))
            self.assertEqual((await store.datasets())[0].replica_nodes, (NODE3, NODE2))
            self.assertEqual(await store.configuration_tag(), tag)
            await store.set_replica_nodes(SECOND, [NODE2])
            self.assertEqual(len(await store.datasets()), 1)

        async def test_replica_nodes_set_in_a_decision_are_read_back_in_it(self):
            store = (await self.open()).store
            await store.add_dataset(Dataset(FIRST, NODE1))

            async def decision(view):
                await view.set_replica_nodes(FIRST, [NODE2])
                return (await view.get_dataset(FIRST)).replica_nodes
            self.assertEqual(await store.decide(decision), (NODE2,))

        async def test_a_move_drops_the_new_primary_from_the_replica_nodes(self):
            store = (await self.open()).store
            await store.add_dataset(Dataset(FIRST, NODE1, origin=NODE1))
            await store.set_replica_nodes(FIRST, [NODE2, NODE3])
            await store.set_primary(FIRST, NODE2)
            moved = await store.get_dataset(FIRST)
            self.assertEqual((moved.primary, moved.generation, moved.replica_nodes),
                             (NODE2, 2, (NODE3,)))

        async def test_an_imported_dataset_keeps_its_replica_nodes(self):
            store = (await self.open()).store
            imported = Dataset(FIRST, NODE1, {"replicas": "1"}, generation=3,
                               replica_nodes=(NODE2,))
            await store.import_dataset(imported)
            self.assertEqual(await store.get_dataset(FIRST), imported)

        async def test_changes_to_an_unknown_dataset_do_nothing(self):
            store = (await self.open()).store
            await store.add_dataset(Dataset(FIRST, NODE1))
            before = (await store.datasets(), await store.configuration_tag())
            await store.set_primary(SECOND, NODE2)
            await store.mark_deleted(SECOND)
            await store.mark_restored(SECOND)
            self.assertEqual(await store.mark_manifested([SECOND]), [])
            self.assertEqual((await store.datasets(), await store.configuration_tag()), before)

        async def test_deleted_and_restored(self):
            store = (await self.open()).store
            await store.add_dataset(Dataset(FIRST, NODE1))
            await store.mark_deleted(FIRST)
            self.assertTrue((await store.get_dataset(FIRST)).deleted)
            await store.mark_deleted(FIRST)
            await store.mark_restored(FIRST)
            self.assertFalse((await store.get_dataset(FIRST)).deleted)

        async def test_mark_manifested_answers_the_flags_it_changed_in_the_order_given(self):
            store = (await self.open()).store
            for dataset_id in (FIRST, SECOND, THIRD):
                await store.add_dataset(Dataset(dataset_id, NODE1))
            self.assertEqual(await store.mark_manifested([THIRD, FIRST]), [THIRD, FIRST])
            self.assertEqual(await store.mark_manifested([FIRST, SECOND, THIRD, NODE3]), [SECOND])
            self.assertEqual([d.manifested for d in await store.datasets()], [True, True, True])

        # leases

        async def test_leases_are_put_replaced_and_listed_by_dataset_id(self):
            store = (await self.open()).store
            await store.put_lease(Lease(FIRST, NODE1, 100.0))
            await store.put_lease(Lease(SECOND, NODE2, None, 90.0))
            await store.put_lease(Lease(FIRST, NODE3, 200.0, 150.0))
            self.assertEqual(await store.leases(), [Lease(SECOND, NODE2, None, 90.0),
                                              Lease(FIRST, NODE3, 200.0, 150.0)])
            self.assertEqual(await store.get_lease(FIRST), Lease(FIRST, NODE3, 200.0, 150.0))

        async def test_a_lease_may_name_a_dataset_the_configuration_lacks(self):
            store = (await self.open()).store
            await store.put_lease(Lease(FIRST, NODE1, None))
            self.assertEqual((await store.get_lease(FIRST), await store.datasets()),
                             (Lease(FIRST, NODE1, None), []))

        async def test_deleting_a_lease(self):
            store = (await self.open()).store
            await store.put_lease(Lease(FIRST, NODE1, None))
            await store.delete_lease(FIRST)
            await store.delete_lease(FIRST)
            self.assertEqual((await store.leases(), await store.get_lease(FIRST)), ([], None))

        async def test_expire_leases_drops_those_due_by_now_and_answers_them(self):
            store = (await self.open()).store
            await store.put_lease(Lease(FIRST, NODE1, 10.0))
            await store.put_lease(Lease(SECOND, NODE1, None))
            await store.put_lease(Lease(THIRD, NODE1, 11.0, 10.5))
            self.assertEqual(await store.expire_leases(9.0), [])
            self.assertEqual(await store.expire_leases(10.0), [Lease(FIRST, NODE1, 10.0)])
            self.assertEqual(await store.expire_leases(10.5), [])
            self.assertEqual(await store.leases(), [Lease(SECOND, NODE1, None),
                                              Lease(THIRD, NODE1, 11.0, 10.5)])
            self.assertEqual(await store.expire_leases(1e12), [Lease(THIRD, NODE1, 11.0, 10.5)])

        # node reports

        async def test_node_reports_are_put_replaced_and_listed_by_node(self):
            store = (await self.open()).store
            report = {"host": "10.0.0.1", "datasets": [{"dataset_id": FIRST, "path": "/p",
                                                        "users": ["c1"]}], "trash": []}
            await store.put_node_report(NODE1, {"host": "old"}, 1.0)
            await store.put_node_report(NODE2, {"host": "10.0.0.2"}, 2.5)
            await store.put_node_report(NODE1, report, 3.0)
            self.assertEqual(await store.node_reports(), [(NODE2, {"host": "10.0.0.2"}, 2.5),
                                                    (NODE1, report, 3.0)])

        async def test_touching_a_report_changes_only_its_time(self):
            store = (await self.open()).store
            await store.put_node_report(NODE1, {"host": "a"}, 1.0)
            await store.touch_node_report(NODE1, 5.0)
            await store.touch_node_report(NODE2, 5.0)
            self.assertEqual(await store.node_reports(), [(NODE1, {"host": "a"}, 5.0)])

        async def test_deleting_a_report(self):
            store = (await self.open()).store
            await store.put_node_report(NODE1, {"host": "a"}, 1.0)
            await store.put_node_report(NODE2, {"host": "b"}, 1.0)
            await store.delete_node_report(NODE1)
            await store.delete_node_report(NODE1)
            self.assertEqual(await store.node_reports(), [(NODE2, {"host": "b"}, 1.0)])

        # the configuration tag

        async def test_the_tag_changes_with_every_change_of_configuration(self):
            store = (await self.open()).store
            # Only the previous tag is compared: a tag may be a hash of the content, and
            # a restore brings back the content from before the deletion.
            seen = [await store.configuration_tag()]

            async def changed(what):
                tag = await store.configuration_tag()
                self.assertEqual(await store.configuration_tag(), tag, "a tag is stable")
                self.assertNotEqual(tag, seen[-1], f"{what} changes the tag")
                seen.append(tag)

            await store.add_dataset(Dataset(FIRST, NODE1))
            await changed("a new dataset")
            await store.set_primary(FIRST, NODE2)
            await changed("a move")
            await store.mark_deleted(FIRST)
            await changed("a deletion")
            await store.mark_restored(FIRST)
            await changed("a restore")
            await store.put_lease(Lease(FIRST, NODE2, 100.0))
            await changed("a new lease")
            await store.put_lease(Lease(FIRST, NODE2, 200.0))
            await changed("a renewal")
            await store.delete_lease(FIRST)
            await changed("a release")
            await store.put_lease(Lease(FIRST, NODE2, 300.0))
            await changed("a lease again")
            await store.expire_leases(300.0)
            await changed("an expiry")

        async def test_the_tag_ignores_manifested_flags_claims_and_node_reports(self):
            store = (await self.open()).store
            await store.add_dataset(Dataset(FIRST, NODE1))
            await store.put_lease(Lease(FIRST, NODE1, 100.0))
            tag = await store.configuration_tag()
            await store.mark_manifested([FIRST])
            await store.put_lease(Lease(FIRST, NODE1, 100.0, 50.0))
            await store.put_node_report(NODE1, {"host": "a"}, 1.0)
            await store.touch_node_report(NODE1, 2.0)
            await store.delete_node_report(NODE1)
            await store.expire_leases(99.0)
            self.assertEqual(await store.configuration_tag(), tag)

        # decisions that read and then write

        async def test_a_decision_answers_and_commits_everything_together(self):
            harness = await self.open()
            store, other = harness.store, self.another(harness)
            seen = []

            async def decision(view):
                await view.add_dataset(Dataset(FIRST, NODE1, {"name": "x"}, origin=NODE1))
                await view.put_lease(Lease(FIRST, NODE1, None))
                await view.set_primary(FIRST, NODE2)
                await view.put_node_report(NODE1, {"host": "a"}, 1.0)
                seen.append((await view.datasets(), await view.datasets_named("x"),
                             await view.get_dataset(FIRST), await view.leases(),
                             await view.get_lease(FIRST)))
                return "decided"

            self.assertEqual(await store.decide(decision), "decided")
            moved = Dataset(FIRST, NODE2, {"name": "x"}, origin=NODE1, generation=2)
            self.assertEqual(seen, [([moved], [moved], moved, [Lease(FIRST, NODE1, None)],
                                     Lease(FIRST, NODE1, None))],
                             "a decision reads its own changes")
            self.assertEqual(await other.datasets(), [moved])
            self.assertEqual(await other.leases(), [Lease(FIRST, NODE1, None)])
            self.assertEqual(await other.node_reports(), [(NODE1, {"host": "a"}, 1.0)])
            self.assertEqual(await other.configuration_tag(), await store.configuration_tag())

        async def test_a_decision_reads_the_tag_it_writes_against(self):
            store = (await self.open()).store
            await store.add_dataset(Dataset(FIRST, NODE1))
            before = await store.configuration_tag()

            async def decision(view):
                tag = await view.configuration_tag()
                await view.mark_deleted(FIRST)
                return tag, await view.configuration_tag()

            tags = await store.decide(decision)
            self.assertEqual(tags, (before, await store.configuration_tag()))
            self.assertNotEqual(tags[0], tags[1])

        async def test_a_decision_that_raises_leaves_nothing_behind(self):
            store = (await self.open()).store
            await store.add_dataset(Dataset(FIRST, NODE1))
            await store.put_lease(Lease(FIRST, NODE1, 100.0))
            await store.put_node_report(NODE1, {"host": "a"}, 1.0)
            before = (await store.datasets(), await store.leases(), await store.node_reports(),
                      await store.configuration_tag())

            async def decision(view):
                await view.add_dataset(Dataset(SECOND, NODE2))
                await view.set_primary(FIRST, NODE2)
                await view.mark_deleted(FIRST)
                await view.mark_manifested([FIRST])
                await view.delete_lease(FIRST)
                await view.put_lease(Lease(SECOND, NODE2, None))
                await view.put_node_report(NODE2, {"host": "b"}, 2.0)
                await view.delete_node_report(NODE1)
                await view.expire_leases(1e12)
                await view.mark_restored(FIRST)
                raise RuntimeError("refused half way")

            with self.assertRaises(RuntimeError):
                await store.decide(decision)
            self.assertEqual((await store.datasets(), await store.leases(),
                              await store.node_reports(), await store.configuration_tag()),
                             before)
            await store.add_dataset(Dataset(SECOND, NODE2))
            self.assertEqual(len(await store.datasets()), 2, "the store works on after a rollback")

        async def test_a_decision_is_not_interleaved_with_another_stores(self):
            harness = await self.open()
            store, other = harness.store, self.another(harness)
            runs, refused = [], []

            async def create_unless_named(view):
                runs.append(1)
                free = not await view.datasets_named("x")
                if len(runs) == 1:
                    try:
                        await other.add_dataset(Dataset(SECOND, NODE2, {"name": "x"}))
                    except StoreBusy:
                        refused.append(True)
                if free:
                    await view.add_dataset(Dataset(FIRST, NODE1, {"name": "x"}))
                return free

            created = await store.decide(create_unless_named)
            named = [d.dataset_id for d in await other.datasets_named("x")]
            if refused:
                self.assertEqual((created, named, len(runs)), (True, [FIRST], 1))
            else:
                self.assertEqual((created, named, len(runs)), (False, [SECOND], 2),
                                 "the decision ran again and found the name taken")
            self.assertEqual(await store.configuration_tag(), await other.configuration_tag())

        async def test_a_move_is_decided_on_the_lease_it_read(self):
            harness = await self.open()
            store, other = harness.store, self.another(harness)
            await store.add_dataset(Dataset(FIRST, NODE1))
            runs, refused = [], []

            async def move_unless_leased(view):
                runs.append(1)
                lease = await view.get_lease(FIRST)
                if len(runs) == 1:
                    try:
                        await other.put_lease(Lease(FIRST, NODE1, None))
                    except StoreBusy:
                        refused.append(True)
                if lease is None:
                    await view.set_primary(FIRST, NODE2)
                return lease is None

            moved = await store.decide(move_unless_leased)
            primary = (await other.get_dataset(FIRST)).primary
            if refused:
                self.assertEqual((moved, primary, await other.leases()), (True, NODE2, []))
            else:
                self.assertEqual((moved, primary, await other.leases()),
                                 (False, NODE1, [Lease(FIRST, NODE1, None)]))

        async def test_racing_creates_of_one_name_make_one_dataset(self):
            harness = await self.open()
            stores = [harness.store, self.another(harness)]

            def create_unless_named(dataset_id):
                async def decision(view):
                    named = await view.datasets_named("x")
                    if named:
                        return named[0].dataset_id
                    await view.add_dataset(Dataset(dataset_id, NODE1, {"name": "x"}))
                    return dataset_id
                return decision

            answers = await gatherResults(
                [stores[i % 2].decide(create_unless_named(new_id())) for i in range(10)],
                consumeErrors=True)
            [dataset] = await stores[0].datasets_named("x")
            self.assertEqual(set(answers), {dataset.dataset_id})

        async def test_a_handles_tag_follows_another_handles_changes(self):
            harness = (await self.open())
            store, other = harness.store, self.another(harness)
            tag = await store.configuration_tag()
            self.assertEqual(await other.configuration_tag(), tag)
            await other.add_dataset(Dataset(FIRST, NODE1))
            self.assertNotEqual(await store.configuration_tag(), tag)
            self.assertEqual(await store.configuration_tag(), await other.configuration_tag())

    return AsyncStoreContract
