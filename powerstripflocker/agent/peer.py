"""The agent <-> agent protocol, server side: JSON over HTTP on the agent's --listen
endpoint, served by a Klein app over an IReceiver (what the protocol needs of the agent).

Every endpoint except /agent/v1/health needs `Authorization: Bearer <cluster token>` (or a
client certificate of the cluster CA, on an ssl: listener that asks for one) when a token is
configured; it is checked from the request head, before any of the body is read.

GET  /agent/v1/health                      {"node_uuid", "backend"}
GET  /agent/v1/metrics                     byte counters, the last transfers, waits
POST /agent/v1/faults/resume               only with fault injection on: resume held pushes
GET  /agent/v1/datasets/<id>/snapshots     {"dataset_id", "primary": bool, "origin",
                                            "snapshots": [...], "formats": [...],
                                            "generation": int|null, "accepting": bool,
                                            "reason": str}
PUT  /agent/v1/datasets/<id>/push?format=tar|btrfs&snapshot=S&parent=P&size=N&generation=G
     streamed body (chunked) -> 200 {"dataset_id", "received", "bytes"}
     401 bad token, 403 not moving here, 409 already primary here or the pushed copy's
     generation G is older than the one held here, 412 parent snapshot missing, 503 busy,
     500 receive failed: the description is the cause and this host, e.g.
     "No space left on device on 198.18.0.3"
POST /agent/v1/datasets/<id>/acquire       {"received": token, "maximum_size": int|null,
                                            "generation": int|null}
     -> 200 {"dataset_id", "path"}; idempotent for one token; 403/404/409 as above

The push body goes straight into a subprocess (tar -x / btrfs receive) chunk by chunk:
twisted.web would buffer a request body before calling the resource, so PushRequest swaps
its content for a ProcessSink as soon as the headers are in (gotLength), and a full pipe
pauses the TCP transport. On plain TCP the chunks' bytes go socket -> pipe by splice(2)
(splice_request_body, streams/chunked.py). Every other body is bounded by MAX_JSON_BODY.
"""

import inspect
import json
import math
import re
from urllib.parse import parse_qs

from klein import Klein
from twisted.internet import defer
from twisted.logger import Logger
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from zope.interface import Attribute, Interface

from powerstripflocker.agent.streams.chunked import splice_request_body
from powerstripflocker.agent.streams.processes import failure_cause
from powerstripflocker.agent.streams.receiving import DiscardSink
from powerstripflocker.core.docker_json import check_json_depth
from powerstripflocker.protocol.ids import UUID_PATTERN, canonical_uuid
from powerstripflocker.serving.credentials import refusal as credentials_refusal
from powerstripflocker.serving.listening import BoundedRequest, BoundedSite

log = Logger()

PUSH_PATH = re.compile(rb"^/agent/v1/datasets/(" + UUID_PATTERN.encode() + rb")/push(\?.*)?$")
MAX_JSON_BODY = 64 * 1024
MAX_REFUSED_BODY = 1 << 20      # read at most this much of a refused push, then hang up
OPEN_PATHS = (b"/agent/v1/health",)


class Refused(Exception):
    """A peer request we turn down: HTTP code and a description."""

    def __init__(self, code, description):
        super().__init__(description)
        self.code = code
        self.description = description


class IReceiver(Interface):
    """What the agent <-> agent protocol needs of the agent: the receiving side of a
    move. Refusals are Refused(code, description)."""

    address = Attribute("this node's address, named in the errors it reports")

    def describe(dataset_id):
        """(async) What the snapshots endpoint answers for dataset_id."""

    def accept_push(dataset_id, stream_format, parent, snapshot, generation):
        """(async) The backend's ReceivePlan for a push, dataset_id held busy until
        receive_ended; raise Refused unless dataset_id is to be received here now."""

    def open_sink(dataset_id, plan, peer, total, transport):
        """(sink, progress): the ProcessSink a push's body goes to (pausing transport
        while it is full) and the Progress counting it."""

    def receive_ended(dataset_id, progress, result, details):
        """A push accepted by accept_push is over (progress None: nothing was received);
        result "received", "failed" or "interrupted"."""

    def acquire(dataset_id, received, maximum_size, peer, generation=None):
        """(async) Make the received copy primary here: {"dataset_id", "path"}."""


