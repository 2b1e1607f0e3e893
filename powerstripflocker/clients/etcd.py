"""etcd v3 for the reactor: one interface (IEtcd, here, with its errors and data), a
client over etcd's JSON gateway (EtcdClient, etcd_client.py), a fake (MemoryEtcd,
etcd_memory.py).

EtcdClient speaks etcd's own v3 JSON gateway (the grpc-gateway every etcd >= 3.4
serves on its client URLs: POST /v3/kv/range, /v3/kv/txn, /v3/lease/grant, a streamed
/v3/watch ...) with treq: no thread, no blocking call, every call with a deadline.
MemoryEtcd keeps the same semantics in dicts on a Clock. Both pass one contract suite
(tests/etcd_contract.py), the client against a real three-member cluster.

Keys and values are bytes (str is taken as UTF-8); the gateway's base64 stays inside
etcd_gateway.py. An endpoint list may name a prefix (etcd://h1:2379,h2:2379/psf, see
etcd_endpoints.py): every key is then relative to it, and nothing outside it can be read
or written. Failover between the members is the client's (etcd_client.py).
"""

from dataclasses import dataclass

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import Attribute, Interface

log = Logger()

DEFAULT_PORT = 2379
MAX_TXN_OPS = 128  # etcd's --max-txn-ops default; the fake refuses more, as etcd does

# gRPC status codes, as etcd's gateway puts them in its error bodies (EtcdRequestError.code)
GRPC_NOT_FOUND = 5
GRPC_OUT_OF_RANGE = 11
GRPC_RESOURCE_EXHAUSTED = 8
GRPC_UNAVAILABLE = 14
GRPC_DEADLINE_EXCEEDED = 4

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


def as_bytes(data, what):
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    raise TypeError(f"etcd {what} must be bytes or str, not {type(data).__name__}")


@dataclass(frozen=True)
class Range:
    key: bytes
    prefix: bool = False
    limit: int = 0
    revision: int = 0  # 0: now; else the keys as they were at that revision

    def __post_init__(self):
        object.__setattr__(self, "key", as_bytes(self.key, "key"))


@dataclass(frozen=True)
class Put:
    key: bytes
    value: bytes
    lease: int = 0
    prev_kv: bool = False

    def __post_init__(self):
        object.__setattr__(self, "key", as_bytes(self.key, "key"))
        object.__setattr__(self, "value", as_bytes(self.value, "value"))


@dataclass(frozen=True)
class Delete:
    key: bytes
    prefix: bool = False
    prev_kv: bool = False

    def __post_init__(self):
        object.__setattr__(self, "key", as_bytes(self.key, "key"))


COMPARE_TARGETS = {"value": "VALUE", "version": "VERSION", "create_revision": "CREATE",
                    "mod_revision": "MOD", "lease": "LEASE"}
COMPARE_OPS = {"==": "EQUAL", "!=": "NOT_EQUAL", ">": "GREATER", "<": "LESS"}


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
        object.__setattr__(self, "key", as_bytes(self.key, "key"))
        if self.target not in COMPARE_TARGETS:
            raise ValueError(f"compare target must be one of {sorted(COMPARE_TARGETS)}, "
                             f"not {self.target!r}")
        if self.op not in COMPARE_OPS:
            raise ValueError(f"compare op must be one of {sorted(COMPARE_OPS)}, not {self.op!r}")
        if self.target == "value":
            object.__setattr__(self, "operand", as_bytes(self.operand, "compared value"))
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


def check_key(key):
    if not key:
        raise EtcdRequestError(3, "etcdserver: key is not provided")


class Once:
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


def deliver_events(on_events, events):
    try:
        on_events(events)
    except Exception:
        log.failure("etcd watch callback failed on {count} events", count=len(events))
