"""Moving datasets between nodes: the push of a dataset to its next primary (describe,
stream, acquire, hand off), the receiving side's checks and acquire, and the record of
transfers (running ones, the last 100, byte counters)."""

from collections import deque

from twisted.internet import defer, task
from twisted.logger import Logger
from zope.interface import implementer

from powerstripflocker.agent.backends import BackendError, Conflict, MissingParent
from powerstripflocker.agent.local import InUseHere
from powerstripflocker.agent.model import PRIMARY
from powerstripflocker.agent.receiver import IReceiver, Refused
from powerstripflocker.agent.streams.progress import Progress
from powerstripflocker.agent.streams.receiving import ProcessSink
from powerstripflocker.agent.streams.sending import ProcessBodyProducer
from powerstripflocker.clients.peer import PeerError

log = Logger()


class TransferStalled(Exception):
    pass


def unreachable(error):
    """Whether a failed push never got an answer from the target's agent."""
    return isinstance(error, (ConnectionError, defer.CancelledError)) or \
        type(error).__module__.startswith("twisted")


class Transfers:
    """The transfers under way, the last 100 finished, and the bytes moved each way."""

    def __init__(self, reactor, on_change):
        self.reactor = reactor
        self.on_change = on_change
        self.active = []              # Progress of running transfers
        self.history = deque(maxlen=100)
        self.bytes_sent_total = 0
        self.bytes_received_total = 0

    def started(self, progress):
        self.active.append(progress)
        self.on_change()

    def finished(self, progress, result, extra=None):
        if progress in self.active:
            self.active.remove(progress)
        if progress.direction == "push":
            self.bytes_sent_total += progress.done
        else:
            self.bytes_received_total += progress.done
        record = dict(progress.as_report(), result=result,
                      seconds=round(progress.seconds(), 3), finished=self.reactor.seconds())
        record.update(extra or {})
        self.history.append(record)
        self.on_change()


