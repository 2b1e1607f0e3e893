"""EtcdStore: the control service's IAsyncStore in an etcd key space (replicas of the
control service on one etcd cluster, docs/etcd.md), and the feed that keeps a replica's
node reports and generation current from etcd's watch."""

import json
import math
import random

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer

from powerstripflocker.clients.etcd import (
    Compacted, Compare, Delete, EtcdRequestError, Put, Range,
)
from powerstripflocker.control.asyncstore import DECISION_ATTEMPTS, IAsyncStore, Decided
from powerstripflocker.control.store import (
    Dataset, DatasetExists, Lease, StoreBusy, configuration_tag_of,
)

DATASETS = b"datasets/"
LEASES = b"leases/"
NODES = b"nodes/"
# Put by every change of a dataset (other than its manifested flag), and by every change
# of a lease: a decision that listed datasets (leases) compares the revision of their
# guard, so none was added or dropped since. Two guards, not one: a claim lists the
# datasets and renews a lease, and with one guard every claim's renewal ran every other
# claim in flight again (8 clients claiming 8 names: one claim in five ended busy).
GUARD = b"config/guard"
LEASES_GUARD = b"config/leases-guard"
_GUARD_OF = {DATASETS: GUARD, LEASES: LEASES_GUARD}

# A decision run again after a conflict first waits a random time up to this, doubled at
# each attempt, up to the cap (seconds): about a third of a second in all, at most.
CONFLICT_PAUSE = 0.002
CONFLICT_PAUSE_CAP = 0.1

# Under etcd's default limit of 128 operations (and compares) in one transaction.
CHANGES_PER_DECISION = 100

log = Logger()

def _dataset_value(dataset):
    return json.dumps({
        "primary": dataset.primary, "metadata": dataset.metadata,
        "maximum_size": dataset.maximum_size, "deleted": dataset.deleted,
        "manifested": dataset.manifested, "origin": dataset.origin,
        "generation": dataset.generation, "replica_nodes": list(dataset.replica_nodes),
    }, sort_keys=True).encode()


def _dataset(key, value):
    fields = json.loads(value)
    fields["replica_nodes"] = tuple(fields.get("replica_nodes", ()))
    return Dataset(dataset_id=key[len(DATASETS):].decode(), **fields)


def _lease_value(lease):
    return json.dumps({"node_uuid": lease.node_uuid, "expiration": lease.expiration,
                       "claimed_until": lease.claimed_until}, sort_keys=True).encode()


def _lease(key, value):
    return Lease(dataset_id=key[len(LEASES):].decode(), **json.loads(value))


class _Conflict(Exception):
    """What a decision read changed before its changes were applied."""


