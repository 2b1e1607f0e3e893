"""Make named volumes local to this node: claim each from the control service, which
creates it here, moves it here or, once it is here, leases it to this node.

The one core behind every frontend (the Powerstrip adapter and the volume plugin).
"""

from dataclasses import dataclass

from twisted.internet.defer import (
    Deferred, DeferredList, DeferredLock, TimeoutError as DeferredTimeout,
)
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from powerstripflocker.clients.flocker import (
    ClaimedElsewhere, ConfigurationChanged, ControlServiceUnreachable, FlockerAPIError,
    REPLICAS_KEY, HeldElsewhere, NotFound,
)

log = Logger()

DEFAULT_DEADLINE = 120.0
# A hook's claim lapses by itself if the container never starts; the node's agent renews
# it (as its own lease) once a container uses the volume.
DEFAULT_CLAIM_SECONDS = 30.0
FIRST_POLL = 0.05
LONGEST_POLL = 1.0
# A container that just stopped on the holder is released by its agent within moments
# of `docker stop` returning; a refusal naming it is asked again for this long (at
# FIRST_POLL) before it is final, so `docker stop` there then `docker run` here works.
IN_USE_RECHECK = 0.3
CONDITIONAL_CREATE_ATTEMPTS = 20


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


class VolumeStalled(PlacementError):
    """The move here stopped: its sender used up its retries."""

    kind = "stalled"


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


def volume_view(name, datasets, states, node_uuid):
    """The VolumeView of name from its datasets and its chosen dataset's state, or None."""
    return volume_views(datasets, states, node_uuid).get(name)


def describe_claim(claim):
    """Human words for how far a claim that is not ready yet got."""
    if claim.status == "creating":
        return "it is still being created: this node's agent has not reported it yet"
    if claim.bytes_total:
        copied = f"{claim.bytes_done} of {claim.bytes_total} bytes copied"
    else:
        copied = f"{claim.bytes_done} bytes copied so far"
    return f"it is still moving from {_source_words(claim)} ({copied})"


