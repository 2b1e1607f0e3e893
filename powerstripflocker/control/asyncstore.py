"""The control service's persistence, asynchronous: IAsyncStore, with EtcdStore over
IEtcd (replicas of the control service on one etcd cluster, docs/etcd.md) and
AsyncStore over any synchronous IStore (SQLite).

A decision that reads and then writes is a function given to decide(): it reads
from one snapshot and its changes are applied together only if nothing it read
has changed by then, or else it runs again on the state as it is now. The
control service does not use this interface yet; tests/control/async_store_contract.py
is its contract, run on all three.
"""

import json

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from powerstripflocker.clients.etcd import Compacted, Compare, Delete, Put
from powerstripflocker.control.store import Dataset, DatasetExists, Lease, StoreBusy, configuration_tag_of

DATASETS = b"datasets/"
LEASES = b"leases/"
NODES = b"nodes/"
# Put by every change of a dataset (other than its manifested flag) or a lease: a
# decision that listed them compares its revision, so none was added or dropped since.
GUARD = b"config/guard"

# How many times a decision runs, others changing what it read each time, before StoreBusy.
DECISION_ATTEMPTS = 10


class IAsyncStore(Interface):
    """IStore's calls, each answering a Deferred, and decide() for transactions."""

    def decide(decision):
        """Deferred firing with what decision(view) (a coroutine function) returns.

        The view has IStore's reads and changes except close, transaction and
        node_reports, each answering a Deferred; its reads come from one snapshot
        and see the decision's own changes. The changes are applied together, and
        only if nothing the decision read has changed by then; otherwise the
        decision runs again on the state as it is then (StoreBusy after a few
        tries), so it must change nothing except through its view. When the
        decision raises, nothing changes and the exception passes through."""

    def close():
        """Deferred None; no call after this one."""

    def node_reports():
        """Deferred [(node_uuid, report dict, received)], as IStore.node_reports."""

    def is_empty():
        """Deferred True when the store holds nothing at all: no dataset, lease or node
        report, nor anything else it keeps (on etcd: no key under its prefix)."""

    # And every call of VIEW_CALLS, as IStore's but answering a Deferred, each a
    # decision of its own.

    def datasets():
        """Deferred: IStore.datasets."""

    def datasets_named(name):
        """Deferred: IStore.datasets_named."""

    def get_dataset(dataset_id):
        """Deferred: IStore.get_dataset."""

    def leases():
        """Deferred: IStore.leases."""

    def get_lease(dataset_id):
        """Deferred: IStore.get_lease."""

    def configuration_tag():
        """Deferred: IStore.configuration_tag."""

    def add_dataset(dataset):
        """Deferred: IStore.add_dataset."""

    def import_dataset(dataset):
        """Deferred: IStore.import_dataset."""

    def set_primary(dataset_id, primary):
        """Deferred: IStore.set_primary."""

    def mark_deleted(dataset_id):
        """Deferred: IStore.mark_deleted."""

    def mark_restored(dataset_id):
        """Deferred: IStore.mark_restored."""

    def mark_manifested(dataset_ids):
        """Deferred: IStore.mark_manifested."""

    def put_lease(lease):
        """Deferred: IStore.put_lease."""

    def delete_lease(dataset_id):
        """Deferred: IStore.delete_lease."""

    def expire_leases(now):
        """Deferred: IStore.expire_leases."""

    def put_node_report(node_uuid, report, received):
        """Deferred: IStore.put_node_report."""

    def touch_node_report(node_uuid, received):
        """Deferred: IStore.touch_node_report."""

    def delete_node_report(node_uuid):
        """Deferred: IStore.delete_node_report."""


# The calls a decision's view has, and so every IAsyncStore has through decide().
VIEW_CALLS = (
    "datasets", "datasets_named", "get_dataset", "leases", "get_lease", "configuration_tag",
    "add_dataset", "import_dataset", "set_primary", "mark_deleted", "mark_restored",
    "mark_manifested", "put_lease", "delete_lease", "expire_leases", "put_node_report",
    "touch_node_report", "delete_node_report",
)


class _Decided:
    """The store calls as decisions of one call each."""

    def _one_call(self, name, *args):
        async def decision(view):
            return await getattr(view, name)(*args)
        return self.decide(decision)


def _forward(name):
    def call(self, *args):
        return self._one_call(name, *args)
    call.__name__ = name
    return call


for _name in VIEW_CALLS:
    setattr(_Decided, _name, _forward(_name))


# -------------------------------------------------------------- over a synchronous IStore


