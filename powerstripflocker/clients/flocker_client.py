"""IFlockerAPI over HTTP(S) with treq: the client of a Flocker v1 control service."""

import json
import uuid
from urllib.parse import quote

from twisted.internet.defer import CancelledError, Deferred, TimeoutError as DeferredTimeoutError
from twisted.python.failure import Failure
from zope.interface import implementer

from powerstripflocker.clients.flocker import (
    AlreadyExists, BadRequest, Claim, ClaimedElsewhere, Configuration, ConfigurationChanged,
    ControlServiceUnreachable, DatasetConfig, DatasetDeleted, DatasetState, FlockerAPIError,
    HeldElsewhere, Holder, IFlockerAPI, Lease, Node, NotFound, Trashed,
)
from powerstripflocker.clients import http

_ERRORS_BY_STATUS = {
    400: BadRequest, 404: NotFound, 405: DatasetDeleted, 409: AlreadyExists,
    412: ConfigurationChanged,
}


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


@implementer(IFlockerAPI)
class FlockerClient:
    """IFlockerAPI over HTTP(S) with treq.

    control_url: one control service URL or a comma-separated list of its replicas
    (http.Replicas fails over between them). Each request has a timeout; a failure to
    connect is retried (connecting again cannot repeat a request the service never
    received); every write is safe to send twice (see create_dataset), anything else
    is reported.
    """

    def __init__(self, reactor, control_url, timeout=10.0, connect_retries=3,
                 tls_policy=None, http_client=None, token=None):
        self._reactor = reactor
        self._token = token
        self.replicas = http.Replicas(control_url, reactor, connect_retries)
        self._timeout = timeout
        if http_client is None:
            http_client = http.http_client(reactor, tls_policy)
        self.http_client = http_client

    @property
    def base_url(self):
        """The v1 API of the replica asked first."""
        return self.replicas.root + "/v1"

    def _where(self):
        """Where a request that failed everywhere was sent (the last one asked last)."""
        roots = self.replicas.in_turn()
        if len(roots) == 1:
            return self.base_url
        return "any of its replicas " + ", ".join(root + "/v1" for root in roots)

    async def _exchange(self, method, url, data, headers):
        response = await self.http_client.request(method, url, data=data, headers=headers)
        return response, await response.content()

    def _attempt(self, method, path, data, headers, sends):
        def attempt(root):
            # Our own timeout, not treq's: treq's cancels the request, which would look
            # like the caller's deadline cancelling us (a partition then read as a 500).
            exchange = Deferred.fromCoroutine(
                self._exchange(method, root + "/v1" + path, data, headers))
            return http.within(exchange, self._timeout, self._reactor).addBoth(sent, root)

        def sent(outcome, root):
            # A connection never made carried nothing: it is not a send.
            if not (isinstance(outcome, Failure) and outcome.check(*http.NOT_CONNECTED)):
                sends.append(root)
            return outcome
        return attempt

    async def _request(self, method, path, body=None, headers=None, expected=(200,),
                       sends=None):
        """(response, decoded body); sends, a list, gets one entry per time the request
        was sent (more than one: an earlier one may have been carried out)."""
        sends = [] if sends is None else sends
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
        try:
            response, content = await self.replicas.call(
                self._attempt(method, path, data, request_headers, sends),
                unavailable=lambda answer: answer[0].code == http.UNAVAILABLE_CODE)
        except DeferredTimeoutError:
            raise ControlServiceUnreachable(
                self._where(), f"no answer within {self._timeout:g}s") from None
        except Exception as reason:
            if http.cancelled(reason):
                # The caller's deadline cancelled us: let it see a cancellation.
                raise CancelledError() from None
            raise ControlServiceUnreachable(self._where(), http.describe(reason)) from None
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
              generation=None, replicas=None):
        # Safe to send twice: decided by name in one transaction, a repeat finds what the
        # first did (the dataset created or moving, the lease renewed) and says so.
        body = {"name": name, "node_uuid": node_uuid, "expires": expires, "create": create}
        if maximum_size is not None:
            body["maximum_size"] = maximum_size
        if generation is not None:
            body["generation"] = generation
        if replicas is not None:
            body["replicas"] = replicas

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
        # An id of our own makes the create safe to send twice (a replica that fails
        # over, a connection closed before the answer): the service answers a repeat
        # with 409 for that id, which only our own earlier attempt can have taken.
        chosen_here = dataset_id is None
        body["dataset_id"] = str(uuid.uuid4()) if chosen_here else dataset_id

        async def call():
            try:
                _, created = await self._request(
                    "POST", "/configuration/datasets", body,
                    {"X-If-Configuration-Matches": if_configuration_matches},
                    expected=(201,),
                )
            except AlreadyExists:
                if not chosen_here:
                    raise
                return await self._created_before(body["dataset_id"])
            return _dataset_config(created)
        return self._deferred(call())

    async def _created_before(self, dataset_id):
        """The dataset an earlier attempt of this create made (its answer was lost)."""
        dataset = await self._listed(dataset_id)
        if dataset is None:
            raise AlreadyExists(409, f"dataset {dataset_id} is said to exist but is not listed")
        return dataset

    async def _listed(self, dataset_id):
        """The DatasetConfig of dataset_id, or None."""
        configuration = await self._configuration("/configuration/datasets")
        for dataset in configuration.datasets:
            if dataset.dataset_id == dataset_id:
                return dataset
        return None

    def move_dataset(self, dataset_id, primary, if_configuration_matches=None):
        # Safe to send twice: moving to the primary it has is a no-op (200), and a tag
        # the first send moved answers the second 412, which callers read again.
        async def call():
            _, moved = await self._request(
                "POST", f"/configuration/datasets/{dataset_id}", {"primary": primary},
                {"X-If-Configuration-Matches": if_configuration_matches},
            )
            return _dataset_config(moved)
        return self._deferred(call())

    def delete_dataset(self, dataset_id, if_configuration_matches=None):
        # Safe to send twice: deleting a deleted dataset answers it again (200); with
        # a tag, the one the first send moved answers 412.
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

    def node_by_era(self, era):
        async def call():
            _, body = await self._request("GET", "/state/nodes/by_era/" + quote(era, safe=""))
            return body["uuid"]
        return self._deferred(call())

    def list_leases(self):
        async def call():
            _, body = await self._request("GET", "/configuration/leases")
            return [_lease(entry) for entry in body]
        return self._deferred(call())

    def acquire_lease(self, dataset_id, node_uuid, expires, new_user=False):
        # Safe to send twice: a second grant to the same node renews the same lease.
        async def call():
            _, body = await self._request(
                "POST", "/configuration/leases" + ("?new_user=true" if new_user else ""),
                {"dataset_id": dataset_id, "node_uuid": node_uuid, "expires": expires},
                expected=(200, 201),
            )
            return _lease(body)
        return self._deferred(call())

    def release_lease(self, dataset_id, node_uuid=None):
        # Sent twice, the second answers 404 (NotFound), which callers read as released.
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
            sends = []
            try:
                _, restored = await self._request(
                    "POST", f"/configuration/datasets/{dataset_id}/restore", sends=sends)
            except AlreadyExists:
                # Sent twice, the second finds it restored by the first: done.
                restored_before = len(sends) > 1 and await self._listed(dataset_id)
                if not restored_before or restored_before.deleted:
                    raise
                return restored_before
            return _dataset_config(restored)
        return self._deferred(call())
