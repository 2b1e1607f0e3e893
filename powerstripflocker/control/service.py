"""The control service's core: configuration changes, leases, node reports,
the cluster generation and the long-poll waiters. No HTTP here.

ControlService is made of its parts: Leases (leasing.py), Claims (claims.py) and
NodeReports (reports.py); the datasets' configuration, the trash, the generation and
the long-poll waiters are here. Time comes from an injectable IReactorTime (the reactor
in production, a twisted.internet.task.Clock in tests).
"""

import secrets
import uuid

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from powerstripflocker.control.claims import Claims
from powerstripflocker.control.errors import (
    DATASET_DELETED, DATASET_ID_IN_USE, DATASET_NOT_FOUND, APIError,
)
from powerstripflocker.control.leasing import Leases
from powerstripflocker.control.reports import NodeReport, NodeReports
from powerstripflocker.control.store import Dataset
from powerstripflocker.protocol.ids import canonical_uuid

DEFAULT_STATE_EXPIRY = 120.0
SWEEP_INTERVAL = 1.0


class ControlService(Leases, Claims, NodeReports):
    """Configuration (persisted in an IStore), leases, node reports and the generation."""

    log = Logger()

    def __init__(self, store, clock, state_expiry=DEFAULT_STATE_EXPIRY):
        self.store = store
        self.clock = clock
        self.state_expiry = state_expiry
        self.nodes = {}
        self._persisted_received = {}
        for node_uuid, report, received in store.node_reports():
            self.nodes[node_uuid] = NodeReport(
                node_uuid, report["host"], report["agent_url"], report["datasets"],
                report["transfers"], received=received, trash=report.get("trash", []),
                era=report.get("era"),
            )
            self._persisted_received[node_uuid] = received
        # Random start: a restarted service never takes an agent's old generation for current.
        self.generation = secrets.randbelow(2 ** 48) + 1
        self._waiters = []
        self._sweeper = None

    # -- lifecycle --------------------------------------------------------

    def start(self):
        self._sweeper = LoopingCall(self._sweep_safely)
        self._sweeper.clock = self.clock
        self._sweeper.start(SWEEP_INTERVAL, now=True).addErrback(
            lambda failure: self.log.failure("sweep loop stopped", failure)
        )

    def stop(self):
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        for waiter in self._waiters[:]:
            waiter.callback(self.generation)
        self._waiters = []

    def _sweep_safely(self):
        try:
            self.sweep()
        except Exception:
            self.log.failure("expiry sweep failed; trying again in a second")

    def sweep(self):
        """Drop expired leases and stale node reports (called every second)."""
        now = self.clock.seconds()
        changed = False
        for lease in self.store.expire_leases(now):
            self.log.info(
                "lease on dataset {dataset_id} held by {node_uuid} expired",
                dataset_id=lease.dataset_id, node_uuid=lease.node_uuid,
            )
            changed = True
        for node_uuid, report in list(self.nodes.items()):
            if now - report.received > self.state_expiry:
                del self.nodes[node_uuid]
                self._persisted_received.pop(node_uuid, None)
                self.store.delete_node_report(node_uuid)
                self.log.warn(
                    "node {node_uuid} ({host}) has not reported for {seconds:.0f}s; "
                    "dropped from state",
                    node_uuid=node_uuid, host=report.host, seconds=now - report.received,
                )
                changed = True
        if changed:
            self.changed()

    # -- generation and waiting -------------------------------------------

    def changed(self):
        """Something agents care about changed: bump the generation, wake the long-polls."""
        self.generation += 1
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

    # -- configuration ----------------------------------------------------

    def configuration_tag(self):
        return self.store.configuration_tag()

    def check_tag(self, wanted):
        """412 unless wanted (the X-If-Configuration-Matches header, or None) matches."""
        if wanted is None:
            return
        current = self.configuration_tag()
        if wanted != current:
            raise APIError(
                412, f"Tag doesn't match. Required: {wanted}, current: {current}"
            )

    def datasets(self):
        return self.store.datasets()

    def create_dataset(self, primary, dataset_id=None, metadata=None, maximum_size=None):
        with self.store.transaction():
            dataset = self._create(primary, dataset_id, metadata, maximum_size)
        self.changed()
        return dataset

    def _create(self, primary, dataset_id, metadata, maximum_size):
        dataset_id = (dataset_id or str(uuid.uuid4())).lower()
        if self.store.get_dataset(dataset_id) is not None:
            raise APIError(409, DATASET_ID_IN_USE)
        dataset = Dataset(
            dataset_id=dataset_id,
            primary=primary.lower(),
            metadata=dict(metadata or {}),
            maximum_size=maximum_size,
            origin=primary.lower(),
        )
        self.store.add_dataset(dataset)
        self.log.info(
            "dataset {dataset_id} created on {primary} (metadata {metadata}, "
            "maximum_size {maximum_size})",
            dataset_id=dataset_id, primary=dataset.primary, metadata=dataset.metadata,
            maximum_size=maximum_size,
        )
        return dataset

    def _existing(self, dataset_id):
        normalised = canonical_uuid(dataset_id)
        dataset = None if normalised is None else self.store.get_dataset(normalised)
        if dataset is None:
            raise APIError(404, DATASET_NOT_FOUND)
        return dataset

    def datasets_named(self, name):
        """Every dataset named name, deleted ones too, in creation order."""
        return self.store.datasets_named(name)

    def update_dataset(self, dataset_id, primary=None):
        """Move the dataset; refused (409) while another node than the new primary
        holds its lease, decided in one transaction with the move."""
        with self.store.transaction():
            dataset = self._existing(dataset_id)
            if dataset.deleted:
                raise APIError(405, DATASET_DELETED)
            if primary is None or primary.lower() == dataset.primary:
                return dataset
            primary = primary.lower()
            lease = self._live_lease(dataset.dataset_id)
            if lease is not None and lease.node_uuid != primary:
                raise self._held_elsewhere(f"dataset {dataset.dataset_id}", lease)
            self._move(dataset, primary)
            moved = self.store.get_dataset(dataset.dataset_id)
        self.changed()
        return moved

    def _move(self, dataset, primary):
        self.store.set_primary(dataset.dataset_id, primary)
        self.log.info(
            "dataset {dataset_id} moved from {source} to {target} (generation {generation})",
            dataset_id=dataset.dataset_id, source=dataset.primary, target=primary,
            generation=dataset.generation + 1,
        )

    def delete_dataset(self, dataset_id):
        """Mark the dataset deleted; refused (409) while any node holds its lease."""
        with self.store.transaction():
            dataset = self._existing(dataset_id)
            if dataset.deleted:
                return dataset
            lease = self._live_lease(dataset.dataset_id)
            if lease is not None:
                raise self._held_elsewhere(f"dataset {dataset.dataset_id}", lease)
            self.store.mark_deleted(dataset.dataset_id)
            deleted = self.store.get_dataset(dataset.dataset_id)
        self.log.info(
            "dataset {dataset_id} deleted (primary {primary})",
            dataset_id=dataset.dataset_id, primary=dataset.primary,
        )
        self.changed()
        return deleted

    # -- the trash: deleted data the agents keep for a while ----------------

    def trash(self):
        """Every trash entry of the fresh node reports, with its node, host, dataset
        name and whether the dataset is still deleted; most recently deleted first."""
        entries = []
        for report in self.fresh_nodes():
            for kept in report.trash:
                dataset = self.store.get_dataset(kept["dataset_id"])
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

    def restore_dataset(self, dataset_id):
        """Un-delete a deleted dataset, primary the node keeping its data, decided in
        one transaction: 409 when it is not deleted or its name is used by a live
        dataset now, 404 when no node keeps its data."""
        with self.store.transaction():
            dataset = self._existing(dataset_id)
            if not dataset.deleted:
                raise APIError(409, f"dataset {dataset.dataset_id} is not deleted.")
            name = dataset.metadata.get("name")
            if name is not None:
                live = [d for d in self.store.datasets_named(name) if not d.deleted]
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
            self.store.mark_restored(dataset.dataset_id)
            if keeper != dataset.primary:
                self._move(dataset, keeper)
            restored = self.store.get_dataset(dataset.dataset_id)
        self.log.info(
            "dataset {dataset_id} restored on {primary} (generation {generation})",
            dataset_id=restored.dataset_id, primary=restored.primary,
            generation=restored.generation)
        self.changed()
        return restored
