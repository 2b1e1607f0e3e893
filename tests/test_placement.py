import uuid

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from powerstripflocker.clients.flocker import DatasetConfig
from powerstripflocker.clients.flocker_memory import MemoryFlockerAPI
from powerstripflocker.frontends.metrics import Metrics
from powerstripflocker.core.placement import (
    FIRST_POLL, IN_USE_RECHECK, ControlServiceUnavailable, NodeUnknown, Placement,
    PlacementError, PlacementTimeout, VolumeClaimedElsewhere, VolumeInUse, VolumeStalled,
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

    def leased_on(self, node, name, users=()):
        dataset = self.dataset_on(node, name)
        self.successResultOf(self.api.acquire_lease(dataset.dataset_id, node.uuid, None))
        self.api.set_users(dataset.dataset_id, users)
        return dataset

    def settle(self, deferred, seconds=5.0):
        """Advance the clock in small steps until deferred fires (or seconds pass)."""
        for _ in range(int(seconds / 0.05)):
            if deferred.called:
                break
            self.clock.advance(0.05)
        return deferred

    def lease_of(self, dataset):
        return [(lease.node_uuid, lease.expires)
                for lease in self.successResultOf(self.api.list_leases())
                if lease.dataset_id == dataset.dataset_id]

    def test_a_new_name_is_created_here_and_its_path_returned_with_a_claim(self):
        paths = self.successResultOf(self.settle(self.placement.ensure_local(["demo"])))
        [dataset] = self.successResultOf(self.api.list_datasets_configuration()).datasets
        self.assertEqual((dataset.name, dataset.primary), ("demo", self.here.uuid))
        self.assertEqual(paths, {"demo": f"/flocker/{dataset.dataset_id}"})
        self.assertEqual(calls_named(self.api, "create_dataset"), [])
        self.assertEqual(self.metrics.creates._value.get(), 1)
        [(holder, expires)] = self.lease_of(dataset)
        self.assertEqual(holder, self.here.uuid)
        self.assertTrue(29 < expires <= 30, "the claim lapses by itself after 30 s")

    def test_the_claim_expiry_is_an_option(self):
        placement = self.placement_for(self.here, claim_seconds=5)
        self.successResultOf(self.settle(placement.ensure_local(["demo"])))
        [dataset] = self.successResultOf(self.api.list_datasets_configuration()).datasets
        [(_, expires)] = self.lease_of(dataset)
        self.assertTrue(4 < expires <= 5)

    def test_a_replica_count_goes_with_the_claim_and_the_create(self):
        placement = self.placement_for(self.here, replicas=2)
        self.successResultOf(self.settle(placement.ensure_local(["copied"])))
        created = self.successResultOf(self.placement.create("made", replicas=1))
        [claimed] = [d for d in self.successResultOf(
            self.api.list_datasets_configuration()).datasets if d.name == "copied"]
        self.assertEqual((claimed.metadata, created.metadata),
                         ({"name": "copied", "replicas": "2"}, {"name": "made", "replicas": "1"}))

    def test_a_volume_already_here_costs_one_round_trip_to_the_control_service(self):
        existing = self.dataset_on(self.here, "demo")
        self.api.latency = 0.01
        known = Deferred.fromCoroutine(self.placement.this_node())
        self.clock.advance(0.01)
        self.successResultOf(known)
        self.api.calls.clear()
        result = self.placement.ensure_local(["demo"])
        self.clock.advance(0.01)
        self.assertEqual(self.successResultOf(result),
                         {"demo": f"/flocker/{existing.dataset_id}"})
        self.assertEqual([call[0] for call in self.api.calls], ["claim"])

    def test_a_volume_elsewhere_is_moved_here(self):
        existing = self.dataset_on(self.there, "demo")
        paths = self.successResultOf(self.settle(self.placement.ensure_local(["demo"])))
        self.assertEqual(paths, {"demo": f"/flocker/{existing.dataset_id}"})
        [dataset] = self.successResultOf(self.api.list_datasets_configuration()).datasets
        self.assertEqual(dataset.primary, self.here.uuid)
        [state] = self.successResultOf(self.api.list_datasets_state())
        self.assertEqual(state.primary, self.here.uuid)
        self.assertEqual(self.metrics.moves._value.get(), 1)

    def test_a_volume_used_elsewhere_is_refused_within_half_a_second_naming_it(self):
        existing = self.leased_on(self.there, "demo", ["web"])
        result = self.placement.ensure_local(["demo"])
        self.clock.pump([FIRST_POLL] * int(IN_USE_RECHECK / FIRST_POLL + 1))
        failure = self.failureResultOf(result, VolumeInUse)
        self.assertLess(self.clock.seconds(), 0.5)
        self.assertEqual(
            str(failure.value),
            f"volume 'demo' is in use on 10.0.0.2 (node {self.there.uuid}, container web); "
            f"stop it there first")
        self.assertEqual({call for call in calls_named(self.api, "claim")},
                         {("claim", "demo", self.here.uuid)}, "only claims, nothing else")
        [dataset] = self.successResultOf(self.api.list_datasets_configuration()).datasets
        self.assertEqual(dataset.primary, self.there.uuid)
        self.assertEqual(self.lease_of(existing), [(self.there.uuid, None)])
        self.assertEqual(self.metrics.failures.labels(kind="in_use")._value.get(), 1)

    def test_a_refusal_with_latency_is_final_within_half_a_second(self):
        self.leased_on(self.there, "demo", ["web"])
        self.api.latency = 0.01
        result = self.placement.ensure_local(["demo"])
        self.clock.pump([0.01] * 45)
        self.failureResultOf(result, VolumeInUse)
        self.assertLess(self.clock.seconds(), 0.5)

    def test_a_user_that_stopped_a_moment_ago_on_the_holder_does_not_refuse(self):
        """docker stop there returned; its agent's release lands a moment later."""
        existing = self.leased_on(self.there, "demo", ["web"])
        result = self.placement.ensure_local(["demo"])
        self.clock.pump([FIRST_POLL] * 2)
        self.assertNoResult(result)
        self.successResultOf(self.api.release_lease(existing.dataset_id))
        self.settle(result)
        self.assertEqual(self.successResultOf(result),
                         {"demo": f"/flocker/{existing.dataset_id}"})

    def test_a_holder_with_no_running_user_is_waited_for_until_it_releases(self):
        """docker stop on the holder, then docker run here: no fixed delay."""
        existing = self.leased_on(self.there, "demo")
        result = self.placement.ensure_local(["demo"])
        self.clock.pump([0.05] * 4)
        self.assertNoResult(result)
        self.successResultOf(self.api.release_lease(existing.dataset_id))
        self.settle(result)
        self.assertEqual(self.successResultOf(result),
                         {"demo": f"/flocker/{existing.dataset_id}"})
        self.assertLess(self.clock.seconds(), 2.0)

    def test_a_holder_that_never_releases_is_refused_at_the_deadline(self):
        self.leased_on(self.there, "demo")
        placement = self.placement_for(self.here, deadline=10.0)
        result = placement.ensure_local(["demo"])
        self.clock.advance(9.9)
        self.assertNoResult(result)
        self.clock.pump([0.1] * 3)
        message = str(self.failureResultOf(result, VolumeInUse).value)
        self.assertIn("'demo' is in use on 10.0.0.2", message)
        self.assertIn("powerstrip-flocker release demo", message)
        self.assertIn(self.there.uuid, message)
        self.assertLess(len(calls_named(self.api, "claim")), 20, "claims back off to 1 s")

    def test_a_container_starting_elsewhere_during_the_wait_is_refused_at_once(self):
        existing = self.leased_on(self.there, "demo")
        result = self.placement.ensure_local(["demo"])
        self.clock.pump([0.05] * 4)
        self.assertNoResult(result)
        self.api.set_users(existing.dataset_id, ["db"])
        self.clock.pump([0.5] * 2)
        self.assertIn("container db", str(self.failureResultOf(result, VolumeInUse).value))

    def test_a_stalled_move_fails_at_once_naming_its_cause(self):
        existing = self.dataset_on(self.there, "db")
        self.api.set_transfer(existing.dataset_id, 1024, 4096)
        result = self.placement.ensure_local(["db"])
        self.clock.pump([0.5] * 4)
        self.assertNoResult(result)
        self.api.set_transfer(existing.dataset_id, 2048, 4096, stalled=True,
                              error="No space left on device on 10.0.0.1")
        self.clock.pump([1.0] * 2)
        self.assertEqual(
            str(self.failureResultOf(result, VolumeStalled).value),
            "volume 'db': the move from 10.0.0.2 stalled: No space left on device on 10.0.0.1")
        self.assertEqual(self.metrics.failures.labels(kind="stalled")._value.get(), 1)

    def test_a_move_that_never_finishes_fails_at_the_deadline_saying_how_far_it_got(self):
        existing = self.dataset_on(self.there, "demo")
        self.api.set_transfer(existing.dataset_id, 1048576, 4194304)
        placement = self.placement_for(self.here, deadline=30.0)
        result = placement.ensure_local(["demo"])
        self.clock.advance(29.9)
        self.assertNoResult(result)
        self.clock.pump([0.1] * 10)
        message = str(self.failureResultOf(result, PlacementTimeout).value)
        self.assertEqual(
            message,
            f"volume 'demo' (dataset {existing.dataset_id}) is not on 10.0.0.1 (node "
            f"{self.here.uuid}) after 30s: it is still moving from 10.0.0.2 (1048576 of "
            f"4194304 bytes copied)")
        self.assertLess(len(calls_named(self.api, "claim")), 40, "claims back off to 1 s")

    def test_a_create_that_never_happens_fails_at_the_deadline_saying_so(self):
        self.api.convergence_delay = None
        placement = self.placement_for(self.here, deadline=10.0)
        result = placement.ensure_local(["new"])
        self.clock.pump([0.5] * 21)
        message = str(self.failureResultOf(result, PlacementTimeout).value)
        self.assertIn("after 10s: it is still being created", message)

    def test_an_unreachable_control_service_fails_with_a_clear_message(self):
        self.api.unreachable = "Connection refused"
        failure = self.failureResultOf(self.placement.ensure_local(["demo"]),
                                       ControlServiceUnavailable)
        self.assertIn("cannot reach the control service", str(failure.value))

    def test_duplicate_names_resolve_to_the_smallest_dataset_id(self):
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

    def test_concurrent_requests_for_a_new_name_share_one_claim(self):
        first = self.placement.ensure_local(["demo"])
        second = self.placement.ensure_local(["demo", "demo"])
        self.settle(first)
        self.assertEqual(self.successResultOf(first), self.successResultOf(second))
        self.assertEqual(self.metrics.creates._value.get(), 1)
        self.assertEqual(len(self.successResultOf(self.api.datasets_named("demo")).datasets), 1)
        placements = [sample.value for sample in
                      self.metrics.placement_seconds.collect()[0].samples
                      if sample.name.endswith("_count")]
        self.assertEqual(placements, [1.0], "the second request joined the first's claim")

    def test_two_nodes_asking_at_the_same_moment_are_served_one_after_the_other(self):
        self.api.latency = 0.01
        here = self.placement.ensure_local(["shared"])
        there = self.placement_for(self.there).ensure_local(["shared"])
        self.settle(here)
        self.api.latency = 0
        self.assertFalse(there.called, "the other node waits while the first one's claim holds")
        named = [d for d in self.successResultOf(self.api.list_datasets_configuration()).datasets
                 if d.name == "shared"]
        self.assertEqual(len(named), 1, "exactly one dataset for the name")
        self.assertEqual(self.successResultOf(here), {"shared": f"/flocker/{named[0].dataset_id}"})
        # No container ever used it here: the claim lapses and the other node gets it.
        self.settle(there, seconds=40.0)
        self.assertEqual(self.successResultOf(there),
                         {"shared": f"/flocker/{named[0].dataset_id}"})
        [dataset] = self.successResultOf(self.api.datasets_named("shared")).datasets
        self.assertEqual(dataset.primary, self.there.uuid)

    def test_a_volume_taken_by_another_node_while_this_one_waited_is_refused(self):
        self.api.convergence_delay = 60.0  # the create takes long: the wait goes on
        here = self.placement.ensure_local(["taken"])
        self.settle(here, seconds=1.0)
        [dataset] = self.successResultOf(self.api.datasets_named("taken")).datasets
        self.successResultOf(self.api.release_lease(dataset.dataset_id))  # an operator
        self.successResultOf(self.api.claim("taken", self.there.uuid))
        self.settle(here)
        refused = self.failureResultOf(here, VolumeClaimedElsewhere)
        self.assertIn("was claimed by 10.0.0.2", str(refused.value))

    def test_one_request_creates_one_volume_and_moves_another_at_once(self):
        remote = self.dataset_on(self.there, "remote")
        paths = self.successResultOf(self.settle(self.placement.ensure_local(["new", "remote"])))
        self.assertEqual(paths["remote"], f"/flocker/{remote.dataset_id}")
        self.assertEqual((self.metrics.creates._value.get(), self.metrics.moves._value.get()),
                         (1, 1))
        for state in self.successResultOf(self.api.list_datasets_state()):
            self.assertEqual(state.primary, self.here.uuid)

    def test_a_hook_reads_nothing_about_the_other_datasets_of_the_cluster(self):
        for index in range(1000):
            self.successResultOf(self.api.create_dataset(
                primary=self.there.uuid, metadata={"name": f"other-{index}"}))
        self.api.converge()
        remote = self.dataset_on(self.there, "remote")
        self.api.calls.clear()
        self.successResultOf(self.settle(self.placement.ensure_local(["remote", "new"])))
        per_name = {"claim", "datasets_named", "list_nodes"}
        self.assertEqual({call[0] for call in self.api.calls} - per_name, set(),
                         "no call lists the cluster's configuration, state or leases")
        self.assertEqual({call[1] for call in calls_named(self.api, "claim")},
                         {"remote", "new"})
        self.assertEqual(self.lease_of(remote)[0][0], self.here.uuid)

    def test_a_control_service_without_claims_is_named(self):
        class WithoutClaims(MemoryFlockerAPI):
            def claim(self, *args, **kwargs):
                from twisted.internet.defer import fail
                from powerstripflocker.clients.flocker import NotFound
                return fail(NotFound(404, "Not found."))
        api = WithoutClaims(self.clock)
        api.nodes = [self.here]
        failure = self.failureResultOf(self.placement_for(self.here, api=api).ensure_local(
            ["demo"]), PlacementError)
        self.assertIn("has no claims endpoint", str(failure.value))

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
        self.assertEqual(calls_named(self.api, "claim"), [])

    def test_create_makes_a_dataset_here_without_waiting_or_moving(self):
        remote = self.dataset_on(self.there, "remote")
        self.api.convergence_delay = None
        self.assertEqual(self.successResultOf(self.placement.create("remote")), remote)
        created = self.successResultOf(self.placement.create("fresh", 1024 ** 3))
        self.assertEqual((created.name, created.primary, created.maximum_size),
                         ("fresh", self.here.uuid, 1024 ** 3))
        self.assertEqual(calls_named(self.api, "claim"), [])
        self.assertNotIn("list_datasets_configuration", {call[0] for call in self.api.calls})

    def test_view_reads_one_name(self):
        here = self.dataset_on(self.here, "here")
        self.dataset_on(self.there, "there")
        self.api.calls.clear()
        view = self.successResultOf(self.placement.view("here", 5))
        self.assertEqual((view.dataset, view.local_path),
                         (here, f"/flocker/{here.dataset_id}"))
        elsewhere = self.successResultOf(self.placement.view("there", 5))
        self.assertEqual((elsewhere.local_path, elsewhere.holder), ("", self.there.uuid))
        self.assertIsNone(self.successResultOf(self.placement.view("none", 5)))
        self.assertEqual({call[0] for call in self.api.calls},
                         {"list_nodes", "datasets_named", "list_datasets_state"})
        self.assertTrue(all(call[1:] for call in calls_named(self.api, "list_datasets_state")),
                        "state is read for one dataset")


def test_choose_dataset_is_independent_of_order():
    datasets = [DatasetConfig(str(uuid.uuid4()), "n", {"name": "x"}) for _ in range(5)]
    assert choose_dataset(datasets) == choose_dataset(list(reversed(datasets)))
