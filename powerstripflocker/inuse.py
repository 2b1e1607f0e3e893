"""Which datasets are in use on this node, from Docker itself, held as Flocker leases.

LeaseKeeper holds a lease (with an expiry, renewed) on a dataset while anything on
this node uses it. UseTracker keeps the keeper in line with the node's running
containers: it reconciles with the container list at start and after every
container event or reconnection, so containers started any way at all (through
the proxy, a restart policy, directly on the daemon) count, and a container that
exits on its own releases its datasets. A dead node stops renewing; its leases
lapse after their expiry.
"""

import json
import os
import time

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger

from .docker import DockerUnavailable
from .flocker import (
    AlreadyExists, ControlServiceUnreachable, FlockerAPIError, NotFound, api_base_url,
)

log = Logger()

DEFAULT_LEASE_SECONDS = 60.0
RECONNECT_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0)


class LeaseKeeper:
    """Leases for this node on the datasets that have at least one holder."""

    def __init__(self, api, node_uuid, clock, lease_seconds=DEFAULT_LEASE_SECONDS):
        self._api = api
        self._node_uuid = node_uuid
        self._clock = clock
        self.lease_seconds = lease_seconds
        self._holders = {}  # dataset_id -> {holder: description}
        self._leased = set()  # datasets whose lease this keeper acquired
        self._renewal = LoopingCall(self._renew_all)
        self._renewal.clock = clock

    def start(self):
        """Renew every held lease three times per expiry period."""
        self._renewal.start(self.lease_seconds / 3, now=False)

    def stop(self):
        if self._renewal.running:
            self._renewal.stop()

    def holders(self, dataset_id):
        return dict(self._holders.get(dataset_id, {}))

    def held(self):
        return {dataset_id for dataset_id, holders in self._holders.items() if holders}

    async def hold(self, dataset_id, holder, description=""):
        holders = self._holders.setdefault(dataset_id, {})
        first = not holders
        holders[holder] = description
        if first:
            await self._acquire(dataset_id)

    async def release(self, dataset_id, holder):
        holders = self._holders.get(dataset_id, {})
        holders.pop(holder, None)
        if holders:
            return
        self._holders.pop(dataset_id, None)
        if dataset_id not in self._leased:
            return
        self._leased.discard(dataset_id)
        try:
            await self._api.release_lease(dataset_id)
        except NotFound:
            pass
        except (ControlServiceUnreachable, FlockerAPIError) as reason:
            log.warn("could not release lease on {dataset_id}: {reason}; it expires within "
                     "{seconds:g}s", dataset_id=dataset_id, reason=reason,
                     seconds=self.lease_seconds)
            return
        log.info("released lease on dataset {dataset_id}", dataset_id=dataset_id)

    async def _acquire(self, dataset_id):
        try:
            await self._api.acquire_lease(dataset_id, self._node_uuid, self.lease_seconds)
            self._leased.add(dataset_id)
        except AlreadyExists:
            log.error("dataset {dataset_id} is used here but leased to another node",
                      dataset_id=dataset_id)
        except (ControlServiceUnreachable, FlockerAPIError) as reason:
            log.warn("could not lease dataset {dataset_id}: {reason}; retrying at the next "
                     "renewal", dataset_id=dataset_id, reason=reason)

    def _renew_all(self):
        return Deferred.fromCoroutine(self._renew_each())

    async def _renew_each(self):
        for dataset_id in sorted(self.held()):
            await self._acquire(dataset_id)


def dataset_of(source, local_paths):
    """The dataset whose local path is source or contains it, else None."""
    source = os.path.normpath(source)
    for path, dataset_id in local_paths.items():
        path = os.path.normpath(path)
        if source == path or source.startswith(path + os.sep):
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