@implementer(IReceiver)
class Mover:
    """Pushes datasets to other nodes and receives theirs.

    view() -> the latest ClusterView or None; fresh_view() -> an up-to-date one (async);
    on_change() is called when the report should be sent again, on_received() when a
    dataset became primary here.
    """

    def __init__(self, reactor, backend, node_uuid, address, busy, use, peers, faults,
                 view, fresh_view, on_change, on_received, stall_timeout=300.0):
        self.reactor = reactor
        self.backend = backend
        self.node_uuid = node_uuid
        self.address = address
        self.busy = busy
        self.use = use
        self.peers = peers
        self.faults = faults
        self.view = view
        self.fresh_view = fresh_view
        self.on_received = on_received
        self.stall_timeout = stall_timeout
        self.transfers = Transfers(reactor, on_change)
        self._pushing = {}            # dataset_id -> Progress of its push under way

    # pushing

    def forget_push(self, dataset_id):
        """The Progress of dataset_id's last push (None if none), forgotten."""
        return self._pushing.pop(dataset_id, None)

    async def push(self, action):
        """Move dataset_id to action.target: push it unless the target holds it already,
        let the target acquire it, and hand off the copy here."""
        dataset_id, target = action.dataset_id, action.target
        info = await self.peers.describe(action.agent_url, dataset_id)
        held = self.backend.local_datasets().get(dataset_id)
        ours = held.generation if held is not None else None
        theirs = info.get("generation") if isinstance(info.get("generation"), int) else None
        plan = None
        if info.get("primary"):
            if info.get("origin") != "received":
                raise Conflict(
                    f"node {target} holds dataset {dataset_id} as a primary it created, not "
                    "one it received; refusing to hand off our copy (two primaries: resolve "
                    "by hand)")
            if theirs is not None and ours is not None and theirs < ours:
                raise Conflict(
                    f"node {target} holds generation {theirs} of dataset {dataset_id} as "
                    f"primary, older than our copy's {ours}: not handing ours off (two "
                    "primaries: resolve by hand)")
            log.info("node {target} already holds {dataset_id} as primary; handing off",
                     target=target, dataset_id=dataset_id)
        else:
            if theirs is not None and ours is not None and theirs > ours:
                raise Conflict(f"node {target} holds generation {theirs} of dataset "
                               f"{dataset_id}, newer than our copy's {ours}: not pushing ours")
            if not info.get("accepting", True):
                raise PeerError(403, info.get("reason") or "peer not accepting")
            formats = info.get("formats") or []
            if formats and not set(self.backend.formats) & set(formats):
                raise PeerError(400, f"node {target} receives {', '.join(formats)} streams "
                                     f"and this node's {self.backend.name} backend sends "
                                     f"{', '.join(self.backend.formats)}: datasets cannot "
                                     "move between nodes with different backends")
            plan = await self.backend.prepare_send(dataset_id, info.get("snapshots") or [])
            await self._send(action, plan, ours)
        await self.faults.reached("pause_before_handoff", dataset_id)
        await self.backend.handoff(dataset_id, target, plan)
        log.info("handed off {dataset_id} to {target}; the local copy is deleted once "
                 "{target} reports it", dataset_id=dataset_id, target=target)

    async def _send(self, action, plan, generation):
        """Stream plan to the target and have it acquire what it received."""
        dataset_id, target = action.dataset_id, action.target
        view = self.view()
        configured = view.datasets.get(dataset_id) if view else None
        if configured is not None:
            plan.maximum_size = configured.maximum_size
        progress = Progress(self.reactor, dataset_id, "push", target, total=plan.size)
        log.info("pushing {dataset_id} to {target} at {url} ({stream_format}, parent {parent}, "
                 "about {size} bytes)", dataset_id=dataset_id, target=target,
                 url=action.agent_url, stream_format=plan.format, parent=plan.parent,
                 size=plan.size)
        self.transfers.started(progress)
        self._pushing[dataset_id] = progress
        result = "failed"
        try:
            stream = ProcessBodyProducer(self.reactor, plan.argv, progress=progress)
            self.faults.sending(dataset_id, stream)
            pushed = await self._watched(
                self.peers.push(action.agent_url, plan, stream, generation=generation),
                progress)
            result = "pushed"
        except BaseException:
            await self._abandon(plan)
            raise
        finally:
            self.transfers.finished(progress, result, extra={
                "format": plan.format, "parent": plan.parent, "snapshot": plan.snapshot})
        seconds = progress.seconds()
        log.info("pushed {dataset_id} to {target}: {bytes} bytes in {seconds:.2f}s "
                 "({rate_mb:.1f} MB/s)", dataset_id=dataset_id, target=target,
                 bytes=progress.done, seconds=seconds,
                 rate_mb=progress.done / max(seconds, 1e-6) / 1e6)
        await self.faults.reached("pause_before_acquire", dataset_id)
        try:
            # The point of no return: past it the target is primary too.
            self.use.check_not_in_use(dataset_id, "handing off")
            await self.peers.acquire(action.agent_url, dataset_id, pushed["received"],
                                     plan.maximum_size, generation=generation)
        except (PeerError, InUseHere):
            # the target does not hold the dataset; drop our unused snapshot
            await self._abandon(plan)
            raise

    async def _abandon(self, plan):
        try:
            await self.backend.abandon_send(plan)
        except Exception as e:
            log.warn("cannot drop what a failed push of {dataset_id} left: {error}",
                     dataset_id=plan.dataset_id, error=e)

    async def _watched(self, coroutine, progress):
        """Await a transfer; cancel it when no byte moved for stall_timeout seconds."""
        transfer = defer.ensureDeferred(coroutine)
        last = {"bytes": -1, "at": self.reactor.seconds()}
        stalled = []

        def check():
            now = self.reactor.seconds()
            if progress.done != last["bytes"]:
                last.update(bytes=progress.done, at=now)
            elif now - last["at"] >= self.stall_timeout and not transfer.called:
                stalled.append(now - last["at"])
                transfer.cancel()

        watchdog = task.LoopingCall(check)
        watchdog.clock = self.reactor
        watchdog.start(max(self.stall_timeout / 4, 0.05), now=True)
        try:
            return await transfer
        except defer.CancelledError:
            if stalled:
                raise TransferStalled(
                    f"no progress for {stalled[0]:.0f}s after {progress.done} bytes") from None
            raise
        finally:
            watchdog.stop()

    # receiving (IReceiver, for the peer server)

    def _moving_here(self, view, dataset_id):
        configured = view.datasets.get(dataset_id) if view is not None else None
        return configured is not None and not configured.deleted \
            and configured.primary == self.node_uuid

    async def check_receive(self, dataset_id, acquiring=False, generation=None):
        """Raise Refused unless the configuration says dataset_id moves to this node and
        the pushed copy (of generation, when the sender says) is not older than ours."""
        if not self._moving_here(self.view(), dataset_id):
            try:
                view = await self.fresh_view()
            except Exception as e:
                raise Refused(503, f"cannot check the configuration: {e}")
            if not self._moving_here(view, dataset_id):
                raise Refused(403, f"the configuration does not place dataset {dataset_id} "
                                   f"on node {self.node_uuid}")
        if not acquiring:
            local = self.backend.local_datasets().get(dataset_id)
            if local is not None and local.role == PRIMARY:
                raise Refused(409, f"dataset {dataset_id} is already held as primary on "
                                   f"node {self.node_uuid}")
            if dataset_id in self.busy:
                raise Refused(503, f"dataset {dataset_id} is busy on node {self.node_uuid} "
                                   f"({self.busy[dataset_id]})")
        known = self.backend.known_generation(dataset_id)
        if generation is not None and known is not None and generation < known:
            raise Refused(409, f"the pushed copy of dataset {dataset_id} is generation "
                               f"{generation}, older than generation {known} held on "
                               f"{self.address}")

    async def describe(self, dataset_id):
        local = self.backend.local_datasets().get(dataset_id)
        accepting, reason = True, ""
        try:
            await self.check_receive(dataset_id)
        except Refused as e:
            accepting, reason = False, e.description
        return {
            "dataset_id": dataset_id,
            "primary": local is not None and local.role == PRIMARY,
            "origin": local.origin if local is not None else None,
            "snapshots": self.backend.snapshots(dataset_id),
            "formats": list(self.backend.formats),
            "generation": self.backend.known_generation(dataset_id),
            "accepting": accepting,
            "reason": reason,
        }

    async def accept_push(self, dataset_id, stream_format, parent, snapshot, generation):
        if stream_format not in self.backend.formats:
            raise Refused(400, f"this node's {self.backend.name} backend receives "
                               f"{', '.join(self.backend.formats)}, not {stream_format!r}")
        await self.check_receive(dataset_id, generation=generation)
        if not self.busy.lock(dataset_id, "receive"):
            raise Refused(503, f"dataset {dataset_id} is busy on this node")
        try:
            return await self.backend.prepare_receive(dataset_id, stream_format, parent,
                                                      snapshot)
        except Exception as e:
            self.busy.unlock(dataset_id)
            if isinstance(e, MissingParent):
                raise Refused(412, str(e))
            if isinstance(e, Conflict):
                raise Refused(409, str(e))
            if isinstance(e, BackendError):
                raise Refused(500, f"{e} on {self.address}")
            if isinstance(e, OSError):
                raise Refused(500, f"{e.strerror or e} on {self.address}")
            raise

    def open_sink(self, dataset_id, plan, peer, total, transport):
        progress = Progress(self.reactor, dataset_id, "receive", peer, total=total)
        sink = ProcessSink(self.reactor, plan.argv, transport, progress=progress)
        self.faults.receiving(dataset_id, sink)
        self.transfers.started(progress)
        return sink, progress

    def receive_ended(self, dataset_id, progress, result, details):
        if progress is not None:
            self.transfers.finished(progress, result, extra=details)
        self.busy.unlock(dataset_id)

    async def acquire(self, dataset_id, received, maximum_size, peer, generation=None):
        await self.check_receive(dataset_id, acquiring=True, generation=generation)
        if not self.busy.lock(dataset_id, "acquire"):
            raise Refused(503, f"dataset {dataset_id} is busy on node {self.node_uuid}")
        try:
            await self.backend.acquire(dataset_id, received, maximum_size)
        except Conflict as e:
            raise Refused(409, str(e))
        except BackendError as e:
            raise Refused(404, str(e))
        finally:
            self.busy.unlock(dataset_id)
        view = self.view()
        configured = view.datasets.get(dataset_id) if view is not None else None
        known = [g for g in (generation, configured.generation if configured else None)
                 if g is not None]
        self.backend.record_generation(dataset_id, max(known) if known else None)
        log.info("acquired {dataset_id} from {peer}: now primary here at {path} "
                 "(generation {generation})", dataset_id=dataset_id, peer=peer,
                 path=self.backend.path(dataset_id),
                 generation=max(known) if known else None)
        self.on_received()
        return {"dataset_id": dataset_id, "path": self.backend.path(dataset_id)}
