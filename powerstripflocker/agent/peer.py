"""The agent <-> agent protocol: JSON over HTTP on the agent's --listen endpoint.

Every endpoint except /agent/v1/health needs `Authorization: Bearer <cluster token>` (or a
client certificate of the cluster CA, on an ssl: listener that asks for one) when a token is
configured; it is checked from the request head, before any of the body is read.

GET  /agent/v1/health                      {"node_uuid", "backend"}
GET  /agent/v1/metrics                     byte counters, the last transfers, waits
POST /agent/v1/faults/resume               only with fault injection on: resume held receives
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
(splice_request_body, streams.py). Every other body is bounded by MAX_JSON_BODY (listening.py).
"""

import inspect
import json
import math
import re
from urllib.parse import parse_qs, quote, urlencode

import treq
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

from powerstripflocker.serving.credentials import refusal as credentials_refusal
from powerstripflocker.serving.listening import BoundedRequest, BoundedSite
from powerstripflocker.core.docker_json import check_json_depth
from powerstripflocker.agent.backends import BackendError, Conflict, MissingParent
from powerstripflocker.agent.streams import (DiscardSink, ProcessBodyProducer, ProcessSink, Progress, failure_cause,
                      splice_request_body)

log = Logger()

UUID_RE = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
PUSH_PATH = re.compile(rb"^/agent/v1/datasets/(" + UUID_RE.encode() + rb")/push(\?.*)?$")
MAX_JSON_BODY = 64 * 1024
MAX_REFUSED_BODY = 1 << 20      # read at most this much of a refused push, then hang up
OPEN_PATHS = (b"/agent/v1/health",)


class Refused(Exception):
    """A peer request we turn down: HTTP code and a description."""

    def __init__(self, code, description):
        super().__init__(description)
        self.code = code
        self.description = description


def head_refusal(request, token):
    """None when a peer request may be served, else the credentials Refusal (from the
    head alone). Without a cluster token the agent protocol is open."""
    if not token or request.head_path() in OPEN_PATHS:
        return None
    return credentials_refusal(request.requestHeaders, request.channel.transport, token)


def peer_uuid(request):
    """The sending node's UUID from X-Powerstrip-Flocker-Node, or "unknown"."""
    name = request.getHeader(b"x-powerstrip-flocker-node") or b""
    name = name.decode("latin-1").lower()
    return name if re.fullmatch(UUID_RE, name) else "unknown"


def _json(request, code, body):
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(body).encode()


def _finish_json(request, code, body):
    if request._disconnected or request.finished:
        return
    request.write(_json(request, code, body))
    request.finish()


async def _maybe_await(value):
    if inspect.isawaitable(value):
        return await value
    return value


