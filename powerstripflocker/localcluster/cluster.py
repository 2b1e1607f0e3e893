"""A whole cluster on one machine: one control service, and per node a dockerd, an
agent, an adapter, a volume plugin and a proxy. Used by `powerstrip-flocker demo` and
the end-to-end tests, and its command lines are the ones the systemd units run.

Two kinds of hosts: "loopback" (node N is 127.0.0.N; all nodes share one network stack)
and "netns" (every node is a network namespace of its own on a bridge, see localnet.py,
so links can be cut and rate-limited and a node can be killed whole).

Every process is started detached with its pid in the cluster's run directory, so
`demo down` (or a test's teardown) can stop it later, from another process.
"""

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import yaml

from powerstripflocker.clients.http import TOKEN_ENV
from powerstripflocker.localcluster.netns import (
    HostsNetwork, HostsNetworkControl, NetworkError, cluster_prefix, in_namespace,
)

POWERSTRIP_FLOCKER = (sys.executable, "-m", "powerstripflocker")
BUSYBOX = "/bin/busybox"
BUSYBOX_IMAGE = "busybox:latest"
ADAPTER_PATH = "/flocker-adapter"


def adapters_config(adapter_url):
    """The Powerstrip configuration wiring one adapter to container creation
    (the repository's adapters.yml is this, for the default adapter URL)."""
    return {
        "version": 1,
        "endpoints": {
            "POST /*/containers/create": {"pre": ["flocker"]},
            "POST /containers/create": {"pre": ["flocker"]},
            "POST /*/containers/*/start": {"pre": ["flocker"]},
        },
        "adapters": {"flocker": adapter_url},
    }


@dataclass(frozen=True)
class NodeLayout:
    name: str
    address: str
    agent_port: int
    adapter_port: int
    data_dir: str  # dockerd's data root and the agent's
    run_dir: str  # sockets and pid files; short, for unix socket path limits
    adapter_address: str = ""  # where the adapter listens; the node's address by default
    config_dir: str = ""  # where adapters.yml is written; run_dir by default
    plugins_dir: str = ""  # where the volume plugin's socket goes; run_dir/plugins by default
    index: int = 0  # N of nodeN

    @property
    def docker_socket(self):
        """The proxy's socket: what the docker CLI of this node talks to."""
        return os.path.join(self.run_dir, "docker.sock")

    @property
    def real_docker_socket(self):
        return os.path.join(self.run_dir, "docker.real.sock")

    @property
    def docker_host(self):
        return f"unix://{self.docker_socket}"

    @property
    def real_docker_host(self):
        return f"unix://{self.real_docker_socket}"

    @property
    def adapter_url(self):
        return f"http://{self.adapter_address or self.address}:{self.adapter_port}"

    @property
    def agent_data_root(self):
        return os.path.join(self.data_dir, "agent")

    @property
    def plugin_dir(self):
        return self.plugins_dir or os.path.join(self.run_dir, "plugins")

    @property
    def adapters_yml(self):
        return os.path.join(self.config_dir or self.run_dir, "adapters.yml")


