"""Make named volumes local to this node: create or move their datasets, wait for state.

The one core behind every frontend (the Powerstrip adapter and the volume plugin).
"""

from dataclasses import dataclass

from twisted.internet.defer import (
    Deferred, DeferredList, DeferredLock, TimeoutError as DeferredTimeout,
)
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from .flocker import ConfigurationChanged, ControlServiceUnreachable, FlockerAPIError

log = Logger()

DEFAULT_DEADLINE = 120.0
FIRST_POLL = 0.05
LONGEST_POLL = 1.0
CONDITIONAL_CREATE_ATTEMPTS = 20
IN_USE_GRACE = 3.0
IN_USE_POLL = 0.25


class PlacementError(Exception):
    """A volume could not be made local. The message names the volume and the reason."""

    kind = "error"


class VolumeInUse(PlacementError):
    kind = "in_use"


class PlacementTimeout(PlacementError):
    kind = "deadline"


class VolumeClaimedElsewhere(PlacementError):
    """Another node asked for the volume while this node waited for it."""

    kind = "conflict"


class ControlServiceUnavailable(PlacementError):
    kind = "unreachable"


class NodeUnknown(PlacementError):
    kind = "node_unknown"


@dataclass(frozen=True)
class ThisNode:
    uuid: str
    host: str | None


@dataclass(frozen=True)
class LocalVolume:
    dataset_id: str
    path: str


@dataclass(frozen=True)
class VolumeView:
    """What the cluster says about one named volume, seen from this node."""

    name: str
    dataset: object  # DatasetConfig
    local_path: str  # "" unless the dataset is usable on this node
    holder: str | None  # node uuid that reports it, if any


def volume_views(datasets, states, node_uuid):
    """{name: VolumeView} of every named, live dataset; duplicates resolved as placement does."""
    by_name = {}
    for dataset in datasets:
        if not dataset.deleted and dataset.name:
            by_name.setdefault(dataset.name, []).append(dataset)
    views = {}
    for name, candidates in by_name.items():
        chosen = choose_dataset(candidates)
        entries = [s for s in states if s.dataset_id == chosen.dataset_id and s.primary]
        local = [e.path for e in entries if e.primary == node_uuid and e.path]
        holder = entries[0].primary if len(entries) == 1 else None
        views[name] = VolumeView(name, chosen, local[0] if len(entries) == 1 and local else "",
                                 holder)
    return views


def choose_dataset(candidates):
    """The dataset that owns a name when several do: the smallest id, on every node."""
    return min(candidates, key=lambda dataset: dataset.dataset_id)


def live_datasets_named(datasets, name):
    return [d for d in datasets if not d.deleted and d.name == name]


def describe_state(entries, hosts):
    """Human words for what state said about one dataset."""
    if not entries:
        return "not reported by any node"
    parts = []
    for entry in entries:
        if entry.primary is None:
            parts.append("known but attached nowhere")
        else:
            where = hosts.get(entry.primary, entry.primary)
            parts.append(f"on {where} at {entry.path}" if entry.path else f"on {where}, no path")
    return "; ".join(parts)


class SingleFlight:
    """Callers asking for the same key while its operation runs share that operation."""

    def __init__(self):
        self._waiting = {}

    def run(self, key, start):
        observers = self._waiting.get(key)
        observer = Deferred()
        if observers is not None:
            observers.append(observer)
            return observer
        self._waiting[key] = [observer]
        start().addBoth(self._finish, key)
        return observer

    def _finish(self, result, key):
        for observer in self._waiting.pop(key):
            if isinstance(result, Failure):
                observer.errback(result)
            else:
                observer.callback(result)


