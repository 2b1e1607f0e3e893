"""The Flocker v1 control-service API: one interface, a treq client, an in-memory fake.

The fake is trusted only because the same contract tests (tests/flocker_contract.py)
pass against it and against our real control service.
"""

import hashlib
import json
import re
import uuid
from dataclasses import dataclass, field, replace
from urllib.parse import quote

import treq
from twisted.internet import error as neterror
from twisted.internet.defer import (
    CancelledError, Deferred, TimeoutError as DeferredTimeoutError, fail, succeed,
)
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory
from zope.interface import Interface, implementer

from powerstripflocker.protocol.leases import after_use_ended, granted

log = Logger()

_UUID4 = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z", re.IGNORECASE
)
MINIMUM_SIZE = 64 * 1024 * 1024
_VOLUME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}\Z")
LONGEST_CLAIM = 365 * 24 * 3600
SCHEMA_MISMATCH = "The provided JSON doesn't match the required schema."


@dataclass(frozen=True)
class DatasetConfig:
    """A dataset as the configuration (desired state) describes it."""

    dataset_id: str
    primary: str
    metadata: dict = field(default_factory=dict)
    deleted: bool = False
    maximum_size: int | None = None

    @property
    def name(self):
        return self.metadata.get("name")


@dataclass(frozen=True)
class DatasetState:
    """One node's report of a dataset; primary and path appear once it is usable there."""

    dataset_id: str
    primary: str | None = None
    path: str | None = None
    maximum_size: int | None = None


@dataclass(frozen=True)
class Node:
    uuid: str
    host: str


@dataclass(frozen=True)
class Lease:
    dataset_id: str
    node_uuid: str
    expires: float | None  # seconds from now; None = never


@dataclass(frozen=True)
class Holder:
    """The node holding a dataset's lease, and what its latest report says uses it."""

    node_uuid: str
    host: str | None
    users: tuple = ()


@dataclass(frozen=True)
class Claim:
    """The control service's answer to a claim on a name (POST /v1/configuration/claims).

    status is "ready" (path and lease set: usable here, leased to the claimant),
    "creating" or "moving" (ask again); a move names its source and progress, and
    stalled/error say that its sender gave up."""

    status: str
    dataset_id: str
    generation: int
    path: str | None = None
    lease: Lease | None = None
    source: Node | None = None
    bytes_done: int = 0
    bytes_total: int | None = None
    stalled: bool = False
    error: str | None = None


@dataclass(frozen=True)
class Trashed:
    """A deleted dataset's data a node keeps in its trash (GET /v1/state/trash, beyond
    Flocker). Times are the node's clock, in seconds since the epoch."""

    dataset_id: str
    node_uuid: str
    host: str | None
    name: str | None
    deleted: bool | None      # the dataset's configuration says so (None: not configured)
    deleted_at: float
    expires_at: float
    bytes: int


@dataclass(frozen=True)
class Configuration:
    tag: str | None  # X-Configuration-Tag; None when the service does not send one
    datasets: list


class FlockerAPIError(Exception):
    """The control service answered a request with an error status."""

    def __init__(self, code, description):
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description


class BadRequest(FlockerAPIError):
    pass


class NotFound(FlockerAPIError):
    pass


class AlreadyExists(FlockerAPIError):
    """409: a dataset with that id exists, another node holds the lease, or a lease was
    asked for by a node that is not the dataset's primary."""


class HeldElsewhere(AlreadyExists):
    """409: another node holds the dataset's lease; holder says which and its users."""

    def __init__(self, code, description, holder):
        super().__init__(code, description)
        self.holder = holder


class ClaimedElsewhere(AlreadyExists):
    """409: a claim asked again with a generation found the dataset moved to another node
    (claimant, a Node) in the meantime."""

    def __init__(self, code, description, claimant):
        super().__init__(code, description)
        self.claimant = claimant


class DatasetDeleted(FlockerAPIError):
    pass


class ConfigurationChanged(FlockerAPIError):
    """412: X-If-Configuration-Matches named a tag that is no longer current."""


_ERRORS_BY_STATUS = {
    400: BadRequest, 404: NotFound, 405: DatasetDeleted, 409: AlreadyExists,
    412: ConfigurationChanged,
}


