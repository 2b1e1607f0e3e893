"""Nodes that are hosts of their own (--hosts netns): the demo on three of them, a node
cut off while its `docker run` waits for a move, a node killed whole and restarted, and
nothing of the cluster left behind afterwards."""

import os
import subprocess
import sys
import tempfile
import time

import pytest

from powerstripflocker.localcluster.machine import missing_requirements, mounts_under
from powerstripflocker.localcluster.netns import links, namespaces

from ..support.processes import free_port
from .conftest import ClusterUnderTest, keep_logs, start_cluster, wait_for
from .test_killer_demo import ok, unique

FRONTEND_TIMEOUT = 20.0


def proc_mounts(*roots):
    """The mounts of /proc/mounts that a cluster with these directories could make: at or
    under /run/netns, /run/docker or one of roots (other tests may mount elsewhere)."""
    watched = ("/run/netns", "/run/docker", *roots)
    with open("/proc/self/mounts") as mounts:
        return sorted(line for line in mounts.read().splitlines()
                      if any(line.split()[1] == root or line.split()[1].startswith(root + "/")
                             for root in watched))


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    """Two nodes in network namespaces, with a short frontend deadline; on teardown,
    nothing of the cluster may be left."""
    base = tmp_path_factory.mktemp("cluster-netns")
    local = start_cluster(base, hosts="netns", frontend_timeout=FRONTEND_TIMEOUT)
    prefix = local.layout.network.prefix
    try:
        local.start()
        local.import_images()
        yield ClusterUnderTest(local)
    finally:
        keep_logs(local, f"{base}-logs")
        local.stop()
    assert [name for name in namespaces() if name.startswith(prefix)] == []
    assert [name for name in links() if name.startswith(prefix)] == []
    assert mounts_under(local.layout.run_dir) == [] and mounts_under(str(base)) == []


def demo(*arguments):
    return subprocess.run([sys.executable, "-m", "powerstripflocker", "demo", *arguments],
                          capture_output=True, text=True, timeout=900)


def test_demo_on_three_namespaced_hosts_reads_fish_on_node3_and_down_restores_everything(
        tmp_path):
    problem = missing_requirements("netns")
    if problem:
        pytest.skip(f"the demo needs a local cluster: {problem}")
    run_dir = tempfile.mkdtemp(prefix="psf-ns-", dir="/run")
    namespaces_before, mounts_before = namespaces(), proc_mounts(run_dir, str(tmp_path))
    where = ["--hosts", "netns", "--nodes", "3", "--state-dir", str(tmp_path / "state"),
             "--run-dir", run_dir, "--control-port", str(free_port()),
             "--agent-port", str(free_port()), "--adapter-port", str(free_port())]
    try:
        result = demo("up", *where)
        assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
        lines = result.stdout.splitlines()
        node3 = lines.index("node3$ docker run --rm -v /flocker/demo:/data busybox sh -c "
                            "'cat /data/file'")
        assert lines[node3 + 1] == "fish", result.stdout
        assert "  starting node3: agent (directory) on 198.18." in "\n".join(lines)
        unknown = demo("partition", "node7", *where)
        assert unknown.returncode != 0
        assert "no node 'node7' in this cluster" in unknown.stdout
        other_options = demo("kill", "node1", *where[2:])
        assert other_options.returncode != 0
        assert "give the same options as to demo up" in other_options.stdout
    finally:
        down = demo("down", *where)
    assert down.returncode == 0, down.stdout + down.stderr
    assert namespaces() == namespaces_before
    assert proc_mounts(run_dir, str(tmp_path)) == mounts_before
    assert not os.path.exists(run_dir)
    not_up = demo("heal", "node1", *where)
    assert not_up.returncode != 0 and "no demo cluster is up" in not_up.stdout


