"""A local cluster's control plane: its one control service on SQLite, or its control
replicas and the three etcd members under them. Started before the nodes; each replica
and each member can be killed (kill -9, as when its machine dies) and started again by
name, as `demo kill control2` and `demo restart etcd1` do."""

import os
import signal
import time

from powerstripflocker.localcluster import etcd_members
from powerstripflocker.localcluster.commands import control_command
from powerstripflocker.localcluster.layout import ClusterError
from powerstripflocker.localcluster.machine import (
    alive, descendants, http_ok, processes_in_network_namespace, read_pid,
)


class ControlPlane:
    """The control plane of a LocalCluster, started and waited for through the cluster's
    spawn(service, argv, host) and wait(service, process, ready); pid_file(service) is
    where a service's pid is kept, network the cluster's HostsNetworkControl or None."""

    def __init__(self, layout, spawn, wait, pid_file, network, progress):
        self.layout = layout
        self._spawn_process = spawn
        self._wait = wait
        self._pid_file = pid_file
        self._network = network
        self._progress = progress

    def start(self):
        """Every etcd member, then every control replica (or the control service); each
        kind started together, then waited for one by one."""
        layout = self.layout
        for hosts in (layout.etcd_members, layout.control_hosts):
            started = [(host, *self._launch(host)) for host in hosts]
            for host, process, ready in started:
                self._wait(host.name, process, ready)

    def _where(self, host):
        if not host.index:
            return ""
        return f" in namespace {self.layout.network.namespace(host.index)}"

    def _launch(self, host):
        """Start host's process: (the process, whether it is ready)."""
        layout = self.layout
        if host in layout.etcd_members:
            self._progress(f"{host.name}: etcd member on "
                           f"{etcd_members.client_url(layout, host)}{self._where(host)}")
            os.makedirs(layout.etcd_dir, mode=0o700, exist_ok=True)
            process = self._spawn_process(host.name, etcd_members.etcd_command(layout, host),
                                          host)
            # Healthy: it runs among a quorum of members that agree on a leader.
            return process, lambda: etcd_members.healthy(layout, host)
        url = layout.control_url_of(host)
        store = f" on {layout.store_url}" if layout.etcd_members else ""
        self._progress(f"{host.name} service on {url}{store}{self._where(host)}")
        process = self._spawn_process(host.name, control_command(layout, host), host)
        return process, lambda: http_ok(url + "/v1/version")

    def _etcd_has_quorum(self):
        return any(etcd_members.healthy(self.layout, member)
                   for member in self.layout.etcd_members)

    def answers(self):
        """Whether some control replica (or the control service) answers."""
        return any(http_ok(url + "/v1/version") for url in self.layout.control_urls)

    def _host(self, name):
        host = self.layout.service_host(name)
        if host is None:
            names = ", ".join(host.name for host in self.layout.service_hosts)
            raise ClusterError(f"no control-plane host {name!r} in this cluster; it has "
                               f"{names}")
        return host

    def processes(self, name):
        """Pids of name's process, whatever runs in its network namespace, and every
        process below those."""
        host = self._host(name)
        roots = set()
        pid = read_pid(self._pid_file(host.name))
        if pid is not None and alive(pid):
            roots.add(pid)
        network = self._network
        if network is not None and host.index and network.is_made(host.index):
            roots.update(processes_in_network_namespace(network.namespace_inode(host.index)))
        return {pid for pid in descendants(roots) if pid != os.getpid() and alive(pid)}

    def kill(self, name, timeout=30.0):
        """kill -9 of name (controlN, etcdN, or control for the one control service)."""
        host = self._host(name)
        if read_pid(self._pid_file(host.name)) is None:
            raise ClusterError(f"{name} is not running: is the cluster up?")
        deadline = time.monotonic() + timeout
        while pids := self.processes(name):
            if time.monotonic() > deadline:
                raise ClusterError(f"{name}: processes {sorted(pids)} survived kill -9")
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
        try:
            os.unlink(self._pid_file(host.name))
        except FileNotFoundError:
            pass

    def restart(self, name):
        """Start name again on its data (after kill): an etcd member rejoins its cluster
        as itself, a control replica serves from the same store."""
        host = self._host(name)
        if self.processes(name):
            raise ClusterError(f"{name} is still running; kill it first")
        if host in self.layout.control_hosts and self.layout.etcd_members \
                and not self._etcd_has_quorum():
            raise ClusterError(f"{name} cannot serve: no etcd member is healthy (is the "
                               f"cluster up? restart its etcd members first)")
        process, ready = self._launch(host)
        self._wait(host.name, process, ready)