class UseTracker:
    """Keeps a LeaseKeeper's container holders equal to the containers running here.

    local_paths() returns {path on this node: dataset_id} for the node's datasets.
    """

    def __init__(self, engine, keeper, local_paths, clock, on_change=lambda: None):
        self._engine = engine
        self._keeper = keeper
        self._local_paths = local_paths
        self._clock = clock
        self._on_change = on_change
        # Docker sends "die" before its container list stops showing the container as
        # running; containers seen to die count as stopped until they start again.
        self._ended = set()
        self._periodic = LoopingCall(self.reconcile)
        self._periodic.clock = clock
        self._running = False
        self._reconciling = None
        self._again = False
        self._watching = None

    def start(self):
        self._running = True
        self._keeper.start()
        # A safety net for events lost while the stream reconnects.
        self._periodic.start(self._keeper.lease_seconds / 3, now=False)
        self._watching = Deferred.fromCoroutine(self._watch_forever())
        return self._watching

    def stop(self):
        self._running = False
        if self._periodic.running:
            self._periodic.stop()
        self._keeper.stop()
        self._engine.stop_watching()

    def reconcile(self):
        """Bring the leases in line with the running containers; calls arriving while
        one runs are folded into one more run."""
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

    def users_of(self, dataset_id):
        """Descriptions of the containers using dataset_id here ("web, since 12:03:04")."""
        return sorted(description for holder, description in
                      self._keeper.holders(dataset_id).items()
                      if holder.startswith("container:"))

    async def _reconcile_once(self):
        before = {d: self.users_of(d) for d in self._keeper.held()}
        await self._apply(await self._engine.running_containers())
        if {d: self.users_of(d) for d in self._keeper.held()} != before:
            self._on_change()

    async def _apply(self, containers):
        listed = {container.id for container in containers}
        self._ended &= listed
        containers = [c for c in containers if c.id not in self._ended]
        uses = containers_by_dataset(containers, self._local_paths())
        for dataset_id, users in uses.items():
            for container_id, description in users.items():
                if f"container:{container_id}" not in self._keeper.holders(dataset_id):
                    log.info("container {container} uses dataset {dataset_id}; holding its "
                             "lease", container=description, dataset_id=dataset_id)
                await self._keeper.hold(dataset_id, f"container:{container_id}", description)
        for dataset_id in self._keeper.held():
            for holder in self._keeper.holders(dataset_id):
                container_id = holder.partition(":")[2]
                if holder.startswith("container:") and container_id not in uses.get(
                        dataset_id, {}):
                    await self._keeper.release(dataset_id, holder)

    def _on_event(self, event):
        if event.action == "start":
            self._ended.discard(event.container_id)
        elif event.action in ("die", "destroy"):
            self._ended.add(event.container_id)
        if event.action in ("start", "die", "destroy", "restart", "stop"):
            self.reconcile()

    async def _watch_forever(self):
        failures = 0
        while self._running:
            since = self._clock.seconds()
            try:
                await self.reconcile()
                failures = 0
                await self._engine.watch_events(self._on_event, since=since)
            except DockerUnavailable as reason:
                failures += 1
                log.warn("Docker is not answering ({reason}); in-use tracking retries",
                         reason=reason)
            if self._running:
                delay = RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)]
                await deferLater(self._clock, delay, lambda: None)


class ClusterUsage:
    """usage(dataset_id, node_uuid) for Placement's in-use messages: the containers that
    node's agent reports using the dataset, read from the control service's agent
    protocol (with the cluster token when it has one). Best effort: [] when unknown."""

    def __init__(self, http, control_url, token=None, timeout=5.0):
        self._http = http
        self._url = api_base_url(control_url)[:-len("/v1")] + "/agent/v1/cluster?timeout=0"
        self._headers = {"Authorization": [f"Bearer {token}"]} if token else {}
        self._timeout = timeout

    async def __call__(self, dataset_id, node_uuid):
        try:
            response = await self._http.get(self._url, headers=self._headers,
                                            timeout=self._timeout)
            view = json.loads(await response.content())
        except Exception as reason:
            log.debug("no usage for {dataset_id}: {reason}", dataset_id=dataset_id,
                      reason=reason)
            return []
        if response.code != 200 or not isinstance(view, dict):
            return []
        for node in view.get("nodes", []):
            if node.get("uuid") == node_uuid:
                for dataset in node.get("datasets", []):
                    if dataset.get("dataset_id") == dataset_id:
                        return [str(user) for user in dataset.get("users", [])]
        return []
