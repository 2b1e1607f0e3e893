"""Which datasets are in use on this node, held as Flocker leases, and fencing.

The kernel's mount table is the truth: a dataset is in use while its path, or anything
under it, is mounted in any mount namespace on this node (KernelMounts reads
/proc/*/mountinfo), whether or not dockerd runs or knows about it. Docker's container
list and events add the names of the containers using it, for messages, and make a start
or a stop count at once instead of at the next scan.

LeaseKeeper holds a lease (with an expiry, renewed every third of it) on a dataset while
anything on this node uses it, and calls on_lapse when it cannot be sure the lease is
still this node's: a renewal refused (409: another node is primary or holds it), the
first acquisition failing, or no renewal getting through before the deadline

    send time of the last successful renewal + lease_seconds - fence_margin

The control service starts a lease's expiry when it receives the request, so it cannot
expire before send time + lease_seconds: stopping the users (fencing) by the deadline
means that at no instant do two nodes write. UseTracker keeps the keeper's holders equal
to what the kernel and Docker report (at start, every poll_seconds, on every container
event) and fences through a Fencer: `docker kill` of the containers, then SIGKILL of
whatever still has the dataset mounted (dockerd dead, or no container at all).
"""

import os
import re
import signal
import time
from dataclasses import dataclass

from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred, DeferredLock, gatherResults
from twisted.internet.task import LoopingCall, deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from powerstripflocker.clients.docker import DockerUnavailable
from powerstripflocker.clients.flocker import AlreadyExists, ControlServiceUnreachable, FlockerAPIError, NotFound

log = Logger()

DEFAULT_LEASE_SECONDS = 30.0
DEFAULT_POLL_SECONDS = 0.5
RECONNECT_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0)


# The kernel's mount table

_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(text):
    return _ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), text)


@dataclass(frozen=True)
class MountEntry:
    """One line of /proc/PID/mountinfo: the file system (major:minor), the path inside
    it that is mounted (root) and where (mount_point, in that namespace)."""
    device: str
    root: str
    mount_point: str


def parse_mountinfo(text):
    entries = []
    for line in text.splitlines():
        fields = line.split(" ")
        if len(fields) < 10 or "-" not in fields[6:]:
            continue
        root = _unescape(fields[3])
        # A mounted directory deleted since shows as "<path>//deleted".
        if root.endswith("//deleted"):
            root = root[:-len("//deleted")]
        entries.append(MountEntry(fields[2], root, _unescape(fields[4])))
    return entries


def _under(path, top):
    return path == top or path.startswith(top.rstrip("/") + "/")


def locate(path, entries):
    """(device, path inside that file system) of path, from the namespace whose mount
    table is entries: the longest mount point containing it. For a btrfs subvolume this
    is its path from the file system's top, as mountinfo shows binds of it."""
    path = os.path.realpath(path)
    best = None
    for entry in entries:
        if _under(path, entry.mount_point) and (
                best is None or len(entry.mount_point) >= len(best.mount_point)):
            best = entry
    if best is None:
        return None
    rest = os.path.relpath(path, best.mount_point)
    inside = best.root if rest == "." else os.path.join(best.root, rest)
    return best.device, os.path.normpath(inside)


@dataclass(frozen=True)
class MountUse:
    """A dataset mounted in one mount namespace: the processes in it, where it is."""
    namespace: str                 # "mnt:[4026532201]"
    pids: tuple
    mount_points: tuple
    shared: bool = False           # the agent's own or pid 1's namespace: not a container

    def describe(self):
        return f"pid {self.pids[0]} ({_command(self.pids[0])}), mounted at " \
               f"{self.mount_points[0]}"


