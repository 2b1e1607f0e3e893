"""choose_replica_nodes and replica counts: pure functions of the replica placement."""

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from powerstripflocker.control.replicas import (
    MAX_REPLICAS, BadReplicaCount, choose_replica_nodes, parse_replica_count,
    wanted_replicas,
)

NODES = [f"{n}0000000-0000-4000-8000-000000000000" for n in "abcdef"]
A, B, C, D, E, F = NODES

node_sets = st.lists(st.sampled_from(NODES), unique=True)


class ChooseTests(SynchronousTestCase):

    def test_fresh_choice_is_least_loaded_then_by_uuid(self):
        self.assertEqual(choose_replica_nodes(2, A, [], [A, B, C, D], {B: 3}), [C, D])
        self.assertEqual(choose_replica_nodes(2, A, [], [D, C, B, A], {}), [B, C])

    def test_live_current_choices_are_kept(self):
        self.assertEqual(choose_replica_nodes(2, A, [D, C], [A, B, C, D], {D: 9}), [D, C])

    def test_dead_choice_is_replaced(self):
        self.assertEqual(choose_replica_nodes(2, A, [B, C], [A, B, D, E], {D: 1}), [B, E])

    def test_dead_choice_dropped_when_no_live_node_is_left(self):
        self.assertEqual(choose_replica_nodes(2, A, [B, C], [A, B], {}), [B])

    def test_never_the_primary(self):
        # After a move to B, B is the primary: its replica place goes elsewhere.
        self.assertEqual(choose_replica_nodes(1, B, [B], [A, B, C], {A: 1}), [C])

    def test_fewer_wanted_keeps_the_first_current(self):
        self.assertEqual(choose_replica_nodes(1, A, [C, B], [A, B, C], {}), [C])
        self.assertEqual(choose_replica_nodes(0, A, [C, B], [A, B, C], {}), [])

    @given(st.integers(0, 8), st.sampled_from(NODES), node_sets, node_sets,
           st.dictionaries(st.sampled_from(NODES), st.integers(0, 5)))
    def test_properties(self, wanted, primary, current, live, load):
        chosen = choose_replica_nodes(wanted, primary, current, live, load)
        self.assertNotIn(primary, chosen)
        self.assertEqual(len(chosen), len(set(chosen)))
        self.assertTrue(set(chosen) <= set(live))
        self.assertLessEqual(len(chosen), wanted)
        self.assertEqual(len(chosen), min(wanted, len(set(live) - {primary})))
        kept = [node for node in current if node in live and node != primary][:wanted]
        self.assertEqual(chosen[:len(kept)], kept)
        # Stable: choosing again from the choice, nothing else changed, gives the same.
        self.assertEqual(choose_replica_nodes(wanted, primary, chosen, live, load), chosen)


class CountTests(SynchronousTestCase):

    def test_counts(self):
        self.assertEqual(parse_replica_count("2"), 2)
        self.assertEqual(parse_replica_count(" 0 "), 0)
        self.assertEqual(parse_replica_count(MAX_REPLICAS), MAX_REPLICAS)
        for bad in ("-1", "x", "", "1.5", "2e3", str(MAX_REPLICAS + 1), "٣"):
            with self.assertRaises(BadReplicaCount) as raised:
                parse_replica_count(bad)
            self.assertIn("whole number", str(raised.exception))

    def test_wanted_from_metadata(self):
        self.assertEqual(wanted_replicas({}), 0)
        self.assertEqual(wanted_replicas({"replicas": "3"}), 3)
        self.assertEqual(wanted_replicas({"replicas": "lots"}), 0)
