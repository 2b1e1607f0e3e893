"""How a long-running part starts, runs and stops, and the one way a command runs one.

Every part (control service, agent, adapter, volume plugin, proxy) is a
twisted.application IService whose start may take a while and may fail (it listens,
opens its state). `powerstrip-flocker up` runs several as one InOrder collection:
started one after another, stopped in the reverse order, each once the one after it
has stopped. A command runs its service with run_until_stopped: until SIGTERM or
SIGINT, then it stops the service and exits 0.
"""

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.task import react
from twisted.logger import Logger

log = Logger()


class PartService(Service):
    """A Service with an asynchronous start() and stop(). startService begins start();
    when_started(service) tells when it is done, or how it failed. stopService waits for
    the start to end, then runs stop() when the start succeeded (a start that fails
    undoes what it did itself)."""

    _starting = None
    _start_failure = None

    async def start(self):
        """Make the part ready: listen, open its state."""

    async def stop(self):
        """Undo start(): stop listening, close what it opened."""

    def startService(self):
        # Service's own, not a MultiService's: a subclass that is a collection starts its
        # parts in start().
        Service.startService(self)
        self._start_failure = None
        self._starting = Deferred.fromCoroutine(self.start())
        self._starting.addErrback(self._keep_start_failure)

    def _keep_start_failure(self, failure):
        self._start_failure = failure

    def when_started(self):
        started = Deferred()

        def tell(_):
            if self._start_failure is None:
                started.callback(None)
            else:
                started.errback(self._start_failure)

        self._starting.addBoth(tell)
        return started

    def stopService(self):
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop_once_started())

    async def _stop_once_started(self):
        if self._starting is None:
            return
        await self._starting  # never fails: the failure is kept aside
        if self._start_failure is None:
            await self.stop()


def when_started(service):
    """A Deferred that fires when service has started (at once for a plain Service)."""
    if isinstance(service, PartService):
        return service.when_started()
    return succeed(None)


class InOrder(PartService, MultiService):
    """Parts started one after another in the order they were added, each once the one
    before it is up, and stopped in the reverse order, each once the one after it has
    stopped. A part that fails to start stops those already started."""

    def __init__(self):
        MultiService.__init__(self)

    async def start(self):
        started = []
        try:
            for part in self:
                part.startService()
                started.append(part)
                await when_started(part)
        except BaseException:
            await _stop_in_reverse(started)
            raise

    async def stop(self):
        await _stop_in_reverse(list(self))


async def _stop_in_reverse(parts):
    for part in reversed(parts):
        if not part.running:
            continue
        try:
            await maybeDeferred(part.stopService)
        except Exception:
            log.failure("{part} did not stop cleanly", part=part.name or part)


def run_until_stopped(build, name):
    """Start the service build(reactor) makes and run it until SIGTERM or SIGINT, then
    stop it. The exit status: 0, or when it cannot start, its SystemExit's (a message is
    printed and gives 1) or 1."""

    async def main(reactor):
        try:
            service = build(reactor)
        except SystemExit:
            raise
        except Exception:
            log.failure("{name} not started", name=name)
            raise SystemExit(1)
        # Stopped before the reactor goes (and connections with it): whatever the
        # service writes on its way out still gets out.
        reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
        service.startService()
        try:
            await when_started(service)
        except SystemExit:
            raise
        except Exception:
            log.failure("{name} not started", name=name)
            raise SystemExit(1)
        await Deferred()  # fires never: the reactor stops on SIGTERM or SIGINT

    return run_reactor(main)


def run_reactor(main):
    """Run the reactor until main(reactor) (a coroutine function) is done; its exit
    status: 0, or its SystemExit's code (an int, or a message printed on stderr: 1),
    or 1 when it failed otherwise."""
    try:
        react(lambda reactor: Deferred.fromCoroutine(main(reactor)))
    except SystemExit as exit:
        if exit.code is None or isinstance(exit.code, int):
            return exit.code or 0
        raise
    return 0
