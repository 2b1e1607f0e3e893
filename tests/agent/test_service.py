"""The agent service's scheduling, on a Clock: event-driven convergence, reports, backoff."""

from dataclasses import replace

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from powerstripflocker.agent.backends import SendPlan, TrashEntry
from powerstripflocker.agent.faults import Faults
from powerstripflocker.agent.model import HANDED_OFF, PRIMARY, LocalDataset
from powerstripflocker.agent.receiver import Refused
from powerstripflocker.agent.service import TRASH_REPORT_LIMIT, AgentService
from powerstripflocker.clients.peer import PeerError

ME = "11111111-1111-4111-8111-111111111111"
OTHER = "22222222-2222-4222-8222-222222222222"
DS = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"


class FakeControl:
    """Hands out one Deferred per long-poll; records reports."""

    def __init__(self):
        self.polls = []
        self.reports = []
        self.report_error = None
        self.fresh = None

    def cluster(self, generation=None, timeout=30):
        if timeout == 0 and self.fresh is not None:
            return defer.succeed(self.fresh)
        d = defer.Deferred()
        self.polls.append((generation, d))
        return d

    def report(self, node_uuid, body, era=None):
        if self.report_error is not None:
            return defer.fail(self.report_error)
        self.reports.append(body)
        return defer.succeed({"generation": 1})


class StubBackend:
    """Just enough of a backend to watch the service's decisions (not a storage backend)."""
    name = "stub"
    formats = ("tar",)
    data_root = "/stub"

    def __init__(self):
        self.held = {}
        self.calls = []
        self.fail_create = 0
        self.trash_entries = {}

    async def start(self):
        pass

    def local_datasets(self):
        return dict(self.held)

    def path(self, dataset_id):
        return f"/stub/datasets/{dataset_id}"

    async def create(self, dataset_id, maximum_size):
        self.calls.append(("create", dataset_id))
        if self.fail_create:
            self.fail_create -= 1
            raise OSError("disk on fire")
        self.held[dataset_id] = LocalDataset(dataset_id, PRIMARY, self.path(dataset_id),
                                             maximum_size)

    async def handoff(self, dataset_id, target, plan):
        self.calls.append(("handoff", dataset_id, target))
        self.held[dataset_id] = LocalDataset(dataset_id, HANDED_OFF, self.path(dataset_id))

    def snapshots(self, dataset_id):
        return []

    def record_generation(self, dataset_id, generation):
        held = self.held.get(dataset_id)
        if held is not None and generation is not None:
            self.held[dataset_id] = replace(held, generation=generation)

    def known_generation(self, dataset_id):
        held = self.held.get(dataset_id)
        return held.generation if held is not None else None

    async def prepare_send(self, dataset_id, peer_snapshots):
        self.calls.append(("prepare_send", dataset_id))
        return SendPlan(dataset_id, "tar", ["true"], size=1000)

    async def abandon_send(self, plan):
        self.calls.append(("abandon_send", plan.dataset_id))

    def trashed(self):
        return sorted(self.trash_entries.values(), key=lambda e: e.deleted_at)

    async def trash(self, dataset_id, deleted_at):
        self.calls.append(("trash", dataset_id))
        held = self.held.pop(dataset_id, None)
        if held is None or held.role != PRIMARY:
            return None
        entry = TrashEntry(dataset_id, deleted_at, 4096, f"{dataset_id}-{int(deleted_at)}",
                           generation=held.generation)
        self.trash_entries[entry.key] = entry
        return entry

    async def restore(self, dataset_id):
        self.calls.append(("restore", dataset_id))
        [entry] = [e for e in self.trashed() if e.dataset_id == dataset_id][-1:]
        del self.trash_entries[entry.key]
        self.held[dataset_id] = LocalDataset(dataset_id, PRIMARY, self.path(dataset_id),
                                             generation=entry.generation)
        return entry

    async def purge(self, key):
        self.calls.append(("purge", key))
        self.trash_entries.pop(key, None)

    async def destroy(self, dataset_id):
        self.calls.append(("destroy", dataset_id))
        self.held.pop(dataset_id, None)


