"""The node agent: long-poll the cluster view, converge, report, push data to peers.

Event-driven: a new cluster view (long-poll), a finished action, a received push, a
change of what is in use or a backoff timer runs convergence; nothing waits on a fixed
sleep. Failed actions are retried per dataset with exponential backoff (0.5 s doubling
up to max_backoff). A move (push) that fails move_attempts times in a row is stalled:
reported in the node report's transfers with stalled, attempts and the error, and tried
again only once its configuration changes or after stall_retry seconds; the source
stays primary and intact meanwhile.

A deleted dataset's primary copy goes to the backend's trash and is kept keep_deleted
seconds (reported in the node report's trash, restorable meanwhile: the control service
makes this node its primary again and convergence restores it), then purged by a check
every TRASH_CHECK_LIMIT seconds at most, and at start.
"""

from collections import deque
from dataclasses import dataclass
from typing import Optional

from twisted.internet import defer, task
from twisted.logger import Logger

from powerstripflocker.agent.backends import BackendError, Conflict
from powerstripflocker.agent.convergence import decide, superseded
from powerstripflocker.agent.faults import Faults
from powerstripflocker.agent.model import PRIMARY, ClusterView, Cleanup, Create, Destroy, Push, Restore, Wait
from powerstripflocker.agent.peer import PeerError, Refused
from powerstripflocker.agent.streams import CommandFailed, Progress, failure_cause
from powerstripflocker.protocol.ids import is_uuid

log = Logger()


class TransferStalled(Exception):
    pass


class InUseHere(Exception):
    """The kernel shows the dataset in use here: it is not moved or deleted now."""


ERROR_LENGTH = 1024      # the node report's limit on a transfer's error text
IN_USE_RECHECK = 1.0     # seconds before an action found in use at the last moment is redone
UNREACHABLE_RETRY = 30.0  # seconds before a move stalled on an unreachable target is retried
DEFAULT_KEEP_DELETED = 3600.0  # seconds a deleted dataset's data is kept in the trash
TRASH_CHECK_LIMIT = 60.0  # the longest between two looks for trash entries past their time
TRASH_REPORT_LIMIT = 2048  # trash entries in a report (the newest): it must stay well
                           # within the control service's body limit

def _unreachable(error):
    """Whether a failed push never got an answer from the target's agent."""
    return isinstance(error, (ConnectionError, defer.CancelledError)) or \
        type(error).__module__.startswith("twisted")


@dataclass
class Failure:
    """The latest failures of one dataset's action, for backoff and the report."""
    action: object
    attempts: int
    retry_at: float
    error: str
    stalled: bool = False
    configuration: object = None        # what the action was decided from
    bytes_done: int = 0
    bytes_total: Optional[int] = None


class _Held:
    """A push held by fault injection; release() lets it go on."""

    def __init__(self):
        self.deferred = defer.Deferred()

    def release(self):
        if not self.deferred.called:
            self.deferred.callback(None)


