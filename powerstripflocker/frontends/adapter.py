"""The Powerstrip adapter: a Klein app answering pre- and post-hooks.

A container create (or legacy start) pre-hook whose body binds /flocker/NAME gets
the body back with each such bind pointing at the dataset's real path on this node.
Every other hook is echoed unchanged.
"""

import json
from dataclasses import replace
from weakref import WeakKeyDictionary

from klein import Klein
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.logger import Logger
from werkzeug.exceptions import HTTPException

from powerstripflocker.core.placement import (
    ControlServiceUnavailable, NodeUnknown, PlacementError, PlacementTimeout,
    VolumeClaimedElsewhere, VolumeInUse,
)
from powerstripflocker.protocol.docker_json import (
    InvalidRequest, NotJSON, check_json_depth, decode_body,
)
from powerstripflocker.core.volumes import (
    find_create_volumes, find_legacy_start_volumes, is_container_create, is_container_start,
    rewrite, unique_names,
)
from powerstripflocker.protocol import hooks as envelope

log = Logger()

MAX_HOOK_BYTES = 4 * 1024 * 1024
HEALTH_TIMEOUT = 5.0


class HookError(Exception):
    """A hook that gets one status and one message for the docker user."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


def parse_hook(raw):
    """Parse a Powerstrip protocol 1 hook envelope; raise HookError(400) saying what's wrong."""
    try:
        check_json_depth(raw)
    except InvalidRequest as reason:
        raise HookError(400, str(reason)) from None
    try:
        return envelope.parse_hook_request(raw)
    except envelope.EnvelopeError as reason:
        raise HookError(400, reason.message) from None


def volume_uses(client_request):
    """(parsed Docker body, [VolumeUse]) of a request that binds /flocker volumes, or None."""
    is_create = is_container_create(client_request.method, client_request.request)
    is_start = is_container_start(client_request.method, client_request.request)
    if not (is_create or is_start) or client_request.body in (None, ""):
        return None
    try:
        body = decode_body(client_request.body)
    except NotJSON:
        if is_start:
            return None
        raise HookError(400, "the container create body is not valid JSON") from None
    except InvalidRequest as reason:
        raise HookError(400, str(reason)) from None
    try:
        uses = find_create_volumes(body) if is_create else find_legacy_start_volumes(body)
    except InvalidRequest as reason:
        raise HookError(400, str(reason)) from None
    if not uses:
        return None
    return body, uses


_STATUS_BY_FAILURE = {
    VolumeInUse: 409, VolumeClaimedElsewhere: 409, PlacementTimeout: 504,
    ControlServiceUnavailable: 503, NodeUnknown: 503,
}


def hook_refusal(error):
    """(status, message for the docker user, metrics outcome) of a failed hook."""
    if isinstance(error, HookError):
        return error.status, error.message, "bad_request"
    if isinstance(error, PlacementError):
        return _STATUS_BY_FAILURE.get(type(error), 502), str(error), error.kind
    return 500, "internal error in the powerstrip-flocker adapter; see its log", "internal"


def _read_body(request, limit):
    body = request.content.read(limit + 1)
    if len(body) > limit:
        raise HookError(413, f"the hook request is larger than {limit} bytes")
    return body


def hook_error_document(message):
    """The body of a refusal: Powerstrip's {"message": ...}."""
    return {"message": message}


def _json(request, status, document):
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps(document).encode("utf-8")


class FlockerAdapter:
    """POST /flocker-adapter (Powerstrip hooks), GET /healthz, GET /metrics."""

    app = Klein()

    def __init__(self, placement, api, metrics, clock, max_hook_bytes=MAX_HOOK_BYTES):
        self._placement = placement
        self._api = api
        self._metrics = metrics
        self._clock = clock
        self._max_hook_bytes = max_hook_bytes
        self._hook_types = WeakKeyDictionary()  # request -> type of the hook it carries

    def resource(self):
        return self.app.resource()

    @app.route("/flocker-adapter", methods=["POST"])
    async def hook(self, request):
        hook = parse_hook(_read_body(request, self._max_hook_bytes))
        self._hook_types[request] = hook.type  # for refuse's count, should answer() fail
        reply = await self.answer(hook)
        self._metrics.hooks.labels(type=hook.type, outcome="ok").inc()
        return _json(request, 200, reply)

    @app.handle_errors(Exception)
    def refuse(self, request, failure):
        """Every failure of a hook: one status and {"message": one line}, counted."""
        if failure.check(HTTPException):
            return failure  # no such route: Klein's own 404 or 405
        status, message, outcome = hook_refusal(failure.value)
        if outcome == "internal":
            log.failure("hook failed unexpectedly", failure)
        hook_type = self._hook_types.pop(request, "unknown")
        log.warn("refused {hook_type}: {message}", hook_type=hook_type, message=message)
        self._metrics.hooks.labels(type=hook_type, outcome=outcome).inc()
        return _json(request, status, hook_error_document(message))

    async def answer(self, hook):
        """The reply document for a parsed hook."""
        if hook.type == envelope.POST_HOOK:
            return envelope.post_hook_reply(hook.server_response)
        found = volume_uses(hook.client_request)
        if found is None:
            # the client's own Method, Request and Body
            return envelope.pre_hook_reply(hook.client_request)
        body, uses = found
        paths = await self._placement.ensure_local(unique_names(uses))
        rewritten = json.dumps(rewrite(body, uses, paths))
        return envelope.pre_hook_reply(replace(hook.client_request, body=rewritten))

    @app.route("/healthz", methods=["GET"])
    async def healthz(self, request):
        version = self._api.version()
        version.addTimeout(HEALTH_TIMEOUT, self._clock)
        try:
            flocker = await version
        except DeferredTimeout:
            reason = f"the control service did not answer within {HEALTH_TIMEOUT:g}s"
        except Exception as failure:
            reason = str(failure)
        else:
            return _json(request, 200, {"status": "ok", "control_service": flocker})
        return _json(request, 503, {"status": "unavailable", "reason": reason})

    @app.route("/metrics", methods=["GET"])
    def metrics(self, request):
        request.setHeader(b"Content-Type", self._metrics.content_type.encode())
        return self._metrics.render()