class Placement:
    """ensure_local(names) -> Deferred firing with {name: path on this node}."""

    def __init__(self, api, clock, node_uuid=None, node_address=None,
                 deadline=DEFAULT_DEADLINE, maximum_size=None, metrics=None, usage=None):
        if node_uuid is None and node_address is None:
            raise ValueError("give this node's UUID or its address")
        self._api = api
        self._clock = clock
        self._node_uuid = node_uuid
        self._node_address = node_address
        self.deadline = deadline
        self._maximum_size = maximum_size
        self._metrics = metrics
        # usage(dataset_id, node_uuid) -> the containers that node says use the dataset
        self._usage = usage
        self._flights = SingleFlight()
        # Creates from this process go one at a time: a conditional create fails when any
        # dataset changed, so concurrent creates of different names here would only keep
        # invalidating each other's configuration tag (50 at once exhausted the attempts).
        self._creating = DeferredLock()
        self._this_node = None

    def ensure_local(self, names):
        """Deferred firing with {name: path on this node}."""
        async def paths():
            volumes = await self._ensure_local(list(dict.fromkeys(names)))
            return {name: volume.path for name, volume in volumes.items()}
        return Deferred.fromCoroutine(paths())

    def place(self, names):
        """Deferred firing with {name: LocalVolume}."""
        return Deferred.fromCoroutine(self._ensure_local(list(dict.fromkeys(names))))

    async def _ensure_local(self, names):
        deadline_at = self._clock.seconds() + self.deadline
        node = await self.this_node(deadline_at, ", ".join(names))
        placements = [
            self._flights.run(name, lambda name=name: Deferred.fromCoroutine(
                self._place_measured(name, node, deadline_at)))
            for name in names
        ]
        results = await DeferredList(placements, consumeErrors=True)
        for success, value in results:
            if not success:
                value.raiseException()
        return dict(zip(names, (value for _, value in results)))

    def create(self, name, maximum_size=None):
        """Make sure a dataset is named name (a new one is created on this node) without
        waiting for it to exist anywhere; fires with its DatasetConfig."""
        async def create():
            deadline_at = self._clock.seconds() + self.deadline
            node = await self.this_node(deadline_at, name)
            return await self._find_or_create(name, node, deadline_at, maximum_size)
        return Deferred.fromCoroutine(create())

    def views(self, timeout):
        """{name: VolumeView} from one look at configuration and state, within timeout."""
        async def look():
            deadline_at = self._clock.seconds() + timeout
            node = await self.this_node(deadline_at, "volumes")
            configuration = await self._call(
                self._api.list_datasets_configuration(), "volumes", deadline_at)
            states = await self._call(self._api.list_datasets_state(), "volumes", deadline_at)
            return volume_views(configuration.datasets, states, node.uuid)
        return Deferred.fromCoroutine(look())

    async def this_node(self, deadline_at=None, volumes="this node"):
        """This node's identity, looked up by address in /v1/state/nodes if needed."""
        if self._this_node is not None:
            return self._this_node
        if deadline_at is None:
            deadline_at = self._clock.seconds() + self.deadline
        delay = FIRST_POLL
        while True:
            nodes = await self._call(self._api.list_nodes(), volumes, deadline_at)
            for node in nodes:
                if node.uuid == self._node_uuid or (
                        self._node_uuid is None and node.host == self._node_address):
                    self._this_node = ThisNode(node.uuid, node.host)
                    return self._this_node
            if self._node_uuid is not None:
                # A node with no agent report yet can still be the target of a create.
                return ThisNode(self._node_uuid, None)
            remaining = deadline_at - self._clock.seconds()
            if remaining <= 0:
                raise NodeUnknown(
                    f"this node (address {self._node_address}) is not registered with the "
                    f"control service after {self.deadline:g}s: is its agent running?"
                )
            await deferLater(self._clock, min(delay, remaining), lambda: None)
            delay = min(delay * 2, LONGEST_POLL)

    async def _call(self, deferred, volume, deadline_at):
        """Await one API call within the deadline, turning failures into PlacementErrors."""
        remaining = max(deadline_at - self._clock.seconds(), 0.001)
        deferred.addTimeout(remaining, self._clock)
        try:
            return await deferred
        except DeferredTimeout:
            raise PlacementTimeout(
                f"volume {volume!r}: the control service did not answer within the "
                f"{self.deadline:g}s deadline"
            ) from None
        except ControlServiceUnreachable as reason:
            raise ControlServiceUnavailable(f"volume {volume!r}: {reason}") from None

    async def _place_measured(self, name, node, deadline_at):
        started = self._clock.seconds()
        try:
            volume = await self._place(name, node, deadline_at)
        except PlacementError as reason:
            self._count_failure(reason.kind)
            raise
        except FlockerAPIError as reason:
            self._count_failure("api_error")
            raise PlacementError(
                f"volume {name!r}: the control service refused: {reason.description}"
            ) from None
        if self._metrics is not None:
            self._metrics.placement_seconds.observe(self._clock.seconds() - started)
        return volume

    def _count_failure(self, kind):
        if self._metrics is not None:
            self._metrics.failures.labels(kind=kind).inc()

    async def _place(self, name, node, deadline_at):
        # State is read while configuration is, so a volume already here costs one round
        # trip; the early read counts only if the dataset is neither created nor moved.
        early_state = Deferred.fromCoroutine(
            self._call(self._api.list_datasets_state(), name, deadline_at))
        early_state.addErrback(lambda failure: None)
        dataset = await self._find_or_create(name, node, deadline_at, self._maximum_size)
        if dataset.primary != node.uuid:
            early_state = None
            await self._refuse_if_leased_elsewhere(name, dataset.dataset_id, node, deadline_at)
            await self._call(
                self._api.move_dataset(dataset.dataset_id, node.uuid), name, deadline_at
            )
            log.info("moving volume {volume} (dataset {dataset_id}) from node {source} "
                     "to this node {target}", volume=name, dataset_id=dataset.dataset_id,
                     source=dataset.primary, target=node.uuid)
            if self._metrics is not None:
                self._metrics.moves.inc()
        path = await self._wait_until_local(name, dataset.dataset_id, node, deadline_at,
                                            early_state)
        return LocalVolume(dataset.dataset_id, path)

    async def _find_or_create(self, name, node, deadline_at, maximum_size):
        configuration = await self._call(
            self._api.list_datasets_configuration(), name, deadline_at
        )
        found = self._named(configuration, name)
        if found is not None:
            return found
        acquired = self._creating.acquire()
        acquired.addTimeout(max(deadline_at - self._clock.seconds(), 0.001), self._clock)
        try:
            await acquired
        except DeferredTimeout:
            raise PlacementTimeout(
                f"volume {name!r}: other volumes being created on this node took the whole "
                f"{self.deadline:g}s deadline"
            ) from None
        try:
            return await self._create_one_at_a_time(name, node, deadline_at, maximum_size)
        finally:
            self._creating.release()

    def _named(self, configuration, name):
        candidates = live_datasets_named(configuration.datasets, name)
        if not candidates:
            return None
        chosen = choose_dataset(candidates)
        if len(candidates) > 1:
            log.warn("volume {volume} names {count} datasets; using {dataset_id}, "
                     "the smallest id", volume=name, count=len(candidates),
                     dataset_id=chosen.dataset_id)
        return chosen

    async def _create_one_at_a_time(self, name, node, deadline_at, maximum_size):
        for _ in range(CONDITIONAL_CREATE_ATTEMPTS):
            configuration = await self._call(
                self._api.list_datasets_configuration(), name, deadline_at
            )
            found = self._named(configuration, name)
            if found is not None:
                return found
            try:
                created = await self._call(
                    self._api.create_dataset(
                        primary=node.uuid, metadata={"name": name},
                        maximum_size=maximum_size,
                        if_configuration_matches=configuration.tag,
                    ),
                    name, deadline_at,
                )
            except ConfigurationChanged:
                continue
            log.info("created volume {volume} as dataset {dataset_id} on this node {node}",
                     volume=name, dataset_id=created.dataset_id, node=node.uuid)
            if self._metrics is not None:
                self._metrics.creates.inc()
            return created
        raise PlacementError(
            f"volume {name!r}: the cluster configuration changed during each of "
            f"{CONDITIONAL_CREATE_ATTEMPTS} attempts to create it; try again"
        )

    async def _hosts(self, deadline_at):
        nodes = await self._call(self._api.list_nodes(), "nodes", deadline_at)
        return {node.uuid: node.host for node in nodes}

    async def _lease_elsewhere(self, name, dataset_id, node, deadline_at):
        leases = await self._call(self._api.list_leases(), name, deadline_at)
        for lease in leases:
            if lease.dataset_id == dataset_id and lease.node_uuid != node.uuid:
                return lease
        return None

    async def _refuse_if_leased_elsewhere(self, name, dataset_id, node, deadline_at):
        lease = await self._lease_elsewhere(name, dataset_id, node, deadline_at)
        # A container that just stopped there releases its lease within a moment: give
        # it IN_USE_GRACE seconds before refusing ("docker stop" then "docker run").
        waited = 0.0
        while lease is not None and waited < IN_USE_GRACE:
            await deferLater(self._clock, IN_USE_POLL, lambda: None)
            waited += IN_USE_POLL
            lease = await self._lease_elsewhere(name, dataset_id, node, deadline_at)
        if lease is None:
            return
        hosts = await self._hosts(deadline_at)
        holder = hosts.get(lease.node_uuid, "a node that is not reporting")
        users = []
        if self._usage is not None:
            users = await self._usage(dataset_id, lease.node_uuid)
        if users:
            what = ", ".join(f"container {user}" for user in users)
            raise VolumeInUse(f"volume {name!r} is in use on {holder} (node {lease.node_uuid}, "
                              f"{what}); stop it there first")
        raise VolumeInUse(
            f"volume {name!r} is in use on {holder} (node {lease.node_uuid} holds the lease on "
            f"dataset {dataset_id}); stop its containers there first, or run "
            f"'powerstrip-flocker release {name}' if that node is gone"
        )

    async def _refuse_if_claimed_elsewhere(self, name, dataset_id, node, deadline_at):
        configuration = await self._call(
            self._api.list_datasets_configuration(), name, deadline_at)
        for dataset in configuration.datasets:
            if dataset.dataset_id == dataset_id and dataset.primary != node.uuid:
                hosts = await self._hosts(deadline_at)
                claimant = hosts.get(dataset.primary, f"node {dataset.primary}")
                raise VolumeClaimedElsewhere(
                    f"volume {name!r} was claimed by {claimant} while this node waited for "
                    f"it; run the container on one node at a time"
                )

    async def _wait_until_local(self, name, dataset_id, node, deadline_at, early_state=None):
        delay = FIRST_POLL
        while True:
            states = await early_state if early_state is not None else None
            early_state = None
            if states is None:
                states = await self._call(self._api.list_datasets_state(), name, deadline_at)
            entries = [entry for entry in states if entry.dataset_id == dataset_id]
            if len(entries) == 1 and entries[0].primary == node.uuid and entries[0].path:
                return entries[0].path
            if any(entry.primary not in (None, node.uuid) for entry in entries):
                await self._refuse_if_leased_elsewhere(name, dataset_id, node, deadline_at)
                await self._refuse_if_claimed_elsewhere(name, dataset_id, node, deadline_at)
            remaining = deadline_at - self._clock.seconds()
            if remaining <= 0:
                hosts = await self._hosts_or_empty(deadline_at)
                here = node.host or hosts.get(node.uuid) or "this node"
                raise PlacementTimeout(
                    f"volume {name!r} (dataset {dataset_id}) is not on {here} (node "
                    f"{node.uuid}) after {self.deadline:g}s; last state seen: "
                    f"{describe_state(entries, hosts)}"
                )
            await deferLater(self._clock, min(delay, remaining), lambda: None)
            delay = min(delay * 2, LONGEST_POLL)

    async def _hosts_or_empty(self, deadline_at):
        try:
            return await self._hosts(deadline_at + 5)
        except PlacementError:
            return {}
