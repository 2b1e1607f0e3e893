"""The control service's core: configuration changes, leases, node reports,
the cluster generation and the long-poll waiters. No HTTP here.

Time comes from an injectable IReactorTime (the reactor in production, a
twisted.internet.task.Clock in tests).
"""

import json
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Optional

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from powerstripflocker.protocol.ids import canonical_uuid
from powerstripflocker.protocol.leases import after_use_ended, granted
from powerstripflocker.control.store import Dataset, Lease

DEFAULT_STATE_EXPIRY = 120.0
# What a sender or receiver may add to a transfer it reports, kept as reported.
TRANSFER_OUTCOME_FIELDS = ("attempts", "error", "stalled")
SWEEP_INTERVAL = 1.0


class APIError(Exception):
    """A deliberate error answer: status code plus Flocker's {"description": ...} body."""

    def __init__(self, code, description, errors=None):
        super().__init__(code, description)
        self.code = code
        self.description = description
        self.errors = errors

    def body(self):
        result = {"description": self.description}
        if self.errors is not None:
            result["errors"] = list(self.errors)
        return result


DEFAULT_CLAIM_SECONDS = 30.0

DATASET_NOT_FOUND = "Dataset not found."
DATASET_DELETED = "The dataset has been deleted."
DATASET_ID_IN_USE = "The provided dataset_id is already in use."
LEASE_NOT_FOUND = "Lease not found."


class HeldElsewhere(APIError):
    """409: another node holds the lease; the body names it and what uses the dataset."""

    def __init__(self, description, holder):
        super().__init__(409, description)
        self.holder = holder

    def body(self):
        return dict(super().body(), holder=dict(self.holder))


class ClaimedElsewhere(APIError):
    """409: a claim that waited for generation G found the dataset moved to another node."""

    def __init__(self, description, claimant):
        super().__init__(409, description)
        self.claimant = claimant

    def body(self):
        return dict(super().body(), claimed_by=dict(self.claimant))


@dataclass
class NodeReport:
    uuid: str
    host: str
    agent_url: str
    datasets: list
    transfers: list
    received: float = field(compare=False)
    # Deleted datasets whose data the node keeps: [{dataset_id, deleted_at, expires_at,
    # bytes[, generation]}], times on the node's clock.
    trash: list = field(default_factory=list)
    # The agent run that sent it (a UUID new at each agent start), when it says.
    era: Optional[str] = field(default=None, compare=False)

    def content(self):
        return (self.host, self.agent_url, self.datasets, self.transfers, self.trash)

    def to_json(self):
        document = {
            "uuid": self.uuid,
            "host": self.host,
            "agent_url": self.agent_url,
            "datasets": self.datasets,
            "transfers": self.transfers,
        }
        if self.trash:
            document["trash"] = self.trash
        if self.era:
            document["era"] = self.era
        return document


