"""No write is ever lost (issue 11), on two real nodes with hosts of their own: many
runs racing for one new name, a container starting while the other node asks, an
agent restarted while dockerd is dead, and a partitioned node fenced before anyone
else may take its volume."""

import json
import os
import random
import subprocess
import time
from datetime import datetime

import pytest

from .conftest import ClusterUnderTest, daemon_error, keep_logs, start_cluster, wait_for
from .test_killer_demo import ok, unique

LEASE_SECONDS = 6.0
FRONTEND_TIMEOUT = 30.0


def docker_time(text):
    """dockerd's RFC 3339 time with nanoseconds, as seconds since the epoch."""
    seconds, _, fraction = text.rstrip("Z").partition(".")
    whole = datetime.strptime(seconds, "%Y-%m-%dT%H:%M:%S")
    return (whole - datetime(1970, 1, 1)).total_seconds() + float(f"0.{fraction or 0}")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    base = tmp_path_factory.mktemp("cluster-safety")
    local = start_cluster(base, hosts="netns", lease_seconds=LEASE_SECONDS,
                          frontend_timeout=FRONTEND_TIMEOUT)
    try:
        local.start()
        local.import_images()
        yield Safety(local)
    finally:
        keep_logs(local, f"{base}-logs")
        local.stop()


