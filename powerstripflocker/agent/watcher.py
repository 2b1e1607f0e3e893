"""Keeping up with the control service: long-poll the cluster view (a new one runs
convergence at once) and send this node's report, coalesced, on a change and every
heartbeat, retried with backoff until it gets through."""

from twisted.internet import defer, task
from twisted.logger import Logger

from powerstripflocker.agent.model import ClusterView

log = Logger()


class ClusterWatcher:
    """The cluster view as the control service last answered it, and this node's reports.

    build_report() -> the report to send; on_view(view) is called with each new view.
    Every report carries era (set by the agent at each start), which tells the control
    service this run of the agent from the one before.
    """

    era = None

    def __init__(self, reactor, control, node_uuid, build_report, on_view,
                 heartbeat=10.0, max_backoff=5.0, poll_timeout=30):
        self.reactor = reactor
        self.control = control
        self.node_uuid = node_uuid
        self.build_report = build_report
        self.on_view = on_view
        self.heartbeat = heartbeat
        self.max_backoff = max_backoff
        self.poll_timeout = poll_timeout
        self.view = None
        self.generation = None
        self.reported = 0
        self.running = False
        self._reporting = False
        self._report_dirty = False
        self._poll = None
        self._heartbeat = None

    def start(self):
        self.running = True
        self._heartbeat = task.LoopingCall(self.request_report)
        self._heartbeat.clock = self.reactor
        self._heartbeat.start(self.heartbeat, now=True)
        defer.ensureDeferred(self._poll_loop())

    def stop(self):
        self.running = False
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
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
            self.on_view(view)

    async def fresh_view(self):
        """An up-to-date view (at once), for decisions a stale view might get wrong."""
        return ClusterView.from_json(await self.control.cluster(-1, timeout=0))

    # reports

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
                    await self.control.report(self.node_uuid, report, era=self.era)
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
