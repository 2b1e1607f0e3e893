"""Faults under a hook that waits, against the real adapter process (no docker).

The control service killed -9 while a hook waits for a move: the hook is answered within
the adapter's deadline with one clear message, the data stays intact, and the same hook
succeeds once the control service is back. The adapter killed -9 after its create was
accepted: a retry finds that dataset and makes no second one."""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from .support import MiB, fill_sample_tree, manifest, pre_hook, volume_mounts, wait_for

pytestmark = pytest.mark.integration

DEADLINE = 10.0


def test_control_service_killed_while_a_hook_waits_for_a_move(make_cluster):
    cluster = make_cluster(node2_faults=f"receive-pause-after-bytes={MiB}")
    node1, node2 = cluster.agents["node1"], cluster.agents["node2"]
    adapter = cluster.add_adapter("adapter2", node2, timeout=DEADLINE)
    dataset_id = cluster.create_dataset(node1.uuid, metadata={"name": "waited"})["dataset_id"]
    path = cluster.wait_until_on(dataset_id, node1, timeout=10)["path"]
    fill_sample_tree(path, random_bytes=4 * MiB, files=2)
    original = manifest(path)

    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(adapter.hook, pre_hook(["waited"]), 60)
        cluster.held(node2)            # the move the hook asked for is under way
        killed_at = time.monotonic()
        cluster.kill_control()
        status, answer = waiting.result(timeout=DEADLINE + 30)
    took = time.monotonic() - killed_at
    print(f"\n[result] control killed under a waiting hook: {status} after {took:.1f}s: "
          f"{answer.get('message')}")
    assert status in (503, 504), answer
    assert took < DEADLINE + 5
    assert "waited" in answer["message"] and "\n" not in answer["message"]
    assert "control service" in answer["message"]
    assert cluster.intact_primaries(dataset_id, original) == ["node1"]

    cluster.start_control()
    node2.resume_faults()
    status, answer = adapter.hook(pre_hook(["waited"]))
    assert status == 200, answer
    [entry] = cluster.state(dataset_id)
    assert entry["primary"] == node2.uuid
    assert volume_mounts(answer)[1] == [f"{entry['path']}:/data0"]
    wait_for(lambda: cluster.role(node1, dataset_id) is None, 30, "node1 to clean up")
    assert manifest(entry["path"]) == original


def test_adapter_killed_after_its_create_was_accepted_then_a_retry_makes_no_second_dataset(
        make_cluster):
    cluster = make_cluster()
    node1 = cluster.agents["node1"]
    adapter = cluster.add_adapter("adapter1", node1, timeout=DEADLINE)
    node1.kill()      # the dataset is configured but cannot appear: the hook keeps waiting
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(adapter.hook, pre_hook(["fresh"]), 60)
        wait_for(lambda: [d for d in cluster.api("GET", "/configuration/datasets")
                          if d.get("metadata", {}).get("name") == "fresh"], 10,
                 "the adapter to create the dataset", on_timeout=cluster.logs)
        adapter.kill()
        with pytest.raises(OSError):
            waiting.result(timeout=30)     # the connection dropped: no answer at all
    node1.start()
    adapter.start()
    status, answer = adapter.hook(pre_hook(["fresh"]))
    assert status == 200, answer
    [dataset] = [d for d in cluster.api("GET", "/configuration/datasets")
                 if d.get("metadata", {}).get("name") == "fresh"]
    [entry] = cluster.state(dataset["dataset_id"])
    assert entry["primary"] == node1.uuid
    assert volume_mounts(answer)[1] == [f"{entry['path']}:/data0"]
