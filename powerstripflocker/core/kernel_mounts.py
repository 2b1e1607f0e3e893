"""The kernel's mount table: which of a set of paths are mounted, in which mount
namespace, on this node (read from /proc/*/mountinfo).

This is the truth of in-use tracking (inuse.py): a dataset is in use while its path, or
anything under it, is mounted in any mount namespace, whether or not dockerd runs.
"""

import os
import re
from dataclasses import dataclass

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


def under(path, top):
    """Whether path is top or inside it."""
    return path == top or path.startswith(top.rstrip("/") + "/")


def locate(path, entries):
    """(device, path inside that file system) of path, from the namespace whose mount
    table is entries: the longest mount point containing it. For a btrfs subvolume this
    is its path from the file system's top, as mountinfo shows binds of it."""
    path = os.path.realpath(path)
    best = None
    for entry in entries:
        if under(path, entry.mount_point) and (
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
                    if under(entry.root, inside):
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
                if any(under(target, point) for point in use.mount_points):
                    found.append(pid)
                    break
        return found
