"""EtcdClient: IEtcd over the members' v3 JSON gateways with treq, and its failover.

A call goes to the member that answered last; on a connection error, a timeout or an
"unavailable" answer (no leader, stopping, overloaded) it goes on to the next member, for
a bounded number of rounds within the call's deadline. A write whose outcome is unknown
(the member took the request and then died or timed out) is retried only when repeating
it cannot do harm (put, delete, lease calls); a transaction is not: it raises
OutcomeUnknown, so that its caller reads and decides.
"""

import json
from dataclasses import dataclass

from twisted.internet import defer
from twisted.internet import error as neterror
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.client import (
    RequestTransmissionFailed, ResponseFailed, ResponseNeverReceived,
)
from zope.interface import implementer

from powerstripflocker.clients.etcd import (
    GRPC_DEADLINE_EXCEEDED, GRPC_NOT_FOUND, GRPC_RESOURCE_EXHAUSTED, GRPC_UNAVAILABLE,
    Compacted, Delete, EtcdRequestError, EtcdUnavailable, IEtcd, Lease, LeaseNotFound,
    OutcomeUnknown, Put, Range, Status, as_bytes, check_key,
)
from powerstripflocker.clients.etcd_endpoints import parse_endpoints
from powerstripflocker.clients.etcd_gateway import GatewayCodec, describe_failure
from powerstripflocker.clients.etcd_watch import ClientWatch
from powerstripflocker.clients.http import connection_pool, http_client, tls_policy

log = Logger()

_TRY_ELSEWHERE_CODES = (GRPC_UNAVAILABLE, GRPC_RESOURCE_EXHAUSTED, GRPC_DEADLINE_EXCEEDED)
# "Unavailable" answers etcd gives before it proposes anything: the request was not
# applied, so any call may go to another member. Every other unavailable answer
# ("request timed out", "leader changed", "server stopped") may follow a proposal that
# commits all the same.
_NOT_APPLIED_MESSAGES = ("etcdserver: no leader", "etcdserver: not capable",
                         "etcdserver: too many requests")