@dataclass(frozen=True)
class ClusterLayout:
    state_dir: str
    run_dir: str
    control_port: int
    backend: str
    nodes: tuple
    control_address: str = "127.0.0.1"
    token_path: str = ""  # the cluster token file; in state_dir by default
    network: HostsNetwork | None = None  # in "netns" mode: the namespaces and their bridge
    frontend_timeout: float | None = None  # adapters' and plugins' deadline; theirs if None
    lease_seconds: float | None = None  # agents' lease expiry; theirs if None
    # Plain HTTP on a control address other than loopback: the netns bridge this machine
    # made, never a real network (units leaves it False).
    insecure_http: bool = False
    # Where the control service's TLS files are (control.crt, control.key and the
    # cluster CA's cluster-ca.crt): it serves HTTPS and every client checks it.
    tls_dir: str = ""

    @property
    def hosts(self):
        return "loopback" if self.network is None else "netns"

    @property
    def network_record(self):
        return os.path.join(self.run_dir, "network.json")

    @property
    def control_url(self):
        scheme = "https" if self.tls_dir else "http"
        return f"{scheme}://{self.control_address}:{self.control_port}"

    def tls_file(self, name):
        return os.path.join(self.tls_dir, name)

    def control_tls(self):
        """The control service's TLS options, if it serves TLS."""
        if not self.tls_dir:
            return []
        return ["--tls-cert", self.tls_file("control.crt"),
                "--tls-key", self.tls_file("control.key")]

    def client_tls(self):
        """The options that make a client check the control service's certificate."""
        return ["--tls-ca", self.tls_file("cluster-ca.crt")] if self.tls_dir else []

    @property
    def token_file(self):
        return self.token_path or os.path.join(self.state_dir, "cluster.token")

    @property
    def token_env_file(self):
        """The token as a docker --env-file, for an adapter run as a container."""
        return self.token_file + ".env"

    @property
    def log_dir(self):
        return os.path.join(self.state_dir, "logs")

    def node(self, name):
        for node in self.nodes:
            if node.name == name:
                return node
        raise ClusterError(f"no node {name!r} in this cluster; its nodes are "
                           f"{', '.join(node.name for node in self.nodes)}")

    def command_in_place(self, node, argv):
        """argv as it runs on node: inside its network namespace in "netns" mode."""
        if self.network is None:
            return list(argv)
        return in_namespace(self.network, node.index, argv)


HOSTS = ("loopback", "netns")
MAXIMUM_LOOPBACK_NODES = 254


def make_layout(state_dir, run_dir, control_port=4523, agent_port=4524, adapter_port=9999,
                backend="directory", node_count=2, hosts="loopback", slot=0, **options):
    """Node n gets address 127.0.0.n (loopback) or the n-th node address of the slot's
    subnet (netns), so every node can use the same port numbers."""
    if hosts not in HOSTS:
        raise ClusterError(f"hosts must be one of {', '.join(HOSTS)}, not {hosts!r}")
    network = None
    if hosts == "netns":
        network = HostsNetwork(cluster_prefix(run_dir), slot)
        try:
            addresses = [network.node_address(index) for index in range(1, node_count + 1)]
        except NetworkError as error:
            raise ClusterError(str(error)) from None
        options.setdefault("control_address", network.bridge_address)
        options.setdefault("insecure_http", True)
    elif not 1 <= node_count <= MAXIMUM_LOOPBACK_NODES:
        raise ClusterError(f"a cluster has 1 to {MAXIMUM_LOOPBACK_NODES} nodes, "
                           f"not {node_count}")
    else:
        addresses = [f"127.0.0.{index}" for index in range(1, node_count + 1)]
    nodes = tuple(
        NodeLayout(
            name=f"node{index}", address=address, agent_port=agent_port,
            adapter_port=adapter_port, data_dir=os.path.join(state_dir, f"node{index}"),
            run_dir=os.path.join(run_dir, f"node{index}"), index=index,
        )
        for index, address in enumerate(addresses, start=1)
    )
    return ClusterLayout(state_dir, run_dir, control_port, backend, nodes, network=network,
                         **options)


def control_command(layout):
    return [*POWERSTRIP_FLOCKER, "control", "--listen",
            f"tcp:{layout.control_port}:interface={layout.control_address}",
            "--db", os.path.join(layout.state_dir, "control.db"),
            "--cluster-token-file", layout.token_file, *layout.control_tls(),
            *(["--insecure-http"] if layout.insecure_http else [])]


DOCKER_PLUGIN_DIRECTORY = "/run/docker/plugins"


