"""Converging this node: decide what to do (convergence.py) from the cluster view, the
datasets here and what uses them, and do it, one action per dataset at a time.

Event-driven: a new cluster view, a finished action, a received push, a change of what is
in use or a backoff timer runs convergence; nothing waits on a fixed sleep. Failed actions
are retried per dataset with exponential backoff (0.5 s doubling up to max_backoff). A
move (push) that fails move_attempts times in a row is stalled: reported in the node
report's transfers with stalled, attempts and the error, and tried again only once its
configuration changes or after stall_retry seconds; the source stays primary and intact
meanwhile.
"""

from dataclasses import dataclass
from typing import Optional

from twisted.internet import defer
from twisted.logger import Logger

from powerstripflocker.agent.convergence import decide
from powerstripflocker.agent.local import InUseHere
from powerstripflocker.agent.model import PRIMARY, Cleanup, Create, Destroy, Push, Restore, Wait
from powerstripflocker.agent.mover import unreachable
from powerstripflocker.agent.streams.processes import CommandFailed, failure_cause
from powerstripflocker.clients.peer import PeerError
from powerstripflocker.protocol.ids import is_uuid

log = Logger()

ERROR_LENGTH = 1024      # the node report's limit on a transfer's error text
IN_USE_RECHECK = 1.0     # seconds before an action found in use at the last moment is redone
UNREACHABLE_RETRY = 30.0  # seconds before a move stalled on an unreachable target is retried


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


