"""etcd v3 for the reactor: one interface, a client over etcd's JSON gateway, a fake.

EtcdClient speaks etcd's own v3 JSON gateway (the grpc-gateway every etcd >= 3.4
serves on its client URLs: POST /v3/kv/range, /v3/kv/txn, /v3/lease/grant, a streamed
/v3/watch ...) with treq: no thread, no blocking call, every call with a deadline.
MemoryEtcd keeps the same semantics in dicts on a Clock. Both pass one contract suite
(tests/etcd_contract.py), the client against a real three-member cluster.

Keys and values are bytes (str is taken as UTF-8); the gateway's base64 stays inside
this module. An endpoint list may name a prefix (etcd://h1:2379,h2:2379/psf): every key
is then relative to it, and nothing outside it can be read or written.

Failover: a call goes to the member that answered last; on a connection error, a
timeout or an "unavailable" answer (no leader, stopping, overloaded) it goes on to the
next member, for a bounded number of rounds within the call's deadline. A write whose
outcome is unknown (the member took the request and then died or timed out) is retried
only when repeating it cannot do harm (put, delete, lease calls); a transaction is not:
it raises OutcomeUnknown, so that its caller reads and decides.
"""

import base64
import json
import re
from dataclasses import dataclass, field

from twisted.internet import defer
from twisted.internet import error as neterror
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    RequestTransmissionFailed, ResponseDone, ResponseFailed, ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss
from zope.interface import Attribute, Interface, implementer

from powerstripflocker.clients.http import connection_pool, http_client, tls_policy

log = Logger()

DEFAULT_PORT = 2379
MAX_TXN_OPS = 128  # etcd's --max-txn-ops default; the fake refuses more, as etcd does

# gRPC status codes the gateway puts in its error bodies
_NOT_FOUND = 5
_OUT_OF_RANGE = 11
_RESOURCE_EXHAUSTED = 8
_UNAVAILABLE = 14
_DEADLINE_EXCEEDED = 4
_TRY_ELSEWHERE_CODES = (_UNAVAILABLE, _RESOURCE_EXHAUSTED, _DEADLINE_EXCEEDED)

# "Unavailable" answers etcd gives before it proposes anything: the request was not
# applied, so any call may go to another member. Every other unavailable answer
# ("request timed out", "leader changed", "server stopped") may follow a proposal that
# commits all the same.
_NOT_APPLIED_MESSAGES = ("etcdserver: no leader", "etcdserver: not capable",
                         "etcdserver: too many requests")


# ---------------------------------------------------------------- errors


class EtcdError(Exception):
    """Anything that went wrong talking to etcd."""


class BadEndpoint(EtcdError, ValueError):
    """An etcd:// endpoint list that cannot be parsed; the message says why."""