@dataclass(frozen=True)
class TLSFiles:
    """PEM files for etcds://: the CA that signed the members' certificates, and a
    client certificate and key when the members ask for one (--client-cert-auth)."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    def __post_init__(self):
        if bool(self.cert) != bool(self.key):
            raise ValueError("give an etcd client certificate and its key together")


@dataclass(frozen=True)
class _Failed:
    """One attempt on one member failed; applied says whether it may have taken effect."""

    reason: str
    applied: bool


# A request that failed while it was being written (a TLS handshake refused) never
# reached etcd either.
_NEVER_SENT = (neterror.ConnectError, neterror.DNSLookupError, RequestTransmissionFailed)
_LOST_AFTER_SENDING = (ResponseFailed, ResponseNeverReceived, neterror.ConnectionLost,
                       neterror.ConnectionDone)


def _answer_error(code, decoded):
    """The exception for a non-200 gateway answer, or a _Failed to try elsewhere."""
    message = ""
    grpc_code = None
    if isinstance(decoded, dict):
        message = str(decoded.get("message") or decoded.get("error") or "")
        grpc_code = decoded.get("code")
    if grpc_code in _TRY_ELSEWHERE_CODES or code in (502, 503, 504):
        applied = not any(message.startswith(m) for m in _NOT_APPLIED_MESSAGES)
        return _Failed(f"HTTP {code}: {message or 'unavailable'}", applied)
    if grpc_code == GRPC_NOT_FOUND and "lease not found" in message:
        return LeaseNotFound(None)
    return EtcdRequestError(grpc_code if grpc_code is not None else code,
                            message or f"HTTP {code} from the etcd gateway")


@implementer(IEtcd)
class EtcdClient:
    """IEtcd over the members' v3 JSON gateways with treq.

    request_timeout bounds one attempt on one member; call_timeout the whole call,
    failover included; rounds how many times each member may be tried. A request that
    reaches a follower just as the leader dies is forwarded to the dead leader and lost
    (etcd itself gives up on it after 7 s), so request_timeout is what a leader's death
    costs a call: 3 s is well past a healthy cluster's answers (milliseconds) and its
    elections (1-2 s with the default 1 s election timeout)."""

    def __init__(self, reactor, endpoints, tls=None, request_timeout=3.0, call_timeout=15.0,
                 rounds=3, backoff=0.1, http_client=None, watch_http_client=None):
        if isinstance(endpoints, str):
            endpoints = parse_endpoints(endpoints)
        self.endpoints = endpoints
        self.urls = endpoints.urls
        self._reactor = reactor
        self._codec = GatewayCodec(endpoints.namespace)
        self._request_timeout = request_timeout
        self._call_timeout = call_timeout
        self._rounds = rounds
        self._backoff = backoff
        self._preferred = 0
        self._pools = []
        policy = None
        if endpoints.tls:
            policy = _tls_policy(tls or TLSFiles())
        elif tls is not None:
            raise ValueError(f"TLS files given for {endpoints}: use etcds:// for TLS")
        self._http = http_client or self._http_client(reactor, policy, persistent=True)
        # A watch holds its connection for as long as it lasts: never from the shared pool.
        self._watch_http = watch_http_client or self._http_client(reactor, policy,
                                                                  persistent=False)
        self._watches = set()

    def _http_client(self, reactor, policy, persistent):
        pool = connection_pool(reactor, persistent=persistent, max_per_host=8)
        self._pools.append(pool)
        return http_client(reactor, policy, pool)

    def close(self):
        """Stop every watch and close the idle connections; Deferred firing when done."""
        for watch in list(self._watches):
            watch.stop()
        return defer.gatherResults([pool.closeCachedConnections() for pool in self._pools])

    # one attempt, then failover

    async def _attempt(self, url, path, body):
        response = await self._http.request(
            "POST", url + path, data=json.dumps(body).encode("utf-8"),
            headers={"Content-Type": ["application/json"]})
        content = await response.content()
        try:
            decoded = json.loads(content) if content else {}
        except ValueError:
            decoded = {"message": content[:200].decode("utf-8", "replace")}
        return response.code, decoded

    async def _call(self, path, body, idempotent, what):
        deadline = self._reactor.seconds() + self._call_timeout
        last = "no attempt made"
        delay = self._backoff
        count = len(self.urls)
        for round_number in range(self._rounds):
            start = self._preferred
            for offset in range(count):
                index = (start + offset) % count
                url = self.urls[index]
                remaining = deadline - self._reactor.seconds()
                if remaining <= 0:
                    raise EtcdUnavailable(what, self.urls, f"{last}; deadline of "
                                          f"{self._call_timeout:g}s passed")
                timeout = min(self._request_timeout, remaining)
                try:
                    attempt = Deferred.fromCoroutine(self._attempt(url, path, body))
                    code, decoded = await attempt.addTimeout(timeout, self._reactor)
                except _NEVER_SENT as reason:
                    failed = _Failed(describe_failure(reason), applied=False)
                except defer.TimeoutError:
                    failed = _Failed(f"no answer within {timeout:g}s", applied=True)
                except _LOST_AFTER_SENDING as reason:
                    failed = _Failed(describe_failure(reason), applied=True)
                else:
                    if code == 200:
                        self._preferred = index
                        return decoded
                    error = _answer_error(code, decoded)
                    if not isinstance(error, _Failed):
                        raise error
                    failed = error
                last = f"{url}: {failed.reason}"
                if failed.applied and not idempotent:
                    raise OutcomeUnknown(url, failed.reason)
                log.debug("etcd {what} failed on {url} ({reason}); trying the next member",
                          what=what, url=url, reason=failed.reason)
                self._preferred = (index + 1) % count
            if round_number + 1 < self._rounds:
                pause = min(delay, max(0.0, deadline - self._reactor.seconds()))
                await deferLater(self._reactor, pause, lambda: None)
                delay *= 2
        raise EtcdUnavailable(what, self.urls, last)

    # IEtcd

    def range(self, key, prefix=False, limit=0, revision=0):
        async def call():
            body = self._codec.range(Range(key, prefix, limit, revision))
            try:
                answer = await self._call("/v3/kv/range", body, True, "range")
            except EtcdRequestError as error:
                if "required revision has been compacted" in error.message:
                    raise Compacted(revision) from None
                raise
            return self._codec.range_result(answer)
        return Deferred.fromCoroutine(call())

    def put(self, key, value, lease=0, prev_kv=False):
        async def call():
            body = self._codec.put(Put(key, value, lease, prev_kv))
            try:
                return self._codec.put_result(
                    await self._call("/v3/kv/put", body, True, "put"))
            except LeaseNotFound:
                raise LeaseNotFound(lease) from None
        return Deferred.fromCoroutine(call())

    def delete(self, key, prefix=False, prev_kv=False):
        async def call():
            body = self._codec.delete(Delete(key, prefix, prev_kv))
            return self._codec.delete_result(
                await self._call("/v3/kv/deleterange", body, True, "delete"))
        return Deferred.fromCoroutine(call())

    def txn(self, compare, success, failure=()):
        compare, success, failure = tuple(compare), tuple(success), tuple(failure)

        async def call():
            body = {"compare": [self._codec.compare(c) for c in compare],
                    "success": [self._codec.request_op(op) for op in success],
                    "failure": [self._codec.request_op(op) for op in failure]}
            writes = any(isinstance(op, (Put, Delete)) for op in (*success, *failure))
            return self._codec.txn_result(
                await self._call("/v3/kv/txn", body, not writes, "txn"))
        return Deferred.fromCoroutine(call())

    def grant(self, ttl, lease_id=0):
        async def call():
            body = {"TTL": str(int(ttl))}
            if lease_id:
                body["ID"] = str(lease_id)
            # A repeated grant after an unknown outcome leaves an orphan lease, which
            # expires by itself: harmless, so it is retried.
            answer = await self._call("/v3/lease/grant", body, True, "lease grant")
            if answer.get("error"):
                raise EtcdRequestError(None, str(answer["error"]))
            return Lease(int(answer["ID"]), int(answer["TTL"]))
        return Deferred.fromCoroutine(call())

    def keepalive(self, lease_id):
        async def call():
            answer = await self._call("/v3/lease/keepalive", {"ID": str(lease_id)}, True,
                                      "lease keepalive")
            ttl = int(answer.get("result", {}).get("TTL", 0))
            if ttl <= 0:
                raise LeaseNotFound(lease_id)
            return ttl
        return Deferred.fromCoroutine(call())

    def revoke(self, lease_id):
        async def call():
            try:
                await self._call("/v3/lease/revoke", {"ID": str(lease_id)}, True, "lease revoke")
            except LeaseNotFound:
                raise LeaseNotFound(lease_id) from None
        return Deferred.fromCoroutine(call())

    def compact(self, revision):
        async def call():
            await self._call("/v3/kv/compaction", {"revision": str(revision)}, True, "compact")
        return Deferred.fromCoroutine(call())

    def status(self):
        async def call():
            answer = await self._call("/v3/maintenance/status", {}, True, "status")
            header = answer.get("header", {})
            return Status(int(header.get("member_id", 0)), int(answer.get("leader", 0)),
                          int(header.get("revision", 0)), int(header.get("raft_term", 0)),
                          str(answer.get("version", "")))
        return Deferred.fromCoroutine(call())

    def watch(self, key, on_events, prefix=False, start_revision=None, prev_kv=False,
              reconnect_timeout=60.0):
        key = as_bytes(key, "key")
        if not prefix:
            check_key(key)
        watch = ClientWatch(self, key, on_events, prefix, start_revision, prev_kv,
                             reconnect_timeout)
        self._watches.add(watch)
        watch.ended.addBoth(self._forget_watch, watch)
        watch.start()
        return watch

    def _forget_watch(self, result, watch):
        self._watches.discard(watch)


def _tls_policy(files):
    if files.ca is None and files.cert:
        raise ValueError("an etcd client certificate needs the CA (--store-ca) too")
    return tls_policy(files.ca, files.cert, files.key)