def test_a_node_cut_off_while_its_docker_run_waits_fails_in_one_line_and_the_move_completes(
        hosts):
    name = unique("cut")
    written = ok(hosts.docker("node1", "run", "--rm", "-v", f"/flocker/{name}:/d", "busybox",
                              "sh", "-c", "dd if=/dev/urandom of=/d/blob bs=1M count=24 "
                              "2>/dev/null && sha256sum /d/blob")).split()[0]
    # 24 MiB at 4 Mbit/s takes about 50 s: the move is still going when the link is cut.
    hosts.cluster.shape("node2", "4mbit")
    started = time.monotonic()
    waiting = subprocess.Popen(
        ["docker", "-H", hosts.layout.node("node2").docker_host, "run", "--rm", "-v",
         f"/flocker/{name}:/d", "busybox", "sha256sum", "/d/blob"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        node2 = hosts.node_uuid("node2")
        wait_for(lambda: [d for d in hosts.datasets_named(name) if d["primary"] == node2],
                 30, "the move to node2 configured")
        time.sleep(3)
        hosts.cluster.partition("node2")
        stdout, stderr = waiting.communicate(timeout=FRONTEND_TIMEOUT + 30)
    finally:
        if waiting.poll() is None:
            waiting.kill()
        hosts.cluster.heal("node2")
        hosts.cluster.shape("node2", None)
    elapsed = time.monotonic() - started
    assert waiting.returncode == 125, (stdout, stderr)
    errors = [line for line in stderr.splitlines() if line.strip()]
    assert errors[0].startswith("docker: Error response from daemon: "), stderr
    assert name in errors[0], stderr
    assert elapsed < FRONTEND_TIMEOUT + 20, elapsed
    # Nothing half-done: once the link is back the move completes, one dataset, data whole.
    assert len(hosts.datasets_named(name)) == 1
    read = wait_for(lambda: (lambda r: r.returncode == 0 and r.stdout)(
        hosts.docker("node2", "run", "--rm", "-v", f"/flocker/{name}:/d", "busybox",
                     "sha256sum", "/d/blob", timeout=120)), 180, "node2 reads the volume")
    assert read.split()[0] == written
    assert len(hosts.datasets_named(name)) == 1
    [dataset] = hosts.datasets_named(name)
    wait_for(lambda: [s["primary"] for s in hosts.state_of(dataset["dataset_id"])]
             == [hosts.node_uuid("node2")], 60, "the dataset only on node2")


def test_a_node_killed_whole_leaves_nothing_running_and_its_volume_is_used_again(hosts):
    name = unique("killed")
    ok(hosts.docker("node1", "run", "-d", "--name", name, "-v", f"/flocker/{name}:/d",
                    "busybox", "sh", "-c", "echo before > /d/f; exec sleep 600"))
    wait_for(lambda: hosts.cluster.docker("node1", "exec", name, "cat", "/d/f").stdout
             == "before\n", 30, "the container running")
    before = hosts.cluster.node_processes("node1")
    assert any(_command_line(pid).startswith("sleep 600") for pid in before)
    hosts.cluster.kill("node1")
    assert hosts.cluster.node_processes("node1") == set()
    assert not any(_command_line(pid).startswith("sleep 600") for pid in before
                   if os.path.exists(f"/proc/{pid}"))
    hosts.cluster.restart("node1")
    assert "Exited" in ok(hosts.direct("node1", "ps", "-a", "--filter", f"name={name}",
                                       "--format", "{{.Status}}"))
    ok(hosts.direct("node1", "rm", name))
    assert ok(hosts.docker("node1", "run", "--rm", "-v", f"/flocker/{name}:/d", "busybox",
                           "sh", "-c", "echo after >> /d/f; cat /d/f")) == "before\nafter\n"
    # node1's lease from before the kill lapses by itself; until then node2 is refused.
    read = wait_for(lambda: (lambda r: r.stdout if r.returncode == 0 else
                             _refused_as_in_use(r))(
        hosts.docker("node2", "run", "--rm", "-v", f"/flocker/{name}:/d", "busybox", "cat",
                     "/d/f", timeout=120)), 150, "node2 gets the volume")
    assert read == "before\nafter\n"


def _refused_as_in_use(result):
    assert "in use on" in result.stderr, result.stderr
    return None


def _command_line(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""
