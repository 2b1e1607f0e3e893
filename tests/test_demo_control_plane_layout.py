"""Where the local cluster's control plane lives: one control service on SQLite, or
control replicas on a three-member etcd cluster (demo up --control-replicas N). Pure:
layouts and command lines, no root, no process started."""

import json
import os

import pytest

from powerstripflocker.cli.demo import run as demo_run
from powerstripflocker.cli.main import build_parser
from powerstripflocker.localcluster.commands import (
    adapter_command, agent_command, control_command, plugin_command,
)
from powerstripflocker.localcluster.etcd_members import etcd_command
from powerstripflocker.localcluster.layout import ClusterError, make_layout


def _option(argv, name):
    return argv[argv.index(name) + 1]


def test_one_control_service_is_as_before_on_sqlite():
    layout = make_layout("/s", "/run/x", control_port=4523)
    assert layout.control_url == "http://127.0.0.1:4523"
    assert [host.name for host in layout.service_hosts] == ["control"]
    command = control_command(layout)
    assert _option(command, "--db") == "/s/control.db" and "--store" not in command
    assert _option(command, "--listen") == "tcp:4523:interface=127.0.0.1"


def test_three_replicas_on_loopback_each_have_an_address_and_every_client_all_of_them():
    layout = make_layout("/s", "/run/x", control_port=4523, control_replicas=3,
                         etcd_port=12379, etcd_peer_port=12380)
    urls = "http://127.0.1.1:4523,http://127.0.1.2:4523,http://127.0.1.3:4523"
    assert layout.control_url == urls
    assert layout.store_url == "etcd://127.0.2.1:12379,127.0.2.2:12379,127.0.2.3:12379/psf"
    node = layout.nodes[0]
    for command in (agent_command(layout, node), adapter_command(layout, node),
                    plugin_command(layout, node)):
        assert _option(command, "--control-url") == urls
    second = layout.service_host("control2")
    command = control_command(layout, second)
    assert _option(command, "--listen") == "tcp:4523:interface=127.0.1.2"
    assert _option(command, "--store") == layout.store_url and "--db" not in command
    assert _option(command, "--cluster-token-file") == layout.token_file
    member = layout.service_host("etcd3")
    etcd = etcd_command(layout, member)
    assert layout.command_in_place(member, etcd) == etcd
    assert _option(etcd, "--listen-client-urls") == "http://127.0.2.3:12379"
    assert _option(etcd, "--listen-peer-urls") == "http://127.0.2.3:12380"
    assert _option(etcd, "--data-dir") == "/s/etcd/etcd3"
    assert _option(etcd, "--initial-cluster") == ",".join(
        f"etcd{n}=http://127.0.2.{n}:12380" for n in (1, 2, 3))


def test_in_namespaces_mode_each_member_and_replica_is_a_host_after_the_nodes():
    layout = make_layout("/s", "/run/x", hosts="netns", control_replicas=2)
    network = layout.network
    assert network.host_count == 2 + 3 + 2
    names = [network.host_name(index) for index in range(1, network.host_count + 1)]
    assert names == ["node1", "node2", "etcd1", "etcd2", "etcd3", "control1", "control2"]
    assert [host.address for host in layout.service_hosts] == [
        f"198.18.0.{n}" for n in range(4, 9)]
    member = layout.service_host("etcd1")
    assert layout.command_in_place(member, ["etcd"]) == [
        "nsenter", f"--net=/run/netns/{network.prefix}-etcd1", "--", "etcd"]
    replica = layout.service_host("control2")
    assert "--insecure-http" in control_command(layout, replica)
    assert layout.control_url == "http://198.18.0.7:4523,http://198.18.0.8:4523"


def test_a_replica_count_out_of_range_and_a_slot_too_small_are_refused():
    for count in (0, 10):
        with pytest.raises(ClusterError, match=f"1 to 9 control replicas, not {count}"):
            make_layout("/s", "/run/x", control_replicas=count)
    with pytest.raises(ClusterError, match="with 9 control replicas"):
        make_layout("/s", "/run/x", hosts="netns", node_count=50, control_replicas=9)


def test_an_unknown_host_names_the_nodes_and_the_control_plane():
    layout = make_layout("/s", "/run/x", control_replicas=2)
    with pytest.raises(ClusterError, match="no node 'control3' in this cluster; its nodes "
                       "are node1, node2; its control plane is etcd1, etcd2, etcd3, "
                       "control1, control2"):
        layout.host("control3")


def _demo(capsys, *arguments):
    code = demo_run(build_parser().parse_args(["demo", *arguments]))
    return code, capsys.readouterr().out


def test_fault_actions_read_the_replica_count_from_the_record(capsys, tmp_path):
    run_dir = tmp_path / "run"
    where = ["--run-dir", str(run_dir), "--state-dir", str(tmp_path / "state")]
    os.makedirs(run_dir)
    started = {"hosts": "loopback", "nodes": 2, "backend": "directory",
               "control_port": 4523, "agent_port": 4524, "adapter_port": 9999,
               "control_replicas": 3, "etcd_port": 2379, "etcd_peer_port": 2380}
    with open(run_dir / "demo.json", "w") as record:
        json.dump({"options": started, "slot": 0}, record)
    # No pid file: the shape was understood (control2 exists) but it is not running.
    assert _demo(capsys, "kill", "control2", *where) == (
        1, "demo kill: control2 is not running: is the cluster up?\n")
    code, out = _demo(capsys, "kill", "control2", "--control-replicas", "2", *where)
    assert code == 1 and "started with control_replicas=3, not control_replicas=2" in out
    code, out = _demo(capsys, "partition", "etcd1", *where)
    assert (code, out) == (1, "demo partition: partition needs hosts of their own: start "
                              "the cluster with --hosts netns\n")