class FakePeers:
    def __init__(self, description):
        self.description = description
        self.pushes = []
        self.acquires = []
        self.push_error = None

    async def describe(self, agent_url, dataset_id):
        return self.description

    async def push(self, agent_url, plan, body, generation=None):
        self.pushes.append((plan, generation))
        if self.push_error is not None:
            body.progress.add(300)
            raise self.push_error
        return {"received": "r"}

    async def acquire(self, agent_url, dataset_id, received, maximum_size, generation=None):
        self.acquires.append((dataset_id, received, generation))
        return {"dataset_id": dataset_id, "path": "/there"}


def view(generation, datasets=(), nodes=(), leases=()):
    return {"generation": generation, "datasets": list(datasets), "leases": list(leases),
            "nodes": list(nodes)}


def dataset(primary=ME, manifested=False, generation=None, maximum_size=None):
    return {"dataset_id": DS, "primary": primary, "metadata": {}, "deleted": False,
            "maximum_size": maximum_size, "manifested": manifested, "generation": generation}


class AgentServiceTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.control = FakeControl()
        self.backend = StubBackend()
        self.peers = FakePeers({"primary": False, "snapshots": [], "accepting": True})
        self.agent = AgentService(self.clock, self.backend, self.control, self.peers, ME,
                                  "127.0.0.1", "http://127.0.0.1:4524", faults=Faults())
        self.successResultOf(defer.ensureDeferred(self.agent.start()))
        self.addCleanup(self.agent.stop)

    def deliver(self, body):
        generation, d = self.control.polls[-1]
        d.callback(body)
        return generation

    def test_reports_at_start_with_host_and_agent_url(self):
        self.assertEqual(self.control.reports[0], {
            "host": "127.0.0.1", "agent_url": "http://127.0.0.1:4524", "datasets": [],
            "transfers": []})

    def test_first_poll_returns_at_once_and_later_ones_pass_the_generation(self):
        self.assertEqual(self.control.polls[0][0], -1)
        self.deliver(view(41))
        self.assertEqual(self.control.polls[-1][0], 41)

    def test_new_configuration_is_created_and_reported_without_waiting(self):
        self.deliver(view(1, [dataset()]))
        self.assertEqual(self.backend.calls, [("create", DS)])
        self.assertEqual(self.control.reports[-1]["datasets"],
                         [{"dataset_id": DS, "path": self.backend.path(DS),
                           "maximum_size": None}])
        self.assertEqual(self.clock.seconds(), 0)

    def test_failed_action_is_retried_with_backoff(self):
        self.backend.fail_create = 2
        self.deliver(view(1, [dataset()]))
        self.assertEqual(len(self.backend.calls), 1)
        self.clock.advance(0.4)
        self.assertEqual(len(self.backend.calls), 1)
        self.clock.advance(0.1)
        self.assertEqual(len(self.backend.calls), 2)     # after 0.5 s
        self.clock.advance(0.9)
        self.assertEqual(len(self.backend.calls), 2)
        self.clock.advance(0.1)
        self.assertEqual(len(self.backend.calls), 3)     # after 1 s more
        self.assertIn(DS, self.backend.held)

    def test_a_new_view_does_not_bypass_the_backoff(self):
        self.backend.fail_create = 1
        self.deliver(view(1, [dataset()]))
        self.deliver(view(2, [dataset()]))
        self.assertEqual(len(self.backend.calls), 1)

    def test_poll_errors_are_retried_with_backoff(self):
        self.control.polls[-1][1].errback(ConnectionRefusedError())
        self.assertEqual(len(self.control.polls), 1)
        self.clock.advance(0.1)
        self.assertEqual(len(self.control.polls), 2)
        self.control.polls[-1][1].errback(ConnectionRefusedError())
        self.clock.advance(0.1)
        self.assertEqual(len(self.control.polls), 2)
        self.clock.advance(0.1)
        self.assertEqual(len(self.control.polls), 3)

    def test_reports_are_retried_until_they_get_through(self):
        self.control.report_error = ConnectionRefusedError()
        count = len(self.control.reports)
        self.agent.request_report()
        self.clock.advance(1)
        self.control.report_error = None
        self.clock.advance(5)
        self.assertEqual(len(self.control.reports), count + 1)

    def test_heartbeat_reports_even_when_nothing_changed(self):
        count = len(self.control.reports)
        self.clock.advance(10)
        self.assertEqual(len(self.control.reports), count + 1)
        self.clock.advance(10)
        self.assertEqual(len(self.control.reports), count + 2)

    def _held_and_moving(self, description):
        self.peers.description = description
        self.backend.held[DS] = LocalDataset(DS, PRIMARY, self.backend.path(DS))
        self.deliver(view(1, [dataset(primary=OTHER, manifested=True)], nodes=[{
            "uuid": OTHER, "host": "127.0.0.1", "agent_url": "http://127.0.0.1:9",
            "datasets": [{"dataset_id": DS, "path": "/x"}], "transfers": []}]))

    def test_target_holding_a_received_primary_means_hand_off_without_pushing(self):
        self._held_and_moving({"primary": True, "origin": "received", "snapshots": []})
        self.assertEqual(self.peers.pushes, [])
        self.assertIn(("handoff", DS, OTHER), self.backend.calls)

    def test_target_holding_a_primary_it_created_is_never_handed_our_copy(self):
        self.flushLoggedErrors()
        self._held_and_moving({"primary": True, "origin": "created", "snapshots": []})
        self.assertEqual(self.peers.pushes, [])
        self.assertNotIn(("handoff", DS, OTHER), self.backend.calls)
        self.assertEqual(self.backend.held[DS].role, PRIMARY)
        self.assertIn("primary it created", self.agent.failures[DS].error)

    def test_move_to_a_node_with_another_backend_fails_clearly_without_pushing(self):
        self._held_and_moving({"primary": False, "snapshots": [], "accepting": True,
                               "formats": ["btrfs"]})
        self.assertEqual(self.peers.pushes, [])
        failing = self.agent.metrics()["failing"][DS]
        self.assertEqual((failing["action"], failing["attempts"]), ("push", 1))
        self.assertIn("different backends", failing["error"])
        self.assertEqual(self.backend.held[DS].role, PRIMARY)

    def test_receive_refused_unless_the_configuration_moves_it_here(self):
        self.deliver(view(1, [dataset(primary=OTHER, manifested=True)]))
        self.control.fresh = view(1, [dataset(primary=OTHER, manifested=True)])
        failure = self.failureResultOf(defer.ensureDeferred(self.agent.check_receive(DS)),
                                       Refused)
        self.assertEqual(failure.value.code, 403)

    def test_receive_checks_a_fresh_view_when_ours_is_stale(self):
        self.deliver(view(1, [dataset(primary=OTHER, manifested=True)]))
        self.control.fresh = view(2, [dataset(primary=ME, manifested=True)])
        self.successResultOf(defer.ensureDeferred(self.agent.check_receive(DS)))

    def test_receive_of_a_dataset_held_as_primary_is_a_conflict(self):
        self.backend.held[DS] = LocalDataset(DS, PRIMARY, self.backend.path(DS))
        self.deliver(view(1, [dataset(primary=ME, manifested=True)]))
        failure = self.failureResultOf(defer.ensureDeferred(self.agent.check_receive(DS)),
                                       Refused)
        self.assertEqual(failure.value.code, 409)

    def test_receive_while_busy_is_refused_for_now(self):
        self.deliver(view(1, [dataset(primary=ME, manifested=True)]))
        self.agent.lock(DS, "receive")
        failure = self.failureResultOf(defer.ensureDeferred(self.agent.check_receive(DS)),
                                       Refused)
        self.assertEqual(failure.value.code, 503)


