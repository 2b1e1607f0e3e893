"""Replica placement (issue 15): how many copies of a dataset its metadata asks for, and
which nodes hold them. Pure functions; the control service's sweep applies them
(ReplicaPlacement in replication.py).

Only the placement is decided here: the agents will make the copies (not yet).
"""

from powerstripflocker.clients.flocker import (  # noqa: F401 (the control's names too)
    MAX_REPLICAS, REPLICAS_KEY, BadReplicaCount, parse_replica_count,
)


def wanted_replicas(metadata):
    """The copies a dataset's metadata asks for: 0 when it says none or nothing valid
    (metadata is anyone's through the v1 API; an unreadable count keeps no copies)."""
    try:
        return parse_replica_count(metadata.get(REPLICAS_KEY, "0"))
    except BadReplicaCount:
        return 0


def choose_replica_nodes(wanted, primary, current, live_nodes, load):
    """The nodes to hold a dataset's wanted copies, as a list of node uuids.

    Never the primary, no node twice. The current choices that are live stay (in their
    order: a replica already holds data, moving it costs a full copy); dead ones (not in
    live_nodes) are replaced by the live nodes holding the fewest replicas (load: node
    uuid -> number of replicas it holds), ties broken by uuid so that every control
    replica chooses the same. Fewer than wanted when there are not enough live nodes."""
    live = set(live_nodes)
    kept = []
    for node in current:
        if node in live and node != primary and node not in kept:
            kept.append(node)
    kept = kept[:max(wanted, 0)]
    spare = sorted((node for node in live if node != primary and node not in kept),
                   key=lambda node: (load.get(node, 0), node))
    return kept + spare[:max(wanted - len(kept), 0)]
