"""HTTP frontends of the control service: Flocker's v1 REST API under /v1 and
the agent protocol under /agent/v1, one Klein app.

Every answer is JSON. Deliberate errors are APIError (errors.py) raised anywhere below
and turned into one status and one {"description": ...} body here, by Klein error
handlers, as are the router's own (404, 405); anything unexpected is logged and
answered with a JSON 500 that says where to look.
"""

import functools
import json
import math

from klein import Klein
from klein.interfaces import IKleinRequest
from twisted.internet.defer import CancelledError, ensureDeferred, maybeDeferred
from twisted.logger import Logger
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import RequestRedirect

from powerstripflocker import __version__
from powerstripflocker.serving.credentials import refusal as credentials_refusal
from powerstripflocker.protocol.docker_json import check_json_depth
from powerstripflocker.control.metrics import ControlMetrics
from powerstripflocker.control.schema import schema_errors
from powerstripflocker.control.claims import DEFAULT_CLAIM_SECONDS
from powerstripflocker.clients.etcd import EtcdError
from powerstripflocker.control.errors import DATASET_ID_IN_USE, APIError, TagMismatch
from powerstripflocker.control.store import StoreBusy
from powerstripflocker.protocol.ids import canonical_uuid, is_uuid4

MAX_BODY = 1024 * 1024
DEFAULT_POLL_TIMEOUT = 30.0
MAX_POLL_TIMEOUT = 60.0

TAG_HEADER = b"X-Configuration-Tag"
IF_MATCHES_HEADER = b"X-If-Configuration-Matches"

NOT_JSON = (
    "The request body could not be decoded according to the value of the "
    "Content-Type header."
)
SCHEMA_MISMATCH = "The provided JSON doesn't match the required schema."
INTERNAL_ERROR = "internal error, see the control service log"

# Health checks and Prometheus scrapes need no credentials; everything else does.
OPEN_PATHS = (b"/v1/version", b"/metrics", b"/healthz")

log = Logger()


def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text):
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


def read_json(request, schema_name):
    """The request body decoded as JSON and checked against a schema, or APIError."""
    body = request.content.read(MAX_BODY + 1)
    if len(body) > MAX_BODY:
        raise APIError(413, f"The request body is larger than {MAX_BODY} bytes.")
    try:
        check_json_depth(body)
        document = json.loads(
            body.decode("utf-8"), parse_constant=_reject_constant, parse_float=_finite_float,
        )
    except (UnicodeDecodeError, ValueError, RecursionError):  # InvalidRequest: a ValueError
        raise APIError(400, NOT_JSON)
    errors = schema_errors(schema_name, document)
    if errors:
        raise APIError(400, SCHEMA_MISMATCH, errors)
    return document


def _check_size(request):
    length = request.getHeader(b"content-length")
    if length is not None:
        try:
            too_big = int(length) > MAX_BODY
        except ValueError:
            too_big = False
        if too_big:
            raise APIError(413, f"The request body is larger than {MAX_BODY} bytes.")


def json_response(request, code, document, headers=()):
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    for name, value in headers:
        request.setHeader(name, value)
    return json.dumps(document).encode("utf-8") + b"\n"


def endpoint(handler):
    """A route of handler(self, request, ...) -> (code, document[, headers]), after the
    checks every route makes (credentials, body size). A failure, raised anywhere below,
    is answered by ControlAPI's error handlers."""

    @functools.wraps(handler)
    def wrapper(self, request, *args, **kwargs):
        def call():
            self._authorise(request)
            _check_size(request)
            result = handler(self, request, *args, **kwargs)
            if hasattr(result, "__await__"):
                return ensureDeferred(result)
            return result

        def render(result):
            self._count(handler.__name__, result[0])
            return json_response(request, *result)

        return maybeDeferred(call).addCallback(render)

    return wrapper


def _route_name(request):
    """The name of the route the request matched (its handler's), for the counts."""
    rule, _ = IKleinRequest(request).mapper.match(return_rule=True)
    return rule.endpoint


