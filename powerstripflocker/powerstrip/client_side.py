"""The client-facing side of the relay: one docker client connection.

It reads request heads (strictly, through request_parsing), relays plain
requests to its DaemonConnection, holds hooked ones for a HookedExchange, keeps
requests in order (one at a time; pipelined ones wait), and turns the pair
into a splice on a hijack. The daemon side talks to it only through the
methods under "for the daemon side".
"""

from twisted.internet import defer
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

from powerstripflocker.powerstrip.bodies import request_framing
from powerstripflocker.powerstrip.config import NO_HOOKS
from powerstripflocker.powerstrip.exchange import BODY_METHODS, HookedExchange, Refused
from powerstripflocker.powerstrip.flow import Backpressure
from powerstripflocker.powerstrip.http import (
    MAX_HEAD, ProtocolError, error_response, find_head_end,
)
from powerstripflocker.powerstrip.request_parsing import parse_request, without_empty_lines
from powerstripflocker.serving.flow import Flow
from powerstripflocker.serving.head_deadline import HeadDeadline

_EMPTY_LINE_BYTES = b"\r\n"

log = Logger()


@implementer(IHalfCloseableProtocol)
class ClientConnection(Protocol):
    """One connection from a docker client (proxy: the ProxyFactory)."""

    def __init__(self, proxy):
        self.proxy = proxy
        self.inbuf = b""
        self.method = None
        self.upstream = None          # DaemonConnection when connected
        self.connecting = None        # Deferred while connecting
        self.waiting = None           # what to do once connected (a request is waiting)
        self.busy = False             # a request is being handled
        self.request_body = None      # Framing while relaying a request body
        self.request_sink = None      # where request body bytes go (callable)
        self.request_done = True
        self.response_done = True
        self.upgrade = False
        self.close_after = False
        self.client_eof = False
        self.daemon_eof = False
        self.splicing = False
        self.exchange = None          # HookedExchange of a request with hooks
        self.pending_upgrade = b""   # client bytes after an Upgrade request, before 101
        self.closed = False
        self.relays = []

    # -- connection events ---------------------------------------------------------------

    def connectionMade(self):
        self._write = self.proxy.io.tune(self.transport)
        self.flow = Flow(self.transport)
        self.transport.registerProducer(
            Backpressure(self._pause_daemon, self._resume_daemon), True)
        self.head_deadline = HeadDeadline(
            self.proxy.reactor, self.proxy.head_timeout, self._head_too_slow)
        self.head_deadline.start()
        # connect to the daemon while the client is still writing its first request
        self._connect()

    def dataReceived(self, data):
        if self.splicing:
            self.upstream.send(data)
            return
        if self.request_body is not None:
            if self.inbuf:
                data, self.inbuf = self.inbuf + data, b""
            self._relay_request_body(data)
            return
        self.inbuf += data
        if self.exchange is not None and self.exchange.reading_request:
            self._feed_exchange()
        else:
            self._process()

    def readConnectionLost(self):
        self.client_eof = True
        if self.splicing:
            if self.upstream is not None:
                self.upstream.client_stream_ended()
            self._maybe_end_splice()
        elif not self.busy and not self.inbuf:
            self.transport.loseConnection()
        elif self.request_body is not None or (
                self.exchange is not None and self.exchange.reading_request):
            # the client stopped in the middle of sending a request body
            self.transport.loseConnection()
        # otherwise answer the request in progress, then close (see _next)

    def writeConnectionLost(self):
        if not self.splicing:
            self.transport.loseConnection()

    def connectionLost(self, reason):
        self.closed = True
        self.head_deadline.stop()
        for relay in self.relays:
            relay.close()
        if self.upstream is not None:
            self.upstream.client_gone()
        if self.connecting is not None:
            self.connecting.cancel()

    def _pause_daemon(self, reason):
        if self.upstream is not None:
            self.upstream.pause_reading(reason)

    def _resume_daemon(self, reason):
        if self.upstream is not None:
            self.upstream.resume_reading(reason)

    # -- requests ------------------------------------------------------------------------

    def _process(self):
        """Start the next request if one is complete in inbuf and none is in progress."""
        while not self.busy and not self.closed and self.inbuf:
            if self.client_eof and not self.inbuf.strip():
                self.inbuf = b""
                break
            if self.inbuf[0] in _EMPTY_LINE_BYTES:
                self.inbuf = without_empty_lines(self.inbuf)
                continue
            end = find_head_end(self.inbuf)
            if end < 0:
                if len(self.inbuf) > MAX_HEAD:
                    self.fail(431, "request head too large")
                else:
                    self.head_deadline.start()
                return
            self.head_deadline.stop()
            raw_head = self.inbuf[:end]
            try:
                request = parse_request(raw_head)
                kind, length = request.head.framing()
            except ProtocolError as e:
                self.fail(400, f"powerstrip proxy: malformed request: {e}")
                return
            head = request.head
            self.inbuf = self.inbuf[end:]
            self.busy = True
            self.method = request.method
            tokens = head.connection_tokens()
            self.close_after = b"close" in tokens or (
                request.version == b"HTTP/1.0" and b"keep-alive" not in tokens)
            self.upgrade = b"upgrade" in head.headers
            self.response_done = False
            self.request_done = False
            self.exchange = None
            self.pending_upgrade = b""
            hooks = self.proxy.hooks_for(request.method, request.path, self.upgrade)
            if hooks is NO_HOOKS:
                self._pass_through(raw_head, kind, request_framing(request, kind, length))
            else:
                self._hooked(request, kind, length, hooks)

    def _head_too_slow(self):
        log.info("dropped a client that sent no whole request head within {seconds:g} s",
                 seconds=self.proxy.head_timeout)
        self.transport.loseConnection()

    def _pass_through(self, raw_head, kind, body):
        if kind == "none" and self.method in BODY_METHODS:
            # a bodyless POST must not look like one of unknown length to moby
            raw_head = raw_head[:-2] + b"Content-Length: 0\r\n\r\n"
        self._send(raw_head, body)

    def _send(self, raw_head, body, replacement=None):
        """Send a head (and the request body from inbuf/the client) to the daemon."""
        if self.upstream is None:
            self.flow.pause("connecting")
            self.waiting = lambda: self._send(raw_head, body, replacement)
            if self.connecting is None:
                self._connect()
            return
        exchange = self.exchange
        self.upstream.expect_response(
            self.method, exchange if exchange is not None and exchange.wants_response else None)
        send = self.upstream.send
        if replacement is not None:
            send(raw_head + replacement)
            if body is None:
                self._request_finished()
                return
            # the client's own (non-JSON) body was replaced: read it and drop it
            self.request_body, self.request_sink = body, None
            raw_head = b""
        elif body is None:
            send(raw_head)
            self._request_finished()
            return
        else:
            self.request_body, self.request_sink = body, send
        if self.inbuf:
            data, self.inbuf = self.inbuf, b""
            self._relay_request_body(data, raw_head)
        elif raw_head:
            send(raw_head)

    def _connect(self):
        """One attempt to connect to the daemon (never retried in a loop)."""
        self.connecting = self.proxy.connect_upstream(self)
        self.connecting.addCallbacks(self._connected, self._connect_failed)

    def _connected(self, upstream):
        self.connecting = None
        if self.closed:
            upstream.close()
            return
        self.upstream = upstream
        waiting, self.waiting = self.waiting, None
        if waiting is not None:
            self.flow.resume("connecting")
            waiting()

    def _connect_failed(self, failure):
        self.connecting = None
        waiting, self.waiting = self.waiting, None
        if failure.check(defer.CancelledError) or self.closed:
            return
        if waiting is None:
            # the early attempt failed; the first request will try once more
            log.debug("early connection to the Docker daemon failed: {error}",
                      error=failure.getErrorMessage())
            return
        log.warn("cannot reach the Docker daemon at {docker}: {error}",
                 docker=self.proxy.docker_description, error=failure.getErrorMessage())
        self.fail(502, f"powerstrip proxy: cannot reach the Docker daemon at "
                       f"{self.proxy.docker_description}: {failure.getErrorMessage()}")

    def _relay_request_body(self, data, head=b""):
        try:
            part, rest = self.request_body.split(data)
        except ProtocolError as e:
            self.request_body = None
            self.fail(400, f"powerstrip proxy: malformed request body: {e}")
            return
        if self.request_sink is not None and (head or part):
            self.request_sink(head + part)
        if rest is not None:
            self.request_body = None
            self.request_sink = None
            if rest:
                self.inbuf = rest + self.inbuf
            self._request_finished()

    def _request_finished(self):
        self.request_done = True
        if self.upgrade:
            # bytes after an Upgrade request belong to the stream, if the daemon agrees
            self.pending_upgrade, self.inbuf = self.inbuf, b""
            self.flow.pause("upgrade")
            return
        if self.response_done:
            self._next()
        elif self.inbuf:
            self.flow.pause("pipeline")

    def _next(self):
        self.busy = False
        self.exchange = None
        if self.close_after:
            self.transport.loseConnection()
            return
        self.flow.resume("pipeline")
        if self.inbuf:
            self._process()
        elif self.client_eof:
            self.transport.loseConnection()

    # -- hooked requests -----------------------------------------------------------------

    def _hooked(self, request, kind, length, hooks):
        self.exchange = HookedExchange(
            request, kind, length, hooks, self.proxy.hooks, self.proxy.max_body)
        try:
            interim = self.exchange.begin()
        except Refused as refused:
            self.fail(refused.code, refused.message)
            return
        if interim:
            self._write(interim)
        if not self.exchange.reading_request:
            self._run_pre_hooks()
        elif self.inbuf:
            self._feed_exchange()

    def _feed_exchange(self):
        data, self.inbuf = self.inbuf, b""
        try:
            rest = self.exchange.feed_request(data)
        except Refused as refused:
            self.fail(refused.code, refused.message)
            return
        if rest is not None:
            self.inbuf = rest
            self._run_pre_hooks()

    def _run_pre_hooks(self):
        self.flow.pause("hooks")
        d = defer.Deferred.fromCoroutine(self.exchange.run_pre_hooks())
        d.addCallbacks(self._pre_hooks_done, self._refused)

    def _pre_hooks_done(self, outgoing):
        if self.closed:
            return
        self.method = outgoing.method
        self.flow.resume("hooks")
        self._send(outgoing.head, outgoing.stream, outgoing.replacement)

    def _refused(self, failure):
        failure.trap(Refused)
        self.fail(failure.value.code, failure.value.message)

    # -- hijack --------------------------------------------------------------------------

    def start_splice(self):
        """The daemon agreed to a hijack: raw bytes both ways from now on."""
        self.splicing = True
        data, self.pending_upgrade = self.pending_upgrade + self.inbuf, b""
        self.inbuf = b""
        if data:
            self.upstream.send(data)
        self.relays = self.proxy.io.splice(self.transport, self.upstream.transport)
        self.flow.resume("upgrade")
        self.flow.resume("pipeline")
        if self.client_eof:
            self.upstream.client_stream_ended()

    def _maybe_end_splice(self):
        if self.client_eof and self.daemon_eof and self.upstream is not None:
            self.transport.loseConnection()
            self.upstream.close()

    # -- for the daemon side -------------------------------------------------------------

    def send(self, data):
        """Bytes of the response (or the hijacked stream) for the client."""
        self._write(data)

    def pause_reading(self, reason):
        self.flow.pause(reason)

    def resume_reading(self, reason):
        self.flow.resume(reason)

    def close_after_response(self):
        """The connection closes once the response in progress has been sent."""
        self.close_after = True

    def response_finished(self):
        """The daemon side has delivered the whole response to the client."""
        self.response_done = True
        if self.upgrade:
            # an Upgrade request answered without 101: back to plain HTTP
            self.inbuf = self.pending_upgrade + self.inbuf
            self.pending_upgrade = b""
            self.flow.resume("upgrade")
        if self.request_done:
            self._next()
        else:
            # daemon answered before reading the whole body (an error); stop here
            self.close_after = True
            self.transport.loseConnection()

    def daemon_stream_ended(self):
        """The daemon half-closed a hijacked stream: pass it on."""
        self.daemon_eof = True
        self.transport.loseWriteConnection()
        self._maybe_end_splice()

    def daemon_lost(self, upstream):
        """upstream's connection is gone; whether this client is still open."""
        if self.upstream is upstream:
            self.upstream = None
        return not self.closed

    def daemon_closed_between_responses(self):
        """The daemon closed with no response in progress."""
        if self.request_body is not None:
            # it will never read the rest of the request being relayed
            self.transport.loseConnection()

    def drop(self):
        """Close the connection without an answer (a response was cut short)."""
        self.transport.loseConnection()

    def fail(self, code, message):
        """Answer with a JSON error and close the connection."""
        if self.closed:
            return
        self.inbuf = b""
        self.request_body = None
        response = error_response(code, message)
        if self.method == b"HEAD":
            response = response.partition(b"\r\n\r\n")[0] + b"\r\n\r\n"
        self.transport.write(response)
        self.transport.loseConnection()
        if self.upstream is not None:
            self.upstream.client_gone()
