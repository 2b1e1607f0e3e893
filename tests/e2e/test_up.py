"""`powerstrip-flocker up`: the whole system in one process on one machine, in front of
a dockerd of its own; it serves `docker run -v /flocker/NAME:/data` through its proxy
and stops cleanly on SIGTERM."""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from powerstripflocker.localcluster.commands import dockerd_command
from powerstripflocker.localcluster.layout import NodeLayout
from powerstripflocker.localcluster.machine import (
    docker, import_busybox_image, missing_requirements, unmount_under,
)

from ..support.processes import ManagedProcess, free_port
from .conftest import wait_for

STOP_DEADLINE = 30.0


def ok(result):
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def process_group(pgid):
    """Pids of the processes in process group pgid."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            found.append(int(entry))
    return found


def refuses(port):
    with socket.socket() as probe:
        probe.settimeout(5)
        return probe.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture
def machine(tmp_path):
    """A dockerd of its own (its plugin directory is Docker's /run/docker/plugins in its
    mount namespace) with the offline busybox image."""
    problem = missing_requirements("loopback")
    if problem:
        pytest.skip(f"end-to-end tests need dockerd: {problem}")
    run_dir = tempfile.mkdtemp(prefix="psf-up-", dir="/run" if os.path.isdir("/run") else None)
    node = NodeLayout(name="up", address="127.0.0.1", agent_port=free_port(),
                      adapter_port=free_port(), data_dir=str(tmp_path / "dockerd"),
                      run_dir=run_dir)
    os.makedirs(node.plugin_dir)
    with open(tmp_path / "dockerd.log", "ab") as log:
        dockerd = subprocess.Popen(dockerd_command(node), stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: docker(node.real_docker_host, "version", timeout=10).returncode == 0,
                 90, "dockerd answering")
        import_busybox_image(node.real_docker_host)
        yield node
    finally:
        try:
            os.killpg(dockerd.pid, signal.SIGTERM)
            dockerd.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(dockerd.pid, signal.SIGKILL)
            dockerd.wait(timeout=30)
        except ProcessLookupError:
            pass
        unmount_under(run_dir)
        unmount_under(str(tmp_path))
        shutil.rmtree(run_dir, ignore_errors=True)


def test_up_serves_flocker_volumes_through_its_proxy_and_stops_cleanly(machine, tmp_path):
    state = tmp_path / "state"
    proxy_socket = os.path.join(machine.run_dir, "docker.sock")
    plugin_socket = os.path.join(machine.plugin_dir, "flocker.sock")
    ports = {"control": free_port(), "agent": machine.agent_port,
             "adapter": machine.adapter_port}
    up = ManagedProcess.command(
        ["up", "--state-dir", str(state), "--docker", machine.real_docker_host,
         "--proxy-socket", proxy_socket, "--plugin-dir", machine.plugin_dir,
         "--control-port", str(ports["control"]), "--agent-port", str(ports["agent"]),
         "--adapter-port", str(ports["adapter"])],
        tmp_path / "up.log").start()
    try:
        up.wait_until(lambda: os.path.exists(proxy_socket) and "proxy listening" in up.tail(),
                      timeout=60, what="proxy listening")
        assert os.stat(state / "cluster.token").st_mode & 0o777 == 0o600
        proxy = f"unix://{proxy_socket}"
        ok(docker(proxy, "run", "--rm", "-v", "/flocker/x:/data", "busybox", "sh", "-c",
                  "echo fish > /data/file"))
        assert ok(docker(proxy, "run", "--rm", "-v", "/flocker/x:/data", "busybox",
                         "cat", "/data/file")) == "fish\n"
        # The volume plugin of the same process answers dockerd too (Docker's volume
        # names have two characters at least).
        assert ok(docker(proxy, "run", "--rm", "--volume-driver", "flocker", "-v",
                         "xy:/data", "busybox", "sh", "-c",
                         "echo chips > /data/file && cat /data/file")) == "chips\n"
    except BaseException:
        print(up.tail(80))
        up.stop()
        raise

    os.killpg(up.process.pid, signal.SIGTERM)
    began = time.monotonic()
    try:
        status = up.process.wait(timeout=STOP_DEADLINE)
    finally:
        up.stop()
    log = up.tail(80)
    assert status == 0, log
    assert time.monotonic() - began < STOP_DEADLINE
    assert not os.path.exists(proxy_socket), "proxy socket left behind"
    assert not os.path.exists(plugin_socket), "plugin socket left behind"
    for part, port in ports.items():
        assert refuses(port), f"{part} still listening on {port}"
    assert process_group(up.process.pid) == [], "a child process outlived up"
    stopping = [log.index(line) for line in (
        "powerstrip proxy stopping", "control service stopping")]
    assert stopping == sorted(stopping), log
    assert "Main loop terminated" not in log
    assert "Traceback" not in log, log