class TrashTests(SynchronousTestCase):
    """Deleted data kept keep_deleted seconds, on a Clock: trashed, reported, restored,
    purged once its time is up (never while the configuration restores it here)."""

    KEEP = 600.0

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.control = FakeControl()
        self.backend = StubBackend()
        self.agent = AgentService(self.clock, self.backend, self.control, FakePeers({}), ME,
                                  "10.0.0.1", "http://10.0.0.1:4524", faults=Faults(),
                                  keep_deleted=self.KEEP)
        self.successResultOf(defer.ensureDeferred(self.agent.start()))
        self.addCleanup(self.agent.stop)
        self.backend.held[DS] = LocalDataset(DS, PRIMARY, self.backend.path(DS),
                                             generation=3)

    def deliver(self, body):
        self.control.polls[-1][1].callback(body)
        self.control.fresh = body

    def delete(self):
        self.deliver(view(2, [dict(dataset(manifested=True, generation=3), deleted=True)]))

    def test_a_deleted_primary_goes_to_the_trash_and_is_reported_there(self):
        self.delete()
        self.assertEqual(self.backend.calls, [("trash", DS)])
        report = self.control.reports[-1]
        self.assertEqual(report["datasets"], [])
        self.assertEqual(report["trash"], [{
            "dataset_id": DS, "deleted_at": 1_800_000_000, "bytes": 4096, "generation": 3,
            "expires_at": 1_800_000_000 + self.KEEP}])

    def test_a_report_without_trash_has_no_trash_field(self):
        self.assertNotIn("trash", self.control.reports[-1])

    def test_the_trash_is_purged_once_the_keep_window_is_over_and_reported(self):
        self.delete()
        self.clock.advance(self.KEEP - 1)
        self.assertNotIn(("purge", f"{DS}-1800000000"), self.backend.calls)
        self.clock.advance(self.KEEP / 4)
        self.assertIn(("purge", f"{DS}-1800000000"), self.backend.calls)
        self.assertEqual(self.backend.trashed(), [])
        self.assertNotIn("trash", self.control.reports[-1])

    def test_a_dataset_restored_here_comes_back_from_the_trash_and_is_reported(self):
        self.delete()
        self.deliver(view(3, [dataset(manifested=True, generation=3)]))
        self.assertEqual(self.backend.calls, [("trash", DS), ("restore", DS)])
        report = self.control.reports[-1]
        self.assertEqual([d["dataset_id"] for d in report["datasets"]], [DS])
        self.assertNotIn("trash", report)

    def test_an_expired_entry_being_restored_here_is_not_purged(self):
        self.delete()
        restored = view(3, [dataset(manifested=True, generation=3)])
        self.control.fresh = restored
        self.clock.advance(self.KEEP * 2)
        self.assertEqual(self.backend.calls, [("trash", DS)])

    def test_no_purge_while_the_configuration_cannot_be_checked(self):
        self.delete()
        self.control.fresh = None
        self.clock.advance(self.KEEP * 2)
        self.assertEqual(self.backend.calls, [("trash", DS)])

    def test_expired_entries_left_by_a_previous_run_are_purged_at_start(self):
        old = TrashEntry(DS, self.clock.seconds() - self.KEEP - 1, 10, "old")
        self.backend.trash_entries["old"] = old
        self.control.fresh = view(1)
        again = AgentService(self.clock, self.backend, self.control, FakePeers({}), ME,
                             "10.0.0.1", "http://10.0.0.1:4524", faults=Faults(),
                             keep_deleted=self.KEEP)
        self.successResultOf(defer.ensureDeferred(again.start()))
        self.addCleanup(again.stop)
        self.assertIn(("purge", "old"), self.backend.calls)

    def test_a_report_lists_the_newest_entries_only_so_it_stays_small(self):
        for i in range(TRASH_REPORT_LIMIT + 5):
            key = f"k{i}"
            self.backend.trash_entries[key] = TrashEntry(DS, 1_000_000.0 + i, 1, key)
        trash = self.agent.build_report()["trash"]
        self.assertEqual(len(trash), TRASH_REPORT_LIMIT)
        self.assertEqual(trash[-1]["deleted_at"], 1_000_000.0 + TRASH_REPORT_LIMIT + 4)

    def test_a_failing_trash_check_is_tried_again(self):
        self.delete()
        purge, calls = self.agent.purge_expired, []

        async def failing_once():
            calls.append(self.clock.seconds())
            if len(calls) == 1:
                raise OSError("disk on fire")
            await purge()

        self.agent.purge_expired = failing_once
        self.clock.advance(self.KEEP / 4)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.clock.advance(self.KEEP)
        self.assertGreater(len(calls), 1)
        self.assertEqual(self.backend.trashed(), [])

    def test_without_a_keep_window_a_delete_destroys_at_once(self):
        self.agent.keep_deleted = 0
        self.delete()
        self.assertEqual(self.backend.calls, [("destroy", DS)])


