"""The network of a local cluster whose nodes are hosts of their own.

Each node gets a network namespace (`ip netns`), joined by a veth pair to one bridge
in the root namespace. Addresses come from 198.18.0.0/24, the range set aside for
network benchmarks (RFC 2544), cut into four /26 slots so that four such clusters can
be up at once: in slot k the bridge (where the control service listens) is .64k+1 and
node N is .64k+1+N. Nothing routes out of a namespace: its only routes are loopback
and its own /26, so no traffic leaves the machine.

Every name a cluster makes starts with its prefix (derived from its run directory), so
a sweep removes what a crashed run of the same cluster left and nothing of another's.
Links can be cut (`ip link set down`: the node's processes keep running, as in a real
partition) and rate-limited (`tc ... tbf`). This kernel has tbf and htb but not netem,
so latency and loss cannot be added.
"""

import hashlib
import ipaddress
import json
import os
import re
import subprocess
from dataclasses import dataclass

RANGE = ipaddress.ip_network("198.18.0.0/24")
SLOT_PREFIX_LENGTH = 26
SLOTS = tuple(RANGE.subnets(new_prefix=SLOT_PREFIX_LENGTH))
MAXIMUM_NODES = SLOTS[0].num_addresses - 3  # network, bridge and broadcast addresses
NETNS_DIR = "/run/netns"
INSIDE_INTERFACE = "eth0"
RATE = re.compile(r"^[0-9]+(\.[0-9]+)?(bit|kbit|mbit|gbit|tbit|bps|kbps|mbps|gbps)$")


class NetworkError(RuntimeError):
    pass


def cluster_prefix(run_dir):
    """A short name stem owned by the cluster whose sockets live in run_dir (interface
    names are limited to 15 characters)."""
    return "pf" + hashlib.sha1(os.path.realpath(run_dir).encode()).hexdigest()[:6]


@dataclass(frozen=True)
class HostsNetwork:
    prefix: str
    slot: int
    # Hosts after the nodes, by name (etcd members and control replicas): host
    # node_count + k is named service_hosts[k - 1]; every other index is "node{index}".
    node_count: int = 0
    service_hosts: tuple = ()

    @property
    def host_count(self):
        return self.node_count + len(self.service_hosts)

    def host_name(self, index):
        after_nodes = index - self.node_count
        if self.node_count and 1 <= after_nodes <= len(self.service_hosts):
            return self.service_hosts[after_nodes - 1]
        return f"node{index}"

    @property
    def subnet(self):
        return SLOTS[self.slot]

    @property
    def bridge(self):
        return f"{self.prefix}br"

    @property
    def bridge_address(self):
        return str(self.subnet[1])

    def node_address(self, index):
        """The address of host index (node index, or a service host after the nodes)."""
        if not 1 <= index <= MAXIMUM_NODES:
            raise NetworkError(f"a cluster has 1 to {MAXIMUM_NODES} nodes, not {index}")
        return str(self.subnet[1 + index])

    def namespace(self, index):
        return f"{self.prefix}-{self.host_name(index)}"

    def veth(self, index):
        """The root namespace's end of node index's link (the bridge port)."""
        return f"{self.prefix}n{index}"

    def _peer(self, index):
        return f"{self.prefix}p{index}"

    def namespace_path(self, index):
        return os.path.join(NETNS_DIR, self.namespace(index))


def parse_rate(text):
    """A tc rate such as 100mbit, or None for 'off'; ValueError when it is neither."""
    if text == "off":
        return None
    if not RATE.match(text):
        raise ValueError(f"rate {text!r} is not a tc rate such as 100mbit, 1gbit or 500kbit "
                         f"(or 'off')")
    return text


def rate_bytes_per_second(rate):
    """tc's reading of a rate: bit units are bits, bps units bytes, k/m/g powers of 1000."""
    match = re.match(r"^([0-9.]+)([kmgt]?)(bit|bps)$", rate)
    number, power, unit = float(match.group(1)), match.group(2), match.group(3)
    scaled = number * 1000 ** " kmgt".index(power or " ")
    return scaled / 8 if unit == "bit" else scaled


def tbf_arguments(rate):
    """tbf with a bucket of 10 ms of the rate (at least 16 KiB, so a full-size packet
    always fits) and at most 50 ms of queue."""
    burst = max(int(rate_bytes_per_second(rate) / 100), 16 * 1024)
    return ["tbf", "rate", rate, "burst", str(burst), "latency", "50ms"]


def _run(*argv, check=True):
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise NetworkError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
    return result


def in_namespace(network, index, argv):
    """argv run in node index's network namespace. nsenter, not `ip netns exec`: the
    latter remounts /sys, which hides the cgroup mounts dockerd needs."""
    return ["nsenter", f"--net={network.namespace_path(index)}", "--", *argv]


def namespaces():
    """Names of the network namespaces `ip netns` knows."""
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def links():
    """Names of the root namespace's network interfaces."""
    return sorted(os.listdir("/sys/class/net"))


