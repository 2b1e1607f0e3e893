"""The agent's decisions: a pure function of the cluster view and the local datasets."""

from powerstripflocker.agent.model import (
    HANDED_OFF, PRIMARY, Cleanup, Create, Destroy, Push, Restore, Wait)


def decide(node_uuid, view, local, in_use=None, trashed=frozenset()):
    """What this node should do now.

    node_uuid: this node; view: a ClusterView; local: dataset_id -> LocalDataset;
    in_use: dataset_id -> descriptions of what uses it on this node (mounted in some
    mount namespace, or a running container's), for the datasets in use here;
    trashed: ids of the deleted datasets whose primary copy this node keeps in its trash.
    Returns a list of actions, at most one per dataset, in dataset id order.

    Rules, per dataset:
    - never manifested anywhere, not held anywhere: only the node it was created on
      (its origin) creates it, even if it is already configured elsewhere (it then pushes
      it there); the configured primary, if another node, waits for that push. Two
      creates on two nodes would make two primaries. Without an origin (an older
      control service) the configured primary creates it.
    - configured here, not held here but manifested (it lives or lived elsewhere) -> wait
      for its holder to push it; never create an empty copy.
    - held here as primary, configured on node N with a known agent_url, not leased to
      this node -> Push to N (then hand off). Leases held by other nodes don't block.
    - held here as a handed-off copy, and another node reports it -> Cleanup.
    - configured deleted, held here (any role) and not leased to this node -> Destroy.
    - configured (not deleted) here, not held here as primary, in our trash and no other
      node reports it -> Restore (the control service restored it from our trash).
    - held here but not configured at all -> left alone (still reported if primary).
    - in use here (the kernel's truth, whatever the leases say) -> never pushed away,
      cleaned up or destroyed while it is.
    - held here as primary, configured elsewhere, while a third node reports it as its
      primary and our copy's generation is older than the configuration's -> superseded:
      never pushed (nor reported, see superseded()).
    """
    actions = []
    in_use = in_use or {}
    ids = sorted(set(view.datasets) | set(local))
    for dataset_id in ids:
        action = _decide_one(node_uuid, view, dataset_id, view.datasets.get(dataset_id),
                             local.get(dataset_id), in_use.get(dataset_id),
                             dataset_id in trashed)
        if action is not None:
            actions.append(action)
    return actions


def superseded(node_uuid, view, held):
    """Whether our primary copy `held` is older than one another node serves: the
    configured primary is elsewhere at a newer generation and a node other than us and
    the configured primary reports the dataset as its primary (the configured primary
    itself may hold a copy received from us: that is a handoff to finish, not a newer
    copy)."""
    configured = view.datasets.get(held.dataset_id)
    if configured is None or configured.primary == node_uuid or held.role != PRIMARY:
        return False
    if held.generation is None or configured.generation is None \
            or held.generation >= configured.generation:
        return False
    return bool(view.holders(held.dataset_id) - {node_uuid, configured.primary})


def _decide_one(me, view, dataset_id, configured, held, users, in_trash):
    leased_here = view.leased_to(dataset_id, me)
    if configured is None:
        return None
    in_use = f"in use here by {', '.join(users[:3])}" if users else None
    if configured.deleted:
        if held is None:
            return None
        if leased_here and held.role == PRIMARY:
            return Wait(dataset_id, "deleted in the configuration but leased to this node")
        if in_use:
            return Wait(dataset_id, f"deleted in the configuration but {in_use}; kept "
                                    "until nothing uses it")
        return Destroy(dataset_id)
    others = view.holders(dataset_id) - {me}
    if in_trash and configured.primary == me and not others and (
            held is None or held.role != PRIMARY):
        if in_use:
            return Wait(dataset_id, f"restored from the trash here but the copy here is "
                                    f"{in_use}; restoring once nothing uses it")
        return Restore(dataset_id)
    if held is not None and held.role == HANDED_OFF:
        if in_use:
            return Wait(dataset_id, f"handed off but {in_use}; kept until nothing uses it")
        if others:
            return Cleanup(dataset_id)
        return Wait(dataset_id, "handed off; waiting for the new primary to report it")
    is_primary_here = held is not None and held.role == PRIMARY
    never_made = held is None and not configured.manifested and not others
    creator = configured.origin or configured.primary
    if never_made and creator == me:
        return Create(dataset_id, configured.maximum_size)
    if configured.primary == me:
        if is_primary_here:
            return None
        if never_made:
            return Wait(dataset_id, f"not created yet; waiting for {creator}, where it was "
                                    "created, to make it and push it here")
        return Wait(dataset_id, "manifested elsewhere; waiting for its holder to push it")
    if not is_primary_here:
        return None
    if leased_here:
        return Wait(dataset_id, f"configured on {configured.primary} but leased to this node")
    if in_use:
        return Wait(dataset_id, f"configured on {configured.primary} but {in_use}; not "
                                "moving it while it is")
    if superseded(me, view, held):
        return Wait(dataset_id, f"superseded: our copy is generation {held.generation}, "
                                f"{', '.join(sorted(others))} serves a newer one; not "
                                "pushing it")
    target = view.nodes.get(configured.primary)
    if target is None or not target.agent_url:
        return Wait(dataset_id, f"configured on {configured.primary}, whose agent is unknown")
    return Push(dataset_id, configured.primary, target.agent_url)