def head_refusal(request, token):
    """None when a peer request may be served, else the credentials Refusal (from the
    head alone). Without a cluster token the agent protocol is open."""
    if not token or request.head_path() in OPEN_PATHS:
        return None
    return credentials_refusal(request.requestHeaders, request.channel.transport, token)


def peer_uuid(request):
    """The sending node's UUID from X-Powerstrip-Flocker-Node, or "unknown"."""
    name = request.getHeader(b"x-powerstrip-flocker-node") or b""
    return canonical_uuid(name.decode("latin-1")) or "unknown"


async def _maybe_await(value):
    if inspect.isawaitable(value):
        return await value
    return value


class IncomingPush:
    """One push being received: decide (async), stream into a subprocess, commit."""

    def __init__(self, receiver, request, dataset_id, params):
        self.receiver = receiver
        self.request = request
        self.dataset_id = dataset_id.lower()
        self.params = params
        self.transport = request.channel.transport
        self.buffer = []
        self.body_done = False
        self.lost = False
        self.refusal = None
        self.sink = None
        self.plan = None
        self.progress = None
        self.result = defer.Deferred()
        self.decided = defer.Deferred()
        request.content = self          # buffer the first bytes while deciding
        self.transport.pauseProducing()
        defer.ensureDeferred(self._decide())

    # file-like while undecided
    def write(self, data):
        self.buffer.append(data)

    def seek(self, *args):
        return 0

    def tell(self):
        return sum(len(chunk) for chunk in self.buffer)

    def read(self, *args):
        return b""

    def close(self):
        pass

    async def _decide(self):
        log.debug("push of {dataset_id} from {peer}: headers in, deciding",
                  dataset_id=self.dataset_id, peer=self.peer_name())
        try:
            generation = self.params.get("generation")
            self.plan = await self.receiver.accept_push(
                self.dataset_id, self.params.get("format", ""),
                self.params.get("parent") or None, self.params.get("snapshot") or None,
                int(generation) if generation and generation.isdigit() else None)
        except Refused as e:
            self.refusal = e
        except Exception as e:
            log.failure("deciding on a push of {dataset_id}", dataset_id=self.dataset_id)
            self.refusal = Refused(500, f"{type(e).__name__}: {e}")
        if self.lost:
            if self.plan is not None:
                await self._discard()
                self._finish_transfer(None)
            return
        if self.refusal is None:
            try:
                sink = self._start_receiving()
            except Exception as e:
                log.failure("starting the receive of {dataset_id}", dataset_id=self.dataset_id)
                self.refusal = Refused(500, f"{type(e).__name__}: {e}")
                if self.sink is not None:
                    self.sink.abort()
                    self.sink = None
                await self._discard()
                self._finish_transfer(None)
        if self.refusal is not None:
            log.warn("refused push of {dataset_id} from {peer}: {code} {reason}",
                     dataset_id=self.dataset_id, peer=self.peer_name(), code=self.refusal.code,
                     reason=self.refusal.description)
            sink = DiscardSink(limit=MAX_REFUSED_BODY,
                               on_exceeded=self.transport.abortConnection)
        for chunk in self.buffer:
            sink.write(chunk)
        self.buffer = []
        self.request.content = sink
        if not (self.sink is not None and self.sink.pauser.held):
            self.transport.resumeProducing()
        self.decided.callback(None)
        if self.body_done:
            await self._complete()

    def _start_receiving(self):
        size = self.params.get("size")
        self.sink, self.progress = self.receiver.open_sink(
            self.dataset_id, self.plan, self.peer_name(),
            int(size) if size and size.isdigit() else None, self.transport)
        log.info("receiving {dataset_id} from {peer} ({stream_format}, parent {parent}, "
                 "about {size} bytes)", dataset_id=self.dataset_id, peer=self.peer_name(),
                 stream_format=self.params.get("format"), parent=self.params.get("parent"),
                 size=self.params.get("size"))
        return self.sink

    def peer_name(self):
        return peer_uuid(self.request)

    def body_received(self):
        """The whole body arrived (twisted.web is about to render the request)."""
        self.body_done = True
        if self.decided.called:
            defer.ensureDeferred(self._complete())
        return self.result

    async def _complete(self):
        if self.refusal is not None:
            self.result.callback((self.refusal.code, {"description": self.refusal.description}))
            return
        self.sink.close_input()
        try:
            await self.sink.finished
            received = await _maybe_await(self.plan.commit())
        except Exception as e:
            log.error("receive of {dataset_id} from {peer} failed: {error}",
                      dataset_id=self.dataset_id, peer=self.peer_name(), error=e)
            await self._discard()
            self._finish_transfer("failed")
            # The sender reports this text as the move's error: the cause and where.
            self.result.callback((500, {"description": f"{failure_cause(e)} on "
                                                       f"{self.receiver.address}"}))
            return
        seconds = self.progress.seconds()
        log.info("received {dataset_id} from {peer}: {bytes} bytes in {seconds:.2f}s "
                 "({rate_mb:.1f} MB/s)", dataset_id=self.dataset_id, peer=self.peer_name(),
                 bytes=self.sink.bytes, seconds=seconds,
                 rate_mb=self.sink.bytes / max(seconds, 1e-6) / 1e6)
        self._finish_transfer("received", received=received)
        self.result.callback((200, {"dataset_id": self.dataset_id, "received": received,
                                    "bytes": self.sink.bytes}))

    def connection_lost(self):
        if self.body_done:
            return
        self.lost = True
        if self.sink is not None:
            log.warn("push of {dataset_id} from {peer} interrupted after {bytes} bytes",
                     dataset_id=self.dataset_id, peer=self.peer_name(), bytes=self.sink.bytes)
            self.sink.abort()
            d = defer.ensureDeferred(self._discard())
            d.addBoth(lambda _: self._finish_transfer("interrupted"))

    async def _discard(self):
        try:
            await _maybe_await(self.plan.discard())
        except Exception:
            log.failure("discarding a partial receive of {dataset_id}",
                        dataset_id=self.dataset_id)

    def _finish_transfer(self, result, received=None):
        self.receiver.receive_ended(
            self.dataset_id, self.progress if result is not None else None, result,
            {"format": self.params.get("format"), "parent": self.params.get("parent"),
             "snapshot": received})


