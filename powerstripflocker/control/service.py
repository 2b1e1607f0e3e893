"""The control service's core: configuration changes, leases, node reports,
the cluster generation and the long-poll waiters. No HTTP here.

ControlService is made of its parts: Leases (leasing.py), Claims (claims.py) and
NodeReports (reports.py); the datasets' configuration, the trash, the generation and
the long-poll waiters are here. Time comes from an injectable IReactorTime (the reactor
in production, a twisted.internet.task.Clock in tests).

Its store is an IAsyncStore (asyncstore.py): each change is one decision, read and
applied atomically by the store, so several replicas of the service may share one store
(etcd). When others write to it, the store's feed (follow) keeps this replica's node
reports and generation current; alone on it (SQLite), the service keeps both itself.
"""

import secrets
import uuid

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from powerstripflocker.clients.etcd import Once
from powerstripflocker.control.claims import Claims
from powerstripflocker.control.errors import (
    DATASET_DELETED, DATASET_ID_IN_USE, DATASET_NOT_FOUND, APIError, TagMismatch,
)
from powerstripflocker.control.leasing import Leases
from powerstripflocker.control.replication import ReplicaPlacement
from powerstripflocker.control.reports import NodeReport, NodeReports
from powerstripflocker.control.store import Dataset
from powerstripflocker.protocol.ids import canonical_uuid

DEFAULT_STATE_EXPIRY = 120.0
SWEEP_INTERVAL = 1.0
STORE_HEALTH_SECONDS = 5.0
REPORTS_LOAD_SECONDS = 5.0