class ControlServiceUnreachable(Exception):
    """No answer from the control service: refused, timed out or cut off."""

    def __init__(self, url, reason):
        super().__init__(f"cannot reach the control service at {url}: {reason}")
        self.url = url
        self.reason = reason


class IFlockerAPI(Interface):
    """The part of Flocker's v1 REST API that powerstrip-flocker uses. Every call returns
    a Deferred; errors are FlockerAPIError subclasses or ControlServiceUnreachable."""

    def version():
        """Fires with the control service's version string."""

    def list_datasets_configuration():
        """Fires with a Configuration: its tag and every DatasetConfig, deleted included."""

    def create_dataset(primary, metadata=None, maximum_size=None, dataset_id=None,
                       if_configuration_matches=None):
        """Fires with the new DatasetConfig."""

    def move_dataset(dataset_id, primary, if_configuration_matches=None):
        """Sets the dataset's primary; fires with the updated DatasetConfig."""

    def delete_dataset(dataset_id, if_configuration_matches=None):
        """Marks the dataset deleted; fires with its DatasetConfig."""

    def datasets_named(name):
        """Fires with a Configuration: its tag and the DatasetConfigs named name (deleted
        ones too), without reading the rest of the cluster."""

    def claim(name, node_uuid, expires=30.0, maximum_size=None, create=True,
              generation=None):
        """Asks the control service to make the volume name usable on node_uuid, decided
        there in one transaction: create it there (when create, else NotFound), move it
        there, or, once it is there, lease it to node_uuid for expires seconds. Fires with
        a Claim; fails with HeldElsewhere while another node holds its lease. generation:
        asking again about the Claim of that generation; fails with ClaimedElsewhere if
        another node has moved the dataset away since."""

    def list_datasets_state(dataset_id=None):
        """Fires with the list of DatasetState the nodes report (of one dataset if
        dataset_id is given)."""

    def list_nodes():
        """Fires with the list of Node that have reported state."""

    def list_leases():
        """Fires with the list of Lease."""

    def acquire_lease(dataset_id, node_uuid, expires, new_user=False):
        """Acquires or renews a lease; fires with the Lease. new_user: a container
        started using the dataset on node_uuid since the last renewal (so the claims
        made before now are used; see leases.py)."""

    def release_lease(dataset_id, node_uuid=None):
        """Releases the lease; fires with the released Lease. With node_uuid, the
        holder says its use ended: a later claim may keep the lease a while (the Lease
        fired with then has its remaining expiry)."""


def _dataset_config(entry):
    return DatasetConfig(
        dataset_id=entry["dataset_id"], primary=entry["primary"],
        metadata=dict(entry.get("metadata") or {}), deleted=bool(entry.get("deleted", False)),
        maximum_size=entry.get("maximum_size"),
    )


def _dataset_state(entry):
    return DatasetState(
        dataset_id=entry["dataset_id"], primary=entry.get("primary"), path=entry.get("path"),
        maximum_size=entry.get("maximum_size"),
    )


def _lease(entry):
    return Lease(entry["dataset_id"], entry["node_uuid"], entry.get("expires"))


def _claim(entry):
    source = entry.get("from")
    progress = entry.get("progress") or {}
    return Claim(
        status=entry["status"], dataset_id=entry["dataset_id"],
        generation=entry["generation"], path=entry.get("path"),
        lease=_lease(entry["lease"]) if entry.get("lease") else None,
        source=Node(source["node_uuid"], source.get("host")) if source else None,
        bytes_done=progress.get("bytes_done", 0), bytes_total=progress.get("bytes_total"),
        stalled=bool(entry.get("stalled", False)), error=entry.get("error"),
    )


def _holder(entry):
    """A Holder from a 409 body's "holder", or None when the body names none."""
    if not isinstance(entry, dict) or not isinstance(entry.get("node_uuid"), str):
        return None
    users = entry.get("users")
    return Holder(entry["node_uuid"], entry.get("host"),
                  tuple(str(user) for user in users) if isinstance(users, list) else ())


def api_base_url(control_url):
    """The /v1 base from a control service URL given with or without /v1."""
    url = control_url.rstrip("/")
    if not url.endswith("/v1"):
        url += "/v1"
    return url