class PushRequest(BoundedRequest):
    """A Request that streams PUT .../push bodies (of any size) instead of buffering
    them; every other body is bounded."""

    incoming = None

    def body_limit(self):
        return math.inf if self.incoming is not None else super().body_limit()

    def gotLength(self, length):
        command = getattr(self.channel, "_command", b"")
        path = getattr(self.channel, "_path", b"")
        match = PUSH_PATH.match(path) if command == b"PUT" else None
        receiver = getattr(self.channel.site, "receiver", None)
        if match is None or receiver is None:
            return super().gotLength(length)
        refused = self.channel.site.check_head(self)
        if refused is not None:
            return super().gotLength(length)   # answers the refusal, reads nothing
        query = (match.group(2) or b"?")[1:].decode("latin-1")
        params = {k: v[-1] for k, v in parse_qs(query).items()}
        self.incoming = IncomingPush(receiver, self, match.group(1).decode(), params)
        splice_request_body(self)

    def handleContentChunk(self, data):
        if self.incoming is not None:
            self.content.write(data)    # the push's buffer, then its sink
            return
        super().handleContentChunk(data)

    def connectionLost(self, reason):
        if self.incoming is not None:
            self.incoming.connection_lost()
        return super().connectionLost(reason)


def _json(request, code, body):
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(body).encode()


def _dataset(dataset_id):
    """The dataset id of a path, lower case; NotFound unless it is a UUID."""
    canonical = canonical_uuid(dataset_id)
    if canonical is None:
        raise NotFound()
    return canonical


def _carried_on(coroutine):
    """The coroutine's outcome; a client hanging up (Klein cancels what a route returns
    then) does not cancel the work: an acquire half done is worse than one unanswered."""
    answer = defer.Deferred()
    defer.Deferred.fromCoroutine(coroutine).chainDeferred(answer)
    return answer