class ControlService(Leases, Claims, NodeReports, ReplicaPlacement):
    """Configuration (persisted in an IAsyncStore), leases, node reports, replica
    placement and the generation."""

    log = Logger()

    def __init__(self, store, clock, state_expiry=DEFAULT_STATE_EXPIRY, default_replicas=0):
        """default_replicas: the copies besides the primary kept of a volume created
        without a count of its own (control/replicas.py)."""
        self.store = store
        self.clock = clock
        self.state_expiry = state_expiry
        self.default_replicas = default_replicas
        self._started_at = clock.seconds()
        # The replica choices are looked at again when the configuration or the live
        # nodes (those of the last look) change.
        self._replicas_due = True
        self._last_replica_look = None
        self.nodes = {}
        self._persisted_received = {}
        # Random start: a restarted service never takes an agent's old generation for
        # current. Following a shared store, it is the store's revision instead.
        self.generation = secrets.randbelow(2 ** 48) + 1
        self._waiters = []
        self._sweeper = None
        self._follower = None
        # Fires once the store's feed has given the node reports (at start, from SQLite).
        self._reports_loaded = Once()
        self._sweep_failing = False

    # -- lifecycle --------------------------------------------------------

    async def start(self):
        self._started_at = self.clock.seconds()
        self._follower = self.store.follow(self, self.clock)
        if self._follower is None:
            self.reports_loaded(await self.store.node_reports())
        self._sweeper = LoopingCall(self._sweep_safely)
        self._sweeper.clock = self.clock
        self._sweeper.start(SWEEP_INTERVAL, now=True).addErrback(
            lambda failure: self.log.failure("sweep loop stopped", failure)
        )

    async def stop(self):
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        if self._follower is not None:
            await self._follower.stop()
        for waiter in self._waiters[:]:
            waiter.callback(self.generation)
        self._waiters = []

    async def _sweep_safely(self):
        try:
            await self.sweep()
        except Exception as error:
            if not self._sweep_failing:
                self.log.warn("expiry sweep failed ({error}); trying again every second",
                              error=error)
            self._sweep_failing = True
        else:
            if self._sweep_failing:
                self.log.info("expiry sweep works again")
            self._sweep_failing = False

    async def sweep(self):
        """Drop expired leases and stale node reports, then choose again the replica
        nodes that are due (called every second)."""
        now = self.clock.seconds()
        changed = False
        for lease in await self.store.expire_leases(now):
            self.log.info(
                "lease on dataset {dataset_id} held by {node_uuid} expired",
                dataset_id=lease.dataset_id, node_uuid=lease.node_uuid,
            )
            changed = True
        for node_uuid, report in list(self.nodes.items()):
            if now - report.received > self.state_expiry:
                del self.nodes[node_uuid]
                self._persisted_received.pop(node_uuid, None)
                if self._follower is None:
                    # A shared store drops the report itself (its lease lapses).
                    await self.store.delete_node_report(node_uuid)
                self.log.warn(
                    "node {node_uuid} ({host}) has not reported for {seconds:.0f}s; "
                    "dropped from state",
                    node_uuid=node_uuid, host=report.host, seconds=now - report.received,
                )
                changed = True
        if changed:
            self.changed()
        await self.place_replicas()

    async def store_health(self):
        """(True, None) when the store answers a read within STORE_HEALTH_SECONDS, else
        (False, what went wrong)."""
        reading = self.store.is_empty()
        reading.addTimeout(STORE_HEALTH_SECONDS, self.clock)
        try:
            await reading
        except Exception as error:
            return False, str(error) or type(error).__name__
        return True, None

    # -- the store's feed: what other replicas write -------------------------

    def reports_loaded(self, reports):
        self.nodes = {}
        for node_uuid, report, received in reports:
            self.report_stored(node_uuid, report, received)
        self._reports_loaded.fire(None)

    async def reports_ready(self):
        """Once the node reports are loaded, or after REPORTS_LOAD_SECONDS (a replica
        whose store does not answer yet): an agent's first view then names its peers."""
        loading = self._reports_loaded.wait()
        loading.addTimeout(REPORTS_LOAD_SECONDS, self.clock)
        try:
            await loading
        except defer.TimeoutError:
            pass

    def report_stored(self, node_uuid, report, received):
        self.nodes[node_uuid] = NodeReport(
            node_uuid, report["host"], report["agent_url"], report["datasets"],
            report["transfers"], received=received, trash=report.get("trash", []),
            era=report.get("era"),
        )
        self._persisted_received.setdefault(node_uuid, received)

    def report_removed(self, node_uuid):
        self.nodes.pop(node_uuid, None)
        self._persisted_received.pop(node_uuid, None)

    def datasets_changed(self):
        self.replicas_due()

    def store_advanced(self, revision):
        if revision != self.generation:
            self._advance(revision)

    # -- generation and waiting -------------------------------------------

    def changed(self):
        """Something agents care about changed: bump the generation, wake the long-polls.
        Following a shared store, the change comes back through its feed instead."""
        if self._follower is None:
            # Alone on the store (SQLite, local): any change is worth a look at the
            # replicas. Followers hear of dataset changes from the feed instead.
            self.replicas_due()
            self._advance(self.generation + 1)

    def _advance(self, generation):
        self.generation = generation
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(self.generation)

    def wait_for_change(self, generation, timeout):
        """Deferred firing with the current generation once it differs from generation,
        or after timeout seconds. Cancellable (a long-poll client went away)."""
        if generation != self.generation:
            waiter = Deferred()
            waiter.callback(self.generation)
            return waiter

        def cancel(deferred):
            if deferred in self._waiters:
                self._waiters.remove(deferred)
            if delayed.active():
                delayed.cancel()

        waiter = Deferred(cancel)

        def timed_out():
            if waiter in self._waiters:
                self._waiters.remove(waiter)
                waiter.callback(self.generation)

        delayed = self.clock.callLater(timeout, timed_out)

        def done(result):
            if delayed.active():
                delayed.cancel()
            return result

        waiter.addBoth(done)
        self._waiters.append(waiter)
        return waiter

    # -- decisions --------------------------------------------------------

    async def _decide(self, decision, tagged=False):
        """What decision(view, note) returns, run as one decision of the store; tagged:
        (that, the configuration tag as the decision leaves it), for the answer's
        X-Configuration-Tag without another read of the store.
        note(format, **fields) logs once the decision is applied: on a shared store a
        decision may run again when another replica changed what it read."""
        notes = []

        async def attempt(view):
            notes.clear()
            result = await decision(
                view, lambda text, **fields: notes.append((text, fields)))
            return (result, await view.decided_tag()) if tagged else result

        result = await self.store.decide(attempt)
        for text, fields in notes:
            self.log.info(text, **fields)
        return result

    # -- configuration ----------------------------------------------------

    async def _check_tag(self, view, wanted):
        if wanted is None:
            return
        current = await view.configuration_tag()
        if wanted != current:
            raise TagMismatch(wanted, current)

    async def check_tag(self, wanted):
        """TagMismatch (412) unless wanted (X-If-Configuration-Matches, or None) matches."""
        async def decision(view, note):
            await self._check_tag(view, wanted)
        await self._decide(decision)

    def datasets(self):
        return self.store.datasets()

    async def listing(self, name=None):
        """(datasets, leases, configuration tag), read in one snapshot: the tag is that
        of what was read. name: only the datasets of that name, deleted ones too."""
        async def read(view):
            datasets = await (view.datasets() if name is None else view.datasets_named(name))
            return datasets, await view.leases(), await view.configuration_tag()
        return await self.store.decide(read)

    async def create_dataset(self, primary, dataset_id=None, metadata=None,
                             maximum_size=None, wanted_tag=None):
        """409 when dataset_id is taken (a create sent again after its answer was lost
        finds its own id: its client reads the 409 as done), else 412 when wanted_tag
        does not match, decided in one transaction with the create."""
        dataset_id = (dataset_id or str(uuid.uuid4())).lower()
        metadata = self.new_metadata(metadata)

        async def decision(view, note):
            if await view.get_dataset(dataset_id) is not None:
                raise APIError(409, DATASET_ID_IN_USE)
            await self._check_tag(view, wanted_tag)
            return await self._create(view, note, primary, dataset_id, metadata,
                                      maximum_size)

        dataset, tag = await self._decide(decision, tagged=True)
        self.changed()
        return dataset, tag

    async def _create(self, view, note, primary, dataset_id, metadata, maximum_size):
        if await view.get_dataset(dataset_id) is not None:
            raise APIError(409, DATASET_ID_IN_USE)
        dataset = Dataset(
            dataset_id=dataset_id,
            primary=primary.lower(),
            metadata=dict(metadata or {}),
            maximum_size=maximum_size,
            origin=primary.lower(),
        )
        await view.add_dataset(dataset)
        note(
            "dataset {dataset_id} created on {primary} (metadata {metadata}, "
            "maximum_size {maximum_size})",
            dataset_id=dataset_id, primary=dataset.primary, metadata=dataset.metadata,
            maximum_size=maximum_size,
        )
        return dataset

    async def _existing(self, view, dataset_id):
        normalised = canonical_uuid(dataset_id)
        dataset = None if normalised is None else await view.get_dataset(normalised)
        if dataset is None:
            raise APIError(404, DATASET_NOT_FOUND)
        return dataset

    async def update_dataset(self, dataset_id, primary=None, wanted_tag=None):
        """Move the dataset; refused (409) while another node than the new primary
        holds its lease, decided in one transaction with the move."""
        async def decision(view, note):
            await self._check_tag(view, wanted_tag)
            dataset = await self._existing(view, dataset_id)
            if dataset.deleted:
                raise APIError(405, DATASET_DELETED)
            if primary is None or primary.lower() == dataset.primary:
                return dataset, False
            lease = await self._live_lease(view, dataset.dataset_id)
            if lease is not None and lease.node_uuid != primary.lower():
                raise self._held_elsewhere(f"dataset {dataset.dataset_id}", lease)
            await self._move(view, note, dataset, primary.lower())
            return await view.get_dataset(dataset.dataset_id), True

        (dataset, moved), tag = await self._decide(decision, tagged=True)
        if moved:
            self.changed()
        return dataset, tag

    async def _move(self, view, note, dataset, primary):
        await view.set_primary(dataset.dataset_id, primary)
        note(
            "dataset {dataset_id} moved from {source} to {target} (generation {generation})",
            dataset_id=dataset.dataset_id, source=dataset.primary, target=primary,
            generation=dataset.generation + 1,
        )

    async def delete_dataset(self, dataset_id, wanted_tag=None):
        """Mark the dataset deleted; refused (409) while any node holds its lease."""
        async def decision(view, note):
            await self._check_tag(view, wanted_tag)
            dataset = await self._existing(view, dataset_id)
            if dataset.deleted:
                return dataset, False
            lease = await self._live_lease(view, dataset.dataset_id)
            if lease is not None:
                raise self._held_elsewhere(f"dataset {dataset.dataset_id}", lease)
            await view.mark_deleted(dataset.dataset_id)
            note("dataset {dataset_id} deleted (primary {primary})",
                 dataset_id=dataset.dataset_id, primary=dataset.primary)
            return await view.get_dataset(dataset.dataset_id), True

        (dataset, deleted), tag = await self._decide(decision, tagged=True)
        if deleted:
            self.changed()
        return dataset, tag

    # -- the trash: deleted data the agents keep for a while ----------------

    async def trash(self):
        """Every trash entry of the fresh node reports, with its node, host, dataset
        name and whether the dataset is still deleted; most recently deleted first."""
        datasets = {d.dataset_id: d for d in await self.store.datasets()}
        entries = []
        for report in self.fresh_nodes():
            for kept in report.trash:
                dataset = datasets.get(kept["dataset_id"])
                entries.append(dict(
                    kept, node_uuid=report.uuid, host=report.host,
                    name=None if dataset is None else dataset.metadata.get("name"),
                    deleted=None if dataset is None else dataset.deleted))
        entries.sort(key=lambda entry: (-entry["deleted_at"], entry["node_uuid"]))
        return entries

    def _keeper(self, dataset):
        """The node to restore a deleted dataset on: one whose fresh report still lists
        it (its delete is not done there yet), else the one keeping the newest copy in
        its trash (highest generation, then latest delete); None when no node has it."""
        kept = []
        for report in self.fresh_nodes():
            if any(entry["dataset_id"] == dataset.dataset_id for entry in report.datasets):
                return report.uuid
            for entry in report.trash:
                if entry["dataset_id"] == dataset.dataset_id:
                    kept.append((entry.get("generation") or 0, entry["deleted_at"],
                                 report.uuid))
        return max(kept)[2] if kept else None

    async def restore_dataset(self, dataset_id, wanted_tag=None):
        """Un-delete a deleted dataset, primary the node keeping its data, decided in
        one transaction: 409 when it is not deleted or its name is used by a live
        dataset now, 404 when no node keeps its data."""
        async def decision(view, note):
            await self._check_tag(view, wanted_tag)
            dataset = await self._existing(view, dataset_id)
            if not dataset.deleted:
                raise APIError(409, f"dataset {dataset.dataset_id} is not deleted.")
            name = dataset.metadata.get("name")
            if name is not None:
                live = [d for d in await view.datasets_named(name) if not d.deleted]
                if live:
                    raise APIError(409, (
                        f"the name {name!r} is used by dataset {live[0].dataset_id} now; "
                        f"delete or rename that one to restore dataset "
                        f"{dataset.dataset_id}."))
            keeper = self._keeper(dataset)
            if keeper is None:
                raise APIError(404, (
                    f"dataset {dataset.dataset_id} is in no node's trash: its data was "
                    "removed after the agents' --keep-deleted, or its node is not "
                    "reporting."))
            await view.mark_restored(dataset.dataset_id)
            if keeper != dataset.primary:
                await self._move(view, note, dataset, keeper)
            restored = await view.get_dataset(dataset.dataset_id)
            note("dataset {dataset_id} restored on {primary} (generation {generation})",
                 dataset_id=restored.dataset_id, primary=restored.primary,
                 generation=restored.generation)
            return restored

        restored, tag = await self._decide(decision, tagged=True)
        self.changed()
        return restored, tag