class _EtcdView:
    """One run of a decision: reads at one revision, changes kept until commit()."""

    def __init__(self, etcd, report_ttl):
        self._etcd = etcd
        self._report_ttl = report_ttl
        self._revision = 0  # the snapshot, from the first read on
        self._read = {}  # key -> (mod_revision, 0 when absent; value or None)
        self._changes = {}  # key -> value, or None for a delete; in the order made
        self._guards = set()  # the guards of what the changes change
        # What listings have read, each with its guard in one request: key -> KeyValue,
        # and prefix -> its KeyValues oldest first.
        self._listed = {}
        self._listings = {}

    # reading

    async def _range(self, key, prefix=False):
        result = await self._etcd.range(key, prefix=prefix, revision=self._revision)
        if not self._revision:
            self._revision = result.revision
        return result

    async def _read_listings(self, prefixes):
        """Read the prefixes not yet read, with their guards, in one request at the
        decision's revision (a read-only transaction: no raft proposal). A claim needs
        the datasets and a lease: listing the datasets reads the leases with them, as
        each request is a round trip to etcd; the sweep lists only the leases."""
        wanted = [prefix for prefix in prefixes if prefix not in self._listings]
        if not wanted:
            return
        operations = []
        for prefix in wanted:
            operations += [Range(_GUARD_OF[prefix], revision=self._revision),
                           Range(prefix, prefix=True, revision=self._revision)]
        try:
            result = await self._etcd.txn((), operations)
        except EtcdRequestError as error:
            if "required revision has been compacted" in error.message:
                raise Compacted(self._revision) from None
            raise
        if not self._revision:
            self._revision = result.revision
        for prefix, guard, listing in zip(wanted, result.responses[::2],
                                          result.responses[1::2]):
            self._listed.update((kv.key, kv) for kv in (*guard.kvs, *listing.kvs))
            self._listings[prefix] = sorted(listing.kvs, key=lambda kv: kv.create_revision)

    def _listed_prefix(self, key):
        """The listed prefix whose listing answers for key (a key under it, or its
        guard), or None."""
        for prefix in self._listings:
            if key.startswith(prefix) or key == _GUARD_OF[prefix]:
                return prefix
        return None

    async def _get(self, key):
        if key in self._changes:
            return self._changes[key]
        if key not in self._read:
            if self._listed_prefix(key) is not None:
                kv = self._listed.get(key)
            else:
                [kv] = (await self._range(key)).kvs or [None]
            self._read[key] = (0, None) if kv is None else (kv.mod_revision, kv.value)
        return self._read[key][1]

    async def _list(self, prefix, guarded=True):
        """[(key, value)] under prefix (datasets or leases), oldest first, then those
        this decision added. guarded: the decision depends on the whole listing (no key
        added or dropped since), so its commit compares the prefix's guard."""
        await self._read_listings((DATASETS, LEASES) if prefix == DATASETS else (prefix,))
        if guarded:
            await self._get(_GUARD_OF[prefix])
        listed = {kv.key: kv.value for kv in self._listings[prefix]}
        for key, value in self._changes.items():
            if not key.startswith(prefix):
                continue
            if value is None:
                listed.pop(key, None)
            else:
                listed[key] = value  # in place when listed, else after the rest
        return list(listed.items())

    async def datasets(self):
        return [_dataset(key, value) for key, value in await self._list(DATASETS)]

    async def datasets_named(self, name):
        return [d for d in await self.datasets() if d.metadata.get("name") == name]

    async def get_dataset(self, dataset_id):
        key = DATASETS + dataset_id.encode()
        value = await self._get(key)
        return None if value is None else _dataset(key, value)

    async def leases(self):
        return sorted((_lease(key, value) for key, value in await self._list(LEASES)),
                      key=lambda lease: lease.dataset_id)

    async def get_lease(self, dataset_id):
        key = LEASES + dataset_id.encode()
        value = await self._get(key)
        return None if value is None else _lease(key, value)

    async def configuration_tag(self):
        return configuration_tag_of(await self.datasets(), await self.leases())

    async def decided_tag(self):
        """The configuration tag as this decision leaves it, without making the decision
        depend on every dataset and lease (a change elsewhere meanwhile makes the next
        tag; a conditional request checks the tag itself, atomically)."""
        datasets = [_dataset(key, value)
                    for key, value in await self._list(DATASETS, guarded=False)]
        leases = sorted((_lease(key, value)
                         for key, value in await self._list(LEASES, guarded=False)),
                        key=lambda lease: lease.dataset_id)
        return configuration_tag_of(datasets, leases)

    # changing

    def _change(self, key, value, configuration=True):
        self._changes.pop(key, None)
        self._changes[key] = value
        if configuration:
            self._guards.add(GUARD if key.startswith(DATASETS) else LEASES_GUARD)

    async def add_dataset(self, dataset):
        if await self.get_dataset(dataset.dataset_id) is not None:
            raise DatasetExists(dataset.dataset_id)
        fresh = Dataset(dataset.dataset_id, dataset.primary, dict(dataset.metadata),
                        dataset.maximum_size, dataset.deleted, False, dataset.origin, 1,
                        tuple(dataset.replica_nodes))
        self._change(DATASETS + dataset.dataset_id.encode(), _dataset_value(fresh))

    async def import_dataset(self, dataset):
        if await self.get_dataset(dataset.dataset_id) is not None:
            raise DatasetExists(dataset.dataset_id)
        self._change(DATASETS + dataset.dataset_id.encode(), _dataset_value(dataset))

    async def _replace(self, dataset_id, configuration=True, **fields):
        dataset = await self.get_dataset(dataset_id)
        if dataset is None:
            return False
        changed = dict(vars(dataset), **fields)
        if changed == vars(dataset):
            return False
        self._change(DATASETS + dataset_id.encode(), _dataset_value(Dataset(**changed)),
                     configuration)
        return True

    async def set_primary(self, dataset_id, primary):
        dataset = await self.get_dataset(dataset_id)
        if dataset is not None and dataset.primary != primary:
            await self._replace(
                dataset_id, primary=primary, generation=dataset.generation + 1,
                replica_nodes=tuple(n for n in dataset.replica_nodes if n != primary))

    async def set_replica_nodes(self, dataset_id, nodes):
        # Not in the configuration tag: config/guard is not put, as for manifested flags.
        await self._replace(dataset_id, configuration=False, replica_nodes=tuple(nodes))

    async def mark_deleted(self, dataset_id):
        await self._replace(dataset_id, deleted=True)

    async def mark_restored(self, dataset_id):
        await self._replace(dataset_id, deleted=False)

    async def mark_manifested(self, dataset_ids):
        # Every agent report asks this of every dataset it holds: one listing finds the
        # few not yet marked, and only those are read (and compared) one by one.
        # etcd takes at most 128 compares and operations in a transaction: the rest are
        # marked by the next report.
        # The listing only finds candidates (each is then read and compared on its own),
        # so a configuration change meanwhile need not run the report's decision again.
        listed = [_dataset(key, value)
                  for key, value in await self._list(DATASETS, guarded=False)]
        unmarked = {d.dataset_id for d in listed if not d.manifested}
        changed = []
        for dataset_id in [i for i in dataset_ids if i in unmarked][:CHANGES_PER_DECISION]:
            if await self._replace(dataset_id, configuration=False, manifested=True):
                changed.append(dataset_id)
        return changed

    async def put_lease(self, lease):
        self._change(LEASES + lease.dataset_id.encode(), _lease_value(lease))

    async def delete_lease(self, dataset_id):
        if await self.get_lease(dataset_id) is not None:
            self._change(LEASES + dataset_id.encode(), None)

    async def expire_leases(self, now):
        expired = [lease for lease in await self.leases()
                   if lease.expiration is not None and lease.expiration <= now]
        # The rest expire at the next sweep (etcd's limit on a transaction's operations).
        expired = expired[:CHANGES_PER_DECISION]
        for lease in expired:
            self._change(LEASES + lease.dataset_id.encode(), None)
        return expired

    async def put_node_report(self, node_uuid, report, received):
        self._change(NODES + node_uuid.encode(),
                     json.dumps({"report": report, "received": received},
                                sort_keys=True).encode(), configuration=False)

    async def touch_node_report(self, node_uuid, received):
        value = await self._get(NODES + node_uuid.encode())
        if value is not None:
            await self.put_node_report(node_uuid, json.loads(value)["report"], received)

    async def delete_node_report(self, node_uuid):
        if await self._get(NODES + node_uuid.encode()) is not None:
            self._change(NODES + node_uuid.encode(), None, configuration=False)

    # applying

    async def commit(self):
        """Apply the changes unless something read has changed (_Conflict)."""
        if not self._changes:
            return
        compares = [Compare(key, "mod_revision", "==", mod_revision)
                    for key, (mod_revision, _) in self._read.items()]
        report_lease = 0
        if self._report_ttl and any(
                key.startswith(NODES) and value is not None
                for key, value in self._changes.items()):
            # A node report lives as long as this lease: a node whose agent stops
            # reporting (and is touched by no replica) lapses from the store by itself.
            # A lease left by a decision that conflicts expires alone, holding nothing.
            report_lease = (await self._etcd.grant(self._report_ttl)).id
        operations = [
            Delete(key) if value is None
            else Put(key, value, lease=report_lease if key.startswith(NODES) else 0)
            for key, value in self._changes.items()]
        operations.extend(Put(guard, b"") for guard in sorted(self._guards))
        if not (await self._etcd.txn(compares, operations)).succeeded:
            raise _Conflict()


