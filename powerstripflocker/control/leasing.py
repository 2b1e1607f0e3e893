"""Leases: which node holds which dataset, granted, renewed and released in one store
decision each, and the 409 that names the holder and what uses the dataset there."""

from powerstripflocker.control.errors import LEASE_NOT_FOUND, APIError, HeldElsewhere
from powerstripflocker.control.store import Lease
from powerstripflocker.protocol.ids import canonical_uuid
from powerstripflocker.protocol.leases import after_use_ended, granted


class Leases:
    """ControlService's leases (a part of it: uses its store, clock, nodes, log and
    changed())."""

    async def acquire_lease(self, dataset_id, node_uuid, expires, new_user=False):
        """(created, lease, tag): created is False for a renewal by the same node; tag:
        the configuration's after it.

        Refused (409) when another node holds the lease, or when the dataset is
        configured and its primary is not node_uuid; decided in one transaction.
        new_user: a container started using the dataset on node_uuid since its last
        renewal, so the claims made before now have done their job (see _grant)."""
        dataset_id, node_uuid = dataset_id.lower(), node_uuid.lower()

        async def decision(view, note):
            existing = await self._live_lease(view, dataset_id)
            if existing is not None and existing.node_uuid != node_uuid:
                raise self._held_elsewhere(f"dataset {dataset_id}", existing)
            dataset = await view.get_dataset(dataset_id)
            if dataset is not None and dataset.primary != node_uuid:
                raise APIError(409, (
                    f"dataset {dataset_id}'s primary is node {self._named_node(dataset.primary)}"
                    f", not {node_uuid}"
                ))
            lease = await self._grant(view, note, dataset_id, node_uuid, expires, existing,
                                      new_user=new_user)
            return existing is None, lease

        (created, lease), tag = await self._decide(decision, tagged=True)
        self.changed()
        return created, lease, tag

    async def _grant(self, view, note, dataset_id, node_uuid, expires, existing, claim=False,
                     new_user=False):
        """Grant or renew node_uuid's lease (a claim: see leases.py)."""
        held = None
        if existing is not None and existing.node_uuid == node_uuid:
            held = (existing.expiration, existing.claimed_until)
        expiration, claimed_until = granted(self.clock.seconds(), expires, held, claim=claim,
                                            new_user=new_user)
        lease = Lease(dataset_id, node_uuid, expiration, claimed_until)
        await view.put_lease(lease)
        note(
            "lease on dataset {dataset_id} {action} by {node_uuid} (expires in {expires}s)",
            dataset_id=dataset_id, node_uuid=node_uuid, expires=expires,
            action="acquired" if existing is None else "renewed",
        )
        return lease

    async def _live_lease(self, view, dataset_id):
        """The dataset's lease unless it has expired (the sweep may not have run yet)."""
        lease = await view.get_lease(dataset_id)
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

    async def release_lease(self, dataset_id, node_uuid=None):
        """Without node_uuid, break the lease (Flocker's admin release). With it, the
        holder node_uuid says its use ended: the lease goes, unless a claim made after
        its users started still keeps it (until that claim's expiry)."""
        normalised = canonical_uuid(dataset_id)

        async def decision(view, note):
            lease = None if normalised is None else await self._live_lease(view, normalised)
            if lease is None:
                raise APIError(404, LEASE_NOT_FOUND)
            if node_uuid is not None and lease.node_uuid != node_uuid.lower():
                raise self._held_elsewhere(f"dataset {lease.dataset_id}", lease)
            now = self.clock.seconds()
            kept = None if node_uuid is None else after_use_ended(now, lease.claimed_until)
            if kept is not None:
                lease = Lease(lease.dataset_id, lease.node_uuid, *kept)
                await view.put_lease(lease)
                note(
                    "use of dataset {dataset_id} on {node_uuid} ended; its lease stays for a "
                    "claim made since, {seconds:.1f}s more", dataset_id=lease.dataset_id,
                    node_uuid=lease.node_uuid, seconds=lease.claimed_until - now)
            else:
                await view.delete_lease(lease.dataset_id)
                note(
                    "lease on dataset {dataset_id} held by {node_uuid} released",
                    dataset_id=lease.dataset_id, node_uuid=lease.node_uuid,
                )
            return lease

        lease, tag = await self._decide(decision, tagged=True)
        self.changed()
        return lease, tag