class ControlAPI:
    """The Klein app; ControlAPI(service, token).app.resource() is the whole site."""

    app = Klein()

    def __init__(self, service, cluster_token=None):
        self.service = service
        self.cluster_token = cluster_token
        self.metrics = ControlMetrics(service)

    def resource(self):
        return self.app.resource()

    def refusal(self, path, request):
        """None when a request for path may be served, else the credentials Refusal.
        The listener asks from the head (before any body is read); the endpoints ask
        again, for the resource served in-process."""
        if self.cluster_token is None or path in OPEN_PATHS:
            return None
        return credentials_refusal(request.requestHeaders, request.channel.transport,
                                   self.cluster_token)

    def _authorise(self, request):
        refused = self.refusal(request.path, request)
        if refused is not None:
            error = APIError(refused.code, refused.description)
            error.headers = refused.headers
            raise error

    def _count(self, route, code):
        self.metrics.requests.labels(route=route, code=str(code)).inc()

    @app.route("/metrics", methods=["GET"])
    async def prometheus(self, request):
        body = await self.metrics.render()
        request.setHeader(b"Content-Type", self.metrics.content_type.encode("ascii"))
        return body

    # -- errors: every refusal is rendered here ------------------------------

    @app.handle_errors(APIError)
    def refused(self, request, failure):
        error = failure.value
        self._count(_route_name(request), error.code)
        # Refused agent requests are worth a warning: an agent is misconfigured.
        emit = log.warn if request.path.startswith(b"/agent/") else log.debug
        emit(
            "{method} {uri} refused with {code}: {description} {errors}",
            method=request.method.decode("ascii", "replace"),
            uri=request.uri.decode("ascii", "replace"),
            code=error.code, description=error.description,
            errors=error.errors or "",
        )
        headers = getattr(error, "headers", ())
        if isinstance(error, TagMismatch):
            headers = _tag_header(error.current)
        return json_response(request, error.code, error.body(), headers)

    @app.handle_errors(EtcdError, StoreBusy)
    def store_unavailable(self, request, failure):
        """The store did not answer, or could not tell whether a change was made: 503,
        which the clients take to the next replica (every write is safe to repeat)."""
        self._count(_route_name(request), 503)
        log.warn("{method} {uri}: the store failed: {error}",
                 method=request.method.decode("ascii", "replace"),
                 uri=request.uri.decode("ascii", "replace"), error=failure.value)
        return json_response(request, 503, {
            "description": f"the control service's store failed: {failure.value}; "
                           "try again, or another control replica"})

    @app.handle_errors(NotFound)
    def not_found(self, request, failure):
        return json_response(request, 404, {"description": "Not found."})

    @app.handle_errors(MethodNotAllowed)
    def not_allowed(self, request, failure):
        allowed = failure.value.valid_methods or []
        headers = [(b"Allow", ", ".join(allowed).encode("ascii"))] if allowed else []
        return json_response(
            request, 405, {"description": "Method not allowed on this resource."}, headers
        )

    @app.handle_errors(RequestRedirect)
    def redirect(self, request, failure):
        location = failure.value.new_url
        if b"//" not in request.path:
            # The slashes merged were escaped ones (an id holding %2F): a redirect would
            # name another resource. There is no such one.
            return self.not_found(request, failure)
        return json_response(
            request, failure.value.code, {"description": f"See {location}"},
            [(b"Location", location.encode("utf-8"))],
        )

    @app.handle_errors(HTTPException)
    def other_http_error(self, request, failure):
        error = failure.value
        return json_response(request, error.code or 400, {"description": error.description})

    @app.handle_errors(Exception)
    def internal_error(self, request, failure):
        if failure.check(CancelledError):
            return None  # the client went away (a long-poll); nobody to answer
        self._count(_route_name(request), 500)
        log.failure(
            "internal error answering {method} {uri}", failure,
            method=request.method.decode("ascii", "replace"),
            uri=request.uri.decode("ascii", "replace"),
        )
        return json_response(request, 500, {"description": INTERNAL_ERROR})

    # -- health -----------------------------------------------------------

    @app.route("/healthz", methods=["GET"])
    @endpoint
    async def health(self, request):
        """200 when this replica reaches its store, else 503 saying why."""
        reachable, problem = await self.service.store_health()
        if reachable:
            return 200, {"store": "reachable"}
        return 503, {"store": "unreachable", "description": problem}

    # -- v1: version ------------------------------------------------------

    @app.route("/v1/version", methods=["GET"])
    @endpoint
    def version(self, request):
        return 200, {"flocker": __version__}

    # -- v1: configuration/datasets ----------------------------------------

    @staticmethod
    def _wanted_tag(request):
        wanted = request.getHeader(IF_MATCHES_HEADER)
        return None if wanted is None else wanted.decode("latin-1")

    @app.route("/v1/configuration/datasets", methods=["GET"])
    @endpoint
    async def list_datasets(self, request):
        found, _, tag = await self.service.listing(_query_text(request, b"name"))
        return 200, [d.to_configuration() for d in found], _tag_header(tag)

    @app.route("/v1/configuration/datasets", methods=["POST"])
    @endpoint
    async def create_dataset(self, request):
        wanted = self._wanted_tag(request)
        try:
            # Refused before the body is read, as Flocker does; decided again with the
            # create below, atomically.
            await self.service.check_tag(wanted)
        except TagMismatch:
            await self._refuse_a_repeat(request)
            raise
        body = read_json(request, "dataset_create")
        dataset, tag = await self.service.create_dataset(
            primary=body["primary"],
            dataset_id=body.get("dataset_id"),
            metadata=body.get("metadata"),
            maximum_size=body.get("maximum_size"),
            wanted_tag=wanted,
        )
        return 201, dataset.to_configuration(), _tag_header(tag)

    async def _refuse_a_repeat(self, request):
        """A create sent again with its own dataset_id after the first was stored (its
        answer lost) finds the tag moved by that first one: it is answered 409 for the
        id, as without a tag, which its client reads as done."""
        try:
            dataset_id = canonical_uuid(read_json(request, "dataset_create").get("dataset_id"))
        except APIError:
            return
        if dataset_id and await self.service.store.get_dataset(dataset_id) is not None:
            raise APIError(409, DATASET_ID_IN_USE)

    @app.route("/v1/configuration/datasets/<dataset_id>", methods=["POST"])
    @endpoint
    async def update_dataset(self, request, dataset_id):
        wanted = self._wanted_tag(request)
        await self.service.check_tag(wanted)
        body = read_json(request, "dataset_update")
        dataset, tag = await self.service.update_dataset(
            dataset_id, primary=body.get("primary"), wanted_tag=wanted)
        return 200, dataset.to_configuration(), _tag_header(tag)

    @app.route("/v1/configuration/datasets/<dataset_id>", methods=["DELETE"])
    @endpoint
    async def delete_dataset(self, request, dataset_id):
        dataset, tag = await self.service.delete_dataset(
            dataset_id, wanted_tag=self._wanted_tag(request))
        return 200, dataset.to_configuration(), _tag_header(tag)

    @app.route("/v1/configuration/datasets/<dataset_id>/restore", methods=["POST"])
    @endpoint
    async def restore_dataset(self, request, dataset_id):
        """Beyond Flocker: un-delete a dataset whose data a node keeps in its trash."""
        dataset, tag = await self.service.restore_dataset(
            dataset_id, wanted_tag=self._wanted_tag(request))
        return 200, dataset.to_configuration(), _tag_header(tag)

    # -- v1: state ---------------------------------------------------------

    @app.route("/v1/state/trash", methods=["GET"])
    @endpoint
    async def state_trash(self, request):
        """Beyond Flocker: the deleted datasets' data the nodes keep, newest first."""
        entries = await self.service.trash()
        name = _query_text(request, b"name")
        if name is not None:
            entries = [e for e in entries if e["name"] == name]
        return 200, entries

    @app.route("/v1/state/datasets", methods=["GET"])
    @endpoint
    def state_datasets(self, request):
        entries = self.service.state_datasets()
        dataset_id = _query_text(request, b"dataset_id")
        if dataset_id is not None:
            entries = [e for e in entries if e["dataset_id"] == dataset_id.lower()]
        return 200, entries

    @app.route("/v1/state/nodes", methods=["GET"])
    @endpoint
    def state_nodes(self, request):
        return 200, self.service.state_nodes()

    @app.route("/v1/state/nodes/by_era/<era>", methods=["GET"])
    @endpoint
    def state_node_by_era(self, request, era):
        return 200, {"uuid": self.service.node_by_era(era)}

    # -- v1: leases --------------------------------------------------------

    @app.route("/v1/configuration/leases", methods=["GET"])
    @endpoint
    async def list_leases(self, request):
        _, leases, tag = await self.service.listing()
        now = self.service.clock.seconds()
        return 200, [lease.to_json(now) for lease in leases], _tag_header(tag)

    @app.route("/v1/configuration/leases", methods=["POST"])
    @endpoint
    async def acquire_lease(self, request):
        body = read_json(request, "lease")
        created, lease, tag = await self.service.acquire_lease(
            body["dataset_id"], body["node_uuid"], body["expires"],
            new_user=_query_flag(request, b"new_user"),
        )
        now = self.service.clock.seconds()
        return (201 if created else 200), lease.to_json(now), _tag_header(tag)

    @app.route("/v1/configuration/leases/<dataset_id>", methods=["DELETE"])
    @endpoint
    async def release_lease(self, request, dataset_id):
        node_uuid = _query_text(request, b"node_uuid")
        if node_uuid is not None and canonical_uuid(node_uuid) is None:
            raise APIError(400, f"node_uuid must be a UUID, not {node_uuid!r}.")
        lease, tag = await self.service.release_lease(dataset_id, node_uuid)
        return 200, lease.to_json(self.service.clock.seconds()), _tag_header(tag)

    # -- claims (beyond Flocker) --------------------------------------------

    @app.route("/v1/configuration/claims", methods=["POST"])
    @endpoint
    async def claim(self, request):
        body = read_json(request, "claim")
        code, answer, tag = await self.service.claim(
            body["name"], body["node_uuid"],
            expires=body.get("expires", DEFAULT_CLAIM_SECONDS),
            maximum_size=body.get("maximum_size"),
            create=body.get("create", True),
            generation=body.get("generation"),
            replicas=body.get("replicas"),
        )
        return code, answer, _tag_header(tag)

    # -- agent protocol ----------------------------------------------------

    @app.route("/agent/v1/nodes/<node_uuid>", methods=["PUT"])
    @endpoint
    async def put_node(self, request, node_uuid):
        if not is_uuid4(node_uuid):
            raise APIError(400, f"The node UUID {node_uuid!r} is not a version 4 UUID.")
        normalised = node_uuid.lower()
        body = read_json(request, "node_report")
        generation = await self.service.report(
            normalised, body["host"], body["agent_url"], body["datasets"],
            body.get("transfers", []), trash=body.get("trash", []), era=body.get("era"),
        )
        return 200, {"generation": generation}

    @app.route("/agent/v1/cluster", methods=["GET"])
    @endpoint
    async def cluster(self, request):
        generation = _query_number(request, b"generation", int, None)
        timeout = _query_number(request, b"timeout", float, DEFAULT_POLL_TIMEOUT)
        if not (math.isfinite(timeout) and timeout >= 0):
            raise APIError(400, "timeout must be a number of seconds >= 0.")
        timeout = min(timeout, MAX_POLL_TIMEOUT)
        await self.service.wait_for_change(generation, timeout)
        return 200, await self.service.cluster_view()


def _tag_header(tag):
    return [(TAG_HEADER, tag.encode("ascii"))]


def _query_text(request, name):
    """The first value of query parameter name as text, or None when absent."""
    values = request.args.get(name)
    if not values:
        return None
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise APIError(400, f"{name.decode()} must be UTF-8 text.")


def _query_flag(request, name):
    """Query parameter name as a boolean: absent, false or true."""
    value = _query_text(request, name)
    if value in (None, "false"):
        return False
    if value == "true":
        return True
    raise APIError(400, f"{name.decode()} must be true or false, not {value!r}.")


def _query_number(request, name, kind, default):
    values = request.args.get(name)
    if not values:
        return default
    try:
        return kind(values[0].decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise APIError(400, f"{name.decode()} must be a number, not {values[0]!r}.")