def dockerd_command(node):
    """dockerd in a mount namespace of its own where the node's plugin directory is
    Docker's /run/docker/plugins: each node of the local cluster finds its own volume
    plugin, as separate hosts would."""
    dockerd = ["dockerd", "--data-root", os.path.join(node.data_dir, "docker"),
               "--exec-root", os.path.join(node.run_dir, "exec"),
               "--pidfile", os.path.join(node.run_dir, "dockerd.pid"),
               "-H", node.real_docker_host, "--bridge=none", "--iptables=false",
               "--ip6tables=false", "--ip-masq=false", "--userland-proxy=false"]
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
            f'mount --bind "$0" {DOCKER_PLUGIN_DIRECTORY} && exec "$@"',
            node.plugin_dir, *dockerd]


def agent_command(layout, node):
    lease = [] if layout.lease_seconds is None else ["--lease-seconds",
                                                     f"{layout.lease_seconds:g}"]
    return [*POWERSTRIP_FLOCKER, "agent", "--control-url", layout.control_url,
            "--data-root", node.agent_data_root, "--backend", layout.backend,
            "--address", node.address,
            "--listen", f"tcp:{node.agent_port}:interface={node.address}",
            "--cluster-token-file", layout.token_file, "--docker", node.real_docker_host,
            *layout.client_tls(), *lease]


def _frontend_timeout(layout):
    if layout.frontend_timeout is None:
        return []
    return ["--timeout", f"{layout.frontend_timeout:g}"]


def adapter_command(layout, node):
    return [*POWERSTRIP_FLOCKER, "adapter", "--control-url", layout.control_url,
            "--node-address", node.address, "--cluster-token-file", layout.token_file,
            *layout.client_tls(), "--listen",
            f"tcp:{node.adapter_port}:interface={node.adapter_address or node.address}",
            *_frontend_timeout(layout)]


def adapter_container_command(layout, node, image):
    """The same adapter command line, run as a container of image on the node's dockerd
    (host network: it listens on the node's address and reaches the control service)."""
    arguments = adapter_command(layout, node)[len(POWERSTRIP_FLOCKER):]
    # The token file is root's and the image runs unprivileged: the docker CLI (root)
    # reads the token from a root-only env file and hands it to the container's
    # environment, out of every process list.
    token_at = arguments.index("--cluster-token-file")
    del arguments[token_at:token_at + 2]
    return ["docker", "-H", node.real_docker_host, "run", "--rm", "--network", "host",
            "--env-file", layout.token_env_file,
            "--name", f"powerstrip-flocker-adapter-{node.name}", image, *arguments]


def plugin_command(layout, node):
    return [*POWERSTRIP_FLOCKER, "plugin", "--control-url", layout.control_url,
            "--node-address", node.address, "--cluster-token-file", layout.token_file,
            *layout.client_tls(), "--socket", plugin_socket(node), *_frontend_timeout(layout)]


def plugin_socket(node):
    return os.path.join(node.plugin_dir, "flocker.sock")


def proxy_command(node):
    return [*POWERSTRIP_FLOCKER, "proxy", "--config", node.adapters_yml,
            "--listen", node.docker_host, "--docker", node.real_docker_host]


class ClusterError(RuntimeError):
    pass


