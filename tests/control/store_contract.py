"""One contract suite for IStore, the control service's persistence.

make_store_tests(open_store) builds a trial TestCase. open_store(testcase) returns a
harness with:
  store       a fresh, empty IStore provider, closed at the test's cleanup
  another()   a second handle on the same data, as a second process would open it,
              whose changes never wait for another handle's transaction (so they
              raise StoreBusy at once); None for a store only one handle can see
"""

from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from powerstripflocker.control.store import (
    Dataset, DatasetExists, IStore, Lease, StoreBusy,
)

from .helpers import NODE1, NODE2

# Ids whose sorted order is not their creation order below.
FIRST, SECOND, THIRD = ("c0000000-0000-4000-8000-000000000003",
                        "a0000000-0000-4000-8000-000000000001",
                        "b0000000-0000-4000-8000-000000000002")
NODE3 = "9a3f0c1e-2b4d-4e6f-8a0b-1c2d3e4f5a60"


def make_store_tests(open_store):
    class StoreContract(TestCase):

        def open(self):
            return open_store(self)

        def another(self, harness):
            """A second handle on the same data (a store with only one leaves out the
            tests that use this: under CI a skip is a failure)."""
            other = harness.another()
            self.assertIsNotNone(other, "this store has only one handle on its data")
            return other

        def test_provides_the_interface(self):
            self.assertTrue(verifyObject(IStore, self.open().store))

        def test_a_new_store_is_empty(self):
            store = self.open().store
            self.assertEqual(
                (store.datasets(), store.leases(), store.node_reports(),
                 store.datasets_named("x"), store.get_dataset(FIRST), store.get_lease(FIRST)),
                ([], [], [], [], None, None))

        # datasets

        def test_datasets_read_back_oldest_first(self):
            store = self.open().store
            first = Dataset(FIRST, NODE1, {"name": "a", "size": "big"}, 67108864, origin=NODE1)
            second = Dataset(SECOND, NODE2, origin=NODE2)
            store.add_dataset(first)
            store.add_dataset(second)
            self.assertEqual(store.datasets(), [first, second])
            self.assertEqual(store.get_dataset(FIRST), first)
            self.assertEqual(store.get_dataset(SECOND).generation, 1)

        def test_a_new_dataset_is_not_manifested_whatever_it_says(self):
            store = self.open().store
            store.add_dataset(Dataset(FIRST, NODE1, manifested=True))
            self.assertFalse(store.get_dataset(FIRST).manifested)

        def test_an_imported_dataset_keeps_its_flags_and_generation_and_comes_last(self):
            store = self.open().store
            store.add_dataset(Dataset(FIRST, NODE1))
            imported = Dataset(SECOND, NODE2, {"name": "b"}, 1024, True, True, NODE1, 7)
            store.import_dataset(imported)
            self.assertEqual(store.datasets(), [Dataset(FIRST, NODE1), imported])
            self.assertRaises(DatasetExists, store.import_dataset, Dataset(FIRST, NODE2))
            self.assertEqual(store.get_dataset(FIRST), Dataset(FIRST, NODE1))

        def test_a_dataset_id_held_already_is_refused_and_changes_nothing(self):
            store = self.open().store
            kept = Dataset(FIRST, NODE1, {"name": "a"})
            store.add_dataset(kept)
            store.mark_deleted(FIRST)
            tag = store.configuration_tag()
            self.assertRaises(DatasetExists, store.add_dataset, Dataset(FIRST, NODE2))
            self.assertEqual(store.datasets(), [Dataset(FIRST, NODE1, {"name": "a"}, deleted=True)])
            self.assertEqual(store.configuration_tag(), tag)
            store.add_dataset(Dataset(SECOND, NODE2))
            self.assertEqual(len(store.datasets()), 2)

        def test_datasets_named_are_every_one_of_that_name_oldest_first(self):
            store = self.open().store
            store.add_dataset(Dataset(FIRST, NODE1, {"name": "x"}))
            store.add_dataset(Dataset(SECOND, NODE1, {"name": "y"}))
            store.add_dataset(Dataset(THIRD, NODE2, {"name": "x"}))
            store.add_dataset(Dataset("d0000000-0000-4000-8000-000000000004", NODE2))
            store.mark_deleted(FIRST)
            self.assertEqual([d.dataset_id for d in store.datasets_named("x")], [FIRST, THIRD])
            self.assertEqual(store.datasets_named("x")[0].deleted, True)
            self.assertEqual([d.dataset_id for d in store.datasets_named("y")], [SECOND])
            self.assertEqual(store.datasets_named("z"), [])

        def test_a_new_primary_raises_the_generation_once(self):
            store = self.open().store
            store.add_dataset(Dataset(FIRST, NODE1, origin=NODE1))
            store.set_primary(FIRST, NODE2)
            store.set_primary(FIRST, NODE2)
            moved = store.get_dataset(FIRST)
            self.assertEqual((moved.primary, moved.generation, moved.origin), (NODE2, 2, NODE1))
            store.set_primary(FIRST, NODE1)
            self.assertEqual(store.get_dataset(FIRST).generation, 3)

        def test_replica_nodes_are_kept_outside_the_tag(self):
            store = self.open().store
            store.add_dataset(Dataset(FIRST, NODE1, origin=NODE1))
            self.assertEqual(store.get_dataset(FIRST).replica_nodes, ())
            tag = store.configuration_tag()
            store.set_replica_nodes(FIRST, [NODE3, NODE2])
            self.assertEqual(store.get_dataset(FIRST).replica_nodes, (NODE3, NODE2))
            self.assertEqual(store.datasets()[0].replica_nodes, (NODE3, NODE2))
            self.assertEqual(store.configuration_tag(), tag)
            store.set_replica_nodes(SECOND, [NODE2])
            self.assertEqual(len(store.datasets()), 1)

        def test_a_move_drops_the_new_primary_from_the_replica_nodes(self):
            store = self.open().store
            store.add_dataset(Dataset(FIRST, NODE1, origin=NODE1))
            store.set_replica_nodes(FIRST, [NODE2, NODE3])
            store.set_primary(FIRST, NODE2)
            moved = store.get_dataset(FIRST)
            self.assertEqual((moved.primary, moved.generation, moved.replica_nodes),
                             (NODE2, 2, (NODE3,)))

        def test_an_imported_dataset_keeps_its_replica_nodes(self):
            store = self.open().store
            imported = Dataset(FIRST, NODE1, {"replicas": "1"}, generation=3,
                               replica_nodes=(NODE2,))
            store.import_dataset(imported)
            self.assertEqual(store.get_dataset(FIRST), imported)

        def test_changes_to_an_unknown_dataset_do_nothing(self):
            store = self.open().store
            store.add_dataset(Dataset(FIRST, NODE1))
            before = (store.datasets(), store.configuration_tag())
            store.set_primary(SECOND, NODE2)
            store.mark_deleted(SECOND)
            store.mark_restored(SECOND)
            self.assertEqual(store.mark_manifested([SECOND]), [])
            self.assertEqual((store.datasets(), store.configuration_tag()), before)

        def test_deleted_and_restored(self):
            store = self.open().store
            store.add_dataset(Dataset(FIRST, NODE1))
            store.mark_deleted(FIRST)
            self.assertTrue(store.get_dataset(FIRST).deleted)
            store.mark_deleted(FIRST)
            store.mark_restored(FIRST)
            self.assertFalse(store.get_dataset(FIRST).deleted)

        def test_mark_manifested_answers_the_flags_it_changed_in_the_order_given(self):
            store = self.open().store
            for dataset_id in (FIRST, SECOND, THIRD):
                store.add_dataset(Dataset(dataset_id, NODE1))
            self.assertEqual(store.mark_manifested([THIRD, FIRST]), [THIRD, FIRST])
            self.assertEqual(store.mark_manifested([FIRST, SECOND, THIRD, NODE3]), [SECOND])
            self.assertEqual([d.manifested for d in store.datasets()], [True, True, True])

        # leases

        def test_leases_are_put_replaced_and_listed_by_dataset_id(self):
            store = self.open().store
            store.put_lease(Lease(FIRST, NODE1, 100.0))
            store.put_lease(Lease(SECOND, NODE2, None, 90.0))
            store.put_lease(Lease(FIRST, NODE3, 200.0, 150.0))
            self.assertEqual(store.leases(), [Lease(SECOND, NODE2, None, 90.0),
                                              Lease(FIRST, NODE3, 200.0, 150.0)])
            self.assertEqual(store.get_lease(FIRST), Lease(FIRST, NODE3, 200.0, 150.0))

        def test_a_lease_may_name_a_dataset_the_configuration_lacks(self):
            store = self.open().store
            store.put_lease(Lease(FIRST, NODE1, None))
            self.assertEqual((store.get_lease(FIRST), store.datasets()),
                             (Lease(FIRST, NODE1, None), []))

        def test_deleting_a_lease(self):
            store = self.open().store
            store.put_lease(Lease(FIRST, NODE1, None))
            store.delete_lease(FIRST)
            store.delete_lease(FIRST)
            self.assertEqual((store.leases(), store.get_lease(FIRST)), ([], None))

        def test_expire_leases_drops_those_due_by_now_and_answers_them(self):
            store = self.open().store
            store.put_lease(Lease(FIRST, NODE1, 10.0))
            store.put_lease(Lease(SECOND, NODE1, None))
            store.put_lease(Lease(THIRD, NODE1, 11.0, 10.5))
            self.assertEqual(store.expire_leases(9.0), [])
            self.assertEqual(store.expire_leases(10.0), [Lease(FIRST, NODE1, 10.0)])
            self.assertEqual(store.expire_leases(10.5), [])
            self.assertEqual(store.leases(), [Lease(SECOND, NODE1, None),
                                              Lease(THIRD, NODE1, 11.0, 10.5)])
            self.assertEqual(store.expire_leases(1e12), [Lease(THIRD, NODE1, 11.0, 10.5)])

        # node reports

        def test_node_reports_are_put_replaced_and_listed_by_node(self):
            store = self.open().store
            report = {"host": "10.0.0.1", "datasets": [{"dataset_id": FIRST, "path": "/p",
                                                        "users": ["c1"]}], "trash": []}
            store.put_node_report(NODE1, {"host": "old"}, 1.0)
            store.put_node_report(NODE2, {"host": "10.0.0.2"}, 2.5)
            store.put_node_report(NODE1, report, 3.0)
            self.assertEqual(store.node_reports(), [(NODE2, {"host": "10.0.0.2"}, 2.5),
                                                    (NODE1, report, 3.0)])

        def test_touching_a_report_changes_only_its_time(self):
            store = self.open().store
            store.put_node_report(NODE1, {"host": "a"}, 1.0)
            store.touch_node_report(NODE1, 5.0)
            store.touch_node_report(NODE2, 5.0)
            self.assertEqual(store.node_reports(), [(NODE1, {"host": "a"}, 5.0)])

        def test_deleting_a_report(self):
            store = self.open().store
            store.put_node_report(NODE1, {"host": "a"}, 1.0)
            store.put_node_report(NODE2, {"host": "b"}, 1.0)
            store.delete_node_report(NODE1)
            store.delete_node_report(NODE1)
            self.assertEqual(store.node_reports(), [(NODE2, {"host": "b"}, 1.0)])

        # the configuration tag

        def test_the_tag_changes_with_every_change_of_configuration(self):
            store = self.open().store
            # Only the previous tag is compared: a tag may be a hash of the content, and
            # a restore brings back the content from before the deletion.
            seen = [store.configuration_tag()]

            def changed(what):
                tag = store.configuration_tag()
                self.assertEqual(store.configuration_tag(), tag, "a tag is stable")
                self.assertNotEqual(tag, seen[-1], f"{what} changes the tag")
                seen.append(tag)

            store.add_dataset(Dataset(FIRST, NODE1))
            changed("a new dataset")
            store.set_primary(FIRST, NODE2)
            changed("a move")
            store.mark_deleted(FIRST)
            changed("a deletion")
            store.mark_restored(FIRST)
            changed("a restore")
            store.put_lease(Lease(FIRST, NODE2, 100.0))
            changed("a new lease")
            store.put_lease(Lease(FIRST, NODE2, 200.0))
            changed("a renewal")
            store.delete_lease(FIRST)
            changed("a release")
            store.put_lease(Lease(FIRST, NODE2, 300.0))
            changed("a lease again")
            store.expire_leases(300.0)
            changed("an expiry")

        def test_the_tag_ignores_manifested_flags_claims_and_node_reports(self):
            store = self.open().store
            store.add_dataset(Dataset(FIRST, NODE1))
            store.put_lease(Lease(FIRST, NODE1, 100.0))
            tag = store.configuration_tag()
            store.mark_manifested([FIRST])
            store.put_lease(Lease(FIRST, NODE1, 100.0, 50.0))
            store.put_node_report(NODE1, {"host": "a"}, 1.0)
            store.touch_node_report(NODE1, 2.0)
            store.delete_node_report(NODE1)
            store.expire_leases(99.0)
            self.assertEqual(store.configuration_tag(), tag)

        # transactions: a decision that reads and then writes

        def test_a_transaction_commits_everything_together(self):
            harness = self.open()
            store, other = harness.store, self.another(harness)
            with store.transaction():
                store.add_dataset(Dataset(FIRST, NODE1, {"name": "x"}))
                store.put_lease(Lease(FIRST, NODE1, None))
                with store.transaction():
                    store.set_primary(FIRST, NODE1)
                    store.put_node_report(NODE1, {"host": "a"}, 1.0)
                self.assertEqual((other.datasets(), other.leases(), other.node_reports()),
                                 ([], [], []), "nothing is seen before the outermost end")
            self.assertEqual([d.dataset_id for d in other.datasets()], [FIRST])
            self.assertEqual(other.leases(), [Lease(FIRST, NODE1, None)])
            self.assertEqual(other.node_reports(), [(NODE1, {"host": "a"}, 1.0)])
            self.assertEqual(other.configuration_tag(), store.configuration_tag())

        def test_a_decision_that_raises_leaves_nothing_behind(self):
            store = self.open().store
            store.add_dataset(Dataset(FIRST, NODE1))
            store.put_lease(Lease(FIRST, NODE1, 100.0))
            store.put_node_report(NODE1, {"host": "a"}, 1.0)
            before = (store.datasets(), store.leases(), store.node_reports(),
                      store.configuration_tag())
            with self.assertRaises(RuntimeError):
                with store.transaction():
                    store.add_dataset(Dataset(SECOND, NODE2))
                    store.set_primary(FIRST, NODE2)
                    store.mark_deleted(FIRST)
                    store.mark_manifested([FIRST])
                    store.delete_lease(FIRST)
                    store.put_lease(Lease(SECOND, NODE2, None))
                    store.put_node_report(NODE2, {"host": "b"}, 2.0)
                    store.delete_node_report(NODE1)
                    with store.transaction():
                        store.mark_restored(FIRST)
                        raise RuntimeError("refused half way")
            self.assertEqual((store.datasets(), store.leases(), store.node_reports(),
                              store.configuration_tag()), before)
            store.add_dataset(Dataset(SECOND, NODE2))
            self.assertEqual(len(store.datasets()), 2, "the store works on after a rollback")

        def test_a_decision_is_not_interleaved_with_another_handles(self):
            harness = self.open()
            store, other = harness.store, self.another(harness)
            with store.transaction():
                self.assertEqual(store.datasets_named("x"), [])
                self.assertRaises(StoreBusy, other.add_dataset, Dataset(SECOND, NODE2,
                                                                        {"name": "x"}))
                with self.assertRaises(StoreBusy):
                    with other.transaction():
                        pass
                self.assertEqual(store.datasets_named("x"), [], "the name is still free")
                store.add_dataset(Dataset(FIRST, NODE1, {"name": "x"}))
                self.assertEqual(other.datasets_named("x"), [])
            self.assertEqual([d.dataset_id for d in other.datasets_named("x")], [FIRST])
            other.put_lease(Lease(FIRST, NODE1, None))
            self.assertEqual(store.get_lease(FIRST), Lease(FIRST, NODE1, None))
            self.assertEqual(store.configuration_tag(), other.configuration_tag())

        def test_a_handles_tag_follows_another_handles_changes(self):
            harness = self.open()
            store, other = harness.store, self.another(harness)
            tag = store.configuration_tag()
            self.assertEqual(other.configuration_tag(), tag)
            other.add_dataset(Dataset(FIRST, NODE1))
            self.assertNotEqual(store.configuration_tag(), tag)
            self.assertEqual(store.configuration_tag(), other.configuration_tag())

    return StoreContract
