"""Plain data the agent works with: the cluster view, local datasets and actions."""

from dataclasses import dataclass, field
from typing import Optional

# Roles of a dataset copy held on this node.
PRIMARY = "primary"          # this node's copy is the dataset; reported to the control service
HANDED_OFF = "handed-off"    # pushed to another node and handed off; deleted once it reports it
REPLICA = "replica"          # btrfs only: a read-only snapshot kept as an incremental parent


@dataclass(frozen=True)
class LocalDataset:
    dataset_id: str
    role: str
    path: str
    maximum_size: Optional[int] = None
    handed_to: Optional[str] = None
    origin: str = "created"           # "created" here or "received" by a push
    # The dataset's generation (from the control service's view) when this copy was last
    # its primary: a copy older than another node's is never served or pushed again.
    generation: Optional[int] = None


@dataclass(frozen=True)
class ConfiguredDataset:
    dataset_id: str
    primary: str
    deleted: bool = False
    maximum_size: Optional[int] = None
    metadata: dict = field(default_factory=dict, compare=False, hash=False)
    manifested: bool = False
    origin: Optional[str] = None  # the node it was created on; None from older services
    generation: Optional[int] = None  # +1 on every change of primary; None: older services


@dataclass(frozen=True)
class Lease:
    dataset_id: str
    node_uuid: str
    expires: Optional[float] = None


@dataclass(frozen=True)
class NodeView:
    uuid: str
    host: Optional[str] = None
    agent_url: Optional[str] = None
    datasets: frozenset = frozenset()      # dataset ids this node reports as its primaries


@dataclass(frozen=True)
class ClusterView:
    generation: object
    datasets: dict          # dataset_id -> ConfiguredDataset
    leases: dict            # dataset_id -> Lease
    nodes: dict             # node uuid -> NodeView

    @classmethod
    def from_json(cls, body):
        """Build a view from the body of GET /agent/v1/cluster (unknown keys are ignored)."""
        datasets = {}
        for item in body.get("datasets") or []:
            dataset_id = str(item["dataset_id"]).lower()
            datasets[dataset_id] = ConfiguredDataset(
                dataset_id=dataset_id,
                primary=str(item.get("primary") or "").lower(),
                deleted=bool(item.get("deleted", False)),
                maximum_size=item.get("maximum_size"),
                metadata=item.get("metadata") or {},
                manifested=bool(item.get("manifested", False)),
                origin=str(item["origin"]).lower() if item.get("origin") else None,
                generation=item.get("generation") if isinstance(
                    item.get("generation"), int) else None,
            )
        leases = {}
        for item in body.get("leases") or []:
            expires = item.get("expires")
            if expires is not None and expires <= 0:
                continue
            dataset_id = str(item["dataset_id"]).lower()
            leases[dataset_id] = Lease(dataset_id, str(item["node_uuid"]).lower(), expires)
        nodes = {}
        for item in body.get("nodes") or []:
            uuid = str(item["uuid"]).lower()
            nodes[uuid] = NodeView(
                uuid=uuid,
                host=item.get("host"),
                agent_url=item.get("agent_url"),
                datasets=frozenset(
                    str(d["dataset_id"]).lower() for d in item.get("datasets") or []
                ),
            )
        return cls(body.get("generation"), datasets, leases, nodes)

    def leased_to(self, dataset_id, node_uuid):
        lease = self.leases.get(dataset_id)
        return lease is not None and lease.node_uuid == node_uuid

    def holders(self, dataset_id):
        """Uuids of the nodes whose latest report lists dataset_id as their primary."""
        return {uuid for uuid, node in self.nodes.items() if dataset_id in node.datasets}


# Actions decided by convergence.decide().

@dataclass(frozen=True)
class Create:
    dataset_id: str
    maximum_size: Optional[int] = None


@dataclass(frozen=True)
class Push:
    """Push our primary copy to target, make it the primary there, then hand off."""
    dataset_id: str
    target: str
    agent_url: str


@dataclass(frozen=True)
class Cleanup:
    """Delete the data of a handed-off copy: the new primary reports the dataset."""
    dataset_id: str


@dataclass(frozen=True)
class Destroy:
    """The dataset is deleted: our primary copy goes to the trash (or, without a keep
    window, away), any other copy away."""
    dataset_id: str


@dataclass(frozen=True)
class Restore:
    """The dataset was restored with this node as primary: our trashed copy is it again."""
    dataset_id: str


@dataclass(frozen=True)
class Wait:
    """Nothing to do yet; reason says why (logged, not executed)."""
    dataset_id: str
    reason: str