def _http_ok(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def docker(host, *args, timeout=120, check=False, input=None):
    """Run the docker CLI against host; CompletedProcess with text output."""
    return subprocess.run(["docker", "-H", host, *args], capture_output=True, text=True,
                          timeout=timeout, check=check, input=input)


def _docker_answers(host):
    try:
        return docker(host, "version", "--format", "{{.Server.Version}}",
                      timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _registered_nodes(control_url, token):
    request = urllib.request.Request(control_url + "/v1/state/nodes",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return {entry["host"] for entry in json.load(response)}
    except (OSError, ValueError, urllib.error.URLError):
        return set()


def missing_requirements(hosts="loopback"):
    """Why a local cluster cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (dockerd, mounts)"
    tools = ("dockerd", "docker", "containerd", "runc", "tar", "unshare")
    if hosts == "netns":
        tools += ("ip", "tc", "nsenter", "sysctl")
    for tool in tools:
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not os.access(BUSYBOX, os.X_OK):
        return f"{BUSYBOX} is not installed (Debian package busybox-static)"
    return None


def import_busybox_image(docker_host, image=BUSYBOX_IMAGE):
    """Make image from Debian's static busybox with `docker import`, offline; idempotent."""
    if docker(docker_host, "image", "inspect", image, timeout=30).returncode == 0:
        return image
    with tempfile.TemporaryDirectory(prefix="busybox-rootfs-") as rootfs:
        bin_dir = os.path.join(rootfs, "bin")
        os.makedirs(bin_dir)
        shutil.copy2(BUSYBOX, os.path.join(bin_dir, "busybox"))
        applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True,
                                 check=True).stdout.split()
        for applet in applets:
            if applet != "busybox":
                os.symlink("busybox", os.path.join(bin_dir, applet))
        for directory in ("tmp", "etc", "root", "proc", "sys", "dev", "var", "data"):
            os.makedirs(os.path.join(rootfs, directory), exist_ok=True)
        os.chmod(os.path.join(rootfs, "tmp"), 0o1777)
        with open(os.path.join(rootfs, "etc", "passwd"), "w") as passwd:
            passwd.write("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n")
        with open(os.path.join(rootfs, "etc", "group"), "w") as group:
            group.write("root:x:0:\nnogroup:x:65534:\n")
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            ["docker", "-H", docker_host, "import", "--change", 'CMD ["sh"]', "-", image],
            stdin=tar.stdout, capture_output=True, text=True, timeout=300,
        )
        tar.stdout.close()
        tar.wait()
        if imported.returncode != 0:
            raise ClusterError(f"docker import of {image} failed: {imported.stderr.strip()}")
    return image


def mounts_under(root):
    root = os.path.realpath(root)
    found = []
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            target = line.split()[1].replace("\\040", " ")
            if target == root or target.startswith(root + "/"):
                found.append(target)
    return found


def unmount_under(root):
    """Unmount everything at or below root, deepest first."""
    for _ in range(5):
        targets = sorted(mounts_under(root), key=len, reverse=True)
        if not targets:
            return
        for target in targets:
            subprocess.run(["umount", target], capture_output=True)
    for target in sorted(mounts_under(root), key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True)


def processes_mentioning(paths):
    """Pids of processes whose command line names one of paths (our leftovers)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                text = cmdline.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if any(path in text for path in paths):
            found.append(int(entry))
    return found


NODE_SERVICES = ("dockerd", "agent", "adapter", "plugin", "proxy")


def _descendants(roots):
    """roots and every process below them (a container's processes sit below its shim)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found


def processes_in_network_namespace(inode):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}/ns/net").st_ino == inode:
                    found.append(int(entry))
            except OSError:
                continue
    return found


class LocalCluster:
    """Start, use, break and stop the processes of a ClusterLayout."""

    def __init__(self, layout, progress=None):
        self.layout = layout
        self._progress = progress or (lambda message: None)
        self._network = (None if layout.network is None else
                         HostsNetworkControl(layout.network, layout.network_record))
        self._start_options = {}

    def _pid_file(self, service):
        return os.path.join(self.layout.run_dir, "pids", f"{service}.pid")

    def token(self):
        """The cluster token every part is given (made by start())."""
        with open(self.layout.token_file, encoding="utf-8") as token_file:
            return token_file.read().strip()

    def _spawn(self, service, argv, node=None, env=None):
        os.makedirs(self.layout.log_dir, exist_ok=True)
        os.makedirs(os.path.dirname(self._pid_file(service)), exist_ok=True)
        if node is not None:
            argv = self.layout.command_in_place(node, argv)
        log_path = os.path.join(self.layout.log_dir, f"{service}.log")
        # Logs name datasets, nodes and containers: not for every local user.
        with open(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640),
                  "ab") as log:
            os.fchmod(log.fileno(), 0o640)
            process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env=dict(os.environ, **(env or {})),
            )
        with open(self._pid_file(service), "w") as pid_file:
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
            if self._network is not None:
                self._network.remove()
                self._progress(f"network: {len(layout.nodes)} namespaces on bridge "
                               f"{layout.network.bridge} ({layout.network.subnet})")
                self._network.create(len(layout.nodes))
            self._progress(f"control service on {layout.control_url}")
            control = self._spawn("control", control_command(layout))
            self._wait("control", control,
                       lambda: _http_ok(layout.control_url + "/v1/version"))
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
                pid = _read_pid(pid_file)
                if pid is not None and pid not in processes_mentioning([node.run_dir + "/"]):
                    os.unlink(pid_file)
            where = ("" if layout.network is None else
                     f" in namespace {layout.network.namespace(node.index)}")
            self._progress(f"{node.name}: dockerd on {node.real_docker_host}{where}")
            command, ready = dockerd_command(node), lambda: _docker_answers(
                node.real_docker_host)
        elif part == "agent":
            self._progress(f"{node.name}: agent ({layout.backend}) on "
                           f"{node.address}:{node.agent_port}")
            command, ready = agent_command(layout, node), lambda: (
                node.address in _registered_nodes(layout.control_url, self.token()))
        elif part == "adapter":
            self._progress(f"{node.name}: adapter on {node.adapter_url}")
            command = (self._start_options.get("adapter_commands", {}).get(node.name)
                       or adapter_command(layout, node))
            ready = lambda: _http_ok(node.adapter_url + "/healthz")  # noqa: E731
        elif part == "plugin":
            self._progress(f"{node.name}: volume plugin 'flocker' in {node.plugin_dir}")
            command, ready = plugin_command(layout, node), lambda: os.path.exists(
                plugin_socket(node))
        else:
            self._progress(f"{node.name}: proxy on {node.docker_host}")
            with open(node.adapters_yml, "w") as config:
                yaml.safe_dump(adapters_config(node.adapter_url + ADAPTER_PATH), config,
                               sort_keys=False)
            command, ready = proxy_command(node), lambda: _docker_answers(node.docker_host)
        service = f"{node.name}-{part}"
        self._wait(service, self._spawn(service, command, node), ready)

    def import_images(self):
        for node in self.layout.nodes:
            self._progress(f"{node.name}: importing {BUSYBOX_IMAGE} (offline, busybox-static)")
            import_busybox_image(node.real_docker_host)

    def docker(self, node_name, *args, **kwargs):
        """The docker CLI of a node, through its proxy."""
        return docker(self.layout.node(node_name).docker_host, *args, **kwargs)

    def is_running(self):
        pid_dir = os.path.join(self.layout.run_dir, "pids")
        return os.path.isdir(pid_dir) and bool(os.listdir(pid_dir))

    # -- faults -------------------------------------------------------------

    def _network_of(self, node_name, action):
        node = self.layout.node(node_name)
        if self._network is None:
            raise ClusterError(f"{action} needs hosts of their own: start the cluster with "
                               f"--hosts netns")
        if not self._network.is_made(node.index):
            raise ClusterError(f"{node_name} has no network namespace: is the cluster up?")
        return node

    def partition(self, node_name):
        """Cut node_name's link: its processes keep running but reach nothing, and
        nothing reaches them (its unix sockets still answer on this machine)."""
        node = self._network_of(node_name, "partition")
        self._network.set_link(node.index, up=False)

    def heal(self, node_name):
        node = self._network_of(node_name, "heal")
        self._network.set_link(node.index, up=True)

    def shape(self, node_name, rate):
        """Rate-limit node_name's link both ways (a tc rate such as 100mbit; None: none)."""
        node = self._network_of(node_name, "shape")
        self._network.shape(node.index, rate)

    def node_processes(self, node_name):
        """Pids of everything running for node_name: its parts (from their pid files),
        whatever runs in its network namespace, and every process below those (dockerd's
        containerd, the containerd-shims, the containers)."""
        node = self.layout.node(node_name)
        roots = set()
        for service in NODE_SERVICES:
            pid = _read_pid(self._pid_file(f"{node.name}-{service}"))
            if pid is not None and _alive(pid):
                roots.add(pid)
        if self._network is not None and self._network.is_made(node.index):
            roots.update(processes_in_network_namespace(
                self._network.namespace_inode(node.index)))
        roots.update(processes_mentioning([node.run_dir + "/", node.data_dir + "/"]))
        return {pid for pid in _descendants(roots) if pid != os.getpid() and _alive(pid)}

    def kill(self, node_name, timeout=30.0):
        """kill -9 of every process of node_name at once, as when a machine loses power."""
        node = self.layout.node(node_name)
        if not any(_read_pid(self._pid_file(f"{node.name}-{service}")) is not None
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
                os.unlink(self._pid_file(f"{node.name}-{service}"))
            except FileNotFoundError:
                pass

    def kill_part(self, node_name, part):
        """kill -9 of one part of node_name (dockerd, agent, adapter, plugin or proxy) and
        nothing else: a dockerd killed so leaves its containerd and containers running."""
        node = self.layout.node(node_name)
        if part not in NODE_SERVICES:
            raise ClusterError(f"a node's parts are {', '.join(NODE_SERVICES)}, not {part!r}")
        pid_path = self._pid_file(f"{node.name}-{part}")
        pid = _read_pid(pid_path)
        if pid is None or not _alive(pid):
            raise ClusterError(f"{node_name}'s {part} is not running")
        os.kill(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(0.05)
        os.unlink(pid_path)

    def start_part(self, node_name, part):
        """Start one part of node_name again (after kill_part)."""
        if part not in NODE_SERVICES:
            raise ClusterError(f"a node's parts are {', '.join(NODE_SERVICES)}, not {part!r}")
        self._start_part(self.layout.node(node_name), part)

    def restart(self, node_name):
        """Start node_name's processes again on their old data (after kill)."""
        node = self.layout.node(node_name)
        if not _http_ok(self.layout.control_url + "/v1/version"):
            raise ClusterError("the control service does not answer: is the cluster up?")
        if self.node_processes(node_name):
            raise ClusterError(f"{node_name} is still running; kill it first")
        self._start_node(node)

    # -- stop ---------------------------------------------------------------

    def stop(self, remove_state=True):
        """Stop every process, unmount, remove sockets and the hosts' network (and the
        state when asked)."""
        layout = self.layout
        for node in layout.nodes:
            if os.path.exists(node.real_docker_socket) and _docker_answers(node.real_docker_host):
                ids = docker(node.real_docker_host, "ps", "-aq", timeout=30).stdout.split()
                if ids:
                    docker(node.real_docker_host, "rm", "-f", *ids, timeout=120)
        pid_dir = os.path.join(layout.run_dir, "pids")
        services = sorted(os.listdir(pid_dir)) if os.path.isdir(pid_dir) else []
        # Proxies and adapters first, then agents, daemons and the control service last.
        order = ("proxy", "plugin", "adapter", "agent", "dockerd", "control")
        services.sort(key=lambda name: next(
            (index for index, part in enumerate(order) if name[:-4].endswith(part)), 0))
        for service in services:
            self._terminate(os.path.join(pid_dir, service))
        leftovers = set(processes_mentioning([layout.run_dir, layout.state_dir]))
        if self._network is not None:
            for node in layout.nodes:
                if self._network.is_made(node.index):
                    leftovers.update(processes_in_network_namespace(
                        self._network.namespace_inode(node.index)))
        for pid in _descendants(leftovers) - {os.getpid()}:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        unmount_under(layout.run_dir)
        unmount_under(layout.state_dir)
        if self._network is not None:
            self._network.remove()
        shutil.rmtree(layout.run_dir, ignore_errors=True)
        if remove_state:
            shutil.rmtree(layout.state_dir, ignore_errors=True)

    def _terminate(self, pid_path, timeout=20.0):
        pid = _read_pid(pid_path)
        if pid is None:
            return
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            os.unlink(pid_path)
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.unlink(pid_path)


def _read_pid(path):
    try:
        with open(path) as pid_file:
            return int(pid_file.read().strip())
    except (OSError, ValueError):
        return None


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