def _command(pid, proc="/proc"):
    try:
        with open(f"{proc}/{pid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return "?"


class KernelMounts:
    """Which of a set of paths are mounted anywhere on this node, read from /proc.

    One mountinfo read per mount namespace (processes grouped by /proc/PID/ns/mnt): a
    scan is a readlink per process plus a few small file reads, cheap enough to repeat
    every half second on the reactor thread.
    """

    def __init__(self, proc="/proc"):
        self.proc = proc

    def _namespace(self, pid):
        try:
            return os.readlink(f"{self.proc}/{pid}/ns/mnt")
        except OSError:
            return None

    def _read(self, pid):
        try:
            with open(f"{self.proc}/{pid}/mountinfo", encoding="utf-8",
                      errors="surrogateescape") as f:
                return parse_mountinfo(f.read())
        except OSError:
            return None

    def namespaces(self):
        """{namespace: [pids]} of every process."""
        groups = {}
        for name in os.listdir(self.proc):
            if name.isdigit():
                namespace = self._namespace(name)
                if namespace is not None:
                    groups.setdefault(namespace, []).append(int(name))
        return groups

    def scan(self, paths):
        """{dataset_id: [MountUse]} for the datasets of paths ({path: dataset_id}) that
        are mounted, or have something under them mounted, in any namespace."""
        own = self._read("self")
        if not own or not paths:
            return {}
        targets = {}
        for path, dataset_id in paths.items():
            where = locate(path, own)
            if where is not None:
                targets.setdefault(where[0], []).append((where[1], dataset_id))
        shared = {self._namespace("self"), self._namespace(1)}
        uses = {}
        for namespace, pids in self.namespaces().items():
            entries = None
            for pid in pids:
                entries = self._read(pid)
                if entries is not None:
                    break
            for entry in entries or ():
                for inside, dataset_id in targets.get(entry.device, ()):
                    if _under(entry.root, inside):
                        uses.setdefault(dataset_id, {}).setdefault(
                            namespace, (sorted(pids), []))[1].append(entry.mount_point)
        return {
            dataset_id: [MountUse(namespace, tuple(pids), tuple(points),
                                  shared=namespace in shared)
                         for namespace, (pids, points) in sorted(by_namespace.items())]
            for dataset_id, by_namespace in uses.items()
        }

    def users_in_namespace(self, use):
        """Pids in a shared namespace whose working directory, root or an open file is
        under one of use's mount points (these cannot be told apart by namespace)."""
        found = []
        me = os.getpid()
        for pid in use.pids:
            if pid in (1, me):
                continue
            links = [f"{self.proc}/{pid}/cwd", f"{self.proc}/{pid}/root"]
            try:
                links += [f"{self.proc}/{pid}/fd/{fd}"
                          for fd in os.listdir(f"{self.proc}/{pid}/fd")]
            except OSError:
                continue
            for link in links:
                try:
                    target = os.readlink(link)
                except OSError:
                    continue
                if any(_under(target, point) for point in use.mount_points):
                    found.append(pid)
                    break
        return found


# Leases

class LeaseKeeper:
    """Leases for this node on the datasets that have at least one holder.

    on_lapse(dataset_id, reason) is called when the lease may no longer be this node's
    (see the module docstring); without it a lapse is only logged (the volume plugin's
    keeper: the agent of its node fences).
    """

    def __init__(self, api, node_uuid, clock, lease_seconds=DEFAULT_LEASE_SECONDS,
                 on_lapse=None, fence_margin=None):
        self._api = api
        self._node_uuid = node_uuid
        self._clock = clock
        self.lease_seconds = lease_seconds
        self.fence_margin = lease_seconds / 4 if fence_margin is None else fence_margin
        self._on_lapse = on_lapse
        self._holders = {}      # dataset_id -> {holder: description}
        self._leased = set()    # datasets whose lease this keeper acquired
        self._confirmed = {}    # dataset_id -> send time of the last successful renewal
        self._deadlines = {}    # dataset_id -> IDelayedCall of its fencing deadline
        self._retries = {}      # dataset_id -> IDelayedCall of a renewal retried early
        self._locks = {}        # dataset_id -> DeferredLock: one call at a time per dataset
        self._queued = set()    # datasets with a renewal waiting for their lock
        self._new_users = set()  # datasets with a user not yet told to the control service
        self._renewal = LoopingCall(self._renew_all)
        self._renewal.clock = clock

    def start(self):
        """Renew every held lease three times per expiry period."""
        self._renewal.start(self.lease_seconds / 3, now=False)

    def stop(self):
        if self._renewal.running:
            self._renewal.stop()
        for calls in (self._deadlines, self._retries):
            for call in calls.values():
                if call.active():
                    call.cancel()
            calls.clear()

    def holders(self, dataset_id):
        return dict(self._holders.get(dataset_id, {}))

    def held(self):
        return {dataset_id for dataset_id, holders in self._holders.items() if holders}

    def deadline(self, dataset_id):
        """When this node must have stopped using dataset_id unless a renewal gets
        through first (None: not confirmed)."""
        sent = self._confirmed.get(dataset_id)
        return None if sent is None else sent + self.lease_seconds - self.fence_margin

    async def hold(self, dataset_id, holder, description=""):
        holders = self._holders.setdefault(dataset_id, {})
        new = holder not in holders
        holders[holder] = description
        if not new:
            return
        # A new user is told to the control service at once: its start used up the
        # claim that handed out the path (leases.py), and a dataset whose lease is not
        # confirmed (a first use, or one that started again after fencing) is checked.
        self._new_users.add(dataset_id)
        await self._renew(dataset_id)

    async def release(self, dataset_id, holder):
        holders = self._holders.get(dataset_id, {})
        holders.pop(holder, None)
        if holders:
            return
        self._holders.pop(dataset_id, None)
        self._forget(dataset_id)
        await self._serialised(dataset_id, self._release_now)

    def _forget(self, dataset_id):
        self._confirmed.pop(dataset_id, None)
        for calls in (self._deadlines, self._retries):
            call = calls.pop(dataset_id, None)
            if call is not None and call.active():
                call.cancel()

    def _serialised(self, dataset_id, function):
        lock = self._locks.setdefault(dataset_id, DeferredLock())

        def run():
            return Deferred.fromCoroutine(function(dataset_id))

        done = lock.run(run)

        def unlock(result):
            if not lock.locked and not lock.waiting:
                self._locks.pop(dataset_id, None)
            return result
        return done.addBoth(unlock)

    async def _release_now(self, dataset_id):
        if self._holders.get(dataset_id) or dataset_id not in self._leased:
            return
        self._leased.discard(dataset_id)
        self._new_users.discard(dataset_id)
        try:
            # As the holder: a claim a hook made since our users started keeps the lease.
            await self._api.release_lease(dataset_id, node_uuid=self._node_uuid)
        except NotFound:
            pass
        except (ControlServiceUnreachable, FlockerAPIError) as reason:
            log.warn("could not release lease on {dataset_id}: {reason}; it expires within "
                     "{seconds:g}s", dataset_id=dataset_id, reason=reason,
                     seconds=self.lease_seconds)
            return
        log.info("released lease on dataset {dataset_id}: nothing uses it here",
                 dataset_id=dataset_id)

    def _renew(self, dataset_id):
        """A renewal after the call under way for dataset_id (at most one waits)."""
        if dataset_id in self._queued:
            return self._locks[dataset_id].run(lambda: None)
        self._queued.add(dataset_id)
        return self._serialised(dataset_id, self._renew_now)

    async def _renew_now(self, dataset_id):
        self._queued.discard(dataset_id)
        if not self._holders.get(dataset_id):
            return
        sent = self._clock.seconds()
        new_user = dataset_id in self._new_users
        try:
            await self._api.acquire_lease(dataset_id, self._node_uuid, self.lease_seconds,
                                          new_user=new_user)
            if new_user:
                self._new_users.discard(dataset_id)
        except AlreadyExists as refused:
            self._lapse(dataset_id, f"the control service refused this node's lease: "
                                    f"{refused.description}")
            return
        except (ControlServiceUnreachable, FlockerAPIError) as reason:
            self._renewal_failed(dataset_id, reason)
            return
        first = dataset_id not in self._leased
        self._leased.add(dataset_id)
        if not self._holders.get(dataset_id):
            return      # released while the renewal was on its way: _release_now follows
        if sent > self._confirmed.get(dataset_id, float("-inf")):
            self._confirmed[dataset_id] = sent
            self._schedule_deadline(dataset_id)
        if first:
            log.info("leased dataset {dataset_id} for {seconds:g}s: in use here by {users}",
                     dataset_id=dataset_id, seconds=self.lease_seconds,
                     users=", ".join(sorted(self._holders[dataset_id].values())))

    def _schedule_deadline(self, dataset_id):
        call = self._deadlines.pop(dataset_id, None)
        if call is not None and call.active():
            call.cancel()
        delay = max(self.deadline(dataset_id) - self._clock.seconds(), 0)
        self._deadlines[dataset_id] = self._clock.callLater(
            delay, self._deadline_passed, dataset_id)

    def _deadline_passed(self, dataset_id):
        self._deadlines.pop(dataset_id, None)
        sent = self._confirmed.get(dataset_id)
        self._lapse(dataset_id, f"no renewal of its lease got through since "
                                f"{self._clock.seconds() - sent:.1f}s ago; the control "
                                f"service may let it go in {self.fence_margin:.1f}s")

    def _renewal_failed(self, dataset_id, reason):
        deadline = self.deadline(dataset_id)
        if deadline is None:
            self._lapse(dataset_id, f"its lease could not be acquired: {reason}")
            return
        log.warn("could not renew the lease on {dataset_id}: {reason}; its users here are "
                 "stopped in {seconds:.1f}s unless a renewal gets through",
                 dataset_id=dataset_id, reason=reason,
                 seconds=deadline - self._clock.seconds())
        if dataset_id not in self._retries:
            self._retries[dataset_id] = self._clock.callLater(
                min(self.lease_seconds / 10, 1.0), self._retry, dataset_id)

    def _retry(self, dataset_id):
        self._retries.pop(dataset_id, None)
        if self._holders.get(dataset_id) and dataset_id in self._confirmed:
            self._renew(dataset_id)

    def _lapse(self, dataset_id, reason):
        self._forget(dataset_id)
        self._leased.discard(dataset_id)
        if self._on_lapse is None:
            log.error("dataset {dataset_id} is used here but {reason}", dataset_id=dataset_id,
                      reason=reason)
            return
        self._on_lapse(dataset_id, reason)

    def _renew_all(self):
        # Not waited for: one slow renewal must not hold back the next round's.
        gatherResults([self._renew(dataset_id) for dataset_id in sorted(self.held())],
                      consumeErrors=True).addErrback(
            lambda failure: log.failure("renewing leases", failure))


# Fencing

class Fencer:
    """Stops everything on this node that uses a dataset: `docker kill` of its containers
    through this node's dockerd (when there is one and it answers within docker_timeout),
    then SIGKILL of the processes of every mount namespace that still has it mounted
    (container init processes whose dockerd is dead, or anything mounted by hand). In
    the agent's own and pid 1's namespaces, shared with the rest of the node, only the
    processes with a file, working directory or root under the mount are killed."""

    def __init__(self, clock, mounts, engine=None, docker_timeout=2.0,
                 kill=os.kill):
        self._clock = clock
        self._mounts = mounts
        self._engine = engine
        self._docker_timeout = docker_timeout
        self._kill = kill
        self._fencing = {}      # dataset_id -> Deferred of the fencing under way
        self.fenced = []        # (time, dataset_id, reason, what was stopped), for metrics

    def fence(self, dataset_id, path, containers, reason):
        """Stop the users of dataset_id (at path; containers {id: description} as Docker
        reported them). One fencing at a time per dataset."""
        running = self._fencing.get(dataset_id)
        if running is not None:
            return running
        done = Deferred.fromCoroutine(self._fence(dataset_id, path, dict(containers),
                                                  reason))
        if not done.called:
            self._fencing[dataset_id] = done
            done.addBoth(self._done, dataset_id)
        return done

    def _done(self, result, dataset_id):
        self._fencing.pop(dataset_id, None)
        return result

    async def _fence(self, dataset_id, path, containers, reason):
        users = sorted(containers.values())
        uses = self._mounts.scan({path: dataset_id}).get(dataset_id, [])
        log.critical(
            "FENCING dataset {dataset_id}: {reason}; stopping what uses it here so that no "
            "other node can take it while it is written here: {users}",
            dataset_id=dataset_id, reason=reason,
            users=", ".join(users + [use.describe() for use in uses]) or "nothing left",
            fencing=True)
        stopped = []
        if self._engine is not None:
            for container_id, description in sorted(containers.items()):
                try:
                    await self._engine.kill(container_id).addTimeout(
                        self._docker_timeout, self._clock)
                    stopped.append(f"container {description}")
                except (DockerUnavailable, CancelledError, defer.TimeoutError) as problem:
                    log.warn("docker kill {container} did not answer ({problem}); killing "
                             "the processes that have {dataset_id} mounted instead",
                             container=description, problem=problem or "timed out",
                             dataset_id=dataset_id)
                    break
        for use in self._mounts.scan({path: dataset_id}).get(dataset_id, []):
            if use.shared:
                pids = await deferToThread(self._mounts.users_in_namespace, use)
            else:
                pids = [pid for pid in use.pids if pid not in (1, os.getpid())]
            for pid in pids:
                try:
                    self._kill(pid, signal.SIGKILL)
                    stopped.append(f"pid {pid}")
                except ProcessLookupError:
                    pass
                except OSError as problem:
                    log.error("cannot kill pid {pid} using {dataset_id}: {problem}",
                              pid=pid, dataset_id=dataset_id, problem=problem)
        log.critical("fenced dataset {dataset_id}: stopped {stopped}",
                     dataset_id=dataset_id, stopped=", ".join(stopped) or "nothing",
                     fencing=True)
        self.fenced.append({"at": self._clock.seconds(), "dataset_id": dataset_id,
                            "reason": reason, "stopped": stopped})
        del self.fenced[:-20]
        return stopped


# Keeping leases in line with what the kernel and Docker report

def dataset_of(source, local_paths):
    """The dataset whose local path is source or contains it, else None."""
    source = os.path.normpath(source)
    for path, dataset_id in local_paths.items():
        if _under(source, os.path.normpath(path)):
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
