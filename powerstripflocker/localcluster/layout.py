"""Where a local cluster's parts live: the nodes' addresses, ports and directories, the
control service's URL, TLS files and token (ClusterLayout, made by make_layout).

Two kinds of hosts: "loopback" (node N is 127.0.0.N; all nodes share one network stack)
and "netns" (every node is a network namespace of its own on a bridge, see netns.py,
so links can be cut and rate-limited and a node can be killed whole).
"""

import os
from dataclasses import dataclass

from powerstripflocker.localcluster.netns import (
    HostsNetwork, NetworkError, cluster_prefix, in_namespace,
)

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


class ClusterError(RuntimeError):
    pass