class MoveTests(SynchronousTestCase):
    """Moves that cannot finish, datasets in use here, generations."""

    def setUp(self):
        self.clock = Clock()
        self.control = FakeControl()
        self.backend = StubBackend()
        self.peers = FakePeers({"primary": False, "snapshots": [], "accepting": True})
        self.agent = AgentService(self.clock, self.backend, self.control, self.peers, ME,
                                  "10.0.0.1", "http://10.0.0.1:4524", faults=Faults())
        self.successResultOf(defer.ensureDeferred(self.agent.start()))
        self.addCleanup(self.agent.stop)
        self.backend.held[DS] = LocalDataset(DS, PRIMARY, self.backend.path(DS),
                                             generation=1)

    def deliver(self, body):
        self.control.polls[-1][1].callback(body)

    def move_to_other(self, generation=2, maximum_size=None, reporting=()):
        self.deliver(view(generation, [dataset(primary=OTHER, manifested=True,
                                               generation=generation,
                                               maximum_size=maximum_size)], nodes=[{
            "uuid": OTHER, "host": "10.0.0.2", "agent_url": "http://10.0.0.2:4524",
            "datasets": [{"dataset_id": d, "path": "/x"} for d in reporting],
            "transfers": []}]))

    def pushed_transfers(self):
        return [t for t in self.control.reports[-1]["transfers"] if t["direction"] == "push"]

    def test_a_move_that_keeps_failing_is_stalled_after_five_attempts_with_its_cause(self):
        self.peers.push_error = PeerError(500, "No space left on device on 10.0.0.2")
        self.move_to_other()
        self.assertEqual(len(self.peers.pushes), 1)
        [transfer] = self.pushed_transfers()
        self.assertEqual((transfer["attempts"], transfer["stalled"], transfer["error"],
                          transfer["peer"], transfer["bytes_done"]),
                         (1, False, "No space left on device on 10.0.0.2", OTHER, 300))
        for delay in (0.5, 1.0, 2.0, 4.0):
            self.clock.advance(delay)
        self.assertEqual(len(self.peers.pushes), 5)
        [transfer] = self.pushed_transfers()
        self.assertEqual((transfer["attempts"], transfer["stalled"]), (5, True))
        self.assertEqual(self.agent.metrics()["failing"][DS]["stalled"], True)
        self.clock.pump([10.0] * 20)          # nothing more for a while
        self.assertEqual(len(self.peers.pushes), 5)
        self.assertEqual(self.backend.held[DS].role, PRIMARY)
        self.assertNotIn(("handoff", DS, OTHER), self.backend.calls)
        self.assertEqual(self.backend.calls.count(("abandon_send", DS)), 5)

    def test_a_stalled_move_is_tried_again_when_its_configuration_changes(self):
        self.peers.push_error = PeerError(500, "No space left on device on 10.0.0.2")
        self.move_to_other()
        for delay in (0.5, 1.0, 2.0, 4.0):
            self.clock.advance(delay)
        self.move_to_other(generation=2)              # the same configuration again
        self.assertEqual(len(self.peers.pushes), 5)
        self.peers.push_error = None
        self.move_to_other(generation=2, maximum_size=1 << 30)
        self.assertEqual(len(self.peers.pushes), 6)
        self.assertIn(("handoff", DS, OTHER), self.backend.calls)
        self.assertEqual(self.pushed_transfers(), [])

    def test_a_stalled_move_is_tried_again_after_the_long_backoff(self):
        self.peers.push_error = PeerError(500, "No space left on device on 10.0.0.2")
        self.move_to_other()
        for delay in (0.5, 1.0, 2.0, 4.0):
            self.clock.advance(delay)
        self.peers.push_error = None
        self.clock.advance(self.agent.stall_retry)
        self.assertEqual(len(self.peers.pushes), 6)
        self.assertIn(("handoff", DS, OTHER), self.backend.calls)

    def test_an_unreachable_receiver_is_named_and_knocked_on_again_sooner(self):
        self.peers.push_error = ConnectionRefusedError("Connection refused")
        self.move_to_other()
        [transfer] = self.pushed_transfers()
        self.assertIn("http://10.0.0.2:4524", transfer["error"])
        for delay in (0.5, 1.0, 2.0, 4.0):
            self.clock.advance(delay)
        self.assertTrue(self.pushed_transfers()[0]["stalled"])
        self.peers.push_error = None        # its agent is back
        self.clock.advance(30)
        self.assertIn(("handoff", DS, OTHER), self.backend.calls)

    def test_a_dataset_in_use_here_is_not_pushed_until_nothing_uses_it(self):
        users = ["web, since 12:00:00"]
        self.agent.in_use = lambda dataset_id, fresh=False: users
        self.move_to_other()
        self.assertEqual(self.peers.pushes, [])
        self.assertIn("in use here by web", self.agent.metrics()["waiting"][DS])
        self.assertEqual(self.agent.metrics()["in_use"], {DS: users})
        users.clear()
        self.agent.converge()
        self.assertEqual(len(self.peers.pushes), 1)
        self.assertIn(("handoff", DS, OTHER), self.backend.calls)

    def test_a_use_starting_during_the_push_stops_the_handoff_before_the_acquire(self):
        asked = []

        def in_use(dataset_id, fresh=False):
            asked.append(fresh)
            return ["pid 77 (sh)"] if asked.count(True) >= 2 else []
        self.agent.in_use = in_use
        self.move_to_other()
        self.assertEqual(len(self.peers.pushes), 1)
        self.assertEqual(self.peers.acquires, [])
        self.assertNotIn(("handoff", DS, OTHER), self.backend.calls)
        self.assertEqual(self.backend.held[DS].role, PRIMARY)
        self.assertNotIn(DS, self.agent.failures, "not a failure: it waits")

    def test_a_use_the_latest_scan_missed_is_looked_at_again_a_second_later(self):
        fresh_users = ["pid 77 (sh)"]
        self.agent.in_use = lambda dataset_id, fresh=False: fresh_users if fresh else []
        self.move_to_other()
        self.assertEqual(self.peers.pushes, [])
        self.clock.advance(0.9)
        self.assertEqual(self.peers.pushes, [])
        fresh_users.clear()
        self.clock.advance(0.1)
        self.assertEqual(len(self.peers.pushes), 1)

    def test_pushes_and_acquires_carry_our_generation(self):
        self.move_to_other(generation=2)
        [(_, generation)] = self.peers.pushes
        self.assertEqual(generation, 1)
        self.assertEqual(self.peers.acquires, [(DS, "r", 1)])

    def test_a_receiver_holding_a_newer_generation_gets_nothing_from_us(self):
        self.peers.description = {"primary": False, "snapshots": [], "accepting": True,
                                  "generation": 3}
        self.move_to_other(generation=4)
        self.assertEqual(self.peers.pushes, [])
        self.assertIn("newer than our copy", self.agent.failures[DS].error)

    def test_a_target_that_acquired_our_copy_at_the_next_generation_gets_the_handoff(self):
        self.peers.description = {"primary": True, "origin": "received", "snapshots": [],
                                  "generation": 2}
        self.move_to_other(generation=2, reporting=[DS])
        self.assertEqual(self.peers.pushes, [])
        self.assertIn(("handoff", DS, OTHER), self.backend.calls)

    def test_a_target_primary_older_than_our_copy_is_not_handed_ours(self):
        self.backend.held[DS] = LocalDataset(DS, PRIMARY, self.backend.path(DS),
                                             generation=3)
        self.peers.description = {"primary": True, "origin": "received", "snapshots": [],
                                  "generation": 2}
        self.move_to_other(generation=4, reporting=[DS])
        self.assertNotIn(("handoff", DS, OTHER), self.backend.calls)
        self.assertIn("older than our copy", self.agent.failures[DS].error)

    def test_a_superseded_copy_is_neither_reported_nor_pushed(self):
        third = "33333333-3333-4333-8333-333333333333"
        self.deliver(view(5, [dataset(primary=third, manifested=True, generation=5)], nodes=[
            {"uuid": OTHER, "host": "10.0.0.2", "agent_url": "http://10.0.0.2:4524",
             "datasets": [{"dataset_id": DS, "path": "/x"}], "transfers": []},
            {"uuid": third, "host": "10.0.0.3", "agent_url": "http://10.0.0.3:4524",
             "datasets": [], "transfers": []}]))
        self.assertEqual(self.peers.pushes, [])
        self.assertIn("superseded", self.agent.metrics()["waiting"][DS])
        self.agent.request_report()
        self.assertEqual(self.control.reports[-1]["datasets"], [])

    def test_the_views_generation_is_kept_with_a_copy_primary_here(self):
        self.deliver(view(7, [dataset(primary=ME, manifested=True, generation=7)]))
        self.assertEqual(self.backend.known_generation(DS), 7)

    def test_a_push_older_than_the_copy_held_here_is_refused(self):
        self.backend.held[DS] = LocalDataset(DS, HANDED_OFF, self.backend.path(DS),
                                             generation=4)
        self.deliver(view(6, [dataset(primary=ME, manifested=True, generation=6)]))
        failure = self.failureResultOf(defer.ensureDeferred(
            self.agent.check_receive(DS, generation=3)), Refused)
        self.assertEqual(failure.value.code, 409)
        self.assertIn("older than generation 4 held on 10.0.0.1", failure.value.description)
        self.successResultOf(defer.ensureDeferred(self.agent.check_receive(DS, generation=4)))


