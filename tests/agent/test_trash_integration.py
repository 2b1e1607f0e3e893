"""Deleted data kept for a while, with real processes on loopback (a control service, two
agents, the restore command): a delete moves the data to the node's trash, `restore NAME`
brings it back byte for byte within --keep-deleted, and after it the data is removed and
restore says so. On the directory and btrfs backends."""

import json
import os
import re
import subprocess
import sys

import pytest

from .cluster import Cluster, HTTPFailure, http, wait_for
from .support import LoopBtrfs, btrfs_skip_reason, fill_sample_tree, manifest

TOKEN = "trash-test-token"
LONG_KEEP = "60s"      # node1: long enough to restore in
SHORT_KEEP = "2s"      # node2: short enough to watch it run out

pytestmark = pytest.mark.integration


@pytest.fixture(params=[pytest.param("directory"),
                        pytest.param("btrfs", marks=pytest.mark.btrfs)])
def cluster(request, tmp_path):
    base = str(tmp_path)
    filesystems = []
    if request.param == "btrfs":
        reason = btrfs_skip_reason()
        if reason:
            pytest.skip(reason)
        roots = []
        for _ in range(2):
            fs = LoopBtrfs(parent=base).create("512M")
            filesystems.append(fs)
            roots.append(os.path.join(fs.mount_point, "agent"))
    else:
        roots = [os.path.join(base, "node1"), os.path.join(base, "node2")]
    cluster = Cluster(base, request.param, token=TOKEN).start_control()
    try:
        cluster.add_agent("node1", roots[0], options=["--keep-deleted", LONG_KEEP])
        cluster.add_agent("node2", roots[1], options=["--keep-deleted", SHORT_KEEP])
        yield cluster
    finally:
        cluster.stop()
        for fs in filesystems:
            fs.destroy()


def v1(cluster, method, path, body=None):
    return http(method, f"{cluster.control_url}/v1{path}", body, token=cluster.token)


LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[")


def command(cluster, *args):
    """(exit status, stdout, stderr without log lines) of a powerstrip-flocker command
    for this cluster."""
    env = dict(os.environ, POWERSTRIP_FLOCKER_CLUSTER_TOKEN="")
    done = subprocess.run(
        [sys.executable, "-m", "powerstripflocker", *args,
         "--control-url", cluster.control_url, "--cluster-token-file", cluster.token_file],
        capture_output=True, text=True, timeout=120, env=env)
    said = "".join(line for line in done.stderr.splitlines(keepends=True)
                   if not LOG_LINE.match(line))
    return done.returncode, done.stdout, said


def created_with_data(cluster, agent, name):
    dataset_id = v1(cluster, "POST", "/configuration/datasets",
                    {"primary": agent.uuid, "metadata": {"name": name}})["dataset_id"]
    cluster.wait_until_on(dataset_id, agent)
    fill_sample_tree(agent.path(dataset_id), random_bytes=1 << 20)
    return dataset_id, manifest(agent.path(dataset_id))


def trash_of(cluster, dataset_id):
    return [e for e in v1(cluster, "GET", "/state/trash") if e["dataset_id"] == dataset_id]


def trash_dir(agent):
    return os.path.join(agent.data_root, "trash")


def test_restore_brings_back_a_deleted_volumes_data_within_the_keep_window(cluster):
    node1 = cluster.agents["node1"]
    dataset_id, before = created_with_data(cluster, node1, "keepme")
    v1(cluster, "DELETE", f"/configuration/datasets/{dataset_id}")

    [kept] = wait_for(lambda: not cluster.state(dataset_id) and trash_of(cluster, dataset_id),
                      30, "the deleted dataset gone from state and in node1's trash",
                      on_timeout=cluster.logs)
    assert (kept["node_uuid"], kept["name"], kept["deleted"]) == (node1.uuid, "keepme", True)
    assert kept["bytes"] >= 1 << 20
    assert not os.path.lexists(node1.path(dataset_id))
    [entry] = [name for name in os.listdir(trash_dir(node1)) if not name.endswith(".json")]
    assert entry.startswith(dataset_id + "-")
    assert manifest(os.path.join(trash_dir(node1), entry)) == before

    status, out, err = command(cluster, "status", "--all", "--json")
    assert status == 0, err
    [row] = [r for r in json.loads(out) if r["dataset"] == dataset_id]
    assert row["state"].startswith("in trash on 127.0.0.1 until "), row

    status, out, err = command(cluster, "restore", "keepme")
    assert status == 0, err + cluster.logs()
    assert out.startswith(f"restored volume 'keepme' (dataset {dataset_id}, deleted "), out
    assert out.rstrip().endswith(f"on 127.0.0.1 at {node1.path(dataset_id)}"), out
    assert out.count("\n") == 1
    assert manifest(node1.path(dataset_id)) == before, "the data is back byte for byte"
    configured = [d for d in v1(cluster, "GET", "/configuration/datasets")
                  if d["dataset_id"] == dataset_id]
    assert [(d["deleted"], d["primary"]) for d in configured] == [(False, node1.uuid)]
    assert cluster.primary_in_state(dataset_id)["path"] == node1.path(dataset_id)
    wait_for(lambda: not trash_of(cluster, dataset_id), 30, "node1's trash reported empty")
    assert os.listdir(trash_dir(node1)) == []

    status, out, err = command(cluster, "restore", "keepme")
    assert (status, err.strip()) == (
        1, f"volume 'keepme' is not deleted (dataset {dataset_id}); nothing to restore")


def test_after_the_keep_window_the_data_is_removed_and_restore_says_so(cluster):
    node2 = cluster.agents["node2"]
    dataset_id, _ = created_with_data(cluster, node2, "brief")
    v1(cluster, "DELETE", f"/configuration/datasets/{dataset_id}")
    wait_for(lambda: trash_of(cluster, dataset_id), 30, "node2's trash to keep it",
             on_timeout=cluster.logs)
    wait_for(lambda: not os.listdir(trash_dir(node2)) and not trash_of(cluster, dataset_id),
             30, "node2 to remove it after --keep-deleted 2s", on_timeout=cluster.logs)
    assert not os.path.lexists(node2.path(dataset_id))

    status, out, err = command(cluster, "restore", "brief")
    assert status == 1 and out == ""
    assert err.startswith("no deleted volume named 'brief' is kept in any node's trash"), err
    assert err.count("\n") == 1
    with pytest.raises(HTTPFailure) as refused:
        v1(cluster, "POST", f"/configuration/datasets/{dataset_id}/restore")
    assert refused.value.code == 404
