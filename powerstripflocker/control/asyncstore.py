"""The control service's persistence, asynchronous: IAsyncStore, with EtcdStore over
IEtcd (replicas of the control service on one etcd cluster, docs/etcd.md) and
AsyncStore over any synchronous IStore (SQLite).

A decision that reads and then writes is a function given to decide(): it reads
from one snapshot and its changes are applied together only if nothing it read
has changed by then, or else it runs again on the state as it is now.
tests/control/async_store_contract.py is its contract, run on all three.

EtcdStore is in etcdstore.py.
"""

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

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
        decision raises, nothing changes and the exception passes through.

        The view also has decided_tag(): the configuration tag as the decision leaves
        it, which does not make the decision depend on everything the tag covers."""

    def close():
        """Deferred None; no call after this one."""

    def node_reports():
        """Deferred [(node_uuid, report dict, received)], as IStore.node_reports."""

    def follow(listener, clock):
        """None when this process is the store's only writer (SQLite: the lock file says
        so). Otherwise an object with stop() (a Deferred), having started to tell
        listener what other writers do: reports_loaded([(node_uuid, report, received)])
        with every stored node report, then report_stored(node_uuid, report, received)
        and report_removed(node_uuid) as they happen, datasets_changed() when any dataset
        was added or changed (or may have been, after a gap), and store_advanced(revision)
        after each of those and each other change; clock paces its retries."""

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

    def set_replica_nodes(dataset_id, nodes):
        """Deferred: IStore.set_replica_nodes."""

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
    "add_dataset", "import_dataset", "set_primary", "set_replica_nodes", "mark_deleted",
    "mark_restored", "mark_manifested", "put_lease", "delete_lease", "expire_leases",
    "put_node_report", "touch_node_report", "delete_node_report",
)


class Decided:
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
    setattr(Decided, _name, _forward(_name))


# -------------------------------------------------------------- over a synchronous IStore


class _SynchronousView:
    def __init__(self, store):
        self._store = store

    def decided_tag(self):
        # Inside the decision's transaction the store's tag is the decided one.
        return maybeDeferred(self._store.configuration_tag)

    def __getattr__(self, name):
        if name not in VIEW_CALLS:
            raise AttributeError(name)
        call = getattr(self._store, name)
        return lambda *args: maybeDeferred(call, *args)


@implementer(IAsyncStore)
class AsyncStore(Decided):
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

    def follow(self, listener, clock):
        return None

    def is_empty(self):
        store = self.store
        return maybeDeferred(
            lambda: not (store.datasets() or store.leases() or store.node_reports()))
