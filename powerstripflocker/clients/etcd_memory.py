"""MemoryEtcd: IEtcd in dicts on a Clock, with etcd's semantics (revisions, leases,
transactions, watches, compaction); the contract suite (tests/etcd_contract.py) holds it
and EtcdClient against a real cluster to the same answers."""

from dataclasses import dataclass, field

from twisted.internet.defer import fail, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from powerstripflocker.clients.etcd import (
    GRPC_OUT_OF_RANGE, MAX_TXN_OPS, Compacted, Delete, DeleteResult, EtcdError,
    EtcdRequestError, Event, IEtcd, IEtcdWatch, KeyValue, Lease, LeaseNotFound, Once, Put,
    PutResult, Range, RangeResult, Status, TxnResult, as_bytes, check_key, deliver_events,
)

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
        self._created = Once()
        self._ended = Once()

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
            deliver_events(self._on_events, chosen)

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
            check_key(op.key)
        if op.revision:
            found = self._as_at(op.key, op.prefix, op.revision)
        else:
            found = [self._kvs[k] for k in self._select(op.key, op.prefix)]
        chosen = found[:op.limit] if op.limit else found
        return RangeResult(tuple(chosen), len(found), self._revision, len(chosen) < len(found))

    def _as_at(self, key, prefix, revision):
        if revision > self._revision:
            raise EtcdRequestError(GRPC_OUT_OF_RANGE, "etcdserver: mvcc: required revision is a "
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
        check_key(op.key)
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
            check_key(op.key)
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
                check_key(op.key)
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
                check_key(c.key)
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
                raise EtcdRequestError(GRPC_OUT_OF_RANGE, "etcdserver: mvcc: required revision is "
                                       "a future revision")
            if revision <= self._compacted:
                raise EtcdRequestError(GRPC_OUT_OF_RANGE, "etcdserver: mvcc: required revision "
                                       "has been compacted")
            self._compacted = revision
            self._history = [(r, e) for r, e in self._history if r >= revision]
        return self._answer(work)

    def watch(self, key, on_events, prefix=False, start_revision=None, prev_kv=False,
              reconnect_timeout=60.0):
        key = as_bytes(key, "key")
        if not prefix:
            check_key(key)
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
