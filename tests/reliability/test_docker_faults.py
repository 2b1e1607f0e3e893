"""Faults seen through the docker CLI, on a two-node local cluster (real dockerd, proxies,
adapters with a 10 s deadline, agents, control service)."""

import json
import os
import signal
import subprocess
import tempfile
import time
import urllib.request

import pytest

from powerstripflocker.localcluster.cluster import LocalCluster
from powerstripflocker.localcluster.commands import adapter_command, agent_command, control_command
from powerstripflocker.localcluster.layout import make_layout
from powerstripflocker.localcluster.machine import missing_requirements
from tests.agent.cluster import http, wait_for
from tests.support.processes import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

DEADLINE = 10.0       # the adapters' --timeout in this cluster
MARGIN = 8.0          # docker CLI start-up, the proxy, dockerd's own answer
SEPARATE_NAMES = iter(range(1000))


def unique(prefix):
    return f"{prefix}{os.getpid()}x{next(SEPARATE_NAMES)}"


def adapter_argv(layout, node):
    return adapter_command(layout, node) + ["--timeout", str(DEADLINE)]


def pid_of(local, service):
    with open(os.path.join(local.layout.run_dir, "pids", f"{service}.pid")) as f:
        return int(f.read())


def kill9(local, service):
    pid = pid_of(local, service)
    os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: not _alive(pid), 10, f"{service} to die")


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def respawn(local, service, argv, ready, env=None):
    process = local._spawn(service, argv, env=env)
    local._wait(service, process, ready)


def answers(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def restart_control(local):
    respawn(local, "control", control_command(local.layout),
            lambda: answers(local.layout.control_url + "/v1/version"))


def restart_adapter(local, node):
    respawn(local, f"{node.name}-adapter", adapter_argv(local.layout, node),
            lambda: answers(node.adapter_url + "/healthz"))


def restart_agent(local, node, faults=""):
    respawn(local, f"{node.name}-agent", agent_command(local.layout, node),
            lambda: answers(f"http://{node.address}:{node.agent_port}/agent/v1/health"),
            env={"POWERSTRIP_FLOCKER_FAULTS": faults})


def token(local):
    with open(local.layout.token_file) as f:
        return f.read().strip()


def error_lines(result):
    """The docker CLI's own error lines, without its usage hint."""
    return [line for line in result.stderr.splitlines()
            if line.strip() and "--help" not in line]


def ok(result):
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    problem = missing_requirements()
    if problem:
        pytest.skip(f"needs a local cluster: {problem}")
    base = tmp_path_factory.mktemp("reliability-cluster")
    run_dir = tempfile.mkdtemp(prefix="psfr-", dir="/run" if os.path.isdir("/run") else None)
    layout = make_layout(str(base), run_dir, control_port=free_port(), agent_port=free_port(),
                         adapter_port=free_port())
    cluster = LocalCluster(layout)
    try:
        cluster.start(adapter_commands={node.name: adapter_argv(layout, node)
                                        for node in layout.nodes})
        cluster.import_images()
        yield cluster
    finally:
        cluster.stop()


def test_control_service_down_docker_run_fails_within_the_deadline_and_ps_works(local):
    name = unique("down")
    kill9(local, "control")
    try:
        started = time.monotonic()
        result = local.docker("node1", "run", "--rm", "-v", f"/flocker/{name}:/data",
                              "busybox", "true", timeout=DEADLINE + 60)
        took = time.monotonic() - started
        assert result.returncode != 0
        assert took < DEADLINE + MARGIN, f"docker run took {took:.1f}s"
        [line] = error_lines(result)
        print(f"\n[result] control service down: {took:.1f}s: {line}")
        assert line.startswith("docker: Error response from daemon: "), line
        assert "control service" in line, line
        assert "Traceback" not in result.stderr and "<html" not in result.stderr.lower()
        # everything that does not create a container with a /flocker volume still works
        ok(local.docker("node1", "ps", "-a"))
        ok(local.docker("node1", "run", "--rm", "busybox", "true"))
    finally:
        restart_control(local)
    # and once it is back, the same command succeeds
    wait_for(lambda: local.docker("node1", "run", "--rm", "-v", f"/flocker/{name}:/data",
                                  "busybox", "true").returncode == 0, 60,
             "docker run to work again")


def test_adapter_killed_while_a_hook_waits_for_a_move_then_a_retry_succeeds(local):
    layout = local.layout
    node2 = layout.node("node2")
    name = unique("moving")
    volume = f"/flocker/{name}:/data"
    digest = ok(local.docker("node1", "run", "--rm", "-v", volume, "busybox", "sh", "-c",
                             "dd if=/dev/urandom of=/data/blob bs=1M count=8 2>/dev/null && "
                             "sha256sum /data/blob")).split()[0]
    # node2's agent holds any receive after 1 MiB: the move to node2 will wait there
    kill9(local, "node2-agent")
    restart_agent(local, node2, faults=f"receive-pause-after-bytes={1 << 20}")
    agent = f"http://{node2.address}:{node2.agent_port}"
    try:
        run = subprocess.Popen(
            ["docker", "-H", node2.docker_host, "run", "--rm", "-v", volume, "busybox",
             "sha256sum", "/data/blob"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        try:
            wait_for(lambda: http("GET", f"{agent}/agent/v1/metrics",
                                  token=token(local))["fault_paused"], 60,
                     "the move to node2 to be held", on_timeout=lambda: local.log_tail(
                         "node2-agent"))
            # the hook is waiting for the move: kill the adapter under it
            killed_at = time.monotonic()
            kill9(local, "node2-adapter")
            out, err = run.communicate(timeout=30)
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
        took = time.monotonic() - killed_at
        assert run.returncode != 0, out
        assert took < MARGIN, f"docker run took {took:.1f}s to fail after the kill"
        result = subprocess.CompletedProcess(run.args, run.returncode, out, err)
        [line] = error_lines(result)
        print(f"\n[result] adapter killed: {took:.1f}s after the kill: {line}")
        assert line.startswith("docker: Error response from daemon: "), line
        assert "adapter flocker" in line and "closed the connection without answering" in line, (
            line)
        assert "Traceback" not in err
        # nothing ran on node2 and node1 still holds the data
        configured = [d for d in _json(local, "/v1/configuration/datasets")
                      if d.get("metadata", {}).get("name") == name]
        assert len(configured) == 1
        [state] = [s for s in _json(local, "/v1/state/datasets")
                   if s["dataset_id"] == configured[0]["dataset_id"]]
        node1_uuid = [n["uuid"] for n in _json(local, "/v1/state/nodes")
                      if n["host"] == layout.node("node1").address][0]
        assert state["primary"] == node1_uuid
    finally:
        restart_adapter(local, node2)
        http("POST", f"{agent}/agent/v1/faults/resume", token=token(local))
    # a retry goes through and reads what node1 wrote
    out = ok(local.docker("node2", "run", "--rm", "-v", volume, "busybox",
                          "sha256sum", "/data/blob", timeout=120))
    assert out.split()[0] == digest
    kill9(local, "node2-agent")
    restart_agent(local, node2)


def _json(local, path):
    request = urllib.request.Request(local.layout.control_url + path,
                                     headers={"Authorization": f"Bearer {token(local)}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)