@implementer(IAsyncStore)
class EtcdStore(Decided):
    """The configuration and node reports in an IEtcd key space (docs/etcd.md).

    A commit whose outcome etcd cannot tell fails with OutcomeUnknown: the caller
    reads again to see whether it happened (a decision is not run again for it)."""

    def __init__(self, etcd, report_ttl=None, clock=None):
        """report_ttl: seconds a stored node report lives unless stored again (an etcd
        lease); None: until deleted. clock: paces a decision run again after a conflict
        (a random pause, longer each time, so that decisions colliding on one key do not
        collide again at once); None: no pause."""
        self.etcd = etcd
        self.report_ttl = None if report_ttl is None else max(1, math.ceil(report_ttl))
        self.clock = clock

    def decide(self, decision):
        async def attempts():
            for attempt in range(DECISION_ATTEMPTS):
                if attempt and self.clock is not None:
                    pause = random.uniform(0, min(CONFLICT_PAUSE_CAP,
                                                  CONFLICT_PAUSE * 2 ** attempt))
                    await deferLater(self.clock, pause, lambda: None)
                view = _EtcdView(self.etcd, self.report_ttl)
                try:
                    result = await decision(view)
                    await view.commit()
                except (_Conflict, Compacted):
                    # Compacted: etcd forgot the snapshot's revision in the middle of
                    # the decision; a new run reads a new one.
                    continue
                return result
            raise StoreBusy(f"a decision's reads kept changing under it "
                            f"({DECISION_ATTEMPTS} tries)")
        return Deferred.fromCoroutine(attempts())

    def close(self):
        return self.etcd.close()

    def is_empty(self):
        async def read():
            return not (await self.etcd.range(b"", prefix=True, limit=1)).kvs
        return Deferred.fromCoroutine(read())

    def node_reports(self):
        async def read():
            kvs = (await self.etcd.range(NODES, prefix=True)).kvs
            reports = []
            for kv in kvs:
                reports.append((kv.key[len(NODES):].decode(), *_report(kv.value)))
            return reports
        return Deferred.fromCoroutine(read())

    def follow(self, listener, clock):
        follower = _Follower(self.etcd, listener, clock)
        follower.start()
        return follower