def used_slots():
    """Slots with an IPv4 address of the root namespace in them (another cluster's bridge)."""
    shown = _run("ip", "-4", "-o", "address", "show").stdout
    used = set()
    for match in re.finditer(r"inet ([0-9.]+)/", shown):
        address = ipaddress.ip_address(match.group(1))
        for slot, subnet in enumerate(SLOTS):
            if address in subnet:
                used.add(slot)
    return used


def free_slot():
    for slot in range(len(SLOTS)):
        if slot not in used_slots():
            return slot
    raise NetworkError(f"all {len(SLOTS)} address slots of {RANGE} are in use by other "
                       f"clusters in namespaces mode; stop one first")


def _netns_is_mounted():
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == NETNS_DIR for line in mounts)


class HostsNetworkControl:
    """Makes, cuts, shapes and removes the network of one cluster. What it made is
    recorded in record_path so that another process (`demo down`) can remove it."""

    def __init__(self, network, record_path):
        self.network = network
        self._record_path = record_path

    def _record(self):
        try:
            with open(self._record_path) as record:
                return json.load(record)
        except (OSError, ValueError):
            return {}

    def create(self, host_count):
        """The bridge and host_count hosts (the nodes, then any service hosts)."""
        network = self.network
        if network.slot in used_slots():
            raise NetworkError(f"{network.subnet} is already in use on this machine (another "
                               f"cluster in namespaces mode?); `ip -4 address` shows it")
        for index in range(1, host_count + 1):
            network.node_address(index)
        os.makedirs(os.path.dirname(self._record_path), exist_ok=True)
        record = {"prefix": network.prefix, "slot": network.slot,
                  "mounted_netns_dir": not _netns_is_mounted() and not namespaces()}
        with open(self._record_path, "w") as out:
            json.dump(record, out)
        _run("ip", "link", "add", network.bridge, "type", "bridge")
        _disable_ipv6(f"/proc/sys/net/ipv6/conf/{network.bridge}/disable_ipv6")
        _run("ip", "address", "add", f"{network.bridge_address}/{SLOT_PREFIX_LENGTH}",
             "dev", network.bridge)
        _run("ip", "link", "set", network.bridge, "up")
        for index in range(1, host_count + 1):
            self._add_node(index)

    def _add_node(self, index):
        network = self.network
        namespace = network.namespace(index)
        _run("ip", "netns", "add", namespace)
        _run(*in_namespace(network, index, ["sysctl", "-q", "-w",
                                            "net.ipv6.conf.all.disable_ipv6=1",
                                            "net.ipv6.conf.default.disable_ipv6=1"]))
        _run("ip", "link", "add", network.veth(index), "type", "veth",
             "peer", "name", network._peer(index), "netns", namespace)
        _disable_ipv6(f"/proc/sys/net/ipv6/conf/{network.veth(index)}/disable_ipv6")
        _run("ip", "-n", namespace, "link", "set", network._peer(index),
             "name", INSIDE_INTERFACE)
        _run("ip", "-n", namespace, "address", "add",
             f"{network.node_address(index)}/{SLOT_PREFIX_LENGTH}", "dev", INSIDE_INTERFACE)
        _run("ip", "-n", namespace, "link", "set", "lo", "up")
        _run("ip", "-n", namespace, "link", "set", INSIDE_INTERFACE, "up")
        _run("ip", "link", "set", network.veth(index), "master", network.bridge, "up")

    def remove(self):
        """Remove every namespace and interface under the cluster's prefix (the veth pairs
        and qdiscs go with them), and the /run/netns mount if this cluster made it."""
        record = self._record()
        prefix = self.network.prefix
        for namespace in namespaces():
            if namespace.startswith(prefix + "-"):
                _run("ip", "netns", "delete", namespace, check=False)
        for link in links():
            if link.startswith(prefix):
                _run("ip", "link", "delete", link, check=False)
        if record.get("mounted_netns_dir") and not namespaces() and _netns_is_mounted():
            _run("umount", NETNS_DIR, check=False)
        try:
            os.unlink(self._record_path)
        except FileNotFoundError:
            pass

    def is_made(self, index):
        return os.path.exists(self.network.namespace_path(index))

    def set_link(self, index, up):
        _run("ip", "link", "set", self.network.veth(index), "up" if up else "down")

    def shape(self, index, rate):
        """Rate-limit both directions of node index's link; rate None removes the limit."""
        root_side = ["tc", "qdisc", "replace" if rate else "del", "dev",
                     self.network.veth(index), "root"]
        inside = ["tc", "qdisc", "replace" if rate else "del", "dev", INSIDE_INTERFACE, "root"]
        if rate:
            root_side += tbf_arguments(rate)
            inside += tbf_arguments(rate)
        _run(*root_side, check=bool(rate))
        _run(*in_namespace(self.network, index, inside), check=bool(rate))

    def namespace_inode(self, index):
        return os.stat(self.network.namespace_path(index)).st_ino


def sweep(run_dir):
    """Remove what a crashed cluster with this run directory left of its network."""
    HostsNetworkControl(HostsNetwork(cluster_prefix(run_dir), 0),
                        os.path.join(run_dir, "network.json")).remove()


def _disable_ipv6(path):
    """IPv6 off on the cluster's links: no link-local chatter (router solicitations)."""
    try:
        with open(path, "w") as setting:
            setting.write("1")
    except OSError:
        pass