_RETRIED_ERRORS = (neterror.ConnectError,)


class _QuietFactory(_HTTP11ClientFactory):
    # No "Starting factory" line per connection: a command's output stays its own line.
    noisy = False


@implementer(IFlockerAPI)
class FlockerClient:
    """IFlockerAPI over HTTP(S) with treq.

    Each request has a timeout; a failure to connect is retried (connecting again
    cannot repeat a request the service never received), anything else is reported.
    """

    def __init__(self, reactor, control_url, timeout=10.0, connect_retries=3,
                 tls_policy=None, http_client=None, token=None):
        self._reactor = reactor
        self._token = token
        self.base_url = api_base_url(control_url)
        self._timeout = timeout
        self._connect_retries = connect_retries
        if http_client is None:
            pool = HTTPConnectionPool(reactor, persistent=True)
            pool._factory = _QuietFactory
            pool.maxPersistentPerHost = 4
            if tls_policy is None:
                agent = Agent(reactor, pool=pool)
            else:
                agent = Agent(reactor, contextFactory=tls_policy, pool=pool)
            http_client = treq.client.HTTPClient(agent)
        self.http_client = http_client

    async def _exchange(self, method, url, data, headers):
        response = await self.http_client.request(method, url, data=data, headers=headers)
        return response, await response.content()

    async def _request(self, method, path, body=None, headers=None, expected=(200,)):
        url = self.base_url + path
        request_headers = {"Accept": ["application/json"]}
        if self._token:
            request_headers["Authorization"] = [f"Bearer {self._token}"]
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            request_headers["Content-Type"] = ["application/json"]
        for name, value in (headers or {}).items():
            if value is not None:
                request_headers[name] = [value]
        delay = 0.1
        for attempt in range(self._connect_retries + 1):
            # Our own timeout, not treq's: treq's cancels the request, which would look
            # like the caller's deadline cancelling us (a partition then read as a 500).
            exchange = Deferred.fromCoroutine(self._exchange(method, url, data, request_headers))
            exchange.addTimeout(self._timeout, self._reactor, onTimeoutCancel=_timed_out)
            try:
                response, content = await exchange
                break
            except DeferredTimeoutError:
                raise ControlServiceUnreachable(
                    self.base_url, f"no answer within {self._timeout:g}s") from None
            except _RETRIED_ERRORS as reason:
                if attempt == self._connect_retries:
                    raise ControlServiceUnreachable(self.base_url, _describe(reason)) from None
                log.debug("retrying {method} {url} after {reason}", method=method, url=url,
                          reason=_describe(reason))
                await deferLater(self._reactor, delay, lambda: None)
                delay *= 4
            except Exception as reason:
                if _cancelled(reason):
                    # The caller's deadline cancelled us: let it see a cancellation.
                    raise CancelledError() from None
                raise ControlServiceUnreachable(self.base_url, _describe(reason)) from None
        try:
            decoded = json.loads(content) if content else None
        except ValueError:
            decoded = None
        if response.code not in expected:
            description = decoded.get("description") if isinstance(decoded, dict) else None
            if not isinstance(description, str):
                description = content[:200].decode("utf-8", "replace") or response.phrase.decode()
            holder = _holder(decoded.get("holder")) if isinstance(decoded, dict) else None
            if response.code == 409 and holder is not None:
                raise HeldElsewhere(response.code, description, holder)
            claimant = decoded.get("claimed_by") if isinstance(decoded, dict) else None
            if response.code == 409 and isinstance(claimant, dict):
                raise ClaimedElsewhere(response.code, description, Node(
                    str(claimant.get("node_uuid")), claimant.get("host")))
            error_class = _ERRORS_BY_STATUS.get(response.code, FlockerAPIError)
            raise error_class(response.code, description)
        if decoded is None:
            raise FlockerAPIError(response.code, f"{method} {path} answered no JSON")
        return response, decoded

    def _deferred(self, coroutine):
        return Deferred.fromCoroutine(coroutine)

    def version(self):
        async def call():
            return (await self._request("GET", "/version"))[1]["flocker"]
        return self._deferred(call())

    def list_datasets_configuration(self):
        return self._deferred(self._configuration("/configuration/datasets"))

    def datasets_named(self, name):
        return self._deferred(
            self._configuration("/configuration/datasets?name=" + quote(name, safe="")))

    async def _configuration(self, path):
        response, body = await self._request("GET", path)
        tag = response.headers.getRawHeaders("X-Configuration-Tag", [None])[0]
        return Configuration(tag, [_dataset_config(entry) for entry in body])

    def claim(self, name, node_uuid, expires=30.0, maximum_size=None, create=True,
              generation=None):
        body = {"name": name, "node_uuid": node_uuid, "expires": expires, "create": create}
        if maximum_size is not None:
            body["maximum_size"] = maximum_size
        if generation is not None:
            body["generation"] = generation

        async def call():
            _, answer = await self._request(
                "POST", "/configuration/claims", body, expected=(200, 202))
            return _claim(answer)
        return self._deferred(call())

    def create_dataset(self, primary, metadata=None, maximum_size=None, dataset_id=None,
                       if_configuration_matches=None):
        body = {"primary": primary}
        if metadata is not None:
            body["metadata"] = metadata
        if maximum_size is not None:
            body["maximum_size"] = maximum_size
        if dataset_id is not None:
            body["dataset_id"] = dataset_id

        async def call():
            _, created = await self._request(
                "POST", "/configuration/datasets", body,
                {"X-If-Configuration-Matches": if_configuration_matches}, expected=(201,),
            )
            return _dataset_config(created)
        return self._deferred(call())

    def move_dataset(self, dataset_id, primary, if_configuration_matches=None):
        async def call():
            _, moved = await self._request(
                "POST", f"/configuration/datasets/{dataset_id}", {"primary": primary},
                {"X-If-Configuration-Matches": if_configuration_matches},
            )
            return _dataset_config(moved)
        return self._deferred(call())

    def delete_dataset(self, dataset_id, if_configuration_matches=None):
        async def call():
            _, deleted = await self._request(
                "DELETE", f"/configuration/datasets/{dataset_id}", None,
                {"X-If-Configuration-Matches": if_configuration_matches},
            )
            return _dataset_config(deleted)
        return self._deferred(call())

    def list_datasets_state(self, dataset_id=None):
        path = "/state/datasets"
        if dataset_id is not None:
            path += "?dataset_id=" + quote(dataset_id, safe="")

        async def call():
            _, body = await self._request("GET", path)
            return [_dataset_state(entry) for entry in body]
        return self._deferred(call())

    def list_nodes(self):
        async def call():
            _, body = await self._request("GET", "/state/nodes")
            return [Node(entry["uuid"], entry["host"]) for entry in body]
        return self._deferred(call())

    def list_leases(self):
        async def call():
            _, body = await self._request("GET", "/configuration/leases")
            return [_lease(entry) for entry in body]
        return self._deferred(call())

    def acquire_lease(self, dataset_id, node_uuid, expires, new_user=False):
        async def call():
            _, body = await self._request(
                "POST", "/configuration/leases" + ("?new_user=true" if new_user else ""),
                {"dataset_id": dataset_id, "node_uuid": node_uuid, "expires": expires},
                expected=(200, 201),
            )
            return _lease(body)
        return self._deferred(call())

    def release_lease(self, dataset_id, node_uuid=None):
        async def call():
            holder = "" if node_uuid is None else f"?node_uuid={quote(node_uuid)}"
            _, body = await self._request("DELETE",
                                          f"/configuration/leases/{dataset_id}{holder}")
            return _lease(body)
        return self._deferred(call())


    # Beyond IFlockerAPI and Flocker: the trash of our control service, used by the
    # restore command only (no frontend depends on it, so the fake has none).

    def list_trash(self, name=None):
        """Fires with [Trashed], most recently deleted first (of name only, if given)."""
        path = "/state/trash" + ("" if name is None else "?name=" + quote(name, safe=""))

        async def call():
            _, body = await self._request("GET", path)
            return [Trashed(entry["dataset_id"], entry["node_uuid"], entry.get("host"),
                            entry.get("name"), entry.get("deleted"),
                            float(entry["deleted_at"]), float(entry["expires_at"]),
                            int(entry.get("bytes") or 0)) for entry in body]
        return self._deferred(call())

    def restore_dataset(self, dataset_id):
        """Un-deletes a deleted dataset a node keeps in its trash; fires with its
        DatasetConfig (primary: that node). AlreadyExists when it is not deleted or
        its name is used by a live dataset, NotFound when no node keeps it."""
        async def call():
            _, restored = await self._request(
                "POST", f"/configuration/datasets/{dataset_id}/restore")
            return _dataset_config(restored)
        return self._deferred(call())


