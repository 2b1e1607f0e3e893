"""`demo up --control-replicas 3`: three control replicas on a three-member etcd cluster.
The killer demo goes on with a control replica and the etcd leader killed, and again with
both started again and the other replicas and another member killed; `demo down` leaves
no process, mount, network namespace or link behind. On loopback and with hosts of their
own (every etcd member and control replica in a network namespace of its own)."""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from powerstripflocker.localcluster import etcd_members
from powerstripflocker.localcluster.etcd_members import etcd_missing
from powerstripflocker.localcluster.layout import make_layout
from powerstripflocker.localcluster.machine import (
    docker, http_ok, missing_requirements, mounts_under, processes_mentioning,
)
from powerstripflocker.localcluster.netns import cluster_prefix, links, namespaces

from ..support.processes import free_port
from .conftest import wait_for


def demo(*arguments):
    return subprocess.run([sys.executable, "-m", "powerstripflocker", "demo", *arguments],
                          capture_output=True, text=True, timeout=900)


def succeeds(result):
    assert result.returncode == 0, f"{result.args}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def write_then_read(layout, name, text):
    """The killer demo on a volume of its own: write text on node1, read it on node2."""
    first, last = (node.docker_host for node in layout.nodes)
    wrote = docker(first, "run", "--rm", "-v", f"/flocker/{name}:/data", "busybox",
                   "sh", "-c", f"echo {text} > /data/file", timeout=300)
    assert wrote.returncode == 0, wrote.stderr
    read = docker(last, "run", "--rm", "-v", f"/flocker/{name}:/data", "busybox",
                  "cat", "/data/file", timeout=300)
    assert (read.returncode, read.stdout) == (0, f"{text}\n"), read.stderr


def leftovers(state_dir, run_dir):
    prefix = cluster_prefix(run_dir)
    return {
        "processes": processes_mentioning([state_dir, run_dir]),
        "mounts": mounts_under(state_dir) + mounts_under(run_dir),
        "namespaces": [name for name in namespaces() if name.startswith(prefix)],
        "links": [name for name in links() if name.startswith(prefix)],
        "directories": [path for path in (state_dir, run_dir) if os.path.exists(path)],
    }


@pytest.mark.parametrize("hosts", ["loopback", "netns"])
def test_the_demo_goes_on_with_a_control_replica_and_the_etcd_leader_killed(tmp_path, hosts):
    problem = missing_requirements(hosts) or etcd_missing()
    if problem:
        pytest.skip(f"the demo with control replicas needs a local cluster and etcd: {problem}")
    state_dir = str(tmp_path / "state")
    run_dir = tempfile.mkdtemp(prefix="psf-demo-", dir="/run")
    ports = {"control_port": free_port(), "agent_port": free_port(),
             "adapter_port": free_port(), "etcd_port": free_port(),
             "etcd_peer_port": free_port()}
    where = ["--hosts", hosts, "--state-dir", state_dir, "--run-dir", run_dir]
    for name, port in ports.items():
        where += [f"--{name.replace('_', '-')}", str(port)]
    try:
        lines = succeeds(demo("up", "--control-replicas", "3", *where)).splitlines()
        node2 = lines.index("node2$ docker run --rm -v /flocker/demo:/data busybox sh -c "
                            "'cat /data/file'")
        assert lines[node2 + 1] == "fish", lines
        with open(os.path.join(run_dir, "demo.json")) as record:
            recorded = json.load(record)
        assert recorded["options"]["control_replicas"] == 3
        layout = make_layout(state_dir, run_dir, hosts=hosts, slot=recorded["slot"],
                             control_replicas=3, **ports)
        assert len(layout.control_urls) == 3
        if hosts == "netns":
            made = [name for name in namespaces() if name.startswith(layout.network.prefix)]
            assert sorted(made) == sorted(
                f"{layout.network.prefix}-{name}" for name in
                ("node1", "node2", "etcd1", "etcd2", "etcd3", "control1", "control2",
                 "control3"))

        # Any one control replica and any one etcd member down: the leader, the worst.
        succeeds(demo("kill", "control1", *where))
        leader = wait_for(lambda: etcd_members.leader(layout), 30, "an agreed etcd leader")
        succeeds(demo("kill", leader, *where))
        assert not http_ok(layout.control_urls[0] + "/v1/version")
        killed = layout.service_host(leader)
        assert not etcd_members.healthy(layout, killed)
        write_then_read(layout, "salmon", "salmon")
        # The first volume moves back to node1 through the replicas that are left.
        read = docker(layout.nodes[0].docker_host, "run", "--rm", "-v",
                      "/flocker/demo:/data", "busybox", "cat", "/data/file", timeout=300)
        assert (read.returncode, read.stdout) == (0, "fish\n"), read.stderr
        status = subprocess.run(
            [sys.executable, "-m", "powerstripflocker", "status", "--control-url",
             layout.control_url, "--cluster-token-file", layout.token_file],
            capture_output=True, text=True, timeout=120)
        assert status.returncode == 0, status.stderr
        assert {"demo", "salmon"} <= {line.split()[0] for line in status.stdout.splitlines()}

        # Both started again, on their data; then the restarted replica is the only one
        # left, and the restarted member must make a quorum with the one left.
        succeeds(demo("restart", "control1", *where))
        succeeds(demo("restart", leader, *where))
        for replica in ("control2", "control3"):
            succeeds(demo("kill", replica, *where))
        other = next(member.name for member in layout.etcd_members if member.name != leader)
        succeeds(demo("kill", other, *where))
        write_then_read(layout, "trout", "trout")
    finally:
        if os.path.isdir(os.path.join(state_dir, "logs")):
            shutil.copytree(os.path.join(state_dir, "logs"), tmp_path / "logs",
                            dirs_exist_ok=True)
        down = demo("down", *where)
    succeeds(down)
    assert leftovers(state_dir, run_dir) == {"processes": [], "mounts": [], "namespaces": [],
                                             "links": [], "directories": []}
