import uuid

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from powerstripflocker.flocker import DatasetConfig, MemoryFlockerAPI
from powerstripflocker.metrics import Metrics
from powerstripflocker.placement import (
    ControlServiceUnavailable, NodeUnknown, Placement, PlacementTimeout, VolumeClaimedElsewhere,
    VolumeInUse,
    choose_dataset,
)


def calls_named(api, name):
    return [call for call in api.calls if call[0] == name]


class PlacementTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.api = MemoryFlockerAPI(self.clock, convergence_delay=0.5)
        self.here = self.api.add_node("10.0.0.1")
        self.there = self.api.add_node("10.0.0.2")
        self.metrics = Metrics()
        self.placement = self.placement_for(self.here)

    def placement_for(self, node, api=None, **kwargs):
        return Placement(api or self.api, self.clock, node_uuid=node.uuid, metrics=self.metrics,
                         **kwargs)

    def dataset_on(self, node, name):
        created = self.successResultOf(
            self.api.create_dataset(primary=node.uuid, metadata={"name": name}))
        self.api.converge()
        return created

    def settle(self, deferred, seconds=5.0):
        """Advance the clock in small steps until deferred fires (or seconds pass)."""
        for _ in range(int(seconds / 0.05)):
            if deferred.called:
                break
            self.clock.advance(0.05)
        return deferred

    def test_a_new_name_is_created_here_and_its_path_returned(self):
        paths = self.successResultOf(self.settle(self.placement.ensure_local(["demo"])))
        [dataset] = self.successResultOf(self.api.list_datasets_configuration()).datasets
        self.assertEqual((dataset.name, dataset.primary), ("demo", self.here.uuid))
        self.assertEqual(paths, {"demo": f"/flocker/{dataset.dataset_id}"})
        self.assertEqual(len(calls_named(self.api, "create_dataset")), 1)
        self.assertEqual(self.metrics.creates._value.get(), 1)

    def test_a_volume_already_here_is_neither_created_nor_moved(self):
        existing = self.dataset_on(self.here, "demo")
        self.api.calls.clear()
        paths = self.successResultOf(self.placement.ensure_local(["demo"]))
        self.assertEqual(paths, {"demo": f"/flocker/{existing.dataset_id}"})
        self.assertEqual(calls_named(self.api, "create_dataset"), [])
        self.assertEqual(calls_named(self.api, "move_dataset"), [])

    def test_a_volume_already_here_costs_one_round_trip_to_the_control_service(self):
        existing = self.dataset_on(self.here, "demo")
        self.api.latency = 0.01
        known = Deferred.fromCoroutine(self.placement.this_node())
        self.clock.advance(0.01)
        self.successResultOf(known)
        result = self.placement.ensure_local(["demo"])
        self.clock.advance(0.01)
        self.assertEqual(self.successResultOf(result),
                         {"demo": f"/flocker/{existing.dataset_id}"})

    def test_a_volume_elsewhere_is_moved_here(self):
        existing = self.dataset_on(self.there, "demo")
        paths = self.successResultOf(self.settle(self.placement.ensure_local(["demo"])))
        self.assertEqual(paths, {"demo": f"/flocker/{existing.dataset_id}"})
        self.assertEqual(calls_named(self.api, "move_dataset"),
                         [("move_dataset", existing.dataset_id, self.here.uuid)])
        [state] = self.successResultOf(self.api.list_datasets_state())
        self.assertEqual(state.primary, self.here.uuid)

    def test_a_volume_leased_elsewhere_is_refused_at_once_without_moving(self):
        existing = self.dataset_on(self.there, "demo")
        self.successResultOf(self.api.acquire_lease(existing.dataset_id, self.there.uuid, None))
        result = self.placement.ensure_local(["demo"])
        self.clock.pump([0.25] * 11)
        self.assertNoResult(result)
        self.clock.pump([0.25] * 2)
        failure = self.failureResultOf(result, VolumeInUse)
        message = str(failure.value)
        self.assertIn("'demo' is in use on 10.0.0.2", message)
        self.assertIn("powerstrip-flocker release demo", message)
        self.assertIn(self.there.uuid, message)
        self.assertEqual(calls_named(self.api, "move_dataset"), [])
        self.assertEqual(self.metrics.failures.labels(kind="in_use")._value.get(), 1)

    def test_a_lease_taken_elsewhere_during_the_wait_fails_fast(self):
        existing = self.dataset_on(self.there, "demo")
        self.api.convergence_delay = None
        result = self.placement.ensure_local(["demo"])
        self.assertNoResult(result)
        self.successResultOf(self.api.acquire_lease(existing.dataset_id, self.there.uuid, None))
        self.clock.pump([0.25] * 20)
        self.failureResultOf(result, VolumeInUse)

    def test_a_lease_released_within_the_grace_period_lets_the_move_go_ahead(self):
        existing = self.dataset_on(self.there, "demo")
        self.successResultOf(self.api.acquire_lease(existing.dataset_id, self.there.uuid, None))
        result = self.placement.ensure_local(["demo"])
        self.clock.advance(1.0)
        self.successResultOf(self.api.release_lease(existing.dataset_id))
        self.settle(result)
        self.assertEqual(self.successResultOf(result),
                         {"demo": f"/flocker/{existing.dataset_id}"})

    def test_the_in_use_message_names_the_containers_the_holder_reports(self):
        existing = self.dataset_on(self.there, "demo")
        self.successResultOf(self.api.acquire_lease(existing.dataset_id, self.there.uuid, None))

        async def usage(dataset_id, node_uuid):
            return ["web, since 12:03:04"] if (dataset_id, node_uuid) == (
                existing.dataset_id, self.there.uuid) else []
        placement = self.placement_for(self.here, usage=usage)
        result = placement.ensure_local(["demo"])
        self.clock.pump([0.25] * 13)
        self.assertEqual(
            str(self.failureResultOf(result, VolumeInUse).value),
            f"volume 'demo' is in use on 10.0.0.2 (node {self.there.uuid}, container web, "
            f"since 12:03:04); stop it there first")

    def test_state_that_never_converges_fails_at_the_deadline_saying_what_was_seen(self):
        existing = self.dataset_on(self.there, "demo")
        self.api.convergence_delay = None
        placement = self.placement_for(self.here, deadline=30.0)
        result = placement.ensure_local(["demo"])
        self.clock.advance(29.9)
        self.assertNoResult(result)
        self.clock.pump([0.1] * 10)
        message = str(self.failureResultOf(result, PlacementTimeout).value)
        self.assertIn("'demo'", message)
        self.assertIn(existing.dataset_id, message)
        self.assertIn(f"not on 10.0.0.1 (node {self.here.uuid}) after 30s", message)
        self.assertIn(f"last state seen: on 10.0.0.2 at /flocker/{existing.dataset_id}", message)
        polls = len(calls_named(self.api, "list_datasets_state"))
        self.assertLess(polls, 40, "polls back off to at most one a second")

    def test_an_unreachable_control_service_fails_with_a_clear_message(self):
        self.api.unreachable = "Connection refused"
        failure = self.failureResultOf(self.placement.ensure_local(["demo"]),
                                       ControlServiceUnavailable)
        self.assertIn("cannot reach the control service", str(failure.value))

    def test_duplicate_names_resolve_to_the_smallest_dataset_id_on_every_node(self):
        ids = sorted(str(uuid.uuid4()) for _ in range(3))
        for dataset_id in reversed(ids):
            self.successResultOf(self.api.create_dataset(
                primary=self.there.uuid, metadata={"name": "dup"}, dataset_id=dataset_id))
        self.api.converge()
        paths = self.successResultOf(self.settle(self.placement.ensure_local(["dup"])))
        self.assertEqual(paths, {"dup": f"/flocker/{ids[0]}"})

    def test_deleted_and_nameless_datasets_are_ignored(self):
        old = self.dataset_on(self.there, "demo")
        self.successResultOf(self.api.delete_dataset(old.dataset_id))
        self.dataset_on(self.there, None)
        paths = self.successResultOf(self.settle(self.placement.ensure_local(["demo"])))
        self.assertNotEqual(paths["demo"], f"/flocker/{old.dataset_id}")
        self.assertEqual(calls_named(self.api, "move_dataset"), [])

    def test_concurrent_requests_for_a_new_name_make_one_create(self):
        first = self.placement.ensure_local(["demo"])
        second = self.placement.ensure_local(["demo", "demo"])
        self.settle(first)
        self.assertEqual(self.successResultOf(first), self.successResultOf(second))
        self.assertEqual(len(calls_named(self.api, "create_dataset")), 1)

    def test_two_nodes_asking_at_the_same_moment_leave_one_dataset(self):
        self.api.latency = 0.01
        here = self.placement.ensure_local(["shared"])
        there = self.placement_for(self.there).ensure_local(["shared"])
        self.settle(here)
        self.settle(there)
        self.api.latency = 0
        named = [d for d in self.successResultOf(self.api.list_datasets_configuration()).datasets
                 if d.name == "shared"]
        self.assertEqual(len(named), 1, "exactly one dataset for the name")
        self.assertEqual(len(calls_named(self.api, "create_dataset")), 2,
                         "both tried a conditional create; one was refused with 412")
        outcomes = sorted([here, there], key=lambda d: isinstance(d.result, Failure))
        winner = self.successResultOf(outcomes[0])
        self.assertEqual(winner, {"shared": f"/flocker/{named[0].dataset_id}"})
        loser = self.failureResultOf(outcomes[1], VolumeClaimedElsewhere)
        self.assertIn("was claimed by", str(loser.value))

    def test_one_request_creates_one_volume_and_moves_another_at_once(self):
        remote = self.dataset_on(self.there, "remote")
        paths = self.successResultOf(self.settle(self.placement.ensure_local(["new", "remote"])))
        self.assertEqual(paths["remote"], f"/flocker/{remote.dataset_id}")
        self.assertEqual(len(calls_named(self.api, "create_dataset")), 2)
        self.assertEqual(len(calls_named(self.api, "move_dataset")), 1)
        for state in self.successResultOf(self.api.list_datasets_state()):
            self.assertEqual(state.primary, self.here.uuid)

    def test_this_node_is_found_by_address(self):
        placement = Placement(self.api, self.clock, node_address="10.0.0.2")
        paths = self.successResultOf(self.settle(placement.ensure_local(["a"])))
        [dataset] = self.successResultOf(self.api.list_datasets_configuration()).datasets
        self.assertEqual(dataset.primary, self.there.uuid)
        self.assertEqual(list(paths), ["a"])

    def test_an_unregistered_address_fails_at_the_deadline(self):
        placement = Placement(self.api, self.clock, node_address="10.9.9.9", deadline=10)
        result = placement.ensure_local(["a"])
        self.clock.pump([0.5] * 21)
        failure = self.failureResultOf(result, NodeUnknown)
        self.assertIn("10.9.9.9", str(failure.value))
        self.assertEqual(calls_named(self.api, "create_dataset"), [])


def test_choose_dataset_is_independent_of_order():
    datasets = [DatasetConfig(str(uuid.uuid4()), "n", {"name": "x"}) for _ in range(5)]
    assert choose_dataset(datasets) == choose_dataset(list(reversed(datasets)))