def _timed_out(result, timeout):
    """Whatever a request cancelled by our timeout failed with, the cause is the timeout."""
    raise DeferredTimeoutError(timeout, "no answer")


def _cancelled(reason):
    """Whether a failed request failed because it was cancelled (HTTP client failures
    wrap their causes in .reasons)."""
    if isinstance(reason, CancelledError):
        return True
    return any(wrapped.check(CancelledError) for wrapped in getattr(reason, "reasons", ()))


def _describe(reason):
    text = str(reason).strip()
    return f"{type(reason).__name__}: {text}" if text else type(reason).__name__


def tls_policy(ca_path, cert_path=None, key_path=None):
    """An IPolicyForHTTPS trusting only the cluster CA, presenting a client certificate
    when one is given (Flocker 1.x's api.crt/api.key or plugin.crt/plugin.key)."""
    from twisted.internet import ssl
    from twisted.web.client import BrowserLikePolicyForHTTPS
    from twisted.web.iweb import IPolicyForHTTPS

    with open(ca_path, "rb") as ca_file:
        trust_root = ssl.Certificate.loadPEM(ca_file.read())
    client_certificate = None
    if cert_path:
        with open(cert_path, "rb") as cert_file:
            pem = cert_file.read()
        if key_path:
            with open(key_path, "rb") as key_file:
                pem += b"\n" + key_file.read()
        client_certificate = ssl.PrivateCertificate.loadPEM(pem)

    @implementer(IPolicyForHTTPS)
    class ClusterPolicy(BrowserLikePolicyForHTTPS):
        def creatorForNetloc(self, hostname, port):
            return ssl.optionsForClientTLS(
                hostname.decode("ascii"), trustRoot=trust_root,
                clientCertificate=client_certificate,
            )
    return ClusterPolicy()


