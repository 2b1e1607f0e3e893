"""The node agent: a ClusterWatcher (long-poll of the cluster view, reports), a Converger
(actions with backoff), a Mover (pushes, the receiving side, transfers) and the Trash,
sharing the backend, the datasets' locks (Busy) and what uses them (LocalUse).

Each start of the agent has an era (a new UUID) that every report carries, so the control
service tells this run's reports from the last run's.
"""

import uuid

from twisted.internet import defer, task
from twisted.logger import Logger

from powerstripflocker.agent.converger import Converger
from powerstripflocker.agent.convergence import superseded
from powerstripflocker.agent.faults import Faults
from powerstripflocker.agent.local import Busy, LocalUse
from powerstripflocker.agent.model import PRIMARY
from powerstripflocker.agent.mover import Mover
from powerstripflocker.agent.peer import PeerApp, peer_site
from powerstripflocker.agent.trash import DEFAULT_KEEP_DELETED, TRASH_REPORT_LIMIT, Trash
from powerstripflocker.agent.watcher import ClusterWatcher

__all__ = ["AgentService", "DEFAULT_KEEP_DELETED", "TRASH_REPORT_LIMIT"]

log = Logger()


class AgentService:
    """One node's agent: its parts wired together, started and stopped as one; what the
    rest of the node (in-use tracking, the peer listener, metrics) asks of it."""

    def __init__(self, reactor, backend, control, peers, node_uuid, address, agent_url,
                 token=None, faults=None, heartbeat=10.0, max_backoff=5.0, poll_timeout=30,
                 stall_timeout=300.0, move_attempts=5, stall_retry=300.0,
                 keep_deleted=DEFAULT_KEEP_DELETED):
        self.reactor = reactor
        self.backend = backend
        self.node_uuid = node_uuid
        self.address = address
        self.agent_url = agent_url
        self.token = token
        self.faults = faults or Faults()
        self.era = None
        self.busy = Busy()
        self.use = LocalUse()
        self.watcher = ClusterWatcher(
            reactor, control, node_uuid, self.build_report, lambda view: self.converge(),
            heartbeat=heartbeat, max_backoff=max_backoff, poll_timeout=poll_timeout)
        self.trash = Trash(reactor, backend, self.busy, node_uuid, self.watcher.fresh_view,
                           self.request_report, keep_deleted=keep_deleted)
        self.mover = Mover(reactor, backend, node_uuid, address, self.busy, self.use, peers,
                           self.faults, lambda: self.watcher.view, self.watcher.fresh_view,
                           self.request_report, self._received, stall_timeout=stall_timeout)
        self.converger = Converger(
            reactor, backend, node_uuid, address, self.busy, self.use, self.mover,
            self.trash, lambda: self.watcher.view, self.request_report,
            max_backoff=max_backoff, move_attempts=move_attempts, stall_retry=stall_retry)
        self._trash_check = None

    # lifecycle (AgentServer, agent/command.py, runs it as a service)

    async def start(self):
        await self.backend.start()
        self.era = str(uuid.uuid4())
        self.watcher.era = self.era
        self.converger.running = True
        self.watcher.start()
        self._trash_check = task.LoopingCall(self._purge_safely)
        self._trash_check.clock = self.reactor
        self._trash_check.start(self.trash.check_interval(), now=True)
        log.info("agent {node_uuid} started (era {era}): backend {backend} at {root}, agent "
                 "url {url}", node_uuid=self.node_uuid, era=self.era, backend=self.backend.name,
                 root=self.backend.data_root, url=self.agent_url)

    def stop(self):
        self.converger.running = False
        self.watcher.stop()
        if self._trash_check is not None and self._trash_check.running:
            self._trash_check.stop()

    def peer_site(self, idle_timeout=600):
        """The Site serving the agent <-> agent protocol for this agent."""
        app = PeerApp(self.mover, self.node_uuid, self.backend.name, self.metrics,
                      self.faults)
        return peer_site(app, self.mover, self.token, idle_timeout=idle_timeout)

    # what the parts do, as the rest of the node asks for it

    def converge(self):
        self.converger.converge()

    def request_report(self):
        self.watcher.request_report()

    def _received(self):
        self.request_report()
        self.converge()

    def lock(self, dataset_id, what):
        return self.busy.lock(dataset_id, what)

    async def check_receive(self, dataset_id, acquiring=False, generation=None):
        await self.mover.check_receive(dataset_id, acquiring=acquiring, generation=generation)

    async def purge_expired(self):
        if self.watcher.running:
            await self.trash.purge_expired()

    def _purge_safely(self):
        # An error must not end the LoopingCall: the trash would then grow for good.
        return defer.ensureDeferred(self.purge_expired()).addErrback(
            lambda failure: log.failure("checking the trash failed; trying again later",
                                        failure))

    @property
    def failures(self):
        return self.converger.failures

    @property
    def stall_retry(self):
        return self.converger.stall_retry

    @property
    def keep_deleted(self):
        return self.trash.keep_deleted

    @keep_deleted.setter
    def keep_deleted(self, seconds):
        self.trash.keep_deleted = seconds

    # in-use tracking sets these (see LocalUse)

    @property
    def users_of(self):
        return self.use.users_of

    @users_of.setter
    def users_of(self, users_of):
        self.use.users_of = users_of

    @property
    def in_use(self):
        return self.use.in_use

    @in_use.setter
    def in_use(self, in_use):
        self.use.in_use = in_use

    @property
    def fencing_events(self):
        return self.use.fencing_events

    @fencing_events.setter
    def fencing_events(self, fencing_events):
        self.use.fencing_events = fencing_events

    # what the control service and the metrics endpoint are told

    def build_report(self):
        view = self.watcher.view
        datasets = [
            dict({"dataset_id": d.dataset_id, "path": d.path, "maximum_size": d.maximum_size},
                 **({"users": users[:16]} if (users := self.use.users_of(d.dataset_id))
                    else {}),
                 **({"generation": d.generation} if d.generation else {}))
            for d in sorted(self.backend.local_datasets().values(), key=lambda d: d.dataset_id)
            if d.role == PRIMARY and not (view is not None and superseded(self.node_uuid, view, d))
        ]
        report = {"host": self.address, "agent_url": self.agent_url, "datasets": datasets,
                  "transfers": self.converger.transfers_report(self.mover.transfers.active)}
        trash = self.trash.report()
        if trash:
            # Only when there is one: a control service from before the trash refuses
            # reports with fields it does not know.
            report["trash"] = trash
        return report

    def metrics(self):
        transfers = self.mover.transfers
        return {
            "node_uuid": self.node_uuid,
            "backend": self.backend.name,
            "bytes_sent_total": transfers.bytes_sent_total,
            "bytes_received_total": transfers.bytes_received_total,
            "transfers": [p.as_report() for p in transfers.active],
            "history": list(transfers.history),
            "fault_paused": list(self.faults.paused),
            "busy": dict(self.busy.running),
            "waiting": dict(self.converger.waits),
            "failing": self.converger.failing(),
            "in_use": {dataset_id: users for dataset_id in self.backend.local_datasets()
                       if (users := self.use.in_use(dataset_id))},
            "fenced": list(self.use.fencing_events()),
            "generation": self.watcher.generation,
            "reports_sent": self.watcher.reported,
        }
