"""A whole cluster on one machine: its control plane (control_plane.py: one control
service, or control replicas on etcd), and per node a dockerd, an agent, an adapter, a
volume plugin and a proxy. Used by `powerstrip-flocker demo` and the end-to-end tests,
and its command lines (commands.py) are the ones the systemd units run; where everything
lives is its layout (layout.py).

Every process is started detached with its pid in the cluster's run directory, so
`demo down` (or a test's teardown) can stop it later, from another process.
"""

import os
import secrets
import shutil
import signal
import subprocess
import time

import yaml

from powerstripflocker.clients.http import TOKEN_ENV
from powerstripflocker.localcluster.commands import (
    DOCKER_PLUGIN_DIRECTORY, adapter_command, agent_command, dockerd_command, plugin_command,
    plugin_socket, proxy_command,
)
from powerstripflocker.localcluster.control_plane import ControlPlane
from powerstripflocker.localcluster.etcd_members import etcd_missing
from powerstripflocker.localcluster.layout import ADAPTER_PATH, ClusterError, adapters_config
from powerstripflocker.localcluster.machine import (
    BUSYBOX_IMAGE, alive, descendants, docker, docker_answers, http_ok, import_busybox_image,
    missing_requirements, processes_in_network_namespace, processes_mentioning, read_pid,
    registered_nodes, unmount_under,
)
from powerstripflocker.localcluster.netns import HostsNetworkControl, NetworkError

NODE_SERVICES = ("dockerd", "agent", "adapter", "plugin", "proxy")


