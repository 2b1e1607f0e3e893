"""The agent <-> agent protocol, server side: JSON over HTTP on the agent's --listen
endpoint, served by a Klein app over an IReceiver (receiver.py: what the protocol needs
of the agent).

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

The push body goes straight into a subprocess (tar -x / btrfs receive) chunk by chunk,
a full pipe pausing the TCP transport (PushRequest and IncomingPush, incoming.py). Every
other body is bounded by MAX_JSON_BODY.
"""

import json

from klein import Klein
from twisted.internet import defer
from twisted.logger import Logger
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from powerstripflocker.agent.incoming import PushRequest, peer_uuid
from powerstripflocker.agent.receiver import Refused
from powerstripflocker.protocol.docker_json import check_json_depth
from powerstripflocker.protocol.ids import canonical_uuid
from powerstripflocker.serving.credentials import refusal as credentials_refusal
from powerstripflocker.serving.listening import BoundedSite

log = Logger()

MAX_JSON_BODY = 64 * 1024
OPEN_PATHS = (b"/agent/v1/health",)


def head_refusal(request, token):
    """None when a peer request may be served, else the credentials Refusal (from the
    head alone). Without a cluster token the agent protocol is open."""
    if not token or request.head_path() in OPEN_PATHS:
        return None
    return credentials_refusal(request.requestHeaders, request.channel.transport, token)


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
