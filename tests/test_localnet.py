"""The local cluster's layouts and the names, addresses and rates of its hosts'
network: pure functions, no root needed."""

import ipaddress

import pytest

from powerstripflocker.cli.demo import run as demo_run
from powerstripflocker.cli.main import build_parser
from powerstripflocker.localcluster.layout import ClusterError, make_layout
from powerstripflocker.localcluster.netns import (
    MAXIMUM_NODES, RANGE, SLOTS, HostsNetwork, cluster_prefix, in_namespace, parse_rate,
    rate_bytes_per_second, tbf_arguments,
)

INTERFACE_NAME_LIMIT = 15


def test_a_clusters_prefix_is_its_run_directorys_and_short():
    assert cluster_prefix("/run/a") == cluster_prefix("/run/a/")
    assert cluster_prefix("/run/a") != cluster_prefix("/run/b")
    assert len(cluster_prefix("/run/a")) == 8


def test_every_interface_name_fits_the_kernels_limit():
    network = HostsNetwork(cluster_prefix("/run/x"), 0)
    names = [network.bridge] + [network.veth(n) for n in range(1, MAXIMUM_NODES + 1)]
    assert max(len(name) for name in names) <= INTERFACE_NAME_LIMIT
    assert len(set(names)) == len(names)
    assert all(name.startswith(network.prefix) for name in names)


def test_addresses_stay_in_the_benchmark_range_and_slots_do_not_overlap():
    addresses = set()
    for slot in range(len(SLOTS)):
        network = HostsNetwork("pfabcdef", slot)
        mine = {network.bridge_address} | {network.node_address(n)
                                           for n in range(1, MAXIMUM_NODES + 1)}
        assert all(ipaddress.ip_address(a) in RANGE for a in mine)
        assert all(ipaddress.ip_address(a) in network.subnet for a in mine)
        assert not addresses & mine
        addresses |= mine
    first = HostsNetwork("pfabcdef", 0)
    assert (first.bridge_address, first.node_address(1), first.node_address(2)) == (
        "198.18.0.1", "198.18.0.2", "198.18.0.3")


def test_more_nodes_than_a_slot_holds_are_refused():
    with pytest.raises(ClusterError, match="1 to 61 nodes"):
        make_layout("/s", "/run/x", node_count=MAXIMUM_NODES + 1, hosts="netns")


@pytest.mark.parametrize("hosts", ["loopback", "netns"])
def test_five_nodes_in_either_mode_have_their_own_addresses_and_directories(hosts):
    layout = make_layout("/s", "/run/x", node_count=5, hosts=hosts)
    assert [node.name for node in layout.nodes] == [f"node{n}" for n in range(1, 6)]
    assert len({node.address for node in layout.nodes}) == 5
    assert len({node.run_dir for node in layout.nodes}) == 5
    assert layout.hosts == hosts
    if hosts == "netns":
        assert layout.control_url == f"http://198.18.0.1:{layout.control_port}"
        assert layout.command_in_place(layout.nodes[2], ["true"]) == [
            "nsenter", f"--net=/run/netns/{layout.network.prefix}-node3", "--", "true"]
    else:
        assert layout.nodes[4].address == "127.0.0.5"
        assert layout.command_in_place(layout.nodes[2], ["true"]) == ["true"]


def test_an_unknown_node_or_mode_is_a_clear_error():
    layout = make_layout("/s", "/run/x")
    with pytest.raises(ClusterError, match="no node 'node3'.*node1, node2"):
        layout.node("node3")
    with pytest.raises(ClusterError, match="hosts must be one of loopback, netns"):
        make_layout("/s", "/run/x", hosts="vm")


def test_rates_are_tc_rates_and_the_bucket_holds_a_packet():
    assert parse_rate("100mbit") == "100mbit"
    assert parse_rate("off") is None
    for wrong in ("", "fast", "100", "-1mbit", "100 mbit", "1e3mbit"):
        with pytest.raises(ValueError, match="not a tc rate"):
            parse_rate(wrong)
    assert rate_bytes_per_second("100mbit") == 12_500_000
    assert rate_bytes_per_second("2mbps") == 2_000_000
    assert tbf_arguments("100mbit") == ["tbf", "rate", "100mbit", "burst", "125000",
                                        "latency", "50ms"]
    assert tbf_arguments("1mbit")[4] == str(16 * 1024)


def test_nsenter_not_ip_netns_exec_so_sys_keeps_its_cgroup_mounts():
    network = HostsNetwork("pfabcdef", 0)
    assert in_namespace(network, 2, ["dockerd"])[:2] == [
        "nsenter", "--net=/run/netns/pfabcdef-node2"]


def _demo(capsys, *arguments):
    options = build_parser().parse_args(["demo", *arguments])
    code = demo_run(options)
    return code, capsys.readouterr().out


def test_demo_fault_actions_need_a_node_and_a_running_cluster(capsys, tmp_path):
    where = ["--run-dir", str(tmp_path / "run"), "--state-dir", str(tmp_path / "state")]
    assert _demo(capsys, "partition", *where) == (
        2, "demo partition: name the node, e.g. demo partition node2\n")
    code, out = _demo(capsys, "kill", "node1", *where)
    assert code == 1 and "no demo cluster is up" in out
    code, out = _demo(capsys, "shape", "node1", "--rate", "quick", *where)
    assert code == 2 and "not a tc rate" in out
    code, out = _demo(capsys, "down", "node1", *where)
    assert code == 2 and "takes no node" in out