class Converger:
    """Runs the actions convergence decides, with backoff, and keeps their failures.

    view() -> the latest ClusterView (or None before the first); on_change() is called
    when the report should be sent again.
    """

    def __init__(self, reactor, backend, node_uuid, address, busy, use, mover, trash,
                 view, on_change, max_backoff=5.0, move_attempts=5, stall_retry=300.0):
        self.reactor = reactor
        self.backend = backend
        self.node_uuid = node_uuid
        self.address = address
        self.busy = busy
        self.use = use
        self.mover = mover
        self.trash = trash
        self.view = view
        self.on_change = on_change
        self.max_backoff = max_backoff
        self.move_attempts = move_attempts
        self.stall_retry = stall_retry
        self.running = False
        self.failures = {}            # dataset_id -> Failure
        self.waits = {}               # dataset_id -> why it waits (logged once)
        self._used_until = {}         # dataset_id -> when to look again: found in use

    def converge(self):
        view = self.view()
        if view is None or not self.running:
            return
        local = self.backend.local_datasets()
        if self._record_generations(view, local):
            local = self.backend.local_datasets()
        in_use = {dataset_id: users for dataset_id in local
                  if (users := self.use.in_use(dataset_id))}
        now = self.reactor.seconds()
        waits = {}
        trashed = {entry.dataset_id for entry in self.backend.trashed()}
        actions = decide(self.node_uuid, view, local, in_use, trashed)
        decided = {action.dataset_id: action for action in actions}
        for dataset_id in list(self.failures):
            if decided.get(dataset_id) != self.failures[dataset_id].action \
                    and dataset_id not in self.busy:
                del self.failures[dataset_id]      # no longer what this node should do
        for action in actions:
            dataset_id = action.dataset_id
            if isinstance(action, Wait):
                waits[dataset_id] = action.reason
                if self.waits.get(dataset_id) != action.reason:
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
            self.busy.lock(dataset_id, type(action).__name__.lower())
            defer.ensureDeferred(self._execute(action))
        self.waits = waits

    def _configuration(self, action):
        """What a stalled action is tried again on a change of: the dataset's configured
        entry and the target's agent."""
        view = self.view()
        target = getattr(action, "target", None)
        node = view.nodes.get(target) if target else None
        return (view.datasets.get(action.dataset_id),
                node.agent_url if node is not None else None)

    def _record_generations(self, view, local):
        """Keep the view's generation with the copies primary here that the configuration
        places here (no other node serving one); whether any was recorded."""
        recorded = False
        for dataset_id, held in local.items():
            configured = view.datasets.get(dataset_id)
            if held.role != PRIMARY or configured is None or configured.primary != \
                    self.node_uuid or configured.generation is None:
                continue
            if view.holders(dataset_id) - {self.node_uuid}:
                continue
            if held.generation is None or held.generation < configured.generation:
                self.backend.record_generation(dataset_id, configured.generation)
                recorded = True
        return recorded

    def _configured_generation(self, dataset_id):
        configured = self.view().datasets.get(dataset_id)
        return configured.generation if configured is not None else None

    async def _execute(self, action):
        dataset_id = action.dataset_id
        configuration = self._configuration(action)
        try:
            if isinstance(action, Create):
                await self.backend.create(dataset_id, action.maximum_size)
                self.backend.record_generation(dataset_id,
                                               self._configured_generation(dataset_id))
                log.info("created dataset {dataset_id} at {path} (maximum_size {size})",
                         dataset_id=dataset_id, path=self.backend.path(dataset_id),
                         size=action.maximum_size)
            elif isinstance(action, Destroy):
                self.use.check_not_in_use(dataset_id, "destroying")
                await self.trash.discard(dataset_id)
            elif isinstance(action, Restore):
                self.use.check_not_in_use(dataset_id, "restoring")
                entry = await self.backend.restore(dataset_id)
                self.backend.record_generation(dataset_id,
                                               self._configured_generation(dataset_id))
                log.info("restored dataset {dataset_id} from the trash at {path} (deleted "
                         "{seconds:.0f}s ago, {bytes} bytes)", dataset_id=dataset_id,
                         path=self.backend.path(dataset_id),
                         seconds=self.reactor.seconds() - entry.deleted_at,
                         bytes=entry.bytes)
            elif isinstance(action, Cleanup):
                self.use.check_not_in_use(dataset_id, "deleting")
                await self.backend.cleanup(dataset_id)
                log.info("deleted the handed-off copy of {dataset_id}: the new primary "
                         "reports it", dataset_id=dataset_id)
            elif isinstance(action, Push):
                self.use.check_not_in_use(dataset_id, "moving")
                await self.mover.push(action)
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
            self.mover.forget_push(dataset_id)
            self.busy.unlock(dataset_id)
            self.on_change()
            self.converge()

    def _failed(self, action, error, configuration):
        dataset_id = action.dataset_id
        previous = self.failures.get(dataset_id)
        count = previous.attempts + 1 if previous is not None and previous.action == action \
            else 1
        text = self._error_text(action, error)
        progress = self.mover.forget_push(dataset_id)
        failure = Failure(action, count, 0.0, text, configuration=configuration,
                          bytes_done=progress.done if progress is not None else 0,
                          bytes_total=progress.total if progress is not None else None)
        if isinstance(action, Push) and count >= self.move_attempts:
            failure.stalled = True
            # Knocking again on an agent that did not answer costs nothing: sooner.
            delay = min(self.stall_retry, UNREACHABLE_RETRY) if unreachable(error) \
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
            view = self.view()
            target = view.nodes.get(getattr(action, "target", None)) if view else None
            host = target.host if target is not None and target.host else \
                getattr(action, "target", "the peer")
            description = str(error.description)
            return description if host in description else f"{description} (on {host})"
        if unreachable(error):
            return f"cannot reach the agent of {getattr(action, 'target', '?')} at " \
                   f"{getattr(action, 'agent_url', '?')}: {error or type(error).__name__}"
        if isinstance(error, (OSError, CommandFailed)):
            return f"{failure_cause(error)} on {self.address}"
        return str(error)

    # what the report and metrics show

    def transfers_report(self, active):
        """The running transfers (Progress, active), and the moves that failed and wait
        for their next attempt or are stalled, with attempts, the error and stalled."""
        transfers = []
        pushing = set()
        for progress in active:
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

    def failing(self):
        return {dataset_id: {"action": type(failed.action).__name__.lower(),
                             "attempts": failed.attempts, "error": failed.error,
                             "stalled": failed.stalled}
                for dataset_id, failed in self.failures.items()}