class EtcdRequestError(EtcdError):
    """etcd refused the request itself (bad key, duplicate key in a txn, too many
    operations): sending it again, anywhere, gets the same answer."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


class LeaseNotFound(EtcdError):
    def __init__(self, lease_id):
        named = f"etcd lease {lease_id}" if lease_id is not None else "an etcd lease"
        super().__init__(f"{named} not found (expired or revoked)")
        self.lease_id = lease_id


class Compacted(EtcdError):
    """The revision asked for (a watch's start, a read's) is older than etcd keeps;
    compact_revision is the oldest kept, when etcd says (a watch's answer does)."""

    def __init__(self, revision, compact_revision=None):
        oldest = f": the oldest kept is {compact_revision}" if compact_revision else ""
        super().__init__(f"etcd revision {revision} is compacted{oldest}; read the current "
                         "state and watch from there")
        self.revision = revision
        self.compact_revision = compact_revision


class EtcdUnavailable(EtcdError):
    """No member answered within the call's deadline and rounds."""

    def __init__(self, what, members, reason):
        super().__init__(f"etcd unavailable: {what} failed on every member "
                         f"({', '.join(members)}); last: {reason}")
        self.members = tuple(members)
        self.reason = reason


class OutcomeUnknown(EtcdError):
    """A transaction reached a member that then failed before answering: it may or may
    not have been applied. Read what it would have written before trying again."""

    def __init__(self, member, reason):
        super().__init__(f"etcd transaction outcome unknown: {member} failed after taking "
                         f"it ({reason}); read before retrying")
        self.member = member
        self.reason = reason


# ---------------------------------------------------------------- endpoints


@dataclass(frozen=True)
class EtcdEndpoints:
    """A parsed etcd:// or etcds:// endpoint list."""

    members: tuple  # ((host, port), ...) in the order given
    prefix: str = ""  # "" or "a/b": keys live under "/a/b/"
    tls: bool = False

    @property
    def urls(self):
        scheme = "https" if self.tls else "http"
        return tuple(f"{scheme}://{_netloc(host, port)}" for host, port in self.members)

    @property
    def namespace(self):
        """The bytes every key is stored under."""
        return f"/{self.prefix}/".encode() if self.prefix else b""

    def __str__(self):
        scheme = "etcds" if self.tls else "etcd"
        members = ",".join(_netloc(host, port) for host, port in self.members)
        return f"{scheme}://{members}" + (f"/{self.prefix}" if self.prefix else "")


def _netloc(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?\Z")
_PREFIX_SEGMENT = re.compile(r"[A-Za-z0-9_.-]+\Z")


def parse_endpoints(text):
    """etcd://HOST[:PORT][,HOST[:PORT]...][/PREFIX] (etcds:// for TLS) -> EtcdEndpoints.

    PORT defaults to 2379. HOST is a name, an IPv4 address or a bracketed IPv6 one.
    PREFIX is one or more /-separated segments of letters, digits, "_", "." and "-".
    Raises BadEndpoint naming what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise BadEndpoint("empty etcd endpoint: give etcd://HOST:PORT[,HOST:PORT...][/PREFIX]")
    text = text.strip()
    scheme, separator, rest = text.partition("://")
    if not separator:
        raise BadEndpoint(f"{text!r} is not an etcd endpoint list: it must start with "
                          "etcd:// or etcds://")
    if scheme not in ("etcd", "etcds"):
        raise BadEndpoint(f"{text!r}: unknown scheme {scheme!r}, use etcd:// or etcds:// "
                          "(for TLS)")
    if "?" in rest or "#" in rest:
        raise BadEndpoint(f"{text!r}: an etcd endpoint list takes no query or fragment")
    members_text, slash, prefix_text = rest.partition("/")
    if "@" in members_text:
        raise BadEndpoint(f"{text!r}: credentials in the URL are not supported; "
                          "use etcds:// with a client certificate")
    if not members_text:
        raise BadEndpoint(f"{text!r} names no etcd member")
    members = []
    for item in members_text.split(","):
        member = _parse_member(text, item)
        if member in members:
            raise BadEndpoint(f"{text!r} names {_netloc(*member)} twice")
        members.append(member)
    prefix = prefix_text.rstrip("/")
    if slash and prefix:
        for segment in prefix.split("/"):
            if segment in ("", ".", "..") or not _PREFIX_SEGMENT.match(segment):
                raise BadEndpoint(f"{text!r}: bad prefix {prefix_text!r}: segments are "
                                  "letters, digits, '_', '.' and '-', not empty, '.' or '..'")
    return EtcdEndpoints(tuple(members), prefix, scheme == "etcds")


def _parse_member(text, item):
    item = item.strip()
    if not item:
        raise BadEndpoint(f"{text!r} has an empty member (two commas, or one at an end)")
    if item.startswith("["):
        host, bracket, after = item[1:].partition("]")
        if not bracket or not host or ":" not in host:
            raise BadEndpoint(f"{text!r}: bad IPv6 member {item!r}: write [ADDRESS]:PORT")
        if after and not after.startswith(":"):
            raise BadEndpoint(f"{text!r}: bad member {item!r}: expected ':PORT' after ']'")
        port_text = after[1:] if after else None
    else:
        host, colon, port_text = item.partition(":")
        if not colon:
            port_text = None
        if not host:
            raise BadEndpoint(f"{text!r}: member {item!r} has no host")
        if port_text and ":" in port_text:
            raise BadEndpoint(f"{text!r}: bad member {item!r}: put an IPv6 address in "
                              "brackets, [ADDRESS]:PORT")
        if not _HOSTNAME.match(host):
            raise BadEndpoint(f"{text!r}: bad host {host!r} in member {item!r}")
    if port_text is None:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise BadEndpoint(f"{text!r}: bad port {port_text!r} in member {item!r}: "
                          "expected 1-65535")
    return host, int(port_text)


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


@dataclass(frozen=True)
class RangeResult:
    kvs: tuple
    count: int
    revision: int  # the store's revision the read saw
    more: bool = False


@dataclass(frozen=True)
class PutResult:
    revision: int
    prev_kv: KeyValue | None = None


@dataclass(frozen=True)
class DeleteResult:
    revision: int
    deleted: int
    prev_kvs: tuple = ()


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int
    responses: tuple  # RangeResult / PutResult / DeleteResult, one per operation run


@dataclass(frozen=True)
class Lease:
    id: int
    ttl: int


@dataclass(frozen=True)
class Status:
    member_id: int
    leader: int
    revision: int
    raft_term: int
    version: str

    @property
    def is_leader(self):
        return self.member_id == self.leader


@dataclass(frozen=True)
class Event:
    type: str  # "PUT" or "DELETE"
    kv: KeyValue  # for a DELETE: the key and the deletion's mod_revision only
    prev_kv: KeyValue | None = None

    @property
    def key(self):
        return self.kv.key

    @property
    def revision(self):
        return self.kv.mod_revision


def _bytes(data, what):
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    raise TypeError(f"etcd {what} must be bytes or str, not {type(data).__name__}")


# Operations and comparisons of a transaction.

@dataclass(frozen=True)
class Range:
    key: bytes
    prefix: bool = False
    limit: int = 0
    revision: int = 0  # 0: now; else the keys as they were at that revision

    def __post_init__(self):
        object.__setattr__(self, "key", _bytes(self.key, "key"))


@dataclass(frozen=True)
class Put:
    key: bytes
    value: bytes
    lease: int = 0
    prev_kv: bool = False

    def __post_init__(self):
        object.__setattr__(self, "key", _bytes(self.key, "key"))
        object.__setattr__(self, "value", _bytes(self.value, "value"))


@dataclass(frozen=True)
class Delete:
    key: bytes
    prefix: bool = False
    prev_kv: bool = False

    def __post_init__(self):
        object.__setattr__(self, "key", _bytes(self.key, "key"))


_COMPARE_TARGETS = {"value": "VALUE", "version": "VERSION", "create_revision": "CREATE",
                    "mod_revision": "MOD", "lease": "LEASE"}
_COMPARE_OPS = {"==": "EQUAL", "!=": "NOT_EQUAL", ">": "GREATER", "<": "LESS"}


@dataclass(frozen=True)
class Compare:
    """key's target op operand, e.g. Compare("a", "version", "==", 0) (a is absent),
    Compare("a", "value", "==", b"x"), Compare("a", "mod_revision", "<", 10).
    On an absent key etcd compares version, revisions and lease as 0, and a value
    comparison is false."""

    key: bytes
    target: str
    op: str
    operand: object

    def __post_init__(self):
        object.__setattr__(self, "key", _bytes(self.key, "key"))
        if self.target not in _COMPARE_TARGETS:
            raise ValueError(f"compare target must be one of {sorted(_COMPARE_TARGETS)}, "
                             f"not {self.target!r}")
        if self.op not in _COMPARE_OPS:
            raise ValueError(f"compare op must be one of {sorted(_COMPARE_OPS)}, not {self.op!r}")
        if self.target == "value":
            object.__setattr__(self, "operand", _bytes(self.operand, "compared value"))
        elif isinstance(self.operand, bool) or not isinstance(self.operand, int):
            raise ValueError(f"compare on {self.target} takes an int, not {self.operand!r}")

    def holds_for(self, kv):
        """Whether this comparison holds for kv (None: the key is absent)."""
        if self.target == "value":
            if kv is None:
                return False
            actual = kv.value
        elif kv is None:
            actual = 0
        else:
            actual = getattr(kv, self.target)
        operand = self.operand
        return {"==": actual == operand, "!=": actual != operand,
                ">": actual > operand, "<": actual < operand}[self.op]


# ---------------------------------------------------------------- the interface


class IEtcdWatch(Interface):
    """Each read of created or ended gives a new Deferred, so a failure nobody waits for
    is not an unhandled error."""

    created = Attribute("Deferred firing with the revision the watch first started at "
                        "(its events begin after it), once etcd has accepted it; failing "
                        "as ended does when it ends before that.")
    ended = Attribute("Deferred firing with None after stop(), failing with Compacted when "
                      "the revision it must resume from is gone, or EtcdUnavailable when no "
                      "member takes it back within the reconnect deadline.")
    next_revision = Attribute("The revision of the next event it will deliver.")

    def stop():
        """Stop delivering events; ended fires."""


class IEtcd(Interface):
    """An etcd v3 key space (relative to the endpoint's prefix)."""

    def range(key, prefix=False, limit=0, revision=0):
        """Deferred RangeResult: key, or every key starting with key when prefix; as at
        revision when one is given (Compacted when etcd no longer keeps it)."""

    def put(key, value, lease=0, prev_kv=False):
        """Deferred PutResult; LeaseNotFound when lease is given and unknown."""

    def delete(key, prefix=False, prev_kv=False):
        """Deferred DeleteResult."""

    def txn(compare, success, failure=()):
        """Deferred TxnResult: if every Compare holds, run success (Range/Put/Delete),
        else failure, in one revision. OutcomeUnknown when that cannot be told."""

    def grant(ttl, lease_id=0):
        """Deferred Lease with ttl seconds; keys put with it are deleted when it expires."""

    def keepalive(lease_id):
        """Deferred int: the lease's TTL, restarted; LeaseNotFound when it expired."""

    def revoke(lease_id):
        """Deferred None: the lease and its keys are gone; LeaseNotFound when unknown."""

    def compact(revision):
        """Deferred None: revisions before revision are forgotten."""

    def watch(key, on_events, prefix=False, start_revision=None, prev_kv=False):
        """An IEtcdWatch calling on_events([Event, ...]) for every change to key (or the
        prefix) from start_revision (default: the next), in revision order, each once."""

    def status():
        """Deferred Status of a member."""

    def close():
        """Deferred None: every watch stopped and every connection closed."""


# ---------------------------------------------------------------- JSON forms


def _b64(data):
    return base64.b64encode(data).decode("ascii")


def _unb64(text):
    return base64.b64decode(text) if text else b""


def _prefix_end(key):
    """The range_end that makes [key, range_end) every key starting with key."""
    stripped = key.rstrip(b"\xff")
    if not stripped:
        return b"\0"  # every key
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _check_key(key):
    if not key:
        raise EtcdRequestError(3, "etcdserver: key is not provided")


class _Codec:
    """JSON bodies for the gateway, keys moved into and out of the namespace."""

    def __init__(self, namespace):
        self.namespace = namespace

    def key_range(self, key, prefix):
        full = self.namespace + key
        body = {"key": _b64(full or b"\0")}
        if prefix:
            body["range_end"] = _b64(_prefix_end(full))
        return body

    def range(self, op):
        if not op.prefix:
            _check_key(op.key)
        body = self.key_range(op.key, op.prefix)
        if op.limit:
            body["limit"] = str(op.limit)
        if op.revision:
            body["revision"] = str(op.revision)
        return body

    def put(self, op):
        _check_key(op.key)
        body = {"key": _b64(self.namespace + op.key), "value": _b64(op.value)}
        if op.lease:
            body["lease"] = str(op.lease)
        if op.prev_kv:
            body["prev_kv"] = True
        return body

    def delete(self, op):
        if not op.prefix:
            _check_key(op.key)
        body = self.key_range(op.key, op.prefix)
        if op.prev_kv:
            body["prev_kv"] = True
        return body

    def compare(self, compare):
        _check_key(compare.key)
        body = {"key": _b64(self.namespace + compare.key),
                "target": _COMPARE_TARGETS[compare.target],
                "result": _COMPARE_OPS[compare.op]}
        if compare.target == "value":
            body["value"] = _b64(compare.operand)
        else:
            body[compare.target] = str(compare.operand)
        return body

    def request_op(self, op):
        if isinstance(op, Range):
            return {"request_range": self.range(op)}
        if isinstance(op, Put):
            return {"request_put": self.put(op)}
        if isinstance(op, Delete):
            return {"request_delete_range": self.delete(op)}
        raise TypeError(f"a txn operation is a Range, Put or Delete, not {op!r}")

    def kv(self, data):
        if not data:
            return None
        key = _unb64(data.get("key"))
        if self.namespace and key.startswith(self.namespace):
            key = key[len(self.namespace):]
        return KeyValue(key, _unb64(data.get("value")), int(data.get("create_revision", 0)),
                        int(data.get("mod_revision", 0)), int(data.get("version", 0)),
                        int(data.get("lease", 0)))

    def range_result(self, data):
        kvs = tuple(self.kv(kv) for kv in data.get("kvs", ()))
        return RangeResult(kvs, int(data.get("count", 0)), _revision(data),
                           bool(data.get("more", False)))

    def put_result(self, data):
        return PutResult(_revision(data), self.kv(data.get("prev_kv")))

    def delete_result(self, data):
        return DeleteResult(_revision(data), int(data.get("deleted", 0)),
                            tuple(self.kv(kv) for kv in data.get("prev_kvs", ())))

    def txn_result(self, data):
        responses = []
        for response in data.get("responses", ()):
            if "response_range" in response:
                responses.append(self.range_result(response["response_range"]))
            elif "response_put" in response:
                responses.append(self.put_result(response["response_put"]))
            else:
                responses.append(self.delete_result(response.get("response_delete_range", {})))
        return TxnResult(bool(data.get("succeeded", False)), _revision(data), tuple(responses))

    def event(self, data):
        return Event(data.get("type", "PUT"), self.kv(data.get("kv")),
                     self.kv(data.get("prev_kv")))


def _revision(data):
    return int(data.get("header", {}).get("revision", 0))


# ---------------------------------------------------------------- the client


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


def _describe(reason):
    if isinstance(reason, (ResponseFailed, ResponseNeverReceived, RequestTransmissionFailed)):
        inner = "; ".join(_describe(r.value) for r in reason.reasons)
        return f"{type(reason).__name__} ({inner})"
    text = str(reason).strip()
    return f"{type(reason).__name__}: {text}" if text else type(reason).__name__


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
    if grpc_code == _NOT_FOUND and "lease not found" in message:
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
        self._codec = _Codec(endpoints.namespace)
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
                    failed = _Failed(_describe(reason), applied=False)
                except defer.TimeoutError:
                    failed = _Failed(f"no answer within {timeout:g}s", applied=True)
                except _LOST_AFTER_SENDING as reason:
                    failed = _Failed(_describe(reason), applied=True)
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
        key = _bytes(key, "key")
        if not prefix:
            _check_key(key)
        watch = _ClientWatch(self, key, on_events, prefix, start_revision, prev_kv,
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


class _Once:
    """A result that many may wait for: each wait() is a new Deferred, so a failure that
    nobody waits for is not reported as unhandled."""

    def __init__(self):
        self._result = None
        self._fired = False
        self._waiting = []

    @property
    def fired(self):
        return self._fired

    def wait(self):
        if self._fired:
            return succeed(None).addCallback(lambda _: self._result)
        waiter = Deferred()
        self._waiting.append(waiter)
        return waiter

    def fire(self, result):
        """result: a value, or a Failure to pass on as one."""
        if self._fired:
            return
        self._fired, self._result = True, result
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.callback(result)


class _WatchStream(Protocol):
    """Reads the gateway's watch stream: one JSON object per line."""

    def __init__(self, on_message):
        self._on_message = on_message
        self._buffer = b""
        self.closed = Deferred()

    def dataReceived(self, data):
        self._buffer += data
        while b"\n" in self._buffer and not self.closed.called:
            line, self._buffer = self._buffer.split(b"\n", 1)
            if not line.strip():
                continue
            try:
                message = json.loads(line)
            except ValueError:
                self.abort(f"unreadable watch message {line[:100]!r}")
                return
            self._on_message(message)

    def abort(self, reason):
        """Drop the stream; closed fires with reason."""
        self._close(reason)
        if self.transport is not None:
            self.transport.stopProducing()

    def connectionLost(self, reason):
        if reason.check(ResponseDone, PotentialDataLoss):
            self._close("the member ended the watch stream")
        else:
            self._close(_describe(reason.value))

    def _close(self, reason):
        if not self.closed.called:
            self.closed.callback(reason)


@implementer(IEtcdWatch)
class _ClientWatch:
    """A watch that moves to the next member whenever its stream ends, resuming from the
    revision after the last one it delivered."""

    def __init__(self, client, key, on_events, prefix, start_revision, prev_kv,
                 reconnect_timeout):
        self._client = client
        self._key = key
        self._on_events = on_events
        self._prefix = prefix
        self._prev_kv = prev_kv
        self._reconnect_timeout = reconnect_timeout
        self.next_revision = start_revision
        self._created = _Once()
        self._ended = _Once()
        self._stopped = False
        self._accepted = False
        self._waiting = None  # the request or pause in progress, cancelled by stop()
        self._stream = None
        self._member = client._preferred

    @property
    def created(self):
        return self._created.wait()

    @property
    def ended(self):
        return self._ended.wait()

    def start(self):
        Deferred.fromCoroutine(self._run()).addBoth(self._end)

    def stop(self):
        if self._stopped:
            return
        self._stopped = True
        if self._stream is not None:
            self._stream.abort("stopped")
        if self._waiting is not None:
            self._waiting.cancel()

    def _end(self, result):
        if self._stopped or not isinstance(result, Failure):
            result = None
        self._ended.fire(result)
        self._created.fire(result if result is not None else Failure(
            EtcdError("the watch was stopped before etcd accepted it")))

    async def _pause(self, seconds):
        self._waiting = deferLater(self._client._reactor, seconds, lambda: None)
        try:
            await self._waiting
        finally:
            self._waiting = None

    async def _run(self):
        reactor = self._client._reactor
        urls = self._client.urls
        give_up_at = reactor.seconds() + self._reconnect_timeout
        delay = self._client._backoff
        refused = 0
        while not self._stopped:
            url = urls[self._member % len(urls)]
            try:
                reason = await self._stream_from(url)
            except CancelledError:
                return
            if self._stopped:
                return
            if isinstance(reason, Compacted):
                raise reason
            if self._accepted:
                give_up_at = reactor.seconds() + self._reconnect_timeout
                delay = self._client._backoff
                refused = 0
            else:
                refused += 1
            if reactor.seconds() >= give_up_at:
                raise EtcdUnavailable("watch", urls, f"{url}: {reason}; no member took the "
                                      f"watch back within {self._reconnect_timeout:g}s")
            log.info("etcd watch on {url} ended ({reason}); resuming from revision "
                     "{revision} on the next member", url=url, reason=reason,
                     revision=self.next_revision)
            self._member += 1
            if refused and refused % len(urls) == 0:
                try:
                    await self._pause(delay)
                except CancelledError:
                    return
                delay = min(delay * 2, 2.0)

    def _create_request(self):
        request = dict(self._client._codec.key_range(self._key, self._prefix),
                       progress_notify=True)
        if self._prev_kv:
            request["prev_kv"] = True
        if self.next_revision:
            request["start_revision"] = str(self.next_revision)
        return {"create_request": request}

    async def _stream_from(self, url):
        """Stream events from one member until the stream ends; return why it did."""
        self._accepted = False
        client = self._client
        self._waiting = client._watch_http.request(
            "POST", url + "/v3/watch", data=json.dumps(self._create_request()).encode("utf-8"),
            headers={"Content-Type": ["application/json"],
                     # etcd then cancels the watch when this member loses its leader,
                     # rather than keeping a stream that no longer sees commits
                     "Grpc-Metadata-hasleader": ["true"]},
            unbuffered=True,
        ).addTimeout(client._request_timeout, client._reactor)
        try:
            response = await self._waiting
        except defer.TimeoutError:
            return f"no answer within {client._request_timeout:g}s"
        except CancelledError:
            raise
        except Exception as reason:
            return _describe(reason)
        finally:
            self._waiting = None
        if response.code != 200:
            try:
                content = await response.content().addTimeout(client._request_timeout,
                                                              client._reactor)
            except Exception as reason:
                content = _describe(reason).encode()
            return f"HTTP {response.code}: {content[:200].decode('utf-8', 'replace')}"
        stream = _WatchStream(lambda message: self._message(message, stream))
        self._stream = stream
        response.deliverBody(stream)

        def not_accepted():
            if not self._accepted:
                stream.abort(f"etcd did not accept the watch within "
                             f"{client._request_timeout:g}s")
        accept_timer = client._reactor.callLater(client._request_timeout, not_accepted)
        try:
            return await stream.closed
        finally:
            if accept_timer.active():
                accept_timer.cancel()
            self._stream = None

    def _message(self, message, stream):
        if self._stopped:
            return
        if "error" in message:
            error = message["error"]
            stream.abort(error.get("message") if isinstance(error, dict) else str(error))
            return
        result = message.get("result", {})
        if result.get("canceled"):
            compact_revision = int(result.get("compact_revision", 0))
            if compact_revision:
                stream.abort(Compacted(self.next_revision, compact_revision))
            else:
                stream.abort("etcd cancelled the watch: "
                             f"{result.get('cancel_reason') or 'no reason given'}")
            return
        if result.get("created"):
            self._accepted = True
            if self.next_revision is None:
                # A watch without a start revision begins after the revision etcd
                # reports now: everything up to it counts as seen.
                self.next_revision = _revision(result) + 1
            self._created.fire(self.next_revision - 1)
            return
        raw_events = result.get("events", ())
        # After a reconnect, a member may repeat what another one delivered: drop it.
        events = [e for e in map(self._client._codec.event, raw_events)
                  if e.revision >= self.next_revision]
        if events:
            self.next_revision = events[-1].revision + 1
            _deliver(self._on_events, events)
        elif not raw_events and _revision(result) >= self.next_revision:
            # a progress notification: nothing up to that revision is left to come
            self.next_revision = _revision(result) + 1


def _deliver(on_events, events):
    try:
        on_events(events)
    except Exception:
        log.failure("etcd watch callback failed on {count} events", count=len(events))


# ---------------------------------------------------------------- the fake


@dataclass
class _MemoryLease:
    id: int
    ttl: int
    keys: set = field(default_factory=set)
    expiry: object = None


@implementer(IEtcdWatch)
class _MemoryWatch:
    def __init__(self, etcd, key, on_events, prefix, next_revision, prev_kv):
        self._etcd = etcd
        self._key = key
        self._prefix = prefix
        self._on_events = on_events
        self._prev_kv = prev_kv
        self.next_revision = next_revision
        self._created = _Once()
        self._ended = _Once()

    @property
    def created(self):
        return self._created.wait()

    @property
    def ended(self):
        return self._ended.wait()

    def matches(self, key):
        return key.startswith(self._key) if self._prefix else key == self._key

    def offer(self, revision, events):
        if self._ended.fired or revision < self.next_revision:
            return
        chosen = [e if self._prev_kv else Event(e.type, e.kv) for e in events
                  if self.matches(e.key)]
        self.next_revision = revision + 1
        if chosen:
            _deliver(self._on_events, chosen)

    def end(self, result):
        self._etcd._watches.discard(self)
        self._ended.fire(result)
        self._created.fire(result if result is not None else Failure(
            EtcdError("the watch was stopped before etcd accepted it")))

    def stop(self):
        self.end(None)


@implementer(IEtcd)
class MemoryEtcd:
    """IEtcd in memory: one revision counter, history for watches, leases on a clock.

    Its answers are etcd's own, as the contract suite checks against a real cluster."""

    def __init__(self, clock):
        self._clock = clock
        self._kvs = {}
        self._revision = 1  # a new etcd cluster is at revision 1
        self._history = []  # [(revision, [Event])], oldest first
        self._versions = {}  # key -> [(revision, KeyValue, or None once deleted)]
        self._compacted = 0
        self._leases = {}
        self._next_lease = 7587867000000000000
        self._watches = set()
        self._pending = []
        self._delivering = False
        self.member_id = 10276657743932975437

    # reads and writes, shared by the plain calls and txn

    def _select(self, key, prefix):
        if prefix:
            return sorted((k for k in self._kvs if k.startswith(key)))
        return [key] if key in self._kvs else []

    def _range(self, op):
        if not op.prefix:
            _check_key(op.key)
        if op.revision:
            found = self._as_at(op.key, op.prefix, op.revision)
        else:
            found = [self._kvs[k] for k in self._select(op.key, op.prefix)]
        chosen = found[:op.limit] if op.limit else found
        return RangeResult(tuple(chosen), len(found), self._revision, len(chosen) < len(found))

    def _as_at(self, key, prefix, revision):
        if revision > self._revision:
            raise EtcdRequestError(_OUT_OF_RANGE, "etcdserver: mvcc: required revision is a "
                                   "future revision")
        if revision < self._compacted:
            raise Compacted(revision)
        found = []
        for candidate in sorted(self._versions):
            if candidate.startswith(key) if prefix else candidate == key:
                then = [kv for at, kv in self._versions[candidate] if at <= revision]
                if then and then[-1] is not None:
                    found.append(then[-1])
        return found

    def _check_put(self, op):
        _check_key(op.key)
        if op.lease and op.lease not in self._leases:
            raise LeaseNotFound(op.lease)

    def _put(self, op, revision, events):
        previous = self._kvs.get(op.key)
        if previous is not None and previous.lease and previous.lease in self._leases:
            self._leases[previous.lease].keys.discard(op.key)
        kv = KeyValue(op.key, op.value,
                      previous.create_revision if previous else revision, revision,
                      previous.version + 1 if previous else 1, op.lease)
        self._kvs[op.key] = kv
        if op.lease:
            self._leases[op.lease].keys.add(op.key)
        events.append(Event("PUT", kv, previous))
        return PutResult(revision, previous if op.prev_kv else None)

    def _delete(self, op, revision, events):
        if not op.prefix:
            _check_key(op.key)
        removed = []
        for key in self._select(op.key, op.prefix):
            previous = self._kvs.pop(key)
            if previous.lease in self._leases:
                self._leases[previous.lease].keys.discard(key)
            removed.append(previous)
            events.append(Event("DELETE", KeyValue(key, b"", 0, revision, 0), previous))
        return DeleteResult(revision, len(removed), tuple(removed) if op.prev_kv else ())

    def _apply(self, ops):
        """Run ops, all checked first as etcd does, in one new revision if any of them
        changes something."""
        for op in ops:
            if isinstance(op, Put):
                self._check_put(op)
            elif not op.prefix:
                _check_key(op.key)
        put_keys = [op.key for op in ops if isinstance(op, Put)]
        deleted = [op for op in ops if isinstance(op, Delete)]
        if len(put_keys) != len(set(put_keys)) or any(
                key == op.key or (op.prefix and key.startswith(op.key))
                for key in put_keys for op in deleted):
            raise EtcdRequestError(3, "etcdserver: duplicate key given in txn request")
        revision = self._revision + 1
        events = []
        responses = []
        for op in ops:
            if isinstance(op, Range):
                responses.append(self._range(op))
            elif isinstance(op, Put):
                responses.append(self._put(op, revision, events))
            else:
                responses.append(self._delete(op, revision, events))
        if events:
            self._commit(revision, events)
        final = self._revision
        # etcd reports the transaction's revision in every operation's answer
        responses = [_at(r, final) for r in responses]
        return final, responses

    def _commit(self, revision, events):
        self._revision = revision
        self._history.append((revision, events))
        for event in events:
            self._versions.setdefault(event.key, []).append(
                (revision, event.kv if event.type == "PUT" else None))
        self._pending.append((revision, events))
        if self._delivering:
            return
        # A callback that writes queues its revision behind this one, so every watch
        # sees revisions in order.
        self._delivering = True
        try:
            while self._pending:
                pending_revision, pending_events = self._pending.pop(0)
                for watch in list(self._watches):
                    watch.offer(pending_revision, pending_events)
        finally:
            self._delivering = False

    def _answer(self, work):
        try:
            return succeed(work())
        except Exception:
            return fail()

    # IEtcd

    def range(self, key, prefix=False, limit=0, revision=0):
        return self._answer(lambda: self._range(Range(key, prefix, limit, revision)))

    def put(self, key, value, lease=0, prev_kv=False):
        return self._answer(lambda: self._apply([Put(key, value, lease, prev_kv)])[1][0])

    def delete(self, key, prefix=False, prev_kv=False):
        return self._answer(lambda: self._apply([Delete(key, prefix, prev_kv)])[1][0])

    def txn(self, compare, success, failure=()):
        def work():
            compare_list, success_list, failure_list = list(compare), list(success), list(failure)
            for op in (*success_list, *failure_list):
                if not isinstance(op, (Range, Put, Delete)):
                    raise TypeError(f"a txn operation is a Range, Put or Delete, not {op!r}")
            for c in compare_list:
                _check_key(c.key)
            if max(len(compare_list), len(success_list), len(failure_list)) > MAX_TXN_OPS:
                raise EtcdRequestError(3, "etcdserver: too many operations in txn request")
            succeeded = all(c.holds_for(self._kvs.get(c.key)) for c in compare_list)
            revision, responses = self._apply(success_list if succeeded else failure_list)
            return TxnResult(succeeded, revision, tuple(responses))
        return self._answer(work)

    def grant(self, ttl, lease_id=0):
        def work():
            nonlocal lease_id
            if lease_id in self._leases:
                raise EtcdRequestError(9, "etcdserver: lease already exists")
            if not lease_id:
                self._next_lease += 1
                lease_id = self._next_lease
            lease = _MemoryLease(lease_id, int(ttl))
            self._leases[lease_id] = lease
            self._schedule_expiry(lease)
            return Lease(lease_id, lease.ttl)
        return self._answer(work)

    def _schedule_expiry(self, lease):
        if lease.expiry is not None and lease.expiry.active():
            lease.expiry.cancel()
        lease.expiry = self._clock.callLater(lease.ttl, self._expire, lease.id)

    def _expire(self, lease_id):
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            return
        if lease.expiry is not None and lease.expiry.active():
            lease.expiry.cancel()
        if lease.keys:
            # etcd deletes a lease's keys in one revision
            revision = self._revision + 1
            events = []
            for key in sorted(lease.keys):
                previous = self._kvs.pop(key)
                events.append(Event("DELETE", KeyValue(key, b"", 0, revision, 0), previous))
            self._commit(revision, events)

    def keepalive(self, lease_id):
        def work():
            lease = self._leases.get(lease_id)
            if lease is None:
                raise LeaseNotFound(lease_id)
            self._schedule_expiry(lease)
            return lease.ttl
        return self._answer(work)

    def revoke(self, lease_id):
        def work():
            if lease_id not in self._leases:
                raise LeaseNotFound(lease_id)
            self._expire(lease_id)
        return self._answer(work)

    def compact(self, revision):
        def work():
            if revision > self._revision:
                raise EtcdRequestError(_OUT_OF_RANGE, "etcdserver: mvcc: required revision is "
                                       "a future revision")
            if revision <= self._compacted:
                raise EtcdRequestError(_OUT_OF_RANGE, "etcdserver: mvcc: required revision "
                                       "has been compacted")
            self._compacted = revision
            self._history = [(r, e) for r, e in self._history if r >= revision]
        return self._answer(work)

    def watch(self, key, on_events, prefix=False, start_revision=None, prev_kv=False,
              reconnect_timeout=60.0):
        key = _bytes(key, "key")
        if not prefix:
            _check_key(key)
        next_revision = start_revision or self._revision + 1
        watch = _MemoryWatch(self, key, on_events, prefix, next_revision, prev_kv)
        if next_revision < self._compacted:
            watch.end(Failure(Compacted(next_revision, self._compacted)))
            return watch
        watch._created.fire(next_revision - 1)
        for revision, events in list(self._history):
            watch.offer(revision, events)
        self._watches.add(watch)
        return watch

    def status(self):
        return succeed(Status(self.member_id, self.member_id, self._revision, 2, "memory"))

    def close(self):
        for watch in list(self._watches):
            watch.stop()
        return succeed(None)


def _at(response, revision):
    if isinstance(response, RangeResult):
        return RangeResult(response.kvs, response.count, revision, response.more)
    if isinstance(response, PutResult):
        return PutResult(revision, response.prev_kv)
    return DeleteResult(revision, response.deleted, response.prev_kvs)