class IncomingPush:
    """One push being received: decide (async), stream into a subprocess, commit."""

    def __init__(self, peer, request, dataset_id, params):
        self.peer = peer
        self.agent = peer.agent
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
        self.locked = False
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
            fmt = self.params.get("format", "")
            if fmt not in self.agent.backend.formats:
                raise Refused(400, f"this node's {self.agent.backend.name} backend receives "
                                   f"{', '.join(self.agent.backend.formats)}, not {fmt!r}")
            generation = self.params.get("generation")
            await self.agent.check_receive(
                self.dataset_id,
                generation=int(generation) if generation and generation.isdigit() else None)
            if not self.agent.lock(self.dataset_id, "receive"):
                raise Refused(503, f"dataset {self.dataset_id} is busy on this node")
            self.locked = True
            try:
                self.plan = await self.agent.backend.prepare_receive(
                    self.dataset_id, fmt, self.params.get("parent") or None,
                    self.params.get("snapshot") or None)
            except MissingParent as e:
                raise Refused(412, str(e))
            except Conflict as e:
                raise Refused(409, str(e))
            except BackendError as e:
                raise Refused(500, f"{e} on {self.agent.address}")
            except OSError as e:
                raise Refused(500, f"{e.strerror or e} on {self.agent.address}")
        except Refused as e:
            self.refusal = e
        except Exception as e:
            log.failure("deciding on a push of {dataset_id}", dataset_id=self.dataset_id)
            self.refusal = Refused(500, f"{type(e).__name__}: {e}")
        if self.lost:
            if self.plan is not None and self.refusal is None:
                await self._discard()
            self._release()
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
        if self.refusal is not None:
            log.warn("refused push of {dataset_id} from {peer}: {code} {reason}",
                     dataset_id=self.dataset_id, peer=self.peer_name(), code=self.refusal.code,
                     reason=self.refusal.description)
            self._release()
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
        self.progress = Progress(
            self.agent.reactor, self.dataset_id, "receive", self.peer_name(),
            total=int(size) if size and size.isdigit() else None)
        faults = self.agent.faults
        self.sink = ProcessSink(
            self.agent.reactor, self.plan.argv, self.transport, progress=self.progress,
            pause_after_bytes=faults.receive_pause_after_bytes,
            on_fault_pause=self._fault_paused)
        self.agent.transfer_started(self.progress)
        log.info("receiving {dataset_id} from {peer} ({stream_format}, parent {parent}, "
                 "about {size} bytes)", dataset_id=self.dataset_id, peer=self.peer_name(),
                 stream_format=self.params.get("format"), parent=self.params.get("parent"),
                 size=self.params.get("size"))
        return self.sink

    def _fault_paused(self, sink):
        log.warn("fault injection: receive of {dataset_id} paused after {bytes} bytes",
                 dataset_id=self.dataset_id, bytes=sink.bytes)
        self.agent.fault_paused(self.dataset_id, sink.bytes, sink)

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
                                                       f"{self.agent.address}"}))
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
        if self.progress is not None:
            self.agent.transfer_finished(self.progress, result, extra={
                "format": self.params.get("format"), "parent": self.params.get("parent"),
                "snapshot": received})
        self._release()

    def _release(self):
        if self.locked:
            self.locked = False
            self.agent.unlock(self.dataset_id)


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
        peer = getattr(self.channel.site, "peer", None)
        if match is None or peer is None:
            return super().gotLength(length)
        refused = self.channel.site.check_head(self)
        if refused is not None:
            return super().gotLength(length)   # answers the refusal, reads nothing
        query = (match.group(2) or b"?")[1:].decode("latin-1")
        params = {k: v[-1] for k, v in parse_qs(query).items()}
        self.incoming = IncomingPush(peer, self, match.group(1).decode(), params)
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


class _Leaf(resource.Resource):
    isLeaf = True

    def __init__(self, peer):
        super().__init__()
        self.peer = peer
        self.agent = peer.agent


class PeerResource(_Leaf):
    """Everything under /agent/v1/."""

    def render(self, request):
        path = request.path.decode("latin-1")
        parts = [p for p in path.split("/") if p]
        method = request.method.decode("latin-1")
        if parts[:2] != ["agent", "v1"]:
            return _json(request, 404, {"description": "Not found."})
        rest = parts[2:]
        if rest == ["health"] and method == "GET":
            return _json(request, 200, {"node_uuid": self.agent.node_uuid,
                                        "backend": self.agent.backend.name})
        if rest == ["metrics"] and method == "GET":
            return _json(request, 200, self.agent.metrics())
        if rest == ["faults", "resume"] and method == "POST" and self.agent.faults.active():
            return _json(request, 200, {"resumed": self.agent.resume_faults()})
        if len(rest) == 3 and rest[0] == "datasets" and re.fullmatch(UUID_RE, rest[1]):
            dataset_id = rest[1].lower()
            action = rest[2]
            if action == "snapshots" and method == "GET":
                self._later(request, self.agent.describe_for_peer(dataset_id))
                return server.NOT_DONE_YET
            if action == "push" and method == "PUT":
                incoming = getattr(request, "incoming", None)
                if incoming is None:
                    return _json(request, 500, {"description": "push was not streamed"})
                d = incoming.body_received()
                d.addCallback(lambda result: _finish_json(request, *result))
                return server.NOT_DONE_YET
            if action == "acquire" and method == "POST":
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
                self._later(request, self.agent.acquire_for_peer(
                    dataset_id, received, maximum_size,
                    peer_uuid(request), generation=generation))
                return server.NOT_DONE_YET
            return _json(request, 405, {"description": "Method not allowed."})
        return _json(request, 404, {"description": "Not found."})

    def _later(self, request, coroutine):
        d = defer.ensureDeferred(coroutine)

        def ok(body):
            _finish_json(request, 200, body)

        def failed(failure):
            if failure.check(Refused):
                _finish_json(request, failure.value.code,
                             {"description": failure.value.description})
            else:
                log.failure("peer request {path}", failure, path=request.path)
                _finish_json(request, 500, {"description": str(failure.value)})

        d.addCallbacks(ok, failed)