class PeerApp:
    """The routes of the agent <-> agent protocol over a receiver (IReceiver)."""

    app = Klein()

    def __init__(self, receiver, node_uuid, backend_name, metrics, faults):
        self.receiver = receiver
        self.node_uuid = node_uuid
        self.backend_name = backend_name
        self.metrics = metrics        # () -> the metrics document
        self.faults = faults

    def resource(self):
        return self.app.resource()

    @app.handle_errors(NotFound)
    def not_found(self, request, failure):
        return _json(request, 404, {"description": "Not found."})

    @app.handle_errors(MethodNotAllowed)
    def not_allowed(self, request, failure):
        return _json(request, 405, {"description": "Method not allowed."})

    @app.handle_errors(Refused)
    def refused(self, request, failure):
        return _json(request, failure.value.code, {"description": failure.value.description})

    @app.handle_errors(HTTPException)
    def other_http_error(self, request, failure):
        return _json(request, failure.value.code or 400,
                     {"description": failure.value.description})

    @app.handle_errors(Exception)
    def failed(self, request, failure):
        log.failure("peer request {path}", failure, path=request.path)
        return _json(request, 500, {"description": str(failure.value)})

    @app.route("/agent/v1/health", methods=["GET"])
    def health(self, request):
        return _json(request, 200, {"node_uuid": self.node_uuid,
                                    "backend": self.backend_name})

    @app.route("/agent/v1/metrics", methods=["GET"])
    def metrics_document(self, request):
        return _json(request, 200, self.metrics())

    @app.route("/agent/v1/faults/resume", methods=["POST"])
    def resume_faults(self, request):
        if not self.faults.active():
            raise NotFound()
        return _json(request, 200, {"resumed": self.faults.resume()})

    @app.route("/agent/v1/datasets/<dataset_id>/snapshots", methods=["GET"])
    async def snapshots(self, request, dataset_id):
        described = await _carried_on(self.receiver.describe(_dataset(dataset_id)))
        return _json(request, 200, described)

    @app.route("/agent/v1/datasets/<dataset_id>/push", methods=["PUT"])
    async def push(self, request, dataset_id):
        _dataset(dataset_id)
        incoming = getattr(request, "incoming", None)
        if incoming is None:
            return _json(request, 500, {"description": "push was not streamed"})
        code, body = await incoming.body_received()
        return _json(request, code, body)

    @app.route("/agent/v1/datasets/<dataset_id>/acquire", methods=["POST"])
    async def acquire(self, request, dataset_id):
        dataset_id = _dataset(dataset_id)
        try:
            raw = request.content.read(MAX_JSON_BODY)
            check_json_depth(raw)
            body = json.loads(raw or b"{}")
            received = str(body["received"])
            maximum_size = body.get("maximum_size")
            generation = body.get("generation")
            if generation is not None and not isinstance(generation, int):
                raise TypeError("generation")
        except (ValueError, KeyError, TypeError):  # InvalidRequest is a ValueError
            return _json(request, 400, {"description": "expected JSON "
                                        "{\"received\": ..., \"maximum_size\": ...}"})
        acquired = await _carried_on(self.receiver.acquire(
            dataset_id, received, maximum_size, peer_uuid(request), generation=generation))
        return _json(request, 200, acquired)


class QuietSite(BoundedSite):
    """No access log and no factory start/stop lines: the agent logs what matters."""
    noisy = False

    def log(self, request):
        pass


def peer_site(app, receiver, token, idle_timeout=600):
    """The Site serving the agent <-> agent protocol: app's routes, push bodies streamed
    to receiver, the cluster token checked from the head."""
    # twisted.web drops a connection after 60 s without bytes; a receive whose pipe is
    # back-pressured by a slow disk can be quiet longer than that. The sender has its
    # own stall watchdog.
    site = QuietSite(app.resource(), MAX_JSON_BODY, requestFactory=PushRequest,
                     authorise=lambda request: head_refusal(request, token),
                     timeout=idle_timeout)
    site.receiver = receiver
    return site