class Safety(ClusterUnderTest):
    def popen_run(self, node, name, script, container=None):
        naming = [] if container is None else ["--name", container]
        return subprocess.Popen(
            ["docker", "-H", self.layout.node(node).docker_host, "run",
             *(["--rm"] if container is None else []), *naming,
             "-v", f"/flocker/{name}:/d", "busybox", "sh", "-c", script],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def the_dataset(self, name):
        [dataset] = self.datasets_named(name)
        return dataset["dataset_id"]

    def data(self, name, file="log"):
        """The file as it is in the one copy the cluster reports, read on the host."""
        dataset_id = self.the_dataset(name)
        [state] = wait_for(lambda: [s for s in self.state_of(dataset_id) if s.get("path")],
                           60, f"{name} reported with a path")
        with open(os.path.join(state["path"], file)) as written:
            return written.read()

    def lease_of(self, dataset_id):
        leases = [lease for lease in self.api("/configuration/leases")
                  if lease["dataset_id"] == dataset_id]
        return leases[0] if leases else None

    def inspect(self, node, container):
        [details] = json.loads(ok(self.direct(node, "inspect", container)))
        return details["State"]


def test_forty_runs_at_once_over_one_new_name_from_both_nodes_lose_no_acknowledged_write(pair):
    succeeded = 0
    for round_number in range(5):
        name = unique("many")
        runs = []
        for index in range(40):
            node = ("node1", "node2")[index % 2]
            line = f"{node}-{round_number}-{index}"
            runs.append((line, pair.popen_run(
                node, name, f"echo {line} >> /d/log; sleep 1; grep -qx {line} /d/log")))
        outcomes = [(line, run.wait(timeout=FRONTEND_TIMEOUT + 120), run.stderr.read())
                    for line, run in runs]
        assert len(pair.datasets_named(name)) == 1
        final = pair.data(name).splitlines()
        for line, code, stderr in outcomes:
            if code == 0:
                assert line in final, f"{line} exited 0 but its write is gone: {final}"
                succeeded += 1
            else:
                assert code == 125, f"{line} exited {code}: {stderr}"
                assert name in daemon_error(stderr)
    assert succeeded >= 40, "at least one node's runs must get the volume in each round"


def test_a_container_starting_while_the_other_node_asks_never_shares_the_volume(pair):
    name = unique("race")
    ok(pair.docker("node1", "run", "--rm", "-v", f"/flocker/{name}:/d", "busybox",
                   "touch", "/d/log"))
    chance = random.Random(11)
    ran = []
    for round_number in range(20):
        first, second = (f"n1-{name}-{round_number}", f"n2-{name}-{round_number}")
        script = "for i in 1 2 3 4 5; do echo {c}-$i >> /d/log; sleep 0.1; done"
        runs = [("node1", first, pair.popen_run("node1", name, script.format(c=first), first))]
        time.sleep(chance.uniform(0, 1.5))
        runs.append(("node2", second,
                     pair.popen_run("node2", name, script.format(c=second), second)))
        intervals = []
        for node, container, run in runs:
            code = run.wait(timeout=FRONTEND_TIMEOUT + 60)
            stderr = run.stderr.read()
            if code == 0:
                state = pair.inspect(node, container)
                intervals.append((docker_time(state["StartedAt"]),
                                  docker_time(state["FinishedAt"]), container))
                ran.append(container)
                ok(pair.direct(node, "rm", container))
            else:
                assert code == 125, f"{container} exited {code}: {stderr}"
                daemon_error(stderr)
                pair.direct(node, "rm", container)
        intervals.sort()
        for (_, end, earlier), (start, _, later) in zip(intervals, intervals[1:]):
            assert end <= start, f"{earlier} and {later} ran on two nodes at once"
    final = pair.data(name).splitlines()
    for container in ran:
        assert [line for line in final if line.startswith(container + "-")] == [
            f"{container}-{i}" for i in range(1, 6)], f"{container}'s lines lost: {final}"
    assert len(ran) >= 20


def _pids_running(marker):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                    if marker.encode() in cmdline.read():
                        found.append(int(entry))
            except OSError:
                continue
    return found


def test_an_agent_restarted_while_dockerd_is_dead_keeps_the_running_containers_volume(pair):
    name = unique("orphan")
    marker = f": {name};"
    ok(pair.docker("node1", "run", "-d", "--name", name, "-v", f"/flocker/{name}:/d",
                   "busybox", "sh", "-c",
                   f"{marker} while true; do date >> /d/log; sleep 0.2; done"))
    dataset_id = pair.the_dataset(name)
    wait_for(lambda: pair.lease_of(dataset_id), 30, "node1's lease")
    pair.cluster.kill_part("node1", "dockerd")
    pair.cluster.kill_part("node1", "agent")
    assert _pids_running(marker), "the container must outlive its dockerd"
    pair.cluster.start_part("node1", "agent")
    refused_until = time.monotonic() + 3 * LEASE_SECONDS + 2
    refusals = 0
    while time.monotonic() < refused_until:
        result = pair.docker("node2", "run", "--rm", "-v", f"/flocker/{name}:/d", "busybox",
                             "true", timeout=FRONTEND_TIMEOUT + 30)
        assert result.returncode == 125, result.stdout + result.stderr
        assert "in use on" in daemon_error(result.stderr)
        refusals += 1
        time.sleep(1)
    assert _pids_running(marker), "the container must still run: nothing was fenced"
    assert refusals >= 3
    written = pair.data(name)
    for pid in _pids_running(marker):
        os.kill(pid, 9)
    pair.cluster.start_part("node1", "dockerd")
    moved = wait_for(lambda: (lambda r: r.stdout if r.returncode == 0 else None)(
        pair.docker("node2", "run", "--rm", "-v", f"/flocker/{name}:/d", "busybox", "cat",
                    "/d/log", timeout=FRONTEND_TIMEOUT + 30)), 120, "node2 gets the volume",
        interval=1)
    assert moved.startswith(written)


def test_a_partitioned_node_is_fenced_before_another_may_take_its_volume(pair):
    name = unique("fenced")
    ok(pair.docker("node1", "run", "-d", "--name", name, "-v", f"/flocker/{name}:/d",
                   "busybox", "sh", "-c",
                   "i=0; while true; do i=$((i+1)); echo $i >> /d/log; sleep 0.1; done"))
    dataset_id = pair.the_dataset(name)
    wait_for(lambda: pair.lease_of(dataset_id), 30, "node1's lease")
    pair.cluster.partition("node1")
    try:
        latest_expiry = 0.0
        # Watch the lease lapse at the control service; its last expiry is when node2
        # could first have been given the volume.
        while (lease := pair.lease_of(dataset_id)) is not None:
            latest_expiry = max(latest_expiry, time.time() + lease["expires"])
            time.sleep(0.2)
        state = wait_for(lambda: (lambda s: s if not s["Running"] else None)(
            pair.inspect("node1", name)), 30, "node1's container stopped")
        assert docker_time(state["FinishedAt"]) < latest_expiry, (state, latest_expiry)
        fenced_copy = pair.data(name)
        reading = pair.popen_run("node2", name, "cat /d/log")
        time.sleep(2)
    finally:
        pair.cluster.heal("node1")
    code = reading.wait(timeout=FRONTEND_TIMEOUT + 60)
    read = reading.stdout.read()
    if code != 0:
        daemon_error(reading.stderr.read())
        read = wait_for(lambda: (lambda r: r.stdout if r.returncode == 0 else None)(
            pair.docker("node2", "run", "--rm", "-v", f"/flocker/{name}:/d", "busybox",
                        "cat", "/d/log", timeout=FRONTEND_TIMEOUT + 30)), 120,
            "node2 gets the volume", interval=1)
    assert read == fenced_copy
    assert len(fenced_copy.splitlines()) > 10
    ok(pair.direct("node1", "rm", name))
