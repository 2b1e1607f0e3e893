"""In-use truth, leases and fencing with real agents, a real control service and real
mounts in mount namespaces of their own (as containers have), without dockerd: what
the kernel says is enough."""

import os
import re
import time

import pytest

from .cluster import Cluster, HTTPFailure, http, wait_for
from .support import MountedElsewhere

pytestmark = pytest.mark.integration

LEASE = 3.0      # seconds: fencing comes a quarter of it before the lease could lapse


@pytest.fixture
def cluster(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to mount in a mount namespace of its own")
    cluster = Cluster(str(tmp_path)).start_control()
    mounted = []
    cluster.mounted_elsewhere = lambda path, **kw: mounted.append(
        MountedElsewhere(path, **kw)) or mounted[-1]
    yield cluster
    for process in mounted:
        process.stop()
    cluster.stop()


def start_node(cluster, name):
    return cluster.add_agent(name, os.path.join(cluster.base, name),
                             options=["--lease-seconds", str(LEASE),
                                      "--mount-poll-seconds", "0.2"])


def leases(cluster):
    return {lease["dataset_id"]: lease["node_uuid"]
            for lease in cluster.api("GET", "/configuration/leases")}


def refused_move(cluster, dataset_id, agent):
    with pytest.raises(HTTPFailure) as refused:
        cluster.move(dataset_id, agent.uuid)
    assert refused.value.code == 409
    return refused.value.body


def test_a_restarted_agent_keeps_the_lease_of_a_mounted_dataset_for_many_expiries(cluster):
    node1, node2 = start_node(cluster, "node1"), start_node(cluster, "node2")
    dataset_id = cluster.create_dataset(node1.uuid)["dataset_id"]
    path = cluster.wait_until_on(dataset_id, node1, timeout=10)["path"]
    user = cluster.mounted_elsewhere(path)
    wait_for(lambda: leases(cluster).get(dataset_id) == node1.uuid, 5, "node1's lease")
    node1.kill()
    node1.start()       # no dockerd at all: the mount table says it is in use
    started = time.monotonic()
    while time.monotonic() - started < 3.5 * LEASE:
        assert leases(cluster).get(dataset_id) == node1.uuid
        assert node1.uuid in refused_move(cluster, dataset_id, node2)
        time.sleep(0.3)
    assert user.process.poll() is None, "a process with its lease renewed is not fenced"
    view = http("GET", f"{cluster.control_url}/agent/v1/cluster?timeout=0", token=cluster.token)
    [entry] = [d for n in view["nodes"] if n["uuid"] == node1.uuid for d in n["datasets"]]
    assert entry.get("users") and entry["users"][0].startswith(f"pid {user.process.pid} ")
    user.stop()
    wait_for(lambda: dataset_id not in leases(cluster), 5, "the lease to be released")
    cluster.move(dataset_id, node2.uuid)
    cluster.wait_until_on(dataset_id, node2, timeout=30)


def test_a_node_cut_off_from_the_control_service_stops_its_writer_before_the_lease_lapses(
        cluster):
    node1, node2 = start_node(cluster, "node1"), start_node(cluster, "node2")
    dataset_id = cluster.create_dataset(node1.uuid)["dataset_id"]
    path = cluster.wait_until_on(dataset_id, node1, timeout=10)["path"]
    writer = cluster.mounted_elsewhere(path, writing=True)
    wait_for(lambda: leases(cluster).get(dataset_id) == node1.uuid, 5, "node1's lease")
    cluster.control.kill()
    cut_at = time.monotonic()
    writer.process.wait(timeout=2 * LEASE)
    fenced_after = time.monotonic() - cut_at
    assert writer.process.returncode == -9
    # the last renewal went out at most LEASE / 3 before the cut: fenced by then + LEASE
    # - LEASE / 4, before the control service could have let the lease go
    assert fenced_after < LEASE, f"fenced {fenced_after:.2f}s after the cut"
    with open(os.path.join(path, "log")) as f:
        written = f.read()
    assert written.endswith("\n") and len(written.splitlines()) >= 3
    log = open(node1.log_path).read()
    assert re.search(r"FENCING dataset " + dataset_id, log), log[-3000:]
    [fenced] = node1.metrics()["fenced"]
    assert fenced["dataset_id"] == dataset_id and f"pid {writer.process.pid}" in \
        fenced["stopped"]

    cluster.start_control()
    time.sleep(LEASE)       # node1's last lease expires at the control service
    cluster.move(dataset_id, node2.uuid)
    cluster.wait_until_on(dataset_id, node2, timeout=30)
    with open(os.path.join(node2.path(dataset_id), "log")) as f:
        assert f.read() == written, "every line written before the fencing moved"


def test_a_copy_found_mounted_at_start_but_configured_elsewhere_is_fenced_then_moved(
        cluster):
    node1, node2 = start_node(cluster, "node1"), start_node(cluster, "node2")
    dataset_id = cluster.create_dataset(node1.uuid)["dataset_id"]
    path = cluster.wait_until_on(dataset_id, node1, timeout=10)["path"]
    with open(os.path.join(path, "data"), "w") as f:
        f.write("precious\n")
    node1.stop()
    node2.stop()
    cluster.move(dataset_id, node2.uuid)      # nothing in use: accepted
    stray = cluster.mounted_elsewhere(path)   # then something mounts node1's copy
    node1.start()
    # its lease is refused (node2 is the primary): the stray user is fenced at once,
    # and only then is the copy pushed away
    stray.process.wait(timeout=10)
    assert stray.process.returncode == -9
    node2.start()
    cluster.wait_until_on(dataset_id, node2, timeout=30)
    with open(os.path.join(node2.path(dataset_id), "data")) as f:
        assert f.read() == "precious\n"
    assert "refused" in node1.metrics()["fenced"][0]["reason"]
