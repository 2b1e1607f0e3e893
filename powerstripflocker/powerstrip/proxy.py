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
"""

import fcntl
import os
import socket
import types

from twisted.internet import defer, main, tcp, unix
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from powerstripflocker.powerstrip.config import NO_HOOKS, Hooks
from powerstripflocker.serving.head_deadline import HEAD_TIMEOUT, HeadDeadline
from powerstripflocker.powerstrip.hooks import AdapterError
from powerstripflocker.powerstrip.http import (
    MAX_HEAD, ChunkedScanner, Head, ProtocolError, error_response, find_head_end,
    media_type, status_line,
)
from powerstripflocker.powerstrip.request_parsing import parse_request, without_empty_lines
from powerstripflocker.powerstrip.streaming import streaming_request
from powerstripflocker.protocol.hooks import ClientRequest

DEFAULT_MAX_BODY = 16 * 1024 * 1024
_BODY_METHODS = (b"POST", b"PUT", b"PATCH")
_EMPTY_LINE_BYTES = b"\r\n"
_STREAM_TYPES = (
    b"application/vnd.docker.raw-stream", b"application/vnd.docker.multiplexed-stream",
)

log = Logger()


def _write_now(transport, data):
    """Send at once when nothing is queued, else queue behind what is.

    transport.write() only queues; the bytes leave on the reactor's next turn
    after an epoll_ctl to watch for writability. On a request/response relay
    that costs a loop turn and two system calls per hop, which is most of the
    proxy's added latency, so try the socket first.
    """
    if (not transport._tempDataBuffer and not transport.dataBuffer
            and transport.connected and not transport.disconnecting
            and not transport._writeDisconnecting and not transport._writeDisconnected):
        try:
            sent = transport.socket.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            sent = 0  # transport.write will meet the same error and close properly
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


def _no_delay(transport):
    """Small writes (heads, stream frames) must not wait for Nagle on TCP."""
    sock = getattr(transport, "socket", None)
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            transport.setTcpNoDelay(True)
        except OSError:
            pass


READ_SIZE = 256 * 1024


def _plain_reads(transport):
    """Read unix sockets with recv(), not the recvmsg() Twisted uses to accept fds,
    and in larger pieces than Twisted's 64 KiB.

    The proxy never passes file descriptors; recvmsg() and its ancillary-data
    wrapper cost a measurable share of the per-request time, and bigger reads
    mean fewer trips through the reactor on long streams (exec, logs, export).
    """
    transport.bufferSize = READ_SIZE
    if isinstance(transport, unix.Server) or isinstance(transport, unix.Client):
        transport.doRead = types.MethodType(tcp.Connection.doRead, transport)


def _writer(transport):
    if hasattr(transport, "socket") and hasattr(transport, "_tempDataBuffer"):
        return lambda data: _write_now(transport, data)
    return transport.write


_SPLICE = getattr(os, "splice", None)
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
_F_SETPIPE_SZ = 1031
PIPE_SIZE = 1024 * 1024


def _socket_transport(transport):
    return hasattr(transport, "socket") and hasattr(transport, "_tempDataBuffer")


class _KernelRelay:
    """Moves a hijacked stream from one socket to the other through a pipe with
    splice(2), so its bytes never enter Python.

    It takes over the source transport's doRead; pausing the source (Twisted's
    stopReading, driven by the usual producer backpressure) still works. When
    the destination cannot take more, or has bytes queued in Twisted, what is
    in the pipe is read out and handed to transport.write, which queues it and
    pauses the source: order and backpressure are kept.
    """

    def __init__(self, source, destination):
        self.source, self.destination = source, destination
        self.source_fd = source.socket.fileno()
        self.destination_fd = destination.socket.fileno()
        self.read_end, self.write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(self.write_end, _F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass
        self.pending = 0
        source.doRead = self.doRead

    def doRead(self):
        try:
            moved = _SPLICE(self.source_fd, self.write_end, PIPE_SIZE, flags=_SPLICE_FLAGS)
        except BlockingIOError:
            return None
        except OSError:
            return main.CONNECTION_LOST
        if not moved:
            return main.CONNECTION_DONE
        self.pending += moved
        self._flush()
        return None

    def _flush(self):
        destination = self.destination
        while self.pending:
            if (destination._tempDataBuffer or destination.dataBuffer
                    or not destination.connected or destination.disconnecting
                    or destination._writeDisconnecting or destination._writeDisconnected):
                break
            try:
                sent = _SPLICE(self.read_end, self.destination_fd, self.pending,
                               flags=_SPLICE_FLAGS)
            except OSError:
                break  # full (EAGAIN) or broken: Twisted's write path takes over
            self.pending -= sent
        while self.pending:
            data = os.read(self.read_end, self.pending)
            self.pending -= len(data)
            destination.write(data)

    def close(self):
        for fd in (self.read_end, self.write_end):
            try:
                os.close(fd)
            except OSError:
                pass
        self.read_end = self.write_end = -1


def _kernel_relays(client, upstream):
    """Both directions of a hijacked connection through splice(2), where possible."""
    if _SPLICE is None or not (_socket_transport(client) and _socket_transport(upstream)):
        return []
    try:
        return [_KernelRelay(upstream, client), _KernelRelay(client, upstream)]
    except OSError:
        return []


class _Flow:
    """Pauses reading from a transport while any reason to pause remains."""

    __slots__ = ("transport", "reasons")

    def __init__(self, transport):
        self.transport = transport
        self.reasons = set()

    def pause(self, reason):
        if not self.reasons:
            self.transport.pauseProducing()
        self.reasons.add(reason)

    def resume(self, reason):
        if reason in self.reasons:
            self.reasons.discard(reason)
            if not self.reasons:
                self.transport.resumeProducing()


@implementer(IPushProducer)
class _Backpressure:
    """Registered on one transport: when its write buffer fills, stop reading the other."""

    __slots__ = ("flow",)

    def __init__(self, flow):
        self.flow = flow

    def pauseProducing(self):
        self.flow.pause("backpressure")

    def resumeProducing(self):
        self.flow.resume("backpressure")

    def stopProducing(self):
        pass


class _Body:
    """Where a message body ends: by length, by chunked framing, or not at all.

    A chunked request body also goes through check (a ChunkedCheck), so that
    llhttp agrees on every byte of it.
    """

    __slots__ = ("remaining", "scanner", "check")

    def __init__(self, kind, length, collect=False, check=None):
        self.remaining = length if kind == "length" else None
        self.scanner = ChunkedScanner(collect) if kind == "chunked" else None
        self.check = check

    def split(self, data):
        """(part of data in this body, rest after it or None if the body goes on)."""
        if self.scanner is None:
            if len(data) < self.remaining:
                self.remaining -= len(data)
                return data, None
            end = self.remaining
            self.remaining = 0
            return data[:end], data[end:]
        end = self.scanner.feed(data)
        if self.check is not None:
            self.check.feed(data if end < 0 else data[:end], end >= 0)
        if end < 0:
            return data, None
        return data[:end], data[end:]


def _request_body(request, kind, length, collect=False):
    """The _Body of a client request, or None when it has none."""
    if kind == "chunked":
        return _Body(kind, length, collect, request.chunked_check())
    if kind == "length" and length:
        return _Body(kind, length, collect)
    return None


def _is_json(head):
    return media_type(head.headers.get(b"content-type")) == b"application/json"


@implementer(IHalfCloseableProtocol)
class ClientConnection(Protocol):
    """One connection from a docker client."""

    def __init__(self, proxy):
        self.proxy = proxy
        self.inbuf = b""
        self.upstream = None          # UpstreamConnection when connected
        self.connecting = None        # Deferred while connecting
        self.waiting = None           # what to do once connected (a request is waiting)
        self.busy = False             # a request is being handled
        self.request_body = None      # _Body while relaying a request body
        self.request_sink = None      # where request body bytes go (callable)
        self.request_done = True
        self.response_done = True
        self.close_after = False
        self.client_eof = False
        self.splicing = False
        self.collector = None         # _Collector while a hooked JSON body is read
        self.pending_upgrade = b""   # client bytes after an Upgrade request, before 101
        self.post = None              # (names, client_request) when post-hooks apply
        self.closed = False
        self.relays = []

    # -- connection events ---------------------------------------------------

    def connectionMade(self):
        _plain_reads(self.transport)
        _no_delay(self.transport)
        self.write = _writer(self.transport)
        self.flow = _Flow(self.transport)
        self.transport.registerProducer(_Backpressure(_LazyUpstreamFlow(self)), True)
        self.head_deadline = HeadDeadline(
            self.proxy.reactor, self.proxy.head_timeout, self._head_too_slow)
        self.head_deadline.start()
        # connect to the daemon while the client is still writing its first request
        self._connect()

    def dataReceived(self, data):
        if self.splicing:
            self.upstream.write(data)
            return
        if self.request_body is not None:
            if self.inbuf:
                data, self.inbuf = self.inbuf + data, b""
            self._relay_request_body(data)
            return
        self.inbuf += data
        if self.collector is not None:
            self._feed_collector()
        else:
            self._process()

    def readConnectionLost(self):
        self.client_eof = True
        if self.splicing:
            if self.upstream is not None:
                self.upstream.transport.loseWriteConnection()
            self._maybe_end_splice()
        elif not self.busy and not self.inbuf:
            self.transport.loseConnection()
        elif self.request_body is not None or self.collector is not None:
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

    # -- requests ------------------------------------------------------------

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
                    self._fail(431, "request head too large")
                else:
                    self.head_deadline.start()
                return
            self.head_deadline.stop()
            raw_head = self.inbuf[:end]
            try:
                request = parse_request(raw_head)
                kind, length = request.head.framing()
            except ProtocolError as e:
                self._fail(400, f"powerstrip proxy: malformed request: {e}")
                return
            head, method, version = request.head, request.method, request.version
            self.inbuf = self.inbuf[end:]
            self.busy = True
            self.method = method
            tokens = head.connection_tokens()
            self.close_after = b"close" in tokens or (
                version == b"HTTP/1.0" and b"keep-alive" not in tokens)
            self.upgrade = b"upgrade" in head.headers
            self.response_done = False
            self.request_done = False
            self.post = None
            self.pending_upgrade = b""
            hooks = self.proxy.hooks_for(method, request.path, self.upgrade)
            if hooks is NO_HOOKS:
                self._pass_through(raw_head, kind, _request_body(request, kind, length))
            else:
                self._hooked(request, kind, length, hooks)

    def _head_too_slow(self):
        log.info("dropped a client that sent no whole request head within {seconds:g} s",
                 seconds=self.proxy.head_timeout)
        self.transport.loseConnection()

    def _pass_through(self, raw_head, kind, body):
        if kind == "none" and self.method in _BODY_METHODS:
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
        self.upstream.start_response(self.method, self.post is not None)
        write = self.upstream.write
        if replacement is not None:
            write(raw_head + replacement)
            if body is None:
                self._request_finished()
                return
            # the client's own (non-JSON) body was replaced: read it and drop it
            self.request_body, self.request_sink = body, None
            raw_head = b""
        elif body is None:
            write(raw_head)
            self._request_finished()
            return
        else:
            self.request_body, self.request_sink = body, write
        if self.inbuf:
            data, self.inbuf = self.inbuf, b""
            self._relay_request_body(data, raw_head)
        elif raw_head:
            write(raw_head)

    def _connect(self):
        """One attempt to connect to the daemon (never retried in a loop)."""
        self.connecting = self.proxy.connect_upstream(self)
        self.connecting.addCallbacks(self._connected, self._connect_failed)

    def _connected(self, upstream):
        self.connecting = None
        if self.closed:
            upstream.transport.loseConnection()
            return
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
        self._fail(502, f"powerstrip proxy: cannot reach the Docker daemon at "
                        f"{self.proxy.docker_description}: {failure.getErrorMessage()}")

    def _relay_request_body(self, data, head=b""):
        try:
            part, rest = self.request_body.split(data)
        except ProtocolError as e:
            self.request_body = None
            self._fail(400, f"powerstrip proxy: malformed request body: {e}")
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

    def response_finished(self):
        """The upstream has delivered the whole response to the client."""
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

    def _next(self):
        self.busy = False
        self.post = None
        if self.close_after:
            self.transport.loseConnection()
            return
        self.flow.resume("pipeline")
        if self.inbuf:
            self._process()
        elif self.client_eof:
            self.transport.loseConnection()

    def _fail(self, code, message):
        """Answer with a JSON error and close the connection."""
        if self.closed:
            return
        self.inbuf = b""
        self.request_body = None
        response = error_response(code, message)
        if getattr(self, "method", None) == b"HEAD":
            response = response.partition(b"\r\n\r\n")[0] + b"\r\n\r\n"
        self.transport.write(response)
        self.transport.loseConnection()
        if self.upstream is not None:
            self.upstream.client_gone()

    # -- hijack --------------------------------------------------------------

    def start_splice(self):
        self.splicing = True
        data, self.pending_upgrade = self.pending_upgrade + self.inbuf, b""
        self.inbuf = b""
        if data:
            self.upstream.write(data)
        if self.proxy.kernel_splice:
            self.relays = _kernel_relays(self.transport, self.upstream.transport)
        self.flow.resume("upgrade")
        self.flow.resume("pipeline")
        if self.client_eof:
            self.upstream.transport.loseWriteConnection()

    def _maybe_end_splice(self):
        if self.client_eof and self.upstream is not None and self.upstream.eof:
            self.transport.loseConnection()
            self.upstream.transport.loseConnection()

    # -- hooked requests -----------------------------------------------------

    def _hooked(self, request, kind, length, hooks):
        head, method, target, version = (
            request.head, request.method, request.target, request.version)
        limit = self.proxy.max_body
        is_json = _is_json(head)
        has_body = kind == "chunked" or (kind == "length" and length > 0)
        if is_json and has_body:
            if kind == "length" and length > limit:
                self._too_large(limit)
                return
            if b"100-continue" in head.headers.get(b"expect", b"").lower():
                # we read the body ourselves before Docker is asked anything
                self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                head.lines = head.without(b"expect")
            self.collector = _Collector(
                _request_body(request, kind, length, collect=True), limit,
                lambda raw: self._run_pre(head, method, target, version, hooks, raw, None))
            if self.inbuf:
                self._feed_collector()
            return
        # no body, or a body that is not JSON: adapters get Body null (or "" for
        # an empty JSON body) and the body itself stays with the client for now
        self.flow.pause("hooks")
        text = "" if is_json else None
        stream = _request_body(request, kind, length)
        self._run_pre(head, method, target, version, hooks, text, stream)

    def _too_large(self, limit):
        self._fail(413, f"powerstrip proxy: the request body is over the limit of {limit} "
                        f"bytes for requests that go through hooks")

    def _feed_collector(self):
        collector = self.collector
        data, self.inbuf = self.inbuf, b""
        body = collector.body
        try:
            part, rest = body.split(data)
        except ProtocolError as e:
            self.collector = None
            self._fail(400, f"powerstrip proxy: malformed request body: {e}")
            return
        if body.scanner is None:
            collector.parts.append(part)
            collector.size += len(part)
        else:
            collector.size = body.scanner.size
        if collector.size > collector.limit:
            self.collector = None
            self._too_large(collector.limit)
            return
        if rest is None:
            return
        self.collector = None
        self.inbuf = rest
        self.flow.pause("hooks")
        collector.done(b"".join(collector.parts if body.scanner is None else body.scanner.parts))

    def _run_pre(self, head, method, target, version, hooks, body, stream):
        if isinstance(body, bytes):
            try:
                body = body.decode("utf-8")
            except UnicodeDecodeError:
                self._fail(400, "powerstrip proxy: the JSON request body is not UTF-8")
                return
        method_s = method.decode("latin-1")
        target_s = target.decode("latin-1")
        client_request = ClientRequest(method_s, target_s, body)
        if hooks.post:
            self.post = (hooks.post, client_request)
        log.info("{method} {target}: pre-hooks {pre}, post-hooks {post}", method=method_s,
                 target=target_s, pre=list(hooks.pre), post=list(hooks.post))
        d = defer.Deferred.fromCoroutine(self.proxy.hooks.run_pre(hooks.pre, client_request))
        d.addCallbacks(lambda result: self._pre_done(head, version, result, stream),
                       self._hook_failed)

    def _pre_done(self, head, version, result, stream):
        if self.closed:
            return
        method, target, text = result.method, result.request, result.body
        self.method = method.encode("latin-1")
        first = b"%s %s %s" % (self.method, target.encode("latin-1"), version)
        replacement = None
        if text is None:
            # no JSON body: keep the client's framing; relay any body as it comes
            lines = head.lines
            if stream is None and self.method in _BODY_METHODS and (
                    b"content-length" not in head.headers):
                lines = [*lines, b"Content-Length: 0"]
        else:
            replacement = text.encode("utf-8")
            lines = head.without(b"content-length", b"transfer-encoding")
            lines.append(b"Content-Length: %d" % len(replacement))
            # a non-JSON body replaced by the hook's Body is read and dropped
        raw_head = b"\r\n".join([first, *lines]) + b"\r\n\r\n"
        self.flow.resume("hooks")
        self._send(raw_head, stream, replacement)

    def _hook_failed(self, failure):
        if failure.check(AdapterError):
            error = failure.value
            log.warn("hook failed, request not sent to Docker: {message}", message=error.message)
            self._fail(error.code, error.message)
        else:
            log.failure("hook chain crashed", failure)
            self._fail(502, f"powerstrip proxy: hook chain failed: {failure.getErrorMessage()}")

    def post_hooks(self, code, content_type, body):
        """Run post-hooks over a complete response; fires with (code, ctype, body)."""
        names, client_request = self.post
        return defer.Deferred.fromCoroutine(
            self.proxy.hooks.run_post(names, client_request, code, content_type, body))


class _Collector:
    """A hooked JSON request body being read whole."""

    __slots__ = ("body", "limit", "done", "parts", "size")

    def __init__(self, body, limit, done):
        self.body, self.limit, self.done = body, limit, done
        self.parts = []
        self.size = 0


class _LazyUpstreamFlow:
    """The flow of whichever upstream connection the client has at the moment."""

    __slots__ = ("client",)

    def __init__(self, client):
        self.client = client

    def pause(self, reason):
        if self.client.upstream is not None:
            self.client.upstream.flow.pause(reason)

    def resume(self, reason):
        if self.client.upstream is not None:
            self.client.upstream.flow.resume(reason)


@implementer(IHalfCloseableProtocol)
class UpstreamConnection(Protocol):
    """The connection to the daemon on behalf of one client connection."""

    def __init__(self, client):
        self.client = client
        self.buf = b""
        self.body = None
        self.expecting = False    # a request was sent, its response head not yet seen
        self.method = None
        self.collect = False
        self.splicing = False
        self.close_delimited = False
        self.eof = False
        self.done = False

    def connectionMade(self):
        _plain_reads(self.transport)
        _no_delay(self.transport)
        self.write = _writer(self.transport)
        self.flow = _Flow(self.transport)
        self.transport.registerProducer(_Backpressure(self.client.flow), True)

    def start_response(self, method, collect):
        self.expecting = True
        self.method = method
        self.collect = collect

    def dataReceived(self, data):
        body = self.body
        if body is not None:
            if self.collect:
                body.feed(data)
            else:
                self._relay_body(data)
            return
        if self.splicing:
            self.client.write(data)
            return
        self.buf += data
        self._parse()

    def _parse(self):
        while self.buf and self.body is None and not self.splicing:
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
                self.expecting = False
                self.splicing = True
                data, self.buf = self.buf, b""
                client.write(raw_head + data)
                client.start_splice()
                return
            if 100 <= code < 200:
                if not self.collect:
                    client.write(raw_head)
                continue
            self.expecting = False
            if self.method == b"HEAD" or code in (204, 304):
                kind, length = "length", 0
            if b"close" in head.connection_tokens():
                client.close_after = True
            if kind == "none":
                ctype = media_type(head.headers.get(b"content-type"))
                if ctype in _STREAM_TYPES:
                    # legacy hijack: a 200 and then a raw stream both ways, which
                    # post-hooks cannot wait for
                    self.collect = False
                    self.splicing = True
                    data, self.buf = self.buf, b""
                    client.write(raw_head + data)
                    client.start_splice()
                    return
                client.close_after = True
                self.close_delimited = True
            if self.collect:
                self._start_collect(head, code, kind, length)
                return
            if kind == "length" and length == 0:
                client.write(raw_head)
                self._finished()
                continue
            self.body = _CloseDelimited() if self.close_delimited else _Body(kind, length)
            data, self.buf = self.buf, b""
            if data:
                # head and the first body bytes in one write: one wake-up of the client
                self._relay_body(data, raw_head)
            else:
                client.write(raw_head)

    def _relay_body(self, data, head=b""):
        try:
            part, rest = self.body.split(data)
        except ProtocolError as e:
            log.error("bad response body from the Docker daemon: {error}", error=str(e))
            self.client.transport.loseConnection()
            self.transport.loseConnection()
            return
        if head:
            self.client.write(head + part)
        elif part:
            self.client.write(part)
        if rest is not None:
            self.body = None
            self.buf = rest + self.buf
            self._finished()
            if self.buf:
                self._parse()

    def _finished(self):
        self.client.response_finished()

    # -- post-hooks ----------------------------------------------------------

    def _start_collect(self, head, code, kind, length):
        self.response_head = head
        self.response_code = code
        if kind == "length" and length > self.client.proxy.max_body:
            self._post_failed(f"the Docker daemon's response of {length} bytes is over the "
                              f"limit of {self.client.proxy.max_body} bytes for post-hooks")
            return
        if kind == "length" and length == 0:
            self.collected(b"")
            return
        self.body = _Collecting(kind, length, self)
        data, self.buf = self.buf, b""
        if data:
            self.body.feed(data)

    def collected(self, raw):
        self.body = None
        head = self.response_head
        ctype_header = head.headers.get(b"content-type")
        ctype = ctype_header.decode("latin-1") if ctype_header is not None else None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            log.warn("response is not UTF-8 text; post-hooks skipped")
            self._write_response(self.response_code, ctype_header, raw)
            return
        d = self.client.post_hooks(self.response_code, ctype, text)
        d.addCallbacks(self._post_done, self._post_hook_failed)

    def _post_done(self, result):
        code, ctype, text = result
        self._write_response(code, None if ctype is None else ctype.encode("latin-1"),
                             text.encode("utf-8"))

    def _write_response(self, code, ctype, body):
        client = self.client
        if client.closed:
            return
        lines = self.response_head.without(
            b"content-length", b"transfer-encoding", b"content-type")
        if ctype is not None:
            lines.append(b"Content-Type: " + ctype)
        lines.append(b"Content-Length: %d" % len(body))
        version = self.response_head.first.split(b" ", 1)[0]
        client.write(
            b"\r\n".join([status_line(code, version), *lines]) + b"\r\n\r\n" + body)
        self.collect = False
        if self.close_delimited:
            client.close_after = True
        self._finished()
        if self.buf and not self.close_delimited:
            self._parse()

    def _post_hook_failed(self, failure):
        if failure.check(AdapterError):
            log.warn("post-hook failed: {message}", message=failure.value.message)
            self._post_failed(failure.value.message, failure.value.code)
        else:
            log.failure("post-hook chain crashed", failure)
            self._post_failed(f"powerstrip proxy: post-hook chain failed: "
                              f"{failure.getErrorMessage()}")

    def _post_failed(self, message, code=502):
        self.client._fail(code, message)
        self.transport.loseConnection()

    # -- endings -------------------------------------------------------------

    def _bad_response(self, message):
        log.error("{message}", message=message)
        self.client._fail(502, f"powerstrip proxy: {message}")
        self.transport.loseConnection()

    def readConnectionLost(self):
        self.eof = True
        if self.splicing:
            self.client.transport.loseWriteConnection()
            self.client._maybe_end_splice()
        else:
            self.transport.loseConnection()

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        self.done = True
        client = self.client
        if client.upstream is self:
            client.upstream = None
        if client.closed:
            return
        if self.splicing:
            client.transport.loseConnection()
        elif isinstance(self.body, _CloseDelimited):
            self.body = None
            client.close_after = True
            self._finished()
        elif isinstance(self.body, _Collecting) and self.body.close_delimited:
            self.body.finish()
        elif self.expecting or self.body is not None:
            if self.body is None and not self.buf:
                client._fail(502, "powerstrip proxy: the Docker daemon closed the connection "
                                  "without answering")
            else:
                # truncated response: the client must not mistake it for a whole one
                client.transport.loseConnection()
        elif client.request_body is not None:
            client.transport.loseConnection()

    def client_gone(self):
        if not self.done:
            self.transport.loseConnection()


class _CloseDelimited:
    """A response body that ends when the daemon closes the connection."""

    __slots__ = ()

    def split(self, data):
        return data, None


class _Collecting:
    """Reads a whole response body for post-hooks (decoding chunked framing)."""

    def __init__(self, kind, length, upstream):
        self.upstream = upstream
        self.limit = upstream.client.proxy.max_body
        self.close_delimited = kind == "none"
        self.parts = []
        self.size = 0
        self.body = None if self.close_delimited else _Body(kind, length, collect=True)

    def feed(self, data):
        upstream = self.upstream
        if self.close_delimited:
            self.parts.append(data)
            self.size += len(data)
        else:
            part, rest = self.body.split(data)
            if self.body.scanner is None:
                self.parts.append(part)
                self.size += len(part)
            else:
                self.size = self.body.scanner.size
            if rest is not None:
                upstream.buf = rest + upstream.buf
                upstream.collected(b"".join(
                    self.parts if self.body.scanner is None else self.body.scanner.parts))
                return
        if self.size > self.limit:
            upstream.body = None
            upstream._post_failed(
                f"the Docker daemon's response is over the limit of {self.limit} bytes "
                f"for post-hooks")

    def finish(self):
        self.upstream.collected(b"".join(self.parts))


class ProxyFactory(Factory):
    """Serves client connections; knows the daemon, the hooks and the limits."""

    noisy = False

    def __init__(self, reactor, configuration, hooks, docker_endpoint, docker_description,
                 max_body=DEFAULT_MAX_BODY, kernel_splice=True, head_timeout=HEAD_TIMEOUT):
        self.reactor = reactor
        self.configuration = configuration
        self.hooks = hooks
        self.docker_endpoint = docker_endpoint
        self.docker_description = docker_description
        self.max_body = max_body
        self.kernel_splice = kernel_splice
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
        factory = Factory.forProtocol(lambda: upstream)
        factory.noisy = False  # one connection per client connection: not worth a log line
        upstream = UpstreamConnection(client)
        d = self.docker_endpoint.connect(factory)

        def connected(protocol):
            client.upstream = protocol
            return protocol
        return d.addCallback(connected)

