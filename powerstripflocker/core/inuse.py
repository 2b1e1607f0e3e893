"""Which datasets are in use on this node, held as Flocker leases, and fencing.

The kernel's mount table is the truth: a dataset is in use while its path, or anything
under it, is mounted in any mount namespace on this node (KernelMounts, kernel_mounts.py,
reads /proc/*/mountinfo), whether or not dockerd runs or knows about it. Docker's
container list and events add the names of the containers using it, for messages, and
make a start or a stop count at once instead of at the next scan.

LeaseKeeper (lease_keeper.py) holds a lease (with an expiry, renewed every third of it) on
a dataset while anything on this node uses it, and says when the lease may have lapsed.
UseTracker, here, keeps the keeper's holders equal to what the kernel and Docker report
(at start, every poll_seconds, on every container event) and fences through a Fencer
(fencing.py): `docker kill` of the containers, then SIGKILL of whatever still has the
dataset mounted (dockerd dead, or no container at all).
"""

import os
import time

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger

from powerstripflocker.clients.docker import DockerUnavailable
from powerstripflocker.core.kernel_mounts import under

log = Logger()

DEFAULT_POLL_SECONDS = 0.5
RECONNECT_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0)


def dataset_of(source, local_paths):
    """The dataset whose local path is source or contains it, else None."""
    source = os.path.normpath(source)
    for path, dataset_id in local_paths.items():
        if under(source, os.path.normpath(path)):
            return dataset_id
    return None


def containers_by_dataset(containers, local_paths):
    """{dataset_id: {container id: "NAME, since HH:MM:SS"}} for running containers."""
    uses = {}
    for container in containers:
        since = time.strftime("%H:%M:%S", time.localtime(container.created))
        for mount in container.mounts:
            dataset_id = dataset_of(mount.source, local_paths)
            if dataset_id is not None:
                uses.setdefault(dataset_id, {})[container.id] = f"{container.name}, since {since}"
    return uses


CONTAINER = "container:"
MOUNT = "mount:"