class QuietSite(BoundedSite):
    """No access log and no factory start/stop lines: the agent logs what matters."""
    noisy = False

    def log(self, request):
        pass


class PeerServer:
    """Builds the Site serving the agent <-> agent protocol for one agent service."""

    def __init__(self, agent, idle_timeout=600):
        self.agent = agent
        self.idle_timeout = idle_timeout

    def site(self):
        root = PeerResource(self)
        # twisted.web drops a connection after 60 s without bytes; a receive whose pipe is
        # back-pressured by a slow disk can be quiet longer than that. The sender has its
        # own stall watchdog.
        site = QuietSite(root, MAX_JSON_BODY, requestFactory=PushRequest,
                         authorise=lambda request: head_refusal(request, self.agent.token),
                         timeout=self.idle_timeout)
        site.peer = self
        return site


class PeerError(Exception):
    def __init__(self, code, description):
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description


class PeerClient:
    """Talks to other agents: snapshots, streamed push, acquire."""

    def __init__(self, reactor, node_uuid, token=None, http=None):
        self.reactor = reactor
        self.node_uuid = node_uuid
        self.token = token
        self.http = http or treq

    def _headers(self, extra=None):
        headers = {b"X-Powerstrip-Flocker-Node": [self.node_uuid.encode()]}
        if self.token:
            headers[b"Authorization"] = [f"Bearer {self.token}".encode()]
        headers.update(extra or {})
        return headers

    def _url(self, agent_url, dataset_id, action, params=None):
        url = f"{agent_url.rstrip('/')}/agent/v1/datasets/{quote(dataset_id)}/{action}"
        if params:
            url += "?" + urlencode({k: v for k, v in params.items() if v is not None})
        return url

    async def _json_response(self, response):
        body = await response.content()
        try:
            decoded = json.loads(body)
        except ValueError:
            decoded = {"description": body[:500].decode("utf-8", "replace")}
        if response.code != 200:
            raise PeerError(response.code, decoded.get("description", decoded)
                            if isinstance(decoded, dict) else decoded)
        return decoded

    async def describe(self, agent_url, dataset_id):
        response = await self.http.get(self._url(agent_url, dataset_id, "snapshots"),
                                       headers=self._headers(), timeout=30)
        return await self._json_response(response)

    async def push(self, agent_url, plan, progress, generation=None, pause_after_bytes=None,
                   on_fault_pause=None):
        producer = ProcessBodyProducer(self.reactor, plan.argv, progress=progress,
                                       pause_after_bytes=pause_after_bytes,
                                       on_fault_pause=on_fault_pause)
        url = self._url(agent_url, plan.dataset_id, "push", {
            "format": plan.format, "snapshot": plan.snapshot, "parent": plan.parent,
            "size": plan.size, "generation": generation})
        response = await self.http.request(
            "PUT", url, data=producer,
            headers=self._headers({b"Content-Type": [b"application/octet-stream"]}))
        result = await self._json_response(response)
        result["bytes_sent"] = producer.bytes
        return result

    async def acquire(self, agent_url, dataset_id, received, maximum_size, generation=None):
        response = await self.http.post(
            self._url(agent_url, dataset_id, "acquire"),
            data=json.dumps({"received": received, "maximum_size": maximum_size,
                             "generation": generation}).encode(),
            headers=self._headers({b"Content-Type": [b"application/json"]}), timeout=120)
        return await self._json_response(response)