class AgentService:
    def __init__(self, reactor, backend, control, peers, node_uuid, address, agent_url,
                 token=None, faults=None, heartbeat=10.0, max_backoff=5.0, poll_timeout=30,
                 stall_timeout=300.0, move_attempts=5, stall_retry=300.0,
                 keep_deleted=DEFAULT_KEEP_DELETED):
        self.reactor = reactor
        self.backend = backend
        self.control = control
        self.peers = peers
        self.node_uuid = node_uuid
        self.address = address
        self.agent_url = agent_url
        self.token = token
        self.faults = faults or Faults()
        self.heartbeat = heartbeat
        self.max_backoff = max_backoff
        self.poll_timeout = poll_timeout
        self.stall_timeout = stall_timeout
        self.move_attempts = move_attempts
        self.stall_retry = stall_retry
        self.keep_deleted = keep_deleted
        self.view = None
        self.generation = None
        self.busy = {}                # dataset_id -> what is running ("push", "receive"...)
        self.failures = {}            # dataset_id -> Failure
        self.active = []              # Progress of running transfers
        self._last_push = {}          # dataset_id -> Progress of its push under way
        self._used_until = {}         # dataset_id -> when to look again: found in use
        self.history = deque(maxlen=100)
        self.bytes_sent_total = 0
        self.bytes_received_total = 0
        self.paused_by_fault = []
        self._paused_sinks = []
        self.running = False
        self._reporting = False
        self._report_dirty = False
        self._poll = None
        self._heartbeat = None
        self._trash_check = None
        self._waits_logged = {}
        self.reported = 0
        # users_of(dataset_id) -> descriptions of the containers using it here (in-use
        # tracking sets it); reported so another node can say who holds a volume.
        self.users_of = lambda dataset_id: []
        # in_use(dataset_id, fresh=False) -> descriptions of what uses it here: mounted in
        # a mount namespace or a running container's ([] when nothing); fresh asks the
        # kernel now. In-use tracking sets it; nothing in use moves or is deleted.
        self.in_use = lambda dataset_id, fresh=False: []
        # fencing_events() -> the latest fencings, for metrics (in-use tracking sets it).
        self.fencing_events = lambda: []

    # lifecycle

    async def start(self):
        await self.backend.start()
        self.running = True
        self._heartbeat = task.LoopingCall(self.request_report)
        self._heartbeat.clock = self.reactor
        self._heartbeat.start(self.heartbeat, now=True)
        self._trash_check = task.LoopingCall(self._purge_safely)
        self._trash_check.clock = self.reactor
        self._trash_check.start(min(max(self.keep_deleted / 4, 0.1), TRASH_CHECK_LIMIT),
                                now=True)
        self._poll_done = defer.ensureDeferred(self._poll_loop())
        log.info("agent {node_uuid} started: backend {backend} at {root}, agent url {url}",
                 node_uuid=self.node_uuid, backend=self.backend.name,
                 root=self.backend.data_root, url=self.agent_url)

    def stop(self):
        self.running = False
        for loop in (self._heartbeat, self._trash_check):
            if loop is not None and loop.running:
                loop.stop()
        if self._poll is not None:
            self._poll.cancel()

    # the cluster view

    async def _poll_loop(self):
        delay = 0.1
        while self.running:
            self._poll = defer.ensureDeferred(
                self.control.cluster(self.generation if self.generation is not None else -1,
                                     timeout=self.poll_timeout))
            try:
                body = await self._poll
            except defer.CancelledError:
                if not self.running:
                    return
                continue
            except Exception as e:
                if not self.running:
                    return
                log.warn("cannot get the cluster view from the control service: {error}; "
                         "retrying in {delay:.1f}s", error=e, delay=delay)
                await task.deferLater(self.reactor, delay, lambda: None)
                delay = min(delay * 2, self.max_backoff)
                continue
            finally:
                self._poll = None
            delay = 0.1
            try:
                view = ClusterView.from_json(body)
            except (KeyError, TypeError, AttributeError) as e:
                log.error("malformed cluster view: {error}", error=e)
                await task.deferLater(self.reactor, 1.0, lambda: None)
                continue
            self.view = view
            self.generation = view.generation
            self.converge()

    async def fresh_view(self):
        """An up-to-date view (at once), for decisions a stale view might get wrong."""
        return ClusterView.from_json(await self.control.cluster(-1, timeout=0))

    # reports

    def build_report(self):
        datasets = [
            dict({"dataset_id": d.dataset_id, "path": d.path, "maximum_size": d.maximum_size},
                 **({"users": users[:16]} if (users := self.users_of(d.dataset_id)) else {}),
                 **({"generation": d.generation} if d.generation else {}))
            for d in sorted(self.backend.local_datasets().values(), key=lambda d: d.dataset_id)
            if d.role == PRIMARY
            and not (self.view is not None and superseded(self.node_uuid, self.view, d))
        ]
        report = {"host": self.address, "agent_url": self.agent_url, "datasets": datasets,
                  "transfers": self._transfers_report()}
        trash = self._trash_report()
        if trash:
            # Only when there is one: a control service from before the trash refuses
            # reports with fields it does not know.
            report["trash"] = trash
        return report

    def _trash_report(self):
        return [{"dataset_id": entry.dataset_id, "deleted_at": entry.deleted_at,
                 "expires_at": entry.deleted_at + self.keep_deleted, "bytes": entry.bytes,
                 **({"generation": entry.generation} if entry.generation else {})}
                for entry in self.backend.trashed()[-TRASH_REPORT_LIMIT:]]

    def _purge_safely(self):
        # An error must not end the LoopingCall: the trash would then grow for good.
        return defer.ensureDeferred(self.purge_expired()).addErrback(
            lambda failure: log.failure("checking the trash failed; trying again later",
                                        failure))

    # the trash

    async def purge_expired(self):
        """Purge the trash entries kept keep_deleted seconds, except those whose dataset
        a fresh view shows restored here (their restore is under way)."""
        now = self.reactor.seconds()
        expired = [entry for entry in self.backend.trashed()
                   if entry.deleted_at + self.keep_deleted <= now]
        if not expired or not self.running:
            return
        try:
            view = await self.fresh_view()
        except Exception as e:
            log.warn("not purging the trash now: cannot check the configuration for "
                     "restores: {error}", error=e)
            return
        purged = False
        for entry in expired:
            configured = view.datasets.get(entry.dataset_id)
            if configured is not None and not configured.deleted \
                    and configured.primary == self.node_uuid:
                continue
            if not self.lock(entry.dataset_id, "purge"):
                continue
            try:
                await self.backend.purge(entry.key)
                purged = True
                log.info("removed dataset {dataset_id} from the trash: deleted "
                         "{seconds:.0f}s ago, kept {keep:g}s ({bytes} bytes)",
                         dataset_id=entry.dataset_id, seconds=now - entry.deleted_at,
                         keep=self.keep_deleted, bytes=entry.bytes)
            except Exception as e:
                log.error("cannot remove {key} from the trash: {error}", key=entry.key,
                          error=e)
            finally:
                self.unlock(entry.dataset_id)
        if purged:
            self.request_report()

    def _transfers_report(self):
        """Running transfers, and the moves that failed and wait for their next attempt
        or are stalled, with attempts, the error and stalled."""
        transfers = []
        pushing = set()
        for progress in self.active:
            if not is_uuid(progress.peer):
                continue
            entry = progress.as_report()
            failed = self.failures.get(progress.dataset_id)
            if progress.direction == "push":
                pushing.add(progress.dataset_id)
                if failed is not None and isinstance(failed.action, Push):
                    entry.update(attempts=failed.attempts + 1, error=failed.error,
                                 stalled=False)
            transfers.append(entry)
        for dataset_id, failed in sorted(self.failures.items()):
            if isinstance(failed.action, Push) and dataset_id not in pushing:
                transfers.append({
                    "dataset_id": dataset_id, "direction": "push",
                    "peer": failed.action.target, "bytes_done": failed.bytes_done,
                    "bytes_total": failed.bytes_total, "attempts": failed.attempts,
                    "error": failed.error[:ERROR_LENGTH], "stalled": failed.stalled})
        return transfers

    def request_report(self):
        """Send our report now (coalesced; retried with backoff until it gets through)."""
        self._report_dirty = True
        if not self._reporting and self.running:
            defer.ensureDeferred(self._report_loop())

    async def _report_loop(self):
        self._reporting = True
        delay = 0.1
        try:
            while self._report_dirty and self.running:
                self._report_dirty = False
                try:
                    report = self.build_report()
                    await self.control.report(self.node_uuid, report)
                    self.reported += 1
                    delay = 0.1
                except Exception as e:
                    self._report_dirty = True
                    log.warn("cannot report to the control service: {error}; retrying in "
                             "{delay:.1f}s", error=e, delay=delay)
                    await task.deferLater(self.reactor, delay, lambda: None)
                    delay = min(delay * 2, self.max_backoff)
        finally:
            self._reporting = False

    # convergence

    def converge(self):
        if self.view is None or not self.running:
            return
        local = self.backend.local_datasets()
        if self._record_generations(local):
            local = self.backend.local_datasets()
        in_use = {dataset_id: users for dataset_id in local
                  if (users := self.in_use(dataset_id))}
        now = self.reactor.seconds()
        waits = {}
        trashed = {entry.dataset_id for entry in self.backend.trashed()}
        actions = decide(self.node_uuid, self.view, local, in_use, trashed)
        decided = {action.dataset_id: action for action in actions}
        for dataset_id in list(self.failures):
            if decided.get(dataset_id) != self.failures[dataset_id].action \
                    and dataset_id not in self.busy:
                del self.failures[dataset_id]      # no longer what this node should do
        for action in actions:
            dataset_id = action.dataset_id
            if isinstance(action, Wait):
                waits[dataset_id] = action.reason
                if self._waits_logged.get(dataset_id) != action.reason:
                    log.info("dataset {dataset_id}: {reason}", dataset_id=dataset_id,
                             reason=action.reason)
                continue
            if dataset_id in self.busy or self._used_until.get(dataset_id, 0) > now:
                continue
            failed = self.failures.get(dataset_id)
            if failed is not None and failed.retry_at > now:
                if not failed.stalled or failed.configuration == self._configuration(action):
                    continue
                log.info("dataset {dataset_id}: its configuration changed; trying the "
                         "stalled move again", dataset_id=dataset_id)
                del self.failures[dataset_id]
            self.lock(dataset_id, type(action).__name__.lower())
            defer.ensureDeferred(self._execute(action))
        self._waits_logged = waits

    def _configuration(self, action):
        """What a stalled action is tried again on a change of: the dataset's configured
        entry and the target's agent."""
        target = getattr(action, "target", None)
        node = self.view.nodes.get(target) if target else None
        return (self.view.datasets.get(action.dataset_id),
                node.agent_url if node is not None else None)

    def _record_generations(self, local):
        """Keep the view's generation with the copies primary here that the configuration
        places here (no other node serving one); whether any was recorded."""
        recorded = False
        for dataset_id, held in local.items():
            configured = self.view.datasets.get(dataset_id)
            if held.role != PRIMARY or configured is None or configured.primary != \
                    self.node_uuid or configured.generation is None:
                continue
            if self.view.holders(dataset_id) - {self.node_uuid}:
                continue
            if held.generation is None or held.generation < configured.generation:
                self.backend.record_generation(dataset_id, configured.generation)
                recorded = True
        return recorded

    def _check_not_in_use(self, dataset_id, what):
        users = self.in_use(dataset_id, fresh=True)
        if users:
            raise InUseHere(f"dataset {dataset_id} is in use here by {', '.join(users[:3])}: "
                            f"not {what} it while it is")

    async def _execute(self, action):
        dataset_id = action.dataset_id
        configuration = self._configuration(action)
        try:
            if isinstance(action, Create):
                await self.backend.create(dataset_id, action.maximum_size)
                configured = self.view.datasets.get(dataset_id)
                self.backend.record_generation(
                    dataset_id, configured.generation if configured is not None else None)
                log.info("created dataset {dataset_id} at {path} (maximum_size {size})",
                         dataset_id=dataset_id, path=self.backend.path(dataset_id),
                         size=action.maximum_size)
            elif isinstance(action, Destroy):
                self._check_not_in_use(dataset_id, "destroying")
                await self._destroy(dataset_id)
            elif isinstance(action, Restore):
                self._check_not_in_use(dataset_id, "restoring")
                entry = await self.backend.restore(dataset_id)
                configured = self.view.datasets.get(dataset_id)
                self.backend.record_generation(
                    dataset_id, configured.generation if configured is not None else None)
                log.info("restored dataset {dataset_id} from the trash at {path} (deleted "
                         "{seconds:.0f}s ago, {bytes} bytes)", dataset_id=dataset_id,
                         path=self.backend.path(dataset_id),
                         seconds=self.reactor.seconds() - entry.deleted_at,
                         bytes=entry.bytes)
            elif isinstance(action, Cleanup):
                self._check_not_in_use(dataset_id, "deleting")
                await self.backend.cleanup(dataset_id)
                log.info("deleted the handed-off copy of {dataset_id}: the new primary "
                         "reports it", dataset_id=dataset_id)
            elif isinstance(action, Push):
                self._check_not_in_use(dataset_id, "moving")
                await self._push(action)
            self.failures.pop(dataset_id, None)
        except InUseHere as e:
            # Not a failure: looked at again a little later (in-use tracking also runs
            # convergence as soon as nothing uses it).
            log.warn("{action} not done: {reason}", action=action, reason=e)
            self._used_until[dataset_id] = self.reactor.seconds() + IN_USE_RECHECK
            self.reactor.callLater(IN_USE_RECHECK, self.converge)
        except Exception as e:
            self._failed(action, e, configuration)
        finally:
            self._last_push.pop(dataset_id, None)
            self.unlock(dataset_id)
            self.request_report()
            self.converge()

    async def _destroy(self, dataset_id):
        if self.keep_deleted <= 0:
            await self.backend.destroy(dataset_id)
            log.info("destroyed dataset {dataset_id}", dataset_id=dataset_id)
            return
        entry = await self.backend.trash(dataset_id, self.reactor.seconds())
        if entry is None:
            log.info("destroyed the copy of deleted dataset {dataset_id} (not its primary)",
                     dataset_id=dataset_id)
            return
        log.info("moved deleted dataset {dataset_id} ({bytes} bytes) to the trash as "
                 "{key}; kept {keep:g}s, restorable meanwhile", dataset_id=dataset_id,
                 bytes=entry.bytes, key=entry.key, keep=self.keep_deleted)

    def _failed(self, action, error, configuration):
        dataset_id = action.dataset_id
        previous = self.failures.get(dataset_id)
        count = previous.attempts + 1 if previous is not None and previous.action == action \
            else 1
        text = self._error_text(action, error)
        progress = self._last_push.pop(dataset_id, None)
        failure = Failure(action, count, 0.0, text, configuration=configuration,
                          bytes_done=progress.done if progress is not None else 0,
                          bytes_total=progress.total if progress is not None else None)
        if isinstance(action, Push) and count >= self.move_attempts:
            failure.stalled = True
            # Knocking again on an agent that did not answer costs nothing: sooner.
            delay = min(self.stall_retry, UNREACHABLE_RETRY) if _unreachable(error) \
                else self.stall_retry
            failure.retry_at = self.reactor.seconds() + delay
            log.error("moving {dataset_id} to {target} stalled after {count} attempts: "
                      "{error}; the copy here stays primary; trying again when its "
                      "configuration changes or in {delay:.0f}s", dataset_id=dataset_id,
                      target=action.target, count=count, error=text, delay=delay)
        else:
            delay = min(0.5 * 2 ** (count - 1), self.max_backoff)
            failure.retry_at = self.reactor.seconds() + delay
            log.error("{action} failed (attempt {count}): {error}; retrying in {delay:.1f}s",
                      action=action, count=count, error=text, delay=delay)
        self.failures[dataset_id] = failure
        self.reactor.callLater(delay, self.converge)

    def _error_text(self, action, error):
        """The cause of a failure and the host it happened on, as the report shows it
        ("No space left on device on 198.18.0.3")."""
        if isinstance(error, PeerError):
            target = self.view.nodes.get(getattr(action, "target", None)) if self.view \
                else None
            host = target.host if target is not None and target.host else \
                getattr(action, "target", "the peer")
            description = str(error.description)
            return description if host in description else f"{description} (on {host})"
        if _unreachable(error):
            return f"cannot reach the agent of {getattr(action, 'target', '?')} at " \
                   f"{getattr(action, 'agent_url', '?')}: {error or type(error).__name__}"
        if isinstance(error, (OSError, CommandFailed)):
            return f"{failure_cause(error)} on {self.address}"
        return str(error)

    async def _push(self, action):
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
            configured = self.view.datasets.get(dataset_id) if self.view else None
            if configured is not None:
                plan.maximum_size = configured.maximum_size
            progress = Progress(self.reactor, dataset_id, "push", target, total=plan.size)
            log.info("pushing {dataset_id} to {target} at {url} ({stream_format}, parent {parent}, "
                     "about {size} bytes)", dataset_id=dataset_id, target=target,
                     url=action.agent_url, stream_format=plan.format, parent=plan.parent,
                     size=plan.size)
            self.transfer_started(progress)
            self._last_push[dataset_id] = progress
            result = "failed"
            try:
                fault = {}
                if self.faults.send_pause_after_bytes is not None:
                    fault = dict(
                        pause_after_bytes=self.faults.send_pause_after_bytes,
                        on_fault_pause=lambda producer: self.fault_paused(
                            dataset_id, producer.bytes, producer))
                pushed = await self._watched(
                    self.peers.push(action.agent_url, plan, progress, generation=ours,
                                    **fault), progress)
                result = "pushed"
            except BaseException:
                await self._abandon(plan)
                raise
            finally:
                self.transfer_finished(progress, result, extra={
                    "format": plan.format, "parent": plan.parent, "snapshot": plan.snapshot})
            seconds = progress.seconds()
            log.info("pushed {dataset_id} to {target}: {bytes} bytes in {seconds:.2f}s "
                     "({rate_mb:.1f} MB/s)", dataset_id=dataset_id, target=target,
                     bytes=progress.done, seconds=seconds,
                     rate_mb=progress.done / max(seconds, 1e-6) / 1e6)
            await self._fault_hold("pause_before_acquire", dataset_id)
            try:
                # The point of no return: past it the target is primary too.
                self._check_not_in_use(dataset_id, "handing off")
                await self.peers.acquire(action.agent_url, dataset_id, pushed["received"],
                                         plan.maximum_size, generation=ours)
            except (PeerError, InUseHere):
                # the target does not hold the dataset; drop our unused snapshot
                await self._abandon(plan)
                raise
        await self._fault_hold("pause_before_handoff", dataset_id)
        await self.backend.handoff(dataset_id, target, plan)
        log.info("handed off {dataset_id} to {target}; the local copy is deleted once "
                 "{target} reports it", dataset_id=dataset_id, target=target)

    async def _fault_hold(self, point, dataset_id):
        """Fault injection (tests only): hold here until POST /agent/v1/faults/resume."""
        if not getattr(self.faults, point):
            return
        held = _Held()
        log.warn("fault injection: push of {dataset_id} held at {point}",
                 dataset_id=dataset_id, point=point)
        self.fault_paused(dataset_id, 0, held, point=point)
        await held.deferred

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

    # the peer side (called by peer.py)

    def lock(self, dataset_id, what):
        if dataset_id in self.busy:
            return False
        self.busy[dataset_id] = what
        return True

    def unlock(self, dataset_id):
        self.busy.pop(dataset_id, None)

    def _moving_here(self, view, dataset_id):
        configured = view.datasets.get(dataset_id) if view is not None else None
        return configured is not None and not configured.deleted \
            and configured.primary == self.node_uuid

    async def check_receive(self, dataset_id, acquiring=False, generation=None):
        """Raise Refused unless the configuration says dataset_id moves to this node and
        the pushed copy (of generation, when the sender says) is not older than ours."""
        if not self._moving_here(self.view, dataset_id):
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

    async def describe_for_peer(self, dataset_id):
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

    async def acquire_for_peer(self, dataset_id, received, maximum_size, peer,
                               generation=None):
        await self.check_receive(dataset_id, acquiring=True, generation=generation)
        if not self.lock(dataset_id, "acquire"):
            raise Refused(503, f"dataset {dataset_id} is busy on node {self.node_uuid}")
        try:
            await self.backend.acquire(dataset_id, received, maximum_size)
        except Conflict as e:
            raise Refused(409, str(e))
        except BackendError as e:
            raise Refused(404, str(e))
        finally:
            self.unlock(dataset_id)
        configured = self.view.datasets.get(dataset_id) if self.view is not None else None
        known = [g for g in (generation, configured.generation if configured else None)
                 if g is not None]
        self.backend.record_generation(dataset_id, max(known) if known else None)
        log.info("acquired {dataset_id} from {peer}: now primary here at {path} "
                 "(generation {generation})", dataset_id=dataset_id, peer=peer,
                 path=self.backend.path(dataset_id),
                 generation=max(known) if known else None)
        self.request_report()
        self.converge()
        return {"dataset_id": dataset_id, "path": self.backend.path(dataset_id)}

    # transfers and metrics

    def transfer_started(self, progress):
        self.active.append(progress)
        self.request_report()

    def transfer_finished(self, progress, result, extra=None):
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
        self.request_report()

    def fault_paused(self, dataset_id, count, sink=None, point=None):
        self.paused_by_fault.append(dict({"dataset_id": dataset_id, "bytes": count},
                                         **({"point": point} if point else {})))
        if sink is not None:
            self._paused_sinks.append(sink)

    def resume_faults(self):
        """Let receives held by fault injection go on (tests only)."""
        sinks, self._paused_sinks = self._paused_sinks, []
        for sink in sinks:
            sink.release()
        return len(sinks)

    def metrics(self):
        return {
            "node_uuid": self.node_uuid,
            "backend": self.backend.name,
            "bytes_sent_total": self.bytes_sent_total,
            "bytes_received_total": self.bytes_received_total,
            "transfers": [p.as_report() for p in self.active],
            "history": list(self.history),
            "fault_paused": list(self.paused_by_fault),
            "busy": dict(self.busy),
            "waiting": dict(self._waits_logged),
            "failing": {
                dataset_id: {"action": type(failed.action).__name__.lower(),
                             "attempts": failed.attempts, "error": failed.error,
                             "stalled": failed.stalled}
                for dataset_id, failed in self.failures.items()},
            "in_use": {dataset_id: users for dataset_id in self.backend.local_datasets()
                       if (users := self.in_use(dataset_id))},
            "fenced": list(self.fencing_events()),
            "generation": self.generation,
            "reports_sent": self.reported,
        }