# A watch that ended (etcd compacted past it, or no member answered for a while) is
# started again after this pause, from a new read.
FOLLOW_RETRY_SECONDS = 1.0


class _Follower:
    """Keeps a replica's listener current with what every replica writes: node reports
    as they are stored and removed, and the revision of every change (its generation)."""

    def __init__(self, etcd, listener, clock):
        self._etcd = etcd
        self._listener = listener
        self._clock = clock
        self._watch = None
        self._stopped = False
        self.done = None

    def start(self):
        self.done = Deferred.fromCoroutine(self._follow())

    def stop(self):
        """Stop following: the watch, a read in flight (which may wait out etcd's call
        deadline when no member answers) or the pause before the next. done fires."""
        self._stopped = True
        if self._watch is not None:
            self._watch.stop()
        self.done.cancel()
        return self.done.addErrback(lambda failure: failure.trap(CancelledError) and None)

    async def _follow(self):
        while not self._stopped:
            try:
                await self._watch_from_a_new_read()
            except Exception as error:
                if self._stopped:
                    return
                log.warn("following the etcd store failed ({error}); reading it again in "
                         "{seconds}s", error=error, seconds=FOLLOW_RETRY_SECONDS)
            if self._stopped:
                return
            await deferLater(self._clock, FOLLOW_RETRY_SECONDS, lambda: None)

    async def _watch_from_a_new_read(self):
        read = await self._etcd.range(NODES, prefix=True)
        self._listener.reports_loaded([
            (kv.key[len(NODES):].decode(), *_report(kv.value)) for kv in read.kvs])
        # Whatever happened to the datasets while no watch was running is unknown.
        self._listener.datasets_changed()
        self._listener.store_advanced(read.revision)
        if self._stopped:
            return
        self._watch = self._etcd.watch(b"", self._events, prefix=True,
                                       start_revision=read.revision + 1)
        try:
            await self._watch.ended
        finally:
            self._watch = None

    def _events(self, events):
        if any(event.key.startswith(DATASETS) for event in events):
            self._listener.datasets_changed()
        for event in events:
            if not event.key.startswith(NODES):
                continue
            node_uuid = event.key[len(NODES):].decode()
            if event.type == "PUT":
                self._listener.report_stored(node_uuid, *_report(event.kv.value))
            else:
                self._listener.report_removed(node_uuid)
        if events:
            self._listener.store_advanced(events[-1].revision)


def _report(value):
    """(report, received) of a stored node report."""
    stored = json.loads(value)
    return stored["report"], stored["received"]