def _check_dataset_id(dataset_id):
    if not isinstance(dataset_id, str) or not _UUID4.match(dataset_id):
        raise BadRequest(400, SCHEMA_MISMATCH)
    return dataset_id.lower()


def _check_maximum_size(maximum_size):
    if maximum_size is None:
        return
    if (isinstance(maximum_size, bool) or not isinstance(maximum_size, int)
            or maximum_size < MINIMUM_SIZE or maximum_size % 1024):
        raise BadRequest(400, SCHEMA_MISMATCH)


def _check_claim(name, node_uuid, expires, create):
    """The control service's claim schema, for the fake."""
    if not isinstance(name, str) or not _VOLUME_NAME.match(name):
        raise BadRequest(400, SCHEMA_MISMATCH)
    _check_dataset_id(node_uuid)
    if (isinstance(expires, bool) or not isinstance(expires, (int, float))
            or not 0 < expires <= LONGEST_CLAIM):
        raise BadRequest(400, SCHEMA_MISMATCH)
    if not isinstance(create, bool):
        raise BadRequest(400, SCHEMA_MISMATCH)


@implementer(IFlockerAPI)
class MemoryFlockerAPI:
    """An in-memory control service with agents that converge on a clock.

    A change schedules convergence convergence_delay seconds later on clock; with
    convergence_delay None state only changes when converge() is called. With a latency,
    calls are carried out in order on the clock, so concurrent callers interleave. State follows
    Flocker's agents: a dataset is placed on its configured primary unless it is leased
    to the node that holds it, and its path is stable across moves.
    """

    def __init__(self, clock, nodes=(), convergence_delay=0.0, latency=0.0):
        self._clock = clock
        self.nodes = list(nodes)
        self.convergence_delay = convergence_delay
        self.latency = latency  # > 0: each call is carried out and answered that much later
        self._pending_convergence = None
        self._datasets = {}
        self._leases = {}  # dataset_id -> (node_uuid, expiry time or None, claimed until)
        self._state = {}  # dataset_id -> node_uuid holding it
        self._generations = {}  # dataset_id -> generation (+1 on each change of primary)
        self._manifested = set()  # datasets state has ever shown
        self._users = {}  # dataset_id -> what its holder reports using it
        self._transfers = {}  # dataset_id -> Claim fields of the transfer to its primary
        self.calls = []
        self.unreachable = None  # a reason string makes every call fail as unreachable

    def add_node(self, host):
        node = Node(str(uuid.uuid4()), host)
        self.nodes.append(node)
        return node

    def set_users(self, dataset_id, users):
        """What the lease holder's report says uses the dataset (its containers)."""
        self._users[dataset_id] = list(users)

    def set_transfer(self, dataset_id, bytes_done, bytes_total=None, stalled=False,
                     error=None):
        """Progress of the move towards the dataset's primary, as its sender reports it;
        stalled and error: the sender gave up. State does not follow while it is set."""
        self._transfers[dataset_id] = {"bytes_done": bytes_done, "bytes_total": bytes_total,
                                       "stalled": stalled, "error": error}

    def _call(self, name, *args):
        self.calls.append((name, *args))
        if self.unreachable:
            return ControlServiceUnreachable("memory://control", self.unreachable)
        return None

    def _changed(self):
        if self.convergence_delay is not None and self._pending_convergence is None:
            self._pending_convergence = self._clock.callLater(
                self.convergence_delay, self.converge)

    def _expire_leases(self):
        now = self._clock.seconds()
        for dataset_id, (_, expiry, _) in list(self._leases.items()):
            if expiry is not None and expiry <= now:
                del self._leases[dataset_id]
                self._changed()

    def _tag(self):
        document = json.dumps(
            [[vars(d) for d in self._datasets.values()],
             sorted((k, v[0], v[1]) for k, v in self._leases.items())],
            sort_keys=True, default=str,
        )
        return hashlib.md5(document.encode()).hexdigest()

    def _check_tag(self, if_configuration_matches):
        current = self._tag()
        if if_configuration_matches is not None and if_configuration_matches != current:
            raise ConfigurationChanged(
                412, f"Tag doesn't match. Required: {if_configuration_matches}, "
                     f"current: {current}",
            )

    def converge(self):
        """Make state match configuration now, as agents would."""
        if self._pending_convergence is not None:
            if self._pending_convergence.active():
                self._pending_convergence.cancel()
            self._pending_convergence = None
        self._expire_leases()
        known_nodes = {node.uuid for node in self.nodes}
        for dataset in self._datasets.values():
            holder = self._state.get(dataset.dataset_id)
            leased_to = self._leases.get(dataset.dataset_id, (None,))[0]
            if holder is not None and leased_to == holder:
                continue
            if dataset.deleted:
                self._state.pop(dataset.dataset_id, None)
            elif dataset.primary in known_nodes and dataset.dataset_id not in self._transfers:
                self._state[dataset.dataset_id] = dataset.primary
                self._manifested.add(dataset.dataset_id)

    def _outcome(self, name, args, action):
        def carry_out():
            unreachable = self._call(name, *args)
            if unreachable is not None:
                return fail(unreachable)
            self._expire_leases()
            try:
                return succeed(action())
            except Exception as reason:
                return fail(reason)
        if not self.latency:
            return carry_out()
        return deferLater(self._clock, self.latency, carry_out)

    def version(self):
        return self._outcome("version", (), lambda: "1.15.0+powerstrip-flocker-memory")

    def list_datasets_configuration(self):
        return self._outcome(
            "list_datasets_configuration", (),
            lambda: Configuration(self._tag(), list(self._datasets.values())),
        )

    def create_dataset(self, primary, metadata=None, maximum_size=None, dataset_id=None,
                       if_configuration_matches=None):
        def create():
            self._check_tag(if_configuration_matches)
            new_id = str(uuid.uuid4()) if dataset_id is None else _check_dataset_id(dataset_id)
            _check_maximum_size(maximum_size)
            if new_id in self._datasets:
                raise AlreadyExists(409, "The provided dataset_id is already in use.")
            return self._add(primary, metadata, maximum_size, new_id)
        return self._outcome("create_dataset", (primary, metadata), create)

    def _add(self, primary, metadata, maximum_size, dataset_id):
        dataset = DatasetConfig(dataset_id, primary, dict(metadata or {}), False, maximum_size)
        self._datasets[dataset_id] = dataset
        self._generations[dataset_id] = 1
        self._changed()
        return dataset

    def datasets_named(self, name):
        return self._outcome("datasets_named", (name,), lambda: Configuration(
            self._tag(), [d for d in self._datasets.values() if d.name == name]))

    def claim(self, name, node_uuid, expires=30.0, maximum_size=None, create=True,
              generation=None):
        def decide():
            _check_claim(name, node_uuid, expires, create)
            _check_maximum_size(maximum_size)
            self._expire_leases()
            candidates = [d for d in self._datasets.values() if d.name == name and not d.deleted]
            if not candidates:
                if not create:
                    raise NotFound(404, f"No dataset is named {name!r}.")
                created = self._add(node_uuid, {"name": name}, maximum_size,
                                    str(uuid.uuid4()))
                # From its first answer on, a claim holds the lease (the control service's
                # rule): another node asking meanwhile waits.
                self._grant(created.dataset_id, node_uuid, expires, claim=True)
                return Claim("creating", created.dataset_id, 1)
            dataset = min(candidates, key=lambda d: d.dataset_id)
            current = self._generations[dataset.dataset_id]
            if generation is not None and current != generation and (
                    dataset.primary != node_uuid):
                claimant = self._node(dataset.primary)
                raise ClaimedElsewhere(409, (
                    f"volume {name!r} was claimed by {claimant.host or 'node ' + claimant.uuid}"
                    f" (node {claimant.uuid}) while this node waited for it; run the "
                    f"container on one node at a time"), claimant)
            lease = self._leases.get(dataset.dataset_id)
            if lease is not None and lease[0] != node_uuid:
                raise self._held_elsewhere(f"volume {name!r}", dataset.dataset_id, name)
            if dataset.primary != node_uuid:
                self._set_primary(dataset, node_uuid)
                self._grant(dataset.dataset_id, node_uuid, expires, claim=True)
                return self._pending(dataset.dataset_id, dataset.primary)
            self._grant(dataset.dataset_id, node_uuid, expires, claim=True)
            holder = self._state.get(dataset.dataset_id)
            if holder != node_uuid:
                return self._pending(dataset.dataset_id, holder)
            return Claim("ready", dataset.dataset_id, self._generations[dataset.dataset_id],
                         path=f"/flocker/{dataset.dataset_id}",
                         lease=self._lease_view(dataset.dataset_id))
        return self._outcome("claim", (name, node_uuid), decide)

    def _pending(self, dataset_id, source):
        generation = self._generations[dataset_id]
        if source is None and dataset_id not in self._manifested:
            return Claim("creating", dataset_id, generation)
        transfer = self._transfers.get(dataset_id, {"bytes_done": 0, "bytes_total": None})
        return Claim("moving", dataset_id, generation,
                     source=self._node(source) if source else None, **transfer)

    def _node(self, node_uuid):
        return next((n for n in self.nodes if n.uuid == node_uuid), Node(node_uuid, None))

    def _set_primary(self, dataset, primary):
        self._datasets[dataset.dataset_id] = replace(dataset, primary=primary)
        self._generations[dataset.dataset_id] += 1
        self._changed()
        return self._datasets[dataset.dataset_id]

    def _held_elsewhere(self, what, dataset_id, name=None):
        node_uuid = self._leases[dataset_id][0]
        holder = Holder(node_uuid, self._node(node_uuid).host,
                        tuple(self._users.get(dataset_id, ())))
        where = holder.host or "a node that is not reporting"
        if holder.users:
            using = ", ".join(f"container {user}" for user in holder.users)
            description = f"{what} is in use on {where} (node {node_uuid}, {using}); " \
                          f"stop it there first"
        else:
            description = (
                f"{what} is in use on {where} (node {node_uuid} holds the lease on dataset "
                f"{dataset_id}); stop its containers there first, or run 'powerstrip-flocker "
                f"release {name or dataset_id}' if that node is gone")
        return HeldElsewhere(409, description, holder)

    def _existing(self, dataset_id):
        dataset = self._datasets.get(str(dataset_id).lower())
        if dataset is None:
            raise NotFound(404, "Dataset not found.")
        return dataset

    def move_dataset(self, dataset_id, primary, if_configuration_matches=None):
        def move():
            self._check_tag(if_configuration_matches)
            dataset = self._existing(dataset_id)
            if dataset.deleted:
                raise DatasetDeleted(405, "The dataset has been deleted.")
            if primary == dataset.primary:
                return dataset
            lease = self._leases.get(dataset.dataset_id)
            if lease is not None and lease[0] != primary:
                raise self._held_elsewhere(f"dataset {dataset.dataset_id}", dataset.dataset_id)
            return self._set_primary(dataset, primary)
        return self._outcome("move_dataset", (dataset_id, primary), move)

    def delete_dataset(self, dataset_id, if_configuration_matches=None):
        def delete():
            self._check_tag(if_configuration_matches)
            dataset = self._existing(dataset_id)
            if dataset.deleted:
                return dataset
            if dataset.dataset_id in self._leases:
                raise self._held_elsewhere(f"dataset {dataset.dataset_id}", dataset.dataset_id)
            deleted = self._datasets[dataset.dataset_id] = replace(dataset, deleted=True)
            self._changed()
            return deleted
        return self._outcome("delete_dataset", (dataset_id,), delete)

    def list_datasets_state(self, dataset_id=None):
        def state():
            return [
                DatasetState(key, node_uuid, f"/flocker/{key}",
                             self._datasets[key].maximum_size)
                for key, node_uuid in self._state.items()
                if dataset_id is None or key == dataset_id.lower()
            ]
        arguments = () if dataset_id is None else (dataset_id,)
        return self._outcome("list_datasets_state", arguments, state)

    def list_nodes(self):
        return self._outcome("list_nodes", (), lambda: list(self.nodes))

    def _lease_view(self, dataset_id):
        node_uuid, expiry, _ = self._leases[dataset_id]
        remaining = None if expiry is None else expiry - self._clock.seconds()
        return Lease(dataset_id, node_uuid, remaining)

    def list_leases(self):
        return self._outcome(
            "list_leases", (), lambda: [self._lease_view(d) for d in self._leases]
        )

    def _grant(self, dataset_id, node_uuid, expires, claim=False, new_user=False):
        held = self._leases.get(dataset_id)
        existing = held[1:] if held is not None and held[0] == node_uuid else None
        self._leases[dataset_id] = (node_uuid, *granted(
            self._clock.seconds(), expires, existing, claim=claim, new_user=new_user))
        self._changed()

    def acquire_lease(self, dataset_id, node_uuid, expires, new_user=False):
        def acquire():
            key = _check_dataset_id(dataset_id)
            holder = self._leases.get(key)
            if holder is not None and holder[0] != node_uuid:
                raise self._held_elsewhere(f"dataset {key}", key)
            dataset = self._datasets.get(key)
            if dataset is not None and dataset.primary != node_uuid:
                primary = self._node(dataset.primary)
                named = f"{primary.uuid} ({primary.host})" if primary.host else primary.uuid
                raise AlreadyExists(
                    409, f"dataset {key}'s primary is node {named}, not {node_uuid}")
            self._grant(key, node_uuid, expires, new_user=new_user)
            return self._lease_view(key)
        return self._outcome("acquire_lease", (dataset_id, node_uuid, expires), acquire)

    def release_lease(self, dataset_id, node_uuid=None):
        def release():
            key = str(dataset_id).lower()
            self._expire_leases()
            if key not in self._leases:
                raise NotFound(404, "Lease not found.")
            holder, _, claimed_until = self._leases[key]
            if node_uuid is not None and holder != node_uuid:
                raise self._held_elsewhere(f"dataset {key}", key)
            kept = None if node_uuid is None else after_use_ended(self._clock.seconds(),
                                                                  claimed_until)
            if kept is not None:
                self._leases[key] = (holder, *kept)
                self._changed()
                return self._lease_view(key)
            released = self._lease_view(key)
            del self._leases[key]
            self._changed()
            return released
        return self._outcome("release_lease", (dataset_id,), release)
