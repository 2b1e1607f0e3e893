"""The Flocker v1 control-service API: one interface, a treq client, an in-memory fake.

The fake is trusted only because the same contract tests (tests/flocker_contract.py)
pass against it and against our real control service.
"""

import hashlib
import json
import re
import uuid
from dataclasses import dataclass, field, replace

import treq
from twisted.internet import error as neterror
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool
from zope.interface import Interface, implementer

log = Logger()

_UUID4 = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z", re.IGNORECASE
)
MINIMUM_SIZE = 64 * 1024 * 1024


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
    """409: a dataset with that id exists, or another node holds the lease."""


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

    def list_datasets_state():
        """Fires with the list of DatasetState the nodes report."""

    def list_nodes():
        """Fires with the list of Node that have reported state."""

    def list_leases():
        """Fires with the list of Lease."""

    def acquire_lease(dataset_id, node_uuid, expires):
        """Acquires or renews a lease; fires with the Lease."""

    def release_lease(dataset_id):
        """Releases the lease; fires with the released Lease."""


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


def api_base_url(control_url):
    """The /v1 base from a control service URL given with or without /v1."""
    url = control_url.rstrip("/")
    if not url.endswith("/v1"):
        url += "/v1"
    return url


_RETRIED_ERRORS = (neterror.ConnectError,)


@implementer(IFlockerAPI)
class FlockerClient:
    """IFlockerAPI over HTTP(S) with treq.

    Each request has a timeout; a failure to connect is retried (connecting again
    cannot repeat a request the service never received), anything else is reported.
    """

    def __init__(self, reactor, control_url, timeout=10.0, connect_retries=3,
                 tls_policy=None, http_client=None):
        self._reactor = reactor
        self.base_url = api_base_url(control_url)
        self._timeout = timeout
        self._connect_retries = connect_retries
        if http_client is None:
            pool = HTTPConnectionPool(reactor, persistent=True)
            pool.maxPersistentPerHost = 4
            if tls_policy is None:
                agent = Agent(reactor, pool=pool)
            else:
                agent = Agent(reactor, contextFactory=tls_policy, pool=pool)
            http_client = treq.client.HTTPClient(agent)
        self.http_client = http_client

    async def _request(self, method, path, body=None, headers=None, expected=(200,)):
        url = self.base_url + path
        request_headers = {"Accept": ["application/json"]}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            request_headers["Content-Type"] = ["application/json"]
        for name, value in (headers or {}).items():
            if value is not None:
                request_headers[name] = [value]
        delay = 0.1
        for attempt in range(self._connect_retries + 1):
            try:
                response = await self.http_client.request(
                    method, url, data=data, headers=request_headers, timeout=self._timeout
                )
                content = await response.content()
                break
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
        async def call():
            response, body = await self._request("GET", "/configuration/datasets")
            tag = response.headers.getRawHeaders("X-Configuration-Tag", [None])[0]
            return Configuration(tag, [_dataset_config(entry) for entry in body])
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

    def list_datasets_state(self):
        async def call():
            _, body = await self._request("GET", "/state/datasets")
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

    def acquire_lease(self, dataset_id, node_uuid, expires):
        async def call():
            _, body = await self._request(
                "POST", "/configuration/leases",
                {"dataset_id": dataset_id, "node_uuid": node_uuid, "expires": expires},
                expected=(200, 201),
            )
            return _lease(body)
        return self._deferred(call())

    def release_lease(self, dataset_id):
        async def call():
            _, body = await self._request("DELETE", f"/configuration/leases/{dataset_id}")
            return _lease(body)
        return self._deferred(call())


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
        raise BadRequest(400, "The provided JSON doesn't match the required schema.")
    return dataset_id.lower()


def _check_maximum_size(maximum_size):
    if maximum_size is None:
        return
    if (isinstance(maximum_size, bool) or not isinstance(maximum_size, int)
            or maximum_size < MINIMUM_SIZE or maximum_size % 1024):
        raise BadRequest(400, "The provided JSON doesn't match the required schema.")


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
        self._leases = {}  # dataset_id -> (node_uuid, expiry time or None)
        self._state = {}  # dataset_id -> node_uuid holding it
        self.calls = []
        self.unreachable = None  # a reason string makes every call fail as unreachable

    def add_node(self, host):
        node = Node(str(uuid.uuid4()), host)
        self.nodes.append(node)
        return node

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
        for dataset_id, (_, expiry) in list(self._leases.items()):
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
            elif dataset.primary in known_nodes:
                self._state[dataset.dataset_id] = dataset.primary

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
            dataset = DatasetConfig(new_id, primary, dict(metadata or {}), False, maximum_size)
            self._datasets[new_id] = dataset
            self._changed()
            return dataset
        return self._outcome("create_dataset", (primary, metadata), create)

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
            moved = self._datasets[dataset.dataset_id] = replace(dataset, primary=primary)
            self._changed()
            return moved
        return self._outcome("move_dataset", (dataset_id, primary), move)

    def delete_dataset(self, dataset_id, if_configuration_matches=None):
        def delete():
            self._check_tag(if_configuration_matches)
            dataset = self._existing(dataset_id)
            deleted = self._datasets[dataset.dataset_id] = replace(dataset, deleted=True)
            self._changed()
            return deleted
        return self._outcome("delete_dataset", (dataset_id,), delete)

    def list_datasets_state(self):
        def state():
            return [
                DatasetState(dataset_id, node_uuid, f"/flocker/{dataset_id}",
                             self._datasets[dataset_id].maximum_size)
                for dataset_id, node_uuid in self._state.items()
            ]
        return self._outcome("list_datasets_state", (), state)

    def list_nodes(self):
        return self._outcome("list_nodes", (), lambda: list(self.nodes))

    def _lease_view(self, dataset_id):
        node_uuid, expiry = self._leases[dataset_id]
        remaining = None if expiry is None else expiry - self._clock.seconds()
        return Lease(dataset_id, node_uuid, remaining)

    def list_leases(self):
        return self._outcome(
            "list_leases", (), lambda: [self._lease_view(d) for d in self._leases]
        )

    def acquire_lease(self, dataset_id, node_uuid, expires):
        def acquire():
            key = _check_dataset_id(dataset_id)
            holder = self._leases.get(key)
            if holder is not None and holder[0] != node_uuid:
                raise AlreadyExists(409, "Lease already held.")
            expiry = None if expires is None else self._clock.seconds() + expires
            self._leases[key] = (node_uuid, expiry)
            self._changed()
            return self._lease_view(key)
        return self._outcome("acquire_lease", (dataset_id, node_uuid, expires), acquire)

    def release_lease(self, dataset_id):
        def release():
            key = str(dataset_id).lower()
            if key not in self._leases:
                raise NotFound(404, "Lease not found.")
            released = self._lease_view(key)
            del self._leases[key]
            self._changed()
            return released
        return self._outcome("release_lease", (dataset_id,), release)