class _SynchronousView:
    def __init__(self, store):
        self._store = store

    def __getattr__(self, name):
        if name not in VIEW_CALLS:
            raise AttributeError(name)
        call = getattr(self._store, name)
        return lambda *args: maybeDeferred(call, *args)


@implementer(IAsyncStore)
class AsyncStore(_Decided):
    """IAsyncStore over a synchronous IStore: a decision runs in one of its
    transactions, which is why it may wait on nothing but its view."""

    def __init__(self, store):
        self.store = store

    def decide(self, decision):
        try:
            with self.store.transaction():
                outcome = []
                running = Deferred.fromCoroutine(decision(_SynchronousView(self.store)))
                running.addBoth(outcome.append)
                if not outcome:
                    running.cancel()
                    raise RuntimeError(
                        "a decision on a synchronous store waited on something else "
                        "than its view")
                if isinstance(outcome[0], Failure):
                    outcome[0].raiseException()
        except Exception:
            return fail()
        return succeed(outcome[0])

    def close(self):
        return maybeDeferred(self.store.close)

    def node_reports(self):
        return maybeDeferred(self.store.node_reports)

    def is_empty(self):
        store = self.store
        return maybeDeferred(
            lambda: not (store.datasets() or store.leases() or store.node_reports()))


# -------------------------------------------------------------- on etcd


def _dataset_value(dataset):
    return json.dumps({
        "primary": dataset.primary, "metadata": dataset.metadata,
        "maximum_size": dataset.maximum_size, "deleted": dataset.deleted,
        "manifested": dataset.manifested, "origin": dataset.origin,
        "generation": dataset.generation,
    }, sort_keys=True).encode()


def _dataset(key, value):
    fields = json.loads(value)
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

    def __init__(self, etcd):
        self._etcd = etcd
        self._revision = 0  # the snapshot, from the first read on
        self._read = {}  # key -> (mod_revision, 0 when absent; value or None)
        self._changes = {}  # key -> value, or None for a delete; in the order made
        self._changes_configuration = False

    # reading

    async def _range(self, key, prefix=False):
        result = await self._etcd.range(key, prefix=prefix, revision=self._revision)
        if not self._revision:
            self._revision = result.revision
        return result

    async def _get(self, key):
        if key in self._changes:
            return self._changes[key]
        if key not in self._read:
            [kv] = (await self._range(key)).kvs or [None]
            self._read[key] = (0, None) if kv is None else (kv.mod_revision, kv.value)
        return self._read[key][1]

    async def _list(self, prefix):
        """[(key, value)] under prefix, oldest first, then those this decision added."""
        await self._get(GUARD)
        kvs = (await self._range(prefix, prefix=True)).kvs
        listed = {kv.key: kv.value for kv in sorted(kvs, key=lambda kv: kv.create_revision)}
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

    # changing

    def _change(self, key, value, configuration=True):
        self._changes.pop(key, None)
        self._changes[key] = value
        self._changes_configuration = self._changes_configuration or configuration

    async def add_dataset(self, dataset):
        if await self.get_dataset(dataset.dataset_id) is not None:
            raise DatasetExists(dataset.dataset_id)
        fresh = Dataset(dataset.dataset_id, dataset.primary, dict(dataset.metadata),
                        dataset.maximum_size, dataset.deleted, False, dataset.origin, 1)
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
            await self._replace(dataset_id, primary=primary, generation=dataset.generation + 1)

    async def mark_deleted(self, dataset_id):
        await self._replace(dataset_id, deleted=True)

    async def mark_restored(self, dataset_id):
        await self._replace(dataset_id, deleted=False)

    async def mark_manifested(self, dataset_ids):
        changed = []
        for dataset_id in dataset_ids:
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
        operations = [Delete(key) if value is None else Put(key, value)
                      for key, value in self._changes.items()]
        if self._changes_configuration:
            operations.append(Put(GUARD, b""))
        if not (await self._etcd.txn(compares, operations)).succeeded:
            raise _Conflict()


@implementer(IAsyncStore)
class EtcdStore(_Decided):
    """The configuration and node reports in an IEtcd key space (docs/etcd.md).

    A commit whose outcome etcd cannot tell fails with OutcomeUnknown: the caller
    reads again to see whether it happened (a decision is not run again for it)."""

    def __init__(self, etcd):
        self.etcd = etcd

    def decide(self, decision):
        async def attempts():
            for _ in range(DECISION_ATTEMPTS):
                view = _EtcdView(self.etcd)
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
                stored = json.loads(kv.value)
                reports.append((kv.key[len(NODES):].decode(), stored["report"],
                                stored["received"]))
            return reports
        return Deferred.fromCoroutine(read())
