"""Where a local cluster's parts live: the nodes' addresses, ports and directories, the
control service's URL, TLS files and token (ClusterLayout, made by make_layout).

Two kinds of hosts: "loopback" (node N is 127.0.0.N; all nodes share one network stack)
and "netns" (every node is a network namespace of its own on a bridge, see netns.py,
so links can be cut and rate-limited and a node can be killed whole).

The control plane is one control service on SQLite, or (control_replicas >= 2) that many
control replicas on a three-member etcd cluster: on loopback replica N is 127.0.1.N and
etcd member N 127.0.2.N; in "netns" mode each is a host of its own after the nodes.
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
class ServiceHost:
    """One host of the control plane: a control replica (controlN, or "control" when
    there is one control service) or an etcd member (etcdN)."""
    name: str
    address: str
    index: int = 0  # its network namespace's index in "netns" mode; 0: none of its own


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
    # Replicas of the control service on etcd (empty: one control service on SQLite).
    control_replicas: tuple = ()
    etcd_members: tuple = ()
    etcd_port: int = 2379  # each member's client port, on its own address
    etcd_peer_port: int = 2380

    @property
    def hosts(self):
        return "loopback" if self.network is None else "netns"

    @property
    def network_record(self):
        return os.path.join(self.run_dir, "network.json")

    @property
    def control_hosts(self):
        """Where the control service runs: each replica, or the one control service."""
        if self.control_replicas:
            return self.control_replicas
        return (ServiceHost("control", self.control_address),)

    def control_url_of(self, host):
        scheme = "https" if self.tls_dir else "http"
        return f"{scheme}://{host.address}:{self.control_port}"

    @property
    def control_urls(self):
        return tuple(self.control_url_of(host) for host in self.control_hosts)

    @property
    def control_url(self):
        """What every client is given as --control-url: the replicas' URLs, comma-separated
        (clients fail over from one to the next), or the one control service's."""
        return ",".join(self.control_urls)

    @property
    def store_url(self):
        """The control replicas' --store: every etcd member, keys under /psf/."""
        members = ",".join(f"{member.address}:{self.etcd_port}"
                           for member in self.etcd_members)
        return f"etcd://{members}/psf"

    @property
    def etcd_dir(self):
        return os.path.join(self.state_dir, "etcd")

    @property
    def service_hosts(self):
        """Every host of the control plane that can be killed and restarted by name."""
        return (*self.etcd_members, *self.control_hosts)

    def service_host(self, name):
        for host in self.service_hosts:
            if host.name == name:
                return host
        return None

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

    def host(self, name):
        """The node or control-plane host called name."""
        found = self.service_host(name)
        if found is not None:
            return found
        try:
            return self.node(name)
        except ClusterError as error:
            services = ", ".join(host.name for host in self.service_hosts)
            raise ClusterError(f"{error}; its control plane is {services}") from None

    def command_in_place(self, host, argv):
        """argv as it runs on host (a node or a service host): inside its network
        namespace in "netns" mode, where it has one."""
        if self.network is None or not host.index:
            return list(argv)
        return in_namespace(self.network, host.index, argv)


HOSTS = ("loopback", "netns")
MAXIMUM_LOOPBACK_NODES = 254
ETCD_MEMBERS = 3
MAXIMUM_CONTROL_REPLICAS = 9


def _control_plane(control_replicas, node_count, address_of):
    """(control replicas, etcd members) as ServiceHosts: the etcd members are the hosts
    after the nodes, then the replicas. address_of(kind, n, place) gives the n-th of a
    kind's (address, namespace index), place being its host number counted on from the
    nodes' (index 0: no namespace of its own)."""
    if not 1 <= control_replicas <= MAXIMUM_CONTROL_REPLICAS:
        raise ClusterError(f"a cluster has 1 to {MAXIMUM_CONTROL_REPLICAS} control replicas, "
                           f"not {control_replicas}")
    if control_replicas == 1:
        return (), ()
    kinds = [("etcd", n) for n in range(1, ETCD_MEMBERS + 1)]
    kinds += [("control", n) for n in range(1, control_replicas + 1)]
    hosts = []
    for place, (kind, n) in enumerate(kinds, start=node_count + 1):
        address, index = address_of(kind, n, place)
        hosts.append(ServiceHost(f"{kind}{n}", address, index))
    return tuple(hosts[ETCD_MEMBERS:]), tuple(hosts[:ETCD_MEMBERS])


def make_layout(state_dir, run_dir, control_port=4523, agent_port=4524, adapter_port=9999,
                backend="directory", node_count=2, hosts="loopback", slot=0,
                control_replicas=1, **options):
    """Node n gets address 127.0.0.n (loopback) or the n-th node address of the slot's
    subnet (netns), so every node can use the same port numbers; so do the control
    replicas and the etcd members (see the module's docstring)."""
    if hosts not in HOSTS:
        raise ClusterError(f"hosts must be one of {', '.join(HOSTS)}, not {hosts!r}")
    network = None
    if hosts == "netns":
        network = HostsNetwork(cluster_prefix(run_dir), slot)
        try:
            addresses = [network.node_address(index) for index in range(1, node_count + 1)]
            replicas, etcd_members = _control_plane(
                control_replicas, node_count,
                lambda kind, n, index: (network.node_address(index), index))
        except NetworkError as error:
            raise ClusterError(f"{error} (with {control_replicas} control replicas and their "
                               f"etcd members, one host each)" if control_replicas > 1
                               else str(error)) from None
        network = HostsNetwork(network.prefix, slot, node_count,
                               tuple(host.name for host in (*etcd_members, *replicas)))
        options.setdefault("control_address", network.bridge_address)
        options.setdefault("insecure_http", True)
    elif not 1 <= node_count <= MAXIMUM_LOOPBACK_NODES:
        raise ClusterError(f"a cluster has 1 to {MAXIMUM_LOOPBACK_NODES} nodes, "
                           f"not {node_count}")
    else:
        addresses = [f"127.0.0.{index}" for index in range(1, node_count + 1)]
        third_octet = {"control": 1, "etcd": 2}
        # On loopback the control plane shares the machine's network stack: no index.
        replicas, etcd_members = _control_plane(
            control_replicas, node_count,
            lambda kind, n, index: (f"127.0.{third_octet[kind]}.{n}", 0))
    nodes = tuple(
        NodeLayout(
            name=f"node{index}", address=address, agent_port=agent_port,
            adapter_port=adapter_port, data_dir=os.path.join(state_dir, f"node{index}"),
            run_dir=os.path.join(run_dir, f"node{index}"), index=index,
        )
        for index, address in enumerate(addresses, start=1)
    )
    return ClusterLayout(state_dir, run_dir, control_port, backend, nodes, network=network,
                         control_replicas=replicas, etcd_members=etcd_members, **options)


class ClusterError(RuntimeError):
    pass
