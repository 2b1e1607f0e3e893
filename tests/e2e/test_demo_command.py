"""The README's first command: `powerstrip-flocker demo`, twice, then `demo down`."""

import os
import subprocess
import sys
import tempfile

import pytest

from powerstripflocker.localcluster.machine import (
    missing_requirements, mounts_under, processes_mentioning,
)

from ..support.processes import free_port


def demo(*arguments):
    return subprocess.run([sys.executable, "-m", "powerstripflocker", "demo", *arguments],
                          capture_output=True, text=True, timeout=900)


def test_demo_prints_fish_from_node2_twice_and_tears_down_to_nothing(tmp_path):
    problem = missing_requirements()
    if problem:
        pytest.skip(f"the demo needs a local cluster: {problem}")
    state_dir = str(tmp_path / "state")
    run_dir = tempfile.mkdtemp(prefix="psf-demo-", dir="/run")
    where = ["--state-dir", state_dir, "--run-dir", run_dir,
             "--control-port", str(free_port()), "--agent-port", str(free_port()),
             "--adapter-port", str(free_port())]
    try:
        for attempt in (1, 2):
            result = demo(*where)
            assert result.returncode == 0, f"run {attempt}:\n{result.stdout}\n{result.stderr}"
            lines = result.stdout.splitlines()
            node2 = lines.index("node2$ docker run --rm -v /flocker/demo:/data busybox sh -c "
                                "'cat /data/file'")
            assert lines[node2 + 1] == "fish", result.stdout
            for node in ("node1", "node2"):
                assert (f"  export DOCKER_HOST=unix://{run_dir}/{node}/docker.sock   # {node}"
                        in lines), result.stdout
    finally:
        down = demo("down", *where)
    assert down.returncode == 0, down.stdout + down.stderr
    assert processes_mentioning([state_dir, run_dir]) == []
    assert mounts_under(state_dir) == [] and mounts_under(run_dir) == []
    assert not os.path.exists(run_dir) and not os.path.exists(state_dir)
