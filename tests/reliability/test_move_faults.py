"""kill -9 at chosen points of a move, held there by fault injection (never by sleeps):
afterwards the move completes with identical checksums, and at every step some node
holds an intact primary copy that the configuration or the state points at.

Already covered in tests/agent/test_integration.py, not repeated here: the receiver
killed mid-push, the sender killed mid-push, a graceful control service restart
mid-push, a move onto a full disk (it stalls after its bounded retries, naming the
receiver's error); and in tests/agent/test_fencing.py, a node cut off from the control
service fencing its writer."""

import os

import pytest

from .support import MiB, fill_sample_tree, manifest, wait_for

pytestmark = pytest.mark.integration


def start_move(cluster, size=6 * MiB):
    node1, node2 = cluster.agents["node1"], cluster.agents["node2"]
    dataset_id = cluster.create_dataset(node1.uuid, metadata={"name": "precious"})["dataset_id"]
    path = cluster.wait_until_on(dataset_id, node1, timeout=10)["path"]
    fill_sample_tree(path, random_bytes=size, files=3)
    original = manifest(path)
    cluster.move(dataset_id, node2.uuid)
    return dataset_id, original


def finished(cluster, dataset_id, original, timeout=60):
    """Wait for the move to node2 to be done: one state entry, on node2, node1's copy
    gone, identical checksums, nothing left in node2's staging area."""
    node1, node2 = cluster.agents["node1"], cluster.agents["node2"]
    cluster.wait_until_on(dataset_id, node2, timeout=timeout)
    wait_for(lambda: not os.path.lexists(node1.path(dataset_id))
             and cluster.role(node1, dataset_id) is None, timeout,
             "node1 to delete its handed-off copy", on_timeout=cluster.logs)
    assert manifest(node2.path(dataset_id)) == original
    assert cluster.role(node2, dataset_id) == "primary"
    assert os.listdir(os.path.join(node2.data_root, "staging")) == []
    [configured] = [d for d in cluster.api("GET", "/configuration/datasets")
                    if d["dataset_id"] == dataset_id]
    assert configured["primary"] == node2.uuid


def test_sender_killed_after_the_push_before_the_receiver_acquires(make_cluster):
    cluster = make_cluster(node1_faults="pause-before-acquire")
    node1 = cluster.agents["node1"]
    dataset_id, original = start_move(cluster)
    cluster.held(node1, "pause_before_acquire")
    # node2 has a complete, unacquired copy in staging; node1 is the only primary
    assert cluster.intact_primaries(dataset_id, original) == ["node1"]
    assert cluster.primary_in_state(dataset_id)["primary"] == node1.uuid
    node1.kill()
    assert cluster.intact_primaries(dataset_id, original) == ["node1"]
    node1.start()      # no fault: it pushes again; the new push supersedes the staged one
    finished(cluster, dataset_id, original)


def test_sender_killed_after_the_receiver_acquired_before_its_handoff(make_cluster):
    cluster = make_cluster(node1_faults="pause-before-handoff")
    node1, node2 = cluster.agents["node1"], cluster.agents["node2"]
    dataset_id, original = start_move(cluster)
    cluster.held(node1, "pause_before_handoff")
    # two primaries on disk, both intact; node2 is the configured primary
    assert sorted(cluster.intact_primaries(dataset_id, original)) == ["node1", "node2"]
    node1.kill()
    assert sorted(cluster.intact_primaries(dataset_id, original)) == ["node1", "node2"]
    history_before = len(node2.metrics()["history"])
    node1.start()      # sees node2 holds what it received from node1: hands off, no re-push
    finished(cluster, dataset_id, original)
    assert len(node2.metrics()["history"]) == history_before, "pushed a second time"


def test_receiver_killed_after_it_acquired_before_the_sender_handed_off(make_cluster):
    cluster = make_cluster(node1_faults="pause-before-handoff")
    node1, node2 = cluster.agents["node1"], cluster.agents["node2"]
    dataset_id, original = start_move(cluster)
    cluster.held(node1, "pause_before_handoff")
    node2.kill()
    assert sorted(cluster.intact_primaries(dataset_id, original)) == ["node1", "node2"]
    node1.resume_faults()
    # node1 hands off; whatever it does with its copy, node2's acquired copy is on disk
    wait_for(lambda: cluster.role(node1, dataset_id) != "primary", 30,
             "node1 to hand off", on_timeout=cluster.logs)
    assert cluster.intact_primaries(dataset_id, original) == ["node2"]
    node2.start()
    finished(cluster, dataset_id, original)


def test_control_service_killed_mid_push_then_restarted(make_cluster):
    cluster = make_cluster(node2_faults=f"receive-pause-after-bytes={2 * MiB}")
    node1, node2 = cluster.agents["node1"], cluster.agents["node2"]
    dataset_id, original = start_move(cluster)
    cluster.held(node2)
    cluster.kill_control()
    assert cluster.intact_primaries(dataset_id, original) == ["node1"]
    cluster.start_control()
    [configured] = [d for d in cluster.api("GET", "/configuration/datasets")
                    if d["dataset_id"] == dataset_id]
    assert configured["primary"] == node2.uuid      # the move survived kill -9
    node2.resume_faults()
    finished(cluster, dataset_id, original)
    assert node1.metrics()["history"][-1]["result"] == "pushed"


def test_control_service_down_while_the_sender_hands_off(make_cluster):
    cluster = make_cluster(node1_faults="pause-before-handoff")
    node1 = cluster.agents["node1"]
    dataset_id, original = start_move(cluster)
    cluster.held(node1, "pause_before_handoff")
    cluster.kill_control()
    node1.resume_faults()
    wait_for(lambda: cluster.role(node1, dataset_id) != "primary", 30,
             "node1 to hand off with the control service down", on_timeout=cluster.logs)
    assert cluster.intact_primaries(dataset_id, original) == ["node2"]
    cluster.start_control()
    finished(cluster, dataset_id, original)


def test_control_service_killed_before_the_move_reaches_the_agents(make_cluster):
    """The move is configured, then the control service dies before any agent saw it:
    after a restart the agents pick it up from the persisted configuration."""
    cluster = make_cluster()
    node1, node2 = cluster.agents["node1"], cluster.agents["node2"]
    node1.kill()       # the target is down: nothing can move before the control service dies
    dataset_id = cluster.create_dataset(node2.uuid)["dataset_id"]
    path = cluster.wait_until_on(dataset_id, node2, timeout=10)["path"]
    fill_sample_tree(path, random_bytes=2 * MiB, files=2)
    original = manifest(path)
    cluster.move(dataset_id, node1.uuid)
    cluster.kill_control()
    assert cluster.intact_primaries(dataset_id, original) == ["node2"]
    cluster.start_control()
    node1.start()
    cluster.wait_until_on(dataset_id, node1, timeout=60)
    wait_for(lambda: not os.path.lexists(node2.path(dataset_id)), 60,
             "node2 to delete its handed-off copy", on_timeout=cluster.logs)
    assert manifest(node1.path(dataset_id)) == original