class LocalCluster:
    """Start, use, break and stop the processes of a ClusterLayout."""

    def __init__(self, layout, progress=None):
        self.layout = layout
        self.progress = progress or (lambda message: None)
        self.network = (None if layout.network is None else
                        HostsNetworkControl(layout.network, layout.network_record))
        self.control_plane = ControlPlane(layout, self._spawn, self._wait, self.pid_file,
                                          self.network, self.progress)
        self._start_options = {}

    def pid_file(self, service):
        return os.path.join(self.layout.run_dir, "pids", f"{service}.pid")

    def token(self):
        """The cluster token every part is given (made by start())."""
        with open(self.layout.token_file, encoding="utf-8") as token_file:
            return token_file.read().strip()

    def _spawn(self, service, argv, host=None, env=None):
        """Start argv detached (on host: in its network namespace, if it has one), its
        output in the service's log and its pid in the service's pid file."""
        os.makedirs(self.layout.log_dir, exist_ok=True)
        os.makedirs(os.path.dirname(self.pid_file(service)), exist_ok=True)
        if host is not None:
            argv = self.layout.command_in_place(host, argv)
        log_path = os.path.join(self.layout.log_dir, f"{service}.log")
        # Logs name datasets, nodes and containers: not for every local user.
        with open(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640),
                  "ab") as log:
            os.fchmod(log.fileno(), 0o640)
            process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env=dict(os.environ, **(env or {})),
            )
        with open(self.pid_file(service), "w") as pid_file:
            pid_file.write(str(process.pid))
        return process

    def _wait(self, service, process, ready, timeout=90.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ClusterError(f"{service} exited with {process.returncode}:\n"
                                   f"{self.log_tail(service)}")
            if ready():
                return
            time.sleep(0.1)
        raise ClusterError(f"{service} not ready after {timeout:g}s:\n{self.log_tail(service)}")

    def log_tail(self, service, lines=30):
        try:
            with open(os.path.join(self.layout.log_dir, f"{service}.log"), "rb") as log:
                text = log.read().decode("utf-8", "replace")
            return "\n".join(text.splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def start(self, adapter_commands=None, prepare_node=None):
        """Start everything and wait until each part answers.

        adapter_commands maps a node name to another command line for its adapter, and
        prepare_node(node) runs once the node's dockerd answers (the Dockerfile test
        builds or loads the adapter's image there and runs the adapter as a container).
        A start that fails stops what it started (keeping the logs) and raises.
        """
        problem = missing_requirements(self.layout.hosts)
        if problem is None and self.layout.etcd_members:
            problem = etcd_missing()
        if problem:
            raise ClusterError(f"cannot start a local cluster: {problem}")
        self._start_options = {"adapter_commands": adapter_commands or {},
                               "prepare_node": prepare_node}
        layout = self.layout
        try:
            os.makedirs(layout.state_dir, exist_ok=True)
            if not os.path.exists(layout.token_file):
                with open(os.open(layout.token_file, os.O_WRONLY | os.O_CREAT, 0o600),
                          "w") as token:
                    token.write(secrets.token_hex(32))
            with open(os.open(layout.token_env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                              0o600), "w") as env_file:
                env_file.write(f"{TOKEN_ENV}={self.token()}\n")
            if self.network is not None:
                self.network.remove()
                self.progress(f"network: {layout.network.host_count} namespaces on bridge "
                              f"{layout.network.bridge} ({layout.network.subnet})")
                self.network.create(layout.network.host_count)
            self.control_plane.start()
            for node in layout.nodes:
                self._start_node(node)
        except (ClusterError, NetworkError, OSError, subprocess.SubprocessError) as error:
            self.stop(remove_state=False)
            if isinstance(error, ClusterError):
                raise
            raise ClusterError(str(error)) from error
        except BaseException:
            self.stop(remove_state=False)
            raise
        return self

    def _start_node(self, node):
        for directory in (node.run_dir, node.data_dir, node.plugin_dir, DOCKER_PLUGIN_DIRECTORY):
            os.makedirs(directory, exist_ok=True)
        # A node killed whole leaves its sockets behind: the parts would refuse to bind.
        for stale in (node.docker_socket, plugin_socket(node)):
            if os.path.exists(stale):
                os.unlink(stale)
        for part in NODE_SERVICES:
            self._start_part(node, part)
            prepare_node = self._start_options.get("prepare_node")
            if part == "dockerd" and prepare_node is not None:
                prepare_node(node)

    def _start_part(self, node, part):
        layout = self.layout
        if part == "dockerd":
            # A killed dockerd (or containerd) leaves its pid file: dockerd refuses to
            # start if another process has that pid by now.
            for pid_file in (os.path.join(node.run_dir, "dockerd.pid"),
                             os.path.join(node.run_dir, "exec", "containerd", "containerd.pid")):
                pid = read_pid(pid_file)
                if pid is not None and pid not in processes_mentioning([node.run_dir + "/"]):
                    os.unlink(pid_file)
            where = ("" if layout.network is None else
                     f" in namespace {layout.network.namespace(node.index)}")
            self.progress(f"{node.name}: dockerd on {node.real_docker_host}{where}")
            command, ready = dockerd_command(node), lambda: docker_answers(
                node.real_docker_host)
        elif part == "agent":
            self.progress(f"{node.name}: agent ({layout.backend}) on "
                          f"{node.address}:{node.agent_port}")
            command, ready = agent_command(layout, node), lambda: any(
                node.address in registered_nodes(url, self.token())
                for url in layout.control_urls)
        elif part == "adapter":
            self.progress(f"{node.name}: adapter on {node.adapter_url}")
            command = (self._start_options.get("adapter_commands", {}).get(node.name)
                       or adapter_command(layout, node))
            ready = lambda: http_ok(node.adapter_url + "/healthz")  # noqa: E731
        elif part == "plugin":
            self.progress(f"{node.name}: volume plugin 'flocker' in {node.plugin_dir}")
            command, ready = plugin_command(layout, node), lambda: os.path.exists(
                plugin_socket(node))
        else:
            self.progress(f"{node.name}: proxy on {node.docker_host}")
            with open(node.adapters_yml, "w") as config:
                yaml.safe_dump(adapters_config(node.adapter_url + ADAPTER_PATH), config,
                               sort_keys=False)
            command, ready = proxy_command(node), lambda: docker_answers(node.docker_host)
        service = f"{node.name}-{part}"
        self._wait(service, self._spawn(service, command, node), ready)

    def import_images(self):
        for node in self.layout.nodes:
            self.progress(f"{node.name}: importing {BUSYBOX_IMAGE} (offline, busybox-static)")
            import_busybox_image(node.real_docker_host)

    def docker(self, node_name, *args, **kwargs):
        """The docker CLI of a node, through its proxy."""
        return docker(self.layout.node(node_name).docker_host, *args, **kwargs)

    def is_running(self):
        pid_dir = os.path.join(self.layout.run_dir, "pids")
        return os.path.isdir(pid_dir) and bool(os.listdir(pid_dir))

    # -- faults -------------------------------------------------------------

    def _network_of(self, host_name, action):
        """The node or control-plane host host_name, which must have a namespace."""
        host = self.layout.host(host_name)
        if self.network is None:
            raise ClusterError(f"{action} needs hosts of their own: start the cluster with "
                               f"--hosts netns")
        if not host.index:
            raise ClusterError(f"{host_name} runs on this machine's side of the bridge, in no "
                               f"network namespace of its own: start the cluster with "
                               f"--control-replicas 2 or more to give it replicas that do")
        if not self.network.is_made(host.index):
            raise ClusterError(f"{host_name} has no network namespace: is the cluster up?")
        return host

    def partition(self, host_name):
        """Cut host_name's link: its processes keep running but reach nothing, and
        nothing reaches them (its unix sockets still answer on this machine)."""
        host = self._network_of(host_name, "partition")
        self.network.set_link(host.index, up=False)

    def heal(self, host_name):
        host = self._network_of(host_name, "heal")
        self.network.set_link(host.index, up=True)

    def shape(self, host_name, rate):
        """Rate-limit host_name's link both ways (a tc rate such as 100mbit; None: none)."""
        host = self._network_of(host_name, "shape")
        self.network.shape(host.index, rate)

    def node_processes(self, node_name):
        """Pids of everything running for node_name: its parts (from their pid files),
        whatever runs in its network namespace, and every process below those (dockerd's
        containerd, the containerd-shims, the containers)."""
        node = self.layout.node(node_name)
        roots = set()
        for service in NODE_SERVICES:
            pid = read_pid(self.pid_file(f"{node.name}-{service}"))
            if pid is not None and alive(pid):
                roots.add(pid)
        if self.network is not None and self.network.is_made(node.index):
            roots.update(processes_in_network_namespace(
                self.network.namespace_inode(node.index)))
        roots.update(processes_mentioning([node.run_dir + "/", node.data_dir + "/"]))
        return {pid for pid in descendants(roots) if pid != os.getpid() and alive(pid)}

    def kill(self, node_name, timeout=30.0):
        """kill -9 of every process of node_name at once, as when a machine loses power;
        node_name may name a control replica or an etcd member too."""
        if self.layout.service_host(node_name) is not None:
            self.control_plane.kill(node_name, timeout)
            return
        node = self.layout.node(node_name)
        if not any(read_pid(self.pid_file(f"{node.name}-{service}")) is not None
                   for service in NODE_SERVICES):
            raise ClusterError(f"{node_name} is not running: is the cluster up?")
        deadline = time.monotonic() + timeout
        while pids := self.node_processes(node_name):
            if time.monotonic() > deadline:
                raise ClusterError(f"{node_name}: processes {sorted(pids)} survived kill -9")
            # Stop them all first, so none reacts to another's death (a dockerd
            # restarting its containerd) before it dies too.
            for signal_number in (signal.SIGSTOP, signal.SIGKILL):
                for pid in pids:
                    try:
                        os.kill(pid, signal_number)
                    except ProcessLookupError:
                        pass
            time.sleep(0.1)
        for service in NODE_SERVICES:
            try:
                os.unlink(self.pid_file(f"{node.name}-{service}"))
            except FileNotFoundError:
                pass

    def kill_part(self, node_name, part):
        """kill -9 of one part of node_name (dockerd, agent, adapter, plugin or proxy) and
        nothing else: a dockerd killed so leaves its containerd and containers running."""
        node = self.layout.node(node_name)
        if part not in NODE_SERVICES:
            raise ClusterError(f"a node's parts are {', '.join(NODE_SERVICES)}, not {part!r}")
        pid_path = self.pid_file(f"{node.name}-{part}")
        pid = read_pid(pid_path)
        if pid is None or not alive(pid):
            raise ClusterError(f"{node_name}'s {part} is not running")
        os.kill(pid, signal.SIGKILL)
        while alive(pid):
            time.sleep(0.05)
        os.unlink(pid_path)

    def start_part(self, node_name, part):
        """Start one part of node_name again (after kill_part)."""
        if part not in NODE_SERVICES:
            raise ClusterError(f"a node's parts are {', '.join(NODE_SERVICES)}, not {part!r}")
        self._start_part(self.layout.node(node_name), part)

    def restart(self, node_name):
        """Start node_name's processes again on their old data (after kill); node_name
        may name a control replica or an etcd member too."""
        if self.layout.service_host(node_name) is not None:
            self.control_plane.restart(node_name)
            return
        node = self.layout.node(node_name)
        if not self.control_plane.answers():
            raise ClusterError("no control service answers: is the cluster up?")
        if self.node_processes(node_name):
            raise ClusterError(f"{node_name} is still running; kill it first")
        self._start_node(node)

    # -- stop ---------------------------------------------------------------

    def stop(self, remove_state=True):
        """Stop every process, unmount, remove sockets and the hosts' network (and the
        state when asked)."""
        layout = self.layout
        for node in layout.nodes:
            if os.path.exists(node.real_docker_socket) and docker_answers(node.real_docker_host):
                ids = docker(node.real_docker_host, "ps", "-aq", timeout=30).stdout.split()
                if ids:
                    docker(node.real_docker_host, "rm", "-f", *ids, timeout=120)
        pid_dir = os.path.join(layout.run_dir, "pids")
        services = sorted(os.listdir(pid_dir)) if os.path.isdir(pid_dir) else []
        # Proxies and adapters first, then agents, daemons, the control service (or its
        # replicas) and their etcd members last.
        order = ("proxy", "plugin", "adapter", "agent", "dockerd", "control", "etcd")
        services.sort(key=lambda name: next(
            (index for index, part in enumerate(order)
             if name.removesuffix(".pid").rstrip("0123456789").endswith(part)), 0))
        for service in services:
            self._terminate(os.path.join(pid_dir, service))
        leftovers = set(processes_mentioning([layout.run_dir, layout.state_dir]))
        if self.network is not None:
            for index in range(1, layout.network.host_count + 1):
                if self.network.is_made(index):
                    leftovers.update(processes_in_network_namespace(
                        self.network.namespace_inode(index)))
        for pid in descendants(leftovers) - {os.getpid()}:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        unmount_under(layout.run_dir)
        unmount_under(layout.state_dir)
        if self.network is not None:
            self.network.remove()
        shutil.rmtree(layout.run_dir, ignore_errors=True)
        if remove_state:
            shutil.rmtree(layout.state_dir, ignore_errors=True)

    def _terminate(self, pid_path, timeout=20.0):
        pid = read_pid(pid_path)
        if pid is None:
            return
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            os.unlink(pid_path)
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and alive(pid):
            time.sleep(0.1)
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.unlink(pid_path)
