"""The daemon-facing side of the relay: the connection to dockerd for one client.

It reads response heads, relays each response to its ClientConnection as it
arrives (the head the moment the daemon sends it: ``wait`` needs that), or
feeds it whole to the request's HookedExchange when post-hooks wait for it,
and recognises a hijack (``101``, or a legacy close-delimited
``application/vnd.docker.*-stream``). The client side talks to it only
through the methods under "for the client side".
"""

from twisted.internet import defer
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

from powerstripflocker.powerstrip.bodies import CloseDelimited, Framing
from powerstripflocker.powerstrip.exchange import Refused
from powerstripflocker.powerstrip.flow import Backpressure
from powerstripflocker.powerstrip.http import (
    MAX_HEAD, Head, ProtocolError, find_head_end, media_type,
)
from powerstripflocker.serving.flow import Flow

_STREAM_TYPES = (
    b"application/vnd.docker.raw-stream", b"application/vnd.docker.multiplexed-stream",
)

log = Logger()


@implementer(IHalfCloseableProtocol)
class DaemonConnection(Protocol):
    """The connection to the daemon on behalf of one ClientConnection (io: its transport_io)."""

    def __init__(self, client, io):
        self.client = client
        self.io = io
        self.buf = b""
        self.body = None              # Framing or CloseDelimited while relaying a body
        self.expecting = False        # a request was sent, its response head not yet seen
        self.method = None
        self.exchange = None          # HookedExchange whose post-hooks want this response
        self.collecting = False       # the response is being read whole for post-hooks
        self.splicing = False
        self.close_delimited = False
        self.done = False
        self.client_closed = False

    def connectionMade(self):
        self._write = self.io.tune(self.transport)
        self.flow = Flow(self.transport)
        self.transport.registerProducer(
            Backpressure(self.client.pause_reading, self.client.resume_reading), True)

    def dataReceived(self, data):
        if self.body is not None:
            self._relay_body(data)
            return
        if self.collecting:
            self._collect(data)
            return
        if self.splicing:
            self.client.send(data)
            return
        self.buf += data
        self._parse()

    def _parse(self):
        while self.buf and self.body is None and not self.splicing and not self.collecting:
            if not self.expecting:
                log.warn("Docker daemon sent bytes nobody asked for; closing")
                self.transport.loseConnection()
                return
            end = find_head_end(self.buf)
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    self._bad_response("response head too large")
                return
            raw_head, self.buf = self.buf[:end], self.buf[end:]
            try:
                head = Head(raw_head[:-4])
                parts = head.first.split(b" ", 2)
                code = int(parts[1])
                kind, length = head.framing()
            except (ProtocolError, ValueError, IndexError) as e:
                self._bad_response(f"malformed response from the Docker daemon: {e}")
                return
            client = self.client
            if code == 101:
                # the daemon's own status line and headers, verbatim, then the stream
                self._hijacked(raw_head)
                return
            if 100 <= code < 200:
                if self.exchange is None:
                    client.send(raw_head)
                continue
            self.expecting = False
            if self.method == b"HEAD" or code in (204, 304):
                kind, length = "length", 0
            if b"close" in head.connection_tokens():
                client.close_after_response()
            if kind == "none":
                ctype = media_type(head.headers.get(b"content-type"))
                if ctype in _STREAM_TYPES:
                    # legacy hijack: a 200 and then a raw stream both ways, which
                    # post-hooks cannot wait for
                    self.exchange = None
                    self._hijacked(raw_head)
                    return
                client.close_after_response()
                self.close_delimited = True
            if self.exchange is not None:
                self._start_collect(head, code, kind, length)
                return
            if kind == "length" and length == 0:
                client.send(raw_head)
                self._finished()
                continue
            self.body = CloseDelimited() if self.close_delimited else Framing(kind, length)
            data, self.buf = self.buf, b""
            if data:
                # head and the first body bytes in one write: one wake-up of the client
                self._relay_body(data, raw_head)
            else:
                client.send(raw_head)

    def _hijacked(self, raw_head):
        self.expecting = False
        self.splicing = True
        data, self.buf = self.buf, b""
        self.client.send(raw_head + data)
        self.client.start_splice()

    def _relay_body(self, data, head=b""):
        try:
            part, rest = self.body.split(data)
        except ProtocolError as e:
            self._bad_body(e)
            return
        if head:
            self.client.send(head + part)
        elif part:
            self.client.send(part)
        if rest is not None:
            self.body = None
            self.buf = rest + self.buf
            self._finished()
            if self.buf:
                self._parse()

    def _finished(self):
        self.client.response_finished()

    # -- post-hooks ----------------------------------------------------------------------

    def _start_collect(self, head, code, kind, length):
        try:
            self.exchange.begin_response(head, code, kind, length, self.close_delimited)
        except Refused as refused:
            self._post_failed(refused)
            return
        self.collecting = True
        data, self.buf = self.buf, b""
        self._collect(data)

    def _collect(self, data):
        try:
            done = self.exchange.feed_response(data)
        except Refused as refused:
            self.collecting = False
            self._post_failed(refused)
            return
        except ProtocolError as e:
            self.collecting = False
            self._bad_body(e)
            return
        if done is None:
            return
        self.collecting = False
        body, rest = done
        self.buf = rest + self.buf
        self._run_post_hooks(body)

    def _run_post_hooks(self, body):
        d = defer.Deferred.fromCoroutine(self.exchange.run_post_hooks(body))
        d.addCallbacks(self._post_hooks_done, self._post_hooks_refused)

    def _post_hooks_done(self, response):
        # client_gone() is not called once this side has closed first (a close-delimited
        # response): ask the client side too.
        if self.client_closed or self.client.closed:
            return
        self.client.send(response)
        self.exchange = None
        if self.close_delimited:
            self.client.close_after_response()
        self._finished()
        if self.buf and not self.close_delimited:
            self._parse()

    def _post_hooks_refused(self, failure):
        failure.trap(Refused)
        self._post_failed(failure.value)

    def _post_failed(self, refused):
        self.client.fail(refused.code, refused.message)
        self.transport.loseConnection()

    # -- endings -------------------------------------------------------------------------

    def _bad_response(self, message):
        log.error("{message}", message=message)
        self.client.fail(502, f"powerstrip proxy: {message}")
        self.transport.loseConnection()

    def _bad_body(self, error):
        log.error("bad response body from the Docker daemon: {error}", error=str(error))
        self.client.drop()
        self.transport.loseConnection()

    def readConnectionLost(self):
        if self.splicing:
            self.client.daemon_stream_ended()
        else:
            self.transport.loseConnection()

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        self.done = True
        client = self.client
        if not client.daemon_lost(self):
            return
        if self.splicing:
            client.drop()
        elif isinstance(self.body, CloseDelimited):
            self.body = None
            client.close_after_response()
            self._finished()
        elif self.collecting and self.exchange.close_delimited:
            self.collecting = False
            self._run_post_hooks(self.exchange.response_closed())
        elif self.expecting or self.body is not None or self.collecting:
            if self.expecting and not self.buf:
                client.fail(502, "powerstrip proxy: the Docker daemon closed the connection "
                                 "without answering")
            else:
                # truncated response: the client must not mistake it for a whole one
                client.drop()
        else:
            client.daemon_closed_between_responses()

    # -- for the client side -------------------------------------------------------------

    def send(self, data):
        """Bytes of a request (or the hijacked stream) for the daemon."""
        self._write(data)

    def expect_response(self, method, exchange):
        """A request was sent; exchange (or None) takes its response for post-hooks."""
        self.expecting = True
        self.method = method
        self.exchange = exchange

    def pause_reading(self, reason):
        self.flow.pause(reason)

    def resume_reading(self, reason):
        self.flow.resume(reason)

    def client_stream_ended(self):
        """The client half-closed a hijacked stream: pass it on."""
        self.transport.loseWriteConnection()

    def close(self):
        self.transport.loseConnection()

    def client_gone(self):
        """The client connection closed: so does this one."""
        self.client_closed = True
        if not self.done:
            self.transport.loseConnection()
