"""The Docker Engine API proxy: a byte relay that understands just enough HTTP.

Each client connection gets at most one upstream (daemon) connection at a
time, opened as soon as the client connects (one attempt; a request retries
once if it failed) and kept alive as long as both sides keep it. Each request
head (and chunked request body) must first satisfy llhttp as well
(request_parsing), or the client gets a 400 and nothing is forwarded.
Requests that match no hook are relayed as they arrive: the head verbatim,
the body in whatever framing the client used, the response head the moment
the daemon sends it (``wait`` needs that) and the response body chunk by
chunk. Backpressure runs both ways through producer registration, so nothing
is buffered beyond the kernel and Twisted's write buffers.

A request whose method and path match an endpoint with hooks is held: its
JSON body (if any) is read up to a size limit, the pre-hooks run, and only
then is the (possibly rewritten) request sent to the daemon. With post-hooks
the daemon's response is read whole, run through them, and sent with the
final status, content type and body.

An ``Upgrade`` request answered with ``101`` (attach, exec) or a legacy
hijack (a close-delimited ``application/vnd.docker.*-stream`` response) turns
the pair of connections into a splice: raw bytes both ways, half-close passed
through (client EOF -> shutdown(SHUT_WR) upstream and vice versa), the
connection closed when both directions have ended.

The parts: client_side (ClientConnection) and daemon_side (DaemonConnection),
the two sides of the relay, which talk through named methods; exchange
(HookedExchange: a request through pre- and post-hooks); bodies (framing, and
reading a body whole up to a limit); flow (pausing reads); fastpath (the one
switch between the fast path on Twisted's internals and the plain relay).
"""

from twisted.internet.protocol import Factory
from twisted.logger import Logger

from powerstripflocker.powerstrip.client_side import ClientConnection
from powerstripflocker.powerstrip.config import NO_HOOKS, Hooks
from powerstripflocker.powerstrip.daemon_side import DaemonConnection
from powerstripflocker.powerstrip.fastpath import transport_io
from powerstripflocker.powerstrip.streaming import streaming_request
from powerstripflocker.serving.head_deadline import HEAD_TIMEOUT

DEFAULT_MAX_BODY = 16 * 1024 * 1024

log = Logger()


class ProxyFactory(Factory):
    """Serves client connections; knows the daemon, the hooks and the limits.

    fast_path=False relays every byte through Twisted's public transport API
    (see fastpath).
    """

    noisy = False

    def __init__(self, reactor, configuration, hooks, docker_endpoint, docker_description,
                 max_body=DEFAULT_MAX_BODY, fast_path=True, head_timeout=HEAD_TIMEOUT):
        self.reactor = reactor
        self.configuration = configuration
        self.hooks = hooks
        self.docker_endpoint = docker_endpoint
        self.docker_description = docker_description
        self.max_body = max_body
        self.fast_path = fast_path
        self.io = transport_io(fast_path)
        self.head_timeout = head_timeout
        self._skipped_logged = set()
        self.reconfigure(configuration)

    def reconfigure(self, configuration):
        """Use a new (validated) configuration from the next request on."""
        self.configuration = configuration
        self.hooks.set_adapters(configuration.adapters)
        self._hooks_for = configuration.hooks_for
        self._any_hooks = any(e.pre or e.post for e in configuration.endpoints)

    def hooks_for(self, method, path, upgrade):
        """The Hooks for a request (path as dockerd routes it); post-hooks are dropped
        where the response is a stream or a hijacked connection."""
        if not self._any_hooks:
            return NO_HOOKS
        method, path = method.decode("latin-1"), path.decode("latin-1")
        hooks = self._hooks_for(method, path)
        if hooks.post:
            streaming = "Upgrade" if upgrade else streaming_request(method, path)
            if streaming is not None:
                self._post_hooks_skipped(streaming, method, path, hooks.post)
                hooks = Hooks(hooks.pre, ()) if hooks.pre else NO_HOOKS
        return hooks

    def _post_hooks_skipped(self, streaming, method, path, post):
        if streaming in self._skipped_logged:
            return
        self._skipped_logged.add(streaming)
        log.info("post-hooks {post} skipped for {method} {path} and every other "
                 "{streaming} request: its response is a stream or a hijacked connection, "
                 "and post-hooks need the whole response (logged once)",
                 post=list(post), method=method, path=path,
                 streaming="Upgrade" if streaming == "Upgrade" else repr(streaming))

    def buildProtocol(self, addr):
        return ClientConnection(self)

    def connect_upstream(self, client):
        """A Deferred firing with a DaemonConnection for client, once connected."""
        daemon = DaemonConnection(client, self.io)
        factory = Factory.forProtocol(lambda: daemon)
        factory.noisy = False  # one connection per client connection: not worth a log line
        return self.docker_endpoint.connect(factory)

