"""Replica placement in the control service (issue 15): how many copies a new volume
asks for, and the sweep's re-choice of the nodes holding them when nodes come and go.

Only the placement: the agents read replica_nodes from their cluster view and will make
the copies; nothing here moves data.
"""

from collections import Counter

from powerstripflocker.control.errors import APIError
from powerstripflocker.control.etcdstore import CHANGES_PER_DECISION
from powerstripflocker.control.replicas import (
    REPLICAS_KEY, BadReplicaCount, choose_replica_nodes, parse_replica_count,
    wanted_replicas,
)


class ReplicaPlacement:
    """ControlService's replica placement (a part of it: uses its store, clock, nodes,
    state_expiry, default_replicas, fresh_nodes(), _decide() and changed())."""

    def new_metadata(self, metadata, replicas=None):
        """The metadata a new dataset is stored with: its replica count as given (in
        the metadata, or replicas), else the cluster's --default-replicas when above 0.
        400 for a count in the metadata that is not one."""
        metadata = dict(metadata or {})
        if replicas is not None:
            metadata[REPLICAS_KEY] = str(replicas)
        elif REPLICAS_KEY in metadata:
            try:
                parse_replica_count(metadata[REPLICAS_KEY])  # kept as given, if valid
            except BadReplicaCount as error:
                raise APIError(400, f"metadata {REPLICAS_KEY!r}: {error}") from None
        elif self.default_replicas:
            metadata[REPLICAS_KEY] = str(self.default_replicas)
        return metadata

    def replicas_due(self):
        """Mark the replica choices for a look at the next sweep (something changed)."""
        self._replicas_due = True

    async def place_replicas(self):
        """Choose again the replica nodes of every dataset whose choice is not what
        choose_replica_nodes gives now, CHANGES_PER_DECISION datasets per decision (etcd's
        limit on a transaction); True when any changed. Called by the sweep once
        something changed: the live nodes (fresh reports), or the configuration."""
        live = {report.uuid for report in self.fresh_nodes()}
        # Until a whole state expiry has passed since the start, a node without a fresh
        # report may only not have reported to this replica yet: its place is kept.
        settling = self.clock.seconds() - self._started_at < self.state_expiry
        if not self._replicas_due and (live, settling) == self._last_replica_look:
            return False
        self._replicas_due = False
        any_changed = False
        try:
            while True:
                count = await self._decide(
                    lambda view, note: self._choose_replicas(view, note, live, settling))
                any_changed = any_changed or count > 0
                if count < CHANGES_PER_DECISION:
                    break
        except Exception:
            self._replicas_due = True  # the next sweep tries again
            raise
        finally:
            if any_changed:
                self.changed()
        self._last_replica_look = (live, settling)
        return any_changed

    async def _choose_replicas(self, view, note, live, settling):
        datasets = await view.datasets()
        load = Counter(node for d in datasets if not d.deleted for node in d.replica_nodes)
        count = 0
        for dataset in datasets:
            wanted = 0 if dataset.deleted else wanted_replicas(dataset.metadata)
            alive = live | set(dataset.replica_nodes) if settling else live
            chosen = tuple(choose_replica_nodes(
                wanted, dataset.primary, dataset.replica_nodes, alive, load))
            if chosen == dataset.replica_nodes:
                continue
            load.subtract(dataset.replica_nodes)
            load.update(chosen)
            await view.set_replica_nodes(dataset.dataset_id, chosen)
            note("dataset {dataset_id}: replicas on {chosen} (was {before})",
                 dataset_id=dataset.dataset_id, chosen=self._node_words(chosen),
                 before=self._node_words(dataset.replica_nodes) + _why_dropped(
                     dataset, chosen, alive, wanted))
            count += 1
            if count == CHANGES_PER_DECISION:
                break
        return count

    def _node_words(self, nodes):
        """'10.0.0.2 (0e0d1a52), ...' or 'none'."""
        words = []
        for node in nodes:
            report = self.nodes.get(node)
            words.append(f"{report.host} ({node[:8]})" if report else node)
        return ", ".join(words) or "none"


def _why_dropped(dataset, chosen, alive, wanted):
    """': X not reporting' and the like for the nodes no longer chosen, or ''."""
    reasons = []
    for node in dataset.replica_nodes:
        if node in chosen:
            continue
        if node == dataset.primary:
            reasons.append(f"{node[:8]} is the primary now")
        elif node not in alive:
            reasons.append(f"{node[:8]} not reporting")
        else:
            reasons.append(f"{node[:8]} not needed: {wanted} wanted")
    return ": " + "; ".join(reasons) if reasons else ""
