"""Fencer: stops everything on this node that uses a dataset whose lease may have lapsed."""

import os
import signal

from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from powerstripflocker.clients.docker import DockerUnavailable

log = Logger()


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