def _source_words(claim):
    """The node a claimed dataset moves from, as the user knows it."""
    if claim.source is None:
        return "its old primary"
    return claim.source.host or f"node {claim.source.uuid}"


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
    """place(names) -> Deferred firing with {name: LocalVolume on this node}.

    Each name is claimed from the control service, which decides in one transaction
    whether to create it here, move it here, or (once it is here) lease it to this node;
    the claim is asked again, backing off, until it is ready or refused."""

    def __init__(self, api, clock, node_uuid=None, node_address=None,
                 deadline=DEFAULT_DEADLINE, maximum_size=None, metrics=None,
                 claim_seconds=DEFAULT_CLAIM_SECONDS, replicas=None):
        """maximum_size, replicas: of the volumes a claim creates (replicas None: the
        control service's --default-replicas)."""
        if node_uuid is None and node_address is None:
            raise ValueError("give this node's UUID or its address")
        self._api = api
        self._clock = clock
        self._node_uuid = node_uuid
        self._node_address = node_address
        self.deadline = deadline
        self.claim_seconds = claim_seconds
        self._maximum_size = maximum_size
        # Sent only when given: an IFlockerAPI from before replicas takes no such argument.
        self._claim_options = {} if replicas is None else {"replicas": replicas}
        self._metrics = metrics
        self._flights = SingleFlight()
        # The plugin's Create goes one at a time: a conditional create fails when any
        # dataset changed, so concurrent creates here would only invalidate each other's tag.
        self._creating = DeferredLock()
        self._this_node = None

    def place(self, names):
        """Deferred firing with {name: LocalVolume}: each volume local to this node."""
        return Deferred.fromCoroutine(self._place_all(list(dict.fromkeys(names))))

    def ensure_local(self, names):
        """place(names), answering only what the hook needs: {name: path on this node}."""
        return self.place(names).addCallback(
            lambda volumes: {name: volume.path for name, volume in volumes.items()})

    async def _place_all(self, names):
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

    def create(self, name, maximum_size=None, replicas=None):
        """Make sure a dataset is named name (a new one is created on this node) without
        waiting for it to exist anywhere or moving it; fires with its DatasetConfig.
        replicas: the copies a new one keeps besides the primary (None: the control
        service's default); an existing one keeps its own."""
        async def create():
            deadline_at = self._clock.seconds() + self.deadline
            node = await self.this_node(deadline_at, name)
            found = await self._named(name, deadline_at)
            if found is not None:
                return found
            acquired = self._creating.acquire()
            acquired.addTimeout(max(deadline_at - self._clock.seconds(), 0.001), self._clock)
            try:
                await acquired
            except DeferredTimeout:
                raise PlacementTimeout(
                    f"volume {name!r}: other volumes being created on this node took the "
                    f"whole {self.deadline:g}s deadline"
                ) from None
            try:
                return await self._create_one_at_a_time(name, node, deadline_at, maximum_size,
                                                        replicas)
            finally:
                self._creating.release()
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

    def view(self, name, timeout):
        """The VolumeView of one name (None if no live dataset has it), read without
        looking at the rest of the cluster, within timeout."""
        async def look():
            deadline_at = self._clock.seconds() + timeout
            node = await self.this_node(deadline_at, name)
            configuration = await self._call(
                self._api.datasets_named(name), name, deadline_at)
            chosen = self._chosen(configuration.datasets, name)
            if chosen is None:
                return None
            states = await self._call(
                self._api.list_datasets_state(chosen.dataset_id), name, deadline_at)
            return volume_view(name, [chosen], states, node.uuid)
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
        delay = FIRST_POLL
        generation = None  # of the last answer: a later claim must not take it back
        last = None  # the last answer or refusal, for the deadline's message
        in_use_since = None
        while True:
            try:
                claim = await self._call(
                    self._api.claim(name, node.uuid, expires=self.claim_seconds,
                                    maximum_size=self._maximum_size, generation=generation,
                                    **self._claim_options),
                    name, deadline_at)
            except HeldElsewhere as refusal:
                if refusal.holder.users:
                    if in_use_since is None:
                        in_use_since = self._clock.seconds()
                    elif self._clock.seconds() - in_use_since >= IN_USE_RECHECK:
                        raise VolumeInUse(refusal.description) from None
                    delay = FIRST_POLL
                # Else the holder reports no running user: its release is on its way.
                last = refusal
            except ClaimedElsewhere as refusal:
                raise VolumeClaimedElsewhere(refusal.description) from None
            except NotFound:
                raise PlacementError(
                    f"volume {name!r}: the control service has no claims endpoint "
                    f"(POST /v1/configuration/claims); use powerstrip-flocker's own "
                    f"control service"
                ) from None
            else:
                if generation is None:
                    self._note_first_answer(name, node, claim)
                generation = claim.generation
                if claim.status == "ready":
                    return LocalVolume(claim.dataset_id, claim.path)
                if claim.stalled:
                    raise VolumeStalled(f"volume {name!r}: the move from "
                                        f"{_source_words(claim)} stalled: {claim.error}")
                last = claim
            remaining = deadline_at - self._clock.seconds()
            if remaining <= 0:
                raise self._deadline_error(name, node, last)
            await deferLater(self._clock, min(delay, remaining), lambda: None)
            delay = min(delay * 2, LONGEST_POLL)

    def _note_first_answer(self, name, node, claim):
        if claim.status == "creating":
            log.info("creating volume {volume} as dataset {dataset_id} on this node {node}",
                     volume=name, dataset_id=claim.dataset_id, node=node.uuid)
            if self._metrics is not None:
                self._metrics.creates.inc()
        elif claim.status == "moving":
            log.info("moving volume {volume} (dataset {dataset_id}) from {source} to this "
                     "node {target}", volume=name, dataset_id=claim.dataset_id,
                     source=_source_words(claim), target=node.uuid)
            if self._metrics is not None:
                self._metrics.moves.inc()

    def _deadline_error(self, name, node, last):
        if isinstance(last, HeldElsewhere):
            return VolumeInUse(last.description)
        here = node.host or "this node"
        return PlacementTimeout(
            f"volume {name!r} (dataset {last.dataset_id}) is not on {here} (node "
            f"{node.uuid}) after {self.deadline:g}s: {describe_claim(last)}"
        )

    async def _named(self, name, deadline_at):
        configuration = await self._call(self._api.datasets_named(name), name, deadline_at)
        return self._chosen(configuration.datasets, name)

    def _chosen(self, datasets, name):
        candidates = live_datasets_named(datasets, name)
        if not candidates:
            return None
        chosen = choose_dataset(candidates)
        if len(candidates) > 1:
            log.warn("volume {volume} names {count} datasets; using {dataset_id}, "
                     "the smallest id", volume=name, count=len(candidates),
                     dataset_id=chosen.dataset_id)
        return chosen

    async def _create_one_at_a_time(self, name, node, deadline_at, maximum_size, replicas):
        metadata = {"name": name}
        if replicas is not None:
            metadata[REPLICAS_KEY] = str(replicas)
        for _ in range(CONDITIONAL_CREATE_ATTEMPTS):
            configuration = await self._call(self._api.datasets_named(name), name, deadline_at)
            found = self._chosen(configuration.datasets, name)
            if found is not None:
                return found
            try:
                created = await self._call(
                    self._api.create_dataset(
                        primary=node.uuid, metadata=metadata,
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
