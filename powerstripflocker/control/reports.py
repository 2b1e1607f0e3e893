"""Node reports: what each agent last said it has (datasets, transfers, trash, its era),
and Flocker's state views and the agents' cluster view made from them."""

import json
from dataclasses import dataclass, field
from typing import Optional

from powerstripflocker.control.errors import NODE_ERA_NOT_FOUND, APIError
from powerstripflocker.control.replicas import wanted_replicas

# What a sender or receiver may add to a transfer it reports, kept as reported.
TRANSFER_OUTCOME_FIELDS = ("attempts", "error", "stalled")


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


class NodeReports:
    """ControlService's node reports (a part of it: uses its store, clock, nodes,
    state_expiry, log and changed())."""

    async def report(self, node_uuid, host, agent_url, datasets, transfers, trash=(), era=None):
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
        # A new era alone wakes nobody, but is stored: a restarted control service then
        # answers by_era for the agent's current run, not its last one.
        store = different or old.era != new.era
        # Identical re-report: refresh the stored time now and then, not every time.
        touch = not store and (
            now - self._persisted_received.get(node_uuid, now) >= self.state_expiry / 4)

        async def decision(view, note):
            if store:
                await view.put_node_report(node_uuid, new.to_json(), now)
            elif touch:
                await view.touch_node_report(node_uuid, now)
            return await view.mark_manifested(sorted({d["dataset_id"] for d in datasets}))

        newly_manifested = await self._decide(decision)
        if store or touch:
            self._persisted_received[node_uuid] = now
        self.nodes[node_uuid] = new
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

    def node_by_era(self, era):
        """The UUID of the node whose agent run is era, from the fresh reports; 404 until
        that agent has reported (Flocker's /v1/state/nodes/by_era)."""
        for report in self.fresh_nodes():
            if report.era is not None and report.era == era.lower():
                return report.uuid
        raise APIError(404, NODE_ERA_NOT_FOUND)

    async def cluster_view(self):
        """The agent protocol's view of configuration, leases and state."""
        # The generation first: the view read after it shows at least its changes, and
        # a change made meanwhile moves the generation on, so the agent asks again.
        await self.reports_ready()
        generation = self.generation

        async def read(view):
            return await view.datasets(), await view.leases()

        datasets, leases = await self.store.decide(read)
        now = self.clock.seconds()
        return {
            "generation": generation,
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
                    # Placement only so far: the nodes chosen to keep copies.
                    "replicas": wanted_replicas(d.metadata),
                    "replica_nodes": list(d.replica_nodes),
                }
                for d in datasets
            ],
            "leases": [lease.to_json(now) for lease in leases],
            "nodes": [
                json.loads(json.dumps(report.to_json())) for report in self.fresh_nodes()
            ],
        }