class UseTracker:
    """Keeps a LeaseKeeper's holders equal to what uses the node's datasets: the mount
    namespaces that have them mounted (KernelMounts, every poll_seconds) and the
    running containers Docker reports (when an engine is given: at start, on its events
    and after every reconnection). Fences (through fencer) a dataset whose lease lapses.

    local_paths() returns {path on this node: dataset_id} for the node's datasets.
    """

    def __init__(self, engine, keeper, local_paths, clock, on_change=lambda: None,
                 mounts=None, fencer=None, poll_seconds=DEFAULT_POLL_SECONDS):
        self._engine = engine
        self._keeper = keeper
        self._local_paths = local_paths
        self._clock = clock
        self._on_change = on_change
        self._mounts = mounts
        self._fencer = fencer
        self.mounted = {}           # dataset_id -> [MountUse], as of the latest scan
        # Docker sends "die" before its container list stops showing the container as
        # running; containers seen to die count as stopped until they start again.
        self._ended = set()
        self._periodic = LoopingCall(self.reconcile)
        self._periodic.clock = clock
        self._polling = LoopingCall(self.scan_mounts)
        self._polling.clock = clock
        self._poll_seconds = poll_seconds
        self._running = False
        self._reconciling = None
        self._again = False
        self._watching = None
        self.docker_error = None    # why the latest container list could not be read
        self._pause = None          # the wait before reconnecting to Docker

    def start(self):
        """Scan the mount table at once (a restarted agent knows what is in use before
        anything else happens, dockerd or not), then keep watching."""
        self._running = True
        self._keeper.start()
        polling = None
        if self._mounts is not None:
            polling = self._polling.start(self._poll_seconds, now=True)
        if self._engine is None:
            return polling
        # A safety net for events lost while the stream reconnects.
        self._periodic.start(self._keeper.lease_seconds / 3, now=False)
        self._watching = Deferred.fromCoroutine(self._watch_forever())
        return self._watching

    def stop(self):
        self._running = False
        for loop in (self._periodic, self._polling):
            if loop.running:
                loop.stop()
        self._keeper.stop()
        if self._engine is not None:
            self._engine.stop_watching()
        if self._pause is not None:
            self._pause.cancel()

    def in_use(self, dataset_id, fresh=False):
        """Descriptions of what uses dataset_id here ([] when nothing does); fresh=True
        asks the kernel now instead of using the latest scan."""
        users = self.users_of(dataset_id)
        if fresh and self._mounts is not None:
            paths = {path: d for path, d in self._local_paths().items() if d == dataset_id}
            uses = self._mounts.scan(paths).get(dataset_id, [])
        else:
            uses = self.mounted.get(dataset_id, [])
        return users or [use.describe() for use in uses]

    def users_of(self, dataset_id):
        """Descriptions of what uses dataset_id here: the containers Docker names
        ("web, since 12:03:04"), else the processes the kernel shows mounting it."""
        holders = self._keeper.holders(dataset_id)
        containers = sorted(description for holder, description in holders.items()
                            if holder.startswith(CONTAINER))
        return containers or sorted(description for holder, description in holders.items()
                                    if holder.startswith(MOUNT))

    def scan_mounts(self):
        """Hold a lease for every mount namespace that has a dataset mounted; release it
        for those that no longer do."""
        if self._mounts is None:
            return None
        try:
            self.mounted = self._mounts.scan(self._local_paths())
        except OSError as reason:
            log.error("cannot read the mount table: {reason}", reason=reason)
            return None
        self._apply_mounts()
        return None

    def _apply_mounts(self):
        """Update the keeper's holders now; its calls to the control service go on in
        the background, so a slow control service never delays the next scan."""
        before = {d: self.users_of(d) for d in self._keeper.held()}
        calls = []
        for dataset_id, uses in self.mounted.items():
            for use in uses:
                holder = MOUNT + use.namespace
                if holder not in self._keeper.holders(dataset_id):
                    log.info("dataset {dataset_id} is mounted by {use}; holding its lease",
                             dataset_id=dataset_id, use=use.describe())
                calls.append(self._keeper.hold(dataset_id, holder, use.describe()))
        for dataset_id in self._keeper.held():
            mounted = {MOUNT + use.namespace for use in self.mounted.get(dataset_id, [])}
            for holder in self._keeper.holders(dataset_id):
                if holder.startswith(MOUNT) and holder not in mounted:
                    calls.append(self._keeper.release(dataset_id, holder))
        for call in calls:
            Deferred.fromCoroutine(call).addErrback(
                lambda failure: log.failure("keeping a lease", failure))
        if {d: self.users_of(d) for d in self._keeper.held()} != before:
            self._on_change()

    def fence(self, dataset_id, reason):
        """LeaseKeeper's on_lapse: stop the users of dataset_id here."""
        paths = [path for path, d in self._local_paths().items() if d == dataset_id]
        if self._fencer is None or not paths:
            log.error("dataset {dataset_id} is used here but {reason}; nothing to fence "
                      "with", dataset_id=dataset_id, reason=reason)
            return None
        containers = {holder[len(CONTAINER):]: description for holder, description in
                      self._keeper.holders(dataset_id).items()
                      if holder.startswith(CONTAINER)}
        done = self._fencer.fence(dataset_id, paths[0], containers, reason)
        done.addCallback(lambda _: self._after_fencing())
        done.addErrback(lambda failure: log.failure("fencing {dataset_id}", failure,
                                                    dataset_id=dataset_id))
        return done

    def _after_fencing(self):
        self.scan_mounts()
        if self._engine is not None:
            self.reconcile()

    def reconcile(self):
        """Bring the leases in line with the running containers; calls arriving while
        one runs are folded into one more run."""
        if self._engine is None:
            return self.scan_mounts()
        if self._reconciling is not None:
            self._again = True
            return self._reconciling
        running = Deferred.fromCoroutine(self._reconcile_until_quiet())
        if not running.called:  # a run that finished at once has already cleared the flag
            self._reconciling = running
        return running

    async def _reconcile_until_quiet(self):
        try:
            while True:
                self._again = False
                await self._reconcile_once()
                if not self._again:
                    return
        finally:
            self._reconciling = None

    async def _reconcile_once(self):
        before = {d: self.users_of(d) for d in self._keeper.held()}
        try:
            containers = await self._engine.running_containers()
        except DockerUnavailable as reason:
            # Kept as it was: the kernel's mount table still tells what runs.
            self.docker_error = reason
            return
        self.docker_error = None
        await self._apply(containers)
        if {d: self.users_of(d) for d in self._keeper.held()} != before:
            self._on_change()

    async def _apply(self, containers):
        listed = {container.id for container in containers}
        self._ended &= listed
        containers = [c for c in containers if c.id not in self._ended]
        uses = containers_by_dataset(containers, self._local_paths())
        for dataset_id, users in uses.items():
            for container_id, description in users.items():
                if CONTAINER + container_id not in self._keeper.holders(dataset_id):
                    log.info("container {container} uses dataset {dataset_id}; holding its "
                             "lease", container=description, dataset_id=dataset_id)
                await self._keeper.hold(dataset_id, CONTAINER + container_id, description)
        for dataset_id in self._keeper.held():
            for holder in self._keeper.holders(dataset_id):
                container_id = holder[len(CONTAINER):]
                if holder.startswith(CONTAINER) and container_id not in uses.get(
                        dataset_id, {}):
                    await self._keeper.release(dataset_id, holder)

    def _on_event(self, event):
        if event.action == "start":
            self._ended.discard(event.container_id)
        elif event.action in ("die", "destroy"):
            self._ended.add(event.container_id)
        if event.action in ("start", "die", "destroy", "restart", "stop"):
            self.reconcile()
            self.scan_mounts()

    async def _watch_forever(self):
        failures = 0
        while self._running:
            since = self._clock.seconds()
            try:
                await self.reconcile()
                if self.docker_error is not None:
                    raise self.docker_error
                failures = 0
                await self._engine.watch_events(self._on_event, since=since)
            except DockerUnavailable as reason:
                failures += 1
                log.warn("Docker is not answering ({reason}); in-use tracking goes on from "
                         "the kernel's mount table", reason=reason)
            if self._running:
                delay = RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)]
                self._pause = deferLater(self._clock, delay, lambda: None)
                try:
                    await self._pause
                except CancelledError:
                    return
                finally:
                    self._pause = None