class FaultsTests(SynchronousTestCase):
    def test_parse(self):
        self.assertEqual(Faults.parse("receive-pause-after-bytes=1024"),
                         Faults(receive_pause_after_bytes=1024))
        self.assertFalse(Faults.parse("").active())

    def test_unknown_fault_is_an_error(self):
        self.assertRaises(ValueError, Faults.parse, "explode=1")


class CommandTests(SynchronousTestCase):
    def test_advertise_url_from_listen(self):
        from powerstripflocker.agent.command import advertise_url
        self.assertEqual(advertise_url("tcp:4524:interface=127.0.0.1", "10.0.0.5"),
                         "http://127.0.0.1:4524")
        self.assertEqual(advertise_url("tcp:port=4524", "10.0.0.5"), "http://10.0.0.5:4524")
        self.assertEqual(advertise_url("tcp:4524:interface=0.0.0.0", "10.0.0.5"),
                         "http://10.0.0.5:4524")
        self.assertEqual(advertise_url("ssl:4524:privateKey=k.pem:certKey=c.pem", "10.0.0.5"),
                         "https://10.0.0.5:4524")

    def test_node_uuid_is_created_once_and_kept(self):
        import os
        from powerstripflocker.agent.command import node_uuid
        root = self.mktemp()
        os.makedirs(root)
        first = node_uuid(root)
        self.assertEqual(node_uuid(root), first)
        import uuid
        self.assertEqual(uuid.UUID(first).version, 4)


class ProgressTests(SynchronousTestCase):
    def test_logs_bytes_done_total_and_rate_every_interval(self):
        from twisted.logger import globalLogPublisher

        from powerstripflocker.agent.streams.progress import Progress
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        clock = Clock()
        progress = Progress(clock, DS, "push", OTHER, total=100_000_000, interval=5.0)
        progress.add(1_000_000)
        clock.advance(4)
        progress.add(1_000_000)
        self.assertEqual([e for e in events if "bytes_done" in e], [])
        clock.advance(1)
        progress.add(8_000_000)
        logged = [e for e in events if "bytes_done" in e]
        self.assertEqual(len(logged), 1)
        self.assertEqual((logged[0]["bytes_done"], logged[0]["bytes_total"]),
                         (10_000_000, 100_000_000))
        self.assertAlmostEqual(logged[0]["rate_mb"], 2.0)
        self.assertEqual(progress.as_report(), {
            "dataset_id": DS, "direction": "push", "peer": OTHER,
            "bytes_done": 10_000_000, "bytes_total": 100_000_000})