class ControlService:
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

    # -- leases -----------------------------------------------------------

    def leases(self):
        return self.store.leases()

    def acquire_lease(self, dataset_id, node_uuid, expires, new_user=False):
        """(created, lease): created is False for a renewal by the same node.

        Refused (409) when another node holds the lease, or when the dataset is
        configured and its primary is not node_uuid; decided in one transaction.
        new_user: a container started using the dataset on node_uuid since its last
        renewal, so the claims made before now have done their job (see _grant)."""
        dataset_id, node_uuid = dataset_id.lower(), node_uuid.lower()
        with self.store.transaction():
            existing = self._live_lease(dataset_id)
            if existing is not None and existing.node_uuid != node_uuid:
                raise self._held_elsewhere(f"dataset {dataset_id}", existing)
            dataset = self.store.get_dataset(dataset_id)
            if dataset is not None and dataset.primary != node_uuid:
                raise APIError(409, (
                    f"dataset {dataset_id}'s primary is node {self._named_node(dataset.primary)}"
                    f", not {node_uuid}"
                ))
            lease = self._grant(dataset_id, node_uuid, expires, existing, new_user=new_user)
        self.changed()
        return existing is None, lease

    def _grant(self, dataset_id, node_uuid, expires, existing, claim=False, new_user=False):
        """Grant or renew node_uuid's lease (a claim: see leases.py)."""
        held = None
        if existing is not None and existing.node_uuid == node_uuid:
            held = (existing.expiration, existing.claimed_until)
        expiration, claimed_until = granted(self.clock.seconds(), expires, held, claim=claim,
                                            new_user=new_user)
        lease = Lease(dataset_id, node_uuid, expiration, claimed_until)
        self.store.put_lease(lease)
        self.log.info(
            "lease on dataset {dataset_id} {action} by {node_uuid} (expires in {expires}s)",
            dataset_id=dataset_id, node_uuid=node_uuid, expires=expires,
            action="acquired" if existing is None else "renewed",
        )
        return lease

    def _live_lease(self, dataset_id):
        """The dataset's lease unless it has expired (the sweep may not have run yet)."""
        lease = self.store.get_lease(dataset_id)
        if lease is not None and lease.expiration is not None and (
                lease.expiration <= self.clock.seconds()):
            return None
        return lease

    def _named_node(self, node_uuid):
        """'U (HOST)', or just 'U' for a node that has never reported."""
        report = self.nodes.get(node_uuid)
        return f"{node_uuid} ({report.host})" if report is not None else node_uuid

    def holder(self, lease):
        """{"node_uuid", "host", "users"} of a lease's node, from its latest report."""
        report = self.nodes.get(lease.node_uuid)
        users = []
        if report is not None:
            for entry in report.datasets:
                if entry["dataset_id"] == lease.dataset_id:
                    users = list(entry.get("users", []))
        return {
            "node_uuid": lease.node_uuid,
            "host": None if report is None else report.host,
            "users": users,
        }

    def _held_elsewhere(self, what, lease, name=None):
        holder = self.holder(lease)
        where = holder["host"] or "a node that is not reporting"
        if holder["users"]:
            using = ", ".join(f"container {user}" for user in holder["users"])
            description = (
                f"{what} is in use on {where} (node {lease.node_uuid}, {using}); "
                f"stop it there first"
            )
        else:
            release = name or lease.dataset_id
            description = (
                f"{what} is in use on {where} (node {lease.node_uuid} holds the lease on "
                f"dataset {lease.dataset_id}); stop its containers there first, or run "
                f"'powerstrip-flocker release {release}' if that node is gone"
            )
        return HeldElsewhere(description, holder)

    # -- claims -------------------------------------------------------------

    def claim(self, name, node_uuid, expires=DEFAULT_CLAIM_SECONDS, maximum_size=None,
              create=True, generation=None):
        """(code, answer) for POST /v1/configuration/claims, decided in one transaction:
        create the name here, move it here, or lease it to node_uuid once it is here.

        From its first answer on, a claim holds the lease for the claimant (for
        expires seconds, renewed by each poll): another node asking meanwhile is
        refused with a holder that reports no user, and waits, instead of moving the
        volume back and forth with it (first come, first served).

        generation: the claimant is asking again about the claim answered with that
        generation; if another node has since moved the dataset away, refuse (409)
        rather than move it back."""
        node_uuid = node_uuid.lower()
        changed = False
        with self.store.transaction():
            candidates = [d for d in self.store.datasets_named(name) if not d.deleted]
            if not candidates:
                if not create:
                    raise APIError(404, f"No dataset is named {name!r}.")
                dataset = self._create(node_uuid, None, {"name": name}, maximum_size)
                self._grant(dataset.dataset_id, node_uuid, expires, None, claim=True)
                answer = {"status": "creating", "dataset_id": dataset.dataset_id,
                          "generation": dataset.generation}
                code, changed = 202, True
            else:
                dataset = min(candidates, key=lambda d: d.dataset_id)
                if (generation is not None and dataset.generation != generation
                        and dataset.primary != node_uuid):
                    report = self.nodes.get(dataset.primary)
                    host = None if report is None else report.host
                    raise ClaimedElsewhere(
                        f"volume {name!r} was claimed by {host or 'node ' + dataset.primary} "
                        f"(node {dataset.primary}) while this node waited for it; run the "
                        f"container on one node at a time",
                        {"node_uuid": dataset.primary, "host": host},
                    )
                lease = self._live_lease(dataset.dataset_id)
                if lease is not None and lease.node_uuid != node_uuid:
                    raise self._held_elsewhere(f"volume {name!r}", lease, name)
                if dataset.primary != node_uuid:
                    source = dataset.primary
                    self._move(dataset, node_uuid)
                    dataset = self.store.get_dataset(dataset.dataset_id)
                    self._grant(dataset.dataset_id, node_uuid, expires, lease, claim=True)
                    changed = True
                    code, answer = 202, self._pending(dataset, source)
                else:
                    path = self._reported_path(dataset.dataset_id, node_uuid,
                                               dataset.generation)
                    lease = self._grant(dataset.dataset_id, node_uuid, expires, lease,
                                        claim=True)
                    changed = True
                    if path is None:
                        code, answer = 202, self._pending(dataset, self._source_of(dataset))
                    else:
                        code, answer = 200, {
                            "status": "ready", "dataset_id": dataset.dataset_id,
                            "generation": dataset.generation, "path": path,
                            "lease": lease.to_json(self.clock.seconds()),
                        }
        if changed:
            self.changed()
        return code, answer

    def _reported_path(self, dataset_id, node_uuid, generation):
        """The path node_uuid's fresh report gives the dataset's copy of generation, or
        None. A report of an older copy is one the agent may be handing off or deleting
        right now (the dataset moved away and back): its path is not to be handed out.
        Agents that do not report generations are believed."""
        report = self.nodes.get(node_uuid)
        if report is None or self.clock.seconds() - report.received > self.state_expiry:
            return None
        for entry in report.datasets:
            if entry["dataset_id"] == dataset_id and entry["path"] and (
                    entry.get("generation") in (None, generation)):
                return entry["path"]
        return None

    def _source_of(self, dataset):
        """A node other than the primary whose fresh report holds the dataset, or None."""
        for report in self.fresh_nodes():
            if report.uuid != dataset.primary and any(
                    entry["dataset_id"] == dataset.dataset_id for entry in report.datasets):
                return report.uuid
        return None

    def _pending(self, dataset, source):
        """The 202 answer while the dataset is not yet usable on its primary."""
        if source is None and not dataset.manifested:
            return {"status": "creating", "dataset_id": dataset.dataset_id,
                    "generation": dataset.generation}
        answer = {
            "status": "moving", "dataset_id": dataset.dataset_id,
            "generation": dataset.generation,
            "progress": {"bytes_done": 0, "bytes_total": None},
        }
        if source is not None:
            report = self.nodes.get(source)
            answer["from"] = {"node_uuid": source,
                              "host": None if report is None else report.host}
        push, receive = self._transfer_towards(dataset)
        progress = push or receive
        if progress is not None:
            answer["progress"] = {"bytes_done": progress["bytes_done"],
                                  "bytes_total": progress.get("bytes_total")}
        if push is not None and push.get("stalled"):
            answer["stalled"] = True
            answer["error"] = push.get("error") or "the sender gave up without a reason"
        return answer

    def _transfer_towards(self, dataset):
        """(push entry of a sender, receive entry of the primary) for the dataset's
        transfer to its primary, each None when not reported."""
        push = receive = None
        for report in self.fresh_nodes():
            for transfer in report.transfers:
                if transfer["dataset_id"] != dataset.dataset_id:
                    continue
                if transfer["direction"] == "push" and transfer["peer"] == dataset.primary:
                    push = transfer
                elif transfer["direction"] == "receive" and report.uuid == dataset.primary:
                    receive = transfer
        return push, receive

    def release_lease(self, dataset_id, node_uuid=None):
        """Without node_uuid, break the lease (Flocker's admin release). With it, the
        holder node_uuid says its use ended: the lease goes, unless a claim made after
        its users started still keeps it (until that claim's expiry)."""
        normalised = canonical_uuid(dataset_id)
        with self.store.transaction():
            lease = None if normalised is None else self._live_lease(normalised)
            if lease is None:
                raise APIError(404, LEASE_NOT_FOUND)
            if node_uuid is not None and lease.node_uuid != node_uuid.lower():
                raise self._held_elsewhere(f"dataset {lease.dataset_id}", lease)
            now = self.clock.seconds()
            kept = None if node_uuid is None else after_use_ended(now, lease.claimed_until)
            if kept is not None:
                lease = Lease(lease.dataset_id, lease.node_uuid, *kept)
                self.store.put_lease(lease)
                self.log.info(
                    "use of dataset {dataset_id} on {node_uuid} ended; its lease stays for a "
                    "claim made since, {seconds:.1f}s more", dataset_id=lease.dataset_id,
                    node_uuid=lease.node_uuid, seconds=lease.claimed_until - now)
            else:
                self.store.delete_lease(lease.dataset_id)
                self.log.info(
                    "lease on dataset {dataset_id} held by {node_uuid} released",
                    dataset_id=lease.dataset_id, node_uuid=lease.node_uuid,
                )
        self.changed()
        return lease

    # -- node reports and state -------------------------------------------

    def report(self, node_uuid, host, agent_url, datasets, transfers, trash=(), era=None):
        """Replace node_uuid's report; bump the generation only if its content changed."""
        now = self.clock.seconds()
        datasets = [
            dict({
                "dataset_id": d["dataset_id"].lower(),
                "path": d["path"],
                "maximum_size": d.get("maximum_size"),
            }, **({"users": list(d["users"])} if d.get("users") else {}),
                **({"generation": d["generation"]} if d.get("generation") else {}))
            for d in datasets
        ]
        transfers = [
            dict({
                "dataset_id": t["dataset_id"].lower(),
                "direction": t["direction"],
                "peer": t["peer"].lower(),
                "bytes_done": t["bytes_done"],
                "bytes_total": t.get("bytes_total"),
            }, **{key: t[key] for key in TRANSFER_OUTCOME_FIELDS if key in t})
            for t in transfers
        ]
        trash = [
            dict({
                "dataset_id": t["dataset_id"].lower(),
                "deleted_at": t["deleted_at"],
                "expires_at": t["expires_at"],
                "bytes": t["bytes"],
            }, **({"generation": t["generation"]} if t.get("generation") else {}))
            for t in trash
        ]
        new = NodeReport(node_uuid, host, agent_url, datasets, transfers, received=now,
                         trash=trash, era=era.lower() if era else None)
        old = self.nodes.get(node_uuid)
        different = old is None or old.content() != new.content()
        if different:
            self.store.put_node_report(node_uuid, new.to_json(), now)
            self._persisted_received[node_uuid] = now
        elif now - self._persisted_received.get(node_uuid, now) >= self.state_expiry / 4:
            # Identical re-report: refresh the stored time now and then, not every time.
            self.store.touch_node_report(node_uuid, now)
            self._persisted_received[node_uuid] = now
        self.nodes[node_uuid] = new
        newly_manifested = self.store.mark_manifested(
            sorted({d["dataset_id"] for d in datasets})
        )
        for dataset_id in newly_manifested:
            self.log.info(
                "dataset {dataset_id} manifested on {node_uuid}",
                dataset_id=dataset_id, node_uuid=node_uuid,
            )
        if old is None:
            self.log.info(
                "node {node_uuid} ({host}) reported, agent at {agent_url}",
                node_uuid=node_uuid, host=host, agent_url=agent_url,
            )
        if different or newly_manifested:
            self.changed()
        return self.generation

    def fresh_nodes(self):
        now = self.clock.seconds()
        return [
            report for report in self.nodes.values()
            if now - report.received <= self.state_expiry
        ]

    def state_datasets(self):
        """Flocker's /v1/state/datasets: one entry per (node, reported dataset)."""
        result = []
        for report in self.fresh_nodes():
            for dataset in report.datasets:
                entry = {
                    "dataset_id": dataset["dataset_id"],
                    "primary": report.uuid,
                    "path": dataset["path"],
                }
                if dataset["maximum_size"] is not None:
                    entry["maximum_size"] = dataset["maximum_size"]
                result.append(entry)
        return result

    def state_nodes(self):
        return [{"host": report.host, "uuid": report.uuid} for report in self.fresh_nodes()]

    def cluster_view(self):
        """The agent protocol's view of configuration, leases and state."""
        now = self.clock.seconds()
        return {
            "generation": self.generation,
            "datasets": [
                {
                    "dataset_id": d.dataset_id,
                    "primary": d.primary,
                    "metadata": d.metadata,
                    "deleted": d.deleted,
                    "maximum_size": d.maximum_size,
                    "manifested": d.manifested,
                    "origin": d.origin,
                    "generation": d.generation,
                }
                for d in self.store.datasets()
            ],
            "leases": [lease.to_json(now) for lease in self.store.leases()],
            "nodes": [
                json.loads(json.dumps(report.to_json())) for report in self.fresh_nodes()
            ],
        }
