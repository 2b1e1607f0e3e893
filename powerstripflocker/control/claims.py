"""Claims (beyond Flocker): a frontend asks that a volume name be usable on its node, and
the control service decides in one store decision whether to create it there, move it
there, or lease it there once it is ready, and says how far a move has got."""

import uuid

from powerstripflocker.control.errors import APIError, ClaimedElsewhere
from powerstripflocker.protocol.leases import still_claimed

DEFAULT_CLAIM_SECONDS = 30.0


class Claims:
    """ControlService's claims (a part of it: uses its store, clock, nodes, leases and
    changed())."""

    async def claim(self, name, node_uuid, expires=DEFAULT_CLAIM_SECONDS,
                    maximum_size=None, create=True, generation=None, replicas=None):
        """(code, answer, configuration tag) for POST /v1/configuration/claims, decided
        in one store decision: create the name here, move it here, or lease it to
        node_uuid once it is here.

        From its first answer on, a claim holds the lease for the claimant (for
        expires seconds, renewed by a poll that finds less than half of that left:
        protocol/leases.still_claimed): another node asking meanwhile is
        refused with a holder that reports no user, and waits, instead of moving the
        volume back and forth with it (first come, first served).

        generation: the claimant is asking again about the claim answered with that
        generation; if another node has since moved the dataset away, refuse (409)
        rather than move it back.

        replicas: the copies a volume the claim creates keeps besides the primary
        (else the cluster's default)."""
        node_uuid = node_uuid.lower()
        new_id = str(uuid.uuid4())
        new_metadata = self.new_metadata({"name": name}, replicas)

        async def decision(view, note):
            candidates = [d for d in await view.datasets_named(name) if not d.deleted]
            if not candidates:
                if not create:
                    raise APIError(404, f"No dataset is named {name!r}.")
                dataset = await self._create(view, note, node_uuid, new_id, new_metadata,
                                             maximum_size)
                await self._grant(view, note, dataset.dataset_id, node_uuid, expires, None,
                                  claim=True)
                return 202, {"status": "creating", "dataset_id": dataset.dataset_id,
                             "generation": dataset.generation}, True
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
            lease = await self._live_lease(view, dataset.dataset_id)
            if lease is not None and lease.node_uuid != node_uuid:
                raise self._held_elsewhere(f"volume {name!r}", lease, name)
            if dataset.primary != node_uuid:
                source = dataset.primary
                await self._move(view, note, dataset, node_uuid)
                dataset = await view.get_dataset(dataset.dataset_id)
                await self._grant(view, note, dataset.dataset_id, node_uuid, expires, lease,
                                  claim=True)
                return 202, self._pending(dataset, source), True
            path = self._reported_path(dataset.dataset_id, node_uuid, dataset.generation)
            now = self.clock.seconds()
            renewed = lease is None or not still_claimed(
                now, expires, (lease.expiration, lease.claimed_until))
            if renewed:
                lease = await self._grant(view, note, dataset.dataset_id, node_uuid, expires,
                                          lease, claim=True)
            if path is None:
                return 202, self._pending(dataset, self._source_of(dataset)), renewed
            return 200, {
                "status": "ready", "dataset_id": dataset.dataset_id,
                "generation": dataset.generation, "path": path,
                "lease": lease.to_json(self.clock.seconds()),
            }, renewed

        (code, answer, changed), tag = await self._decide(decision, tagged=True)
        if changed:
            self.changed()
        return code, answer, tag

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
