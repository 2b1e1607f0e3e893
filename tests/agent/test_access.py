"""Another local user (nobody) against a real control service and agents: every v1 and
agent call that changes data is refused (401 without the token, 403 with a wrong one),
the data stays where it was, and the dataset files are out of nobody's reach; the
token works from any user. (A client certificate instead of the token:
tests/control/test_command_integration.py::test_mutual_tls.)"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from .cluster import Cluster

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def _skip_reason():
    if os.geteuid() != 0:
        return "needs root, to run clients as nobody"
    for tool in ("setpriv", "curl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


def as_nobody(*argv):
    return subprocess.run([*AS_NOBODY, *argv], capture_output=True, text=True, timeout=60)


def curl_as_nobody(method, url, body=None, token=None):
    """(status, body text) of one request made by user nobody."""
    argv = ["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "-X", method, url]
    if token is not None:
        argv += ["-H", f"Authorization: Bearer {token}"]
    if body is not None:
        argv += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
    result = as_nobody(*argv)
    assert result.returncode == 0, result.stderr
    text, code = result.stdout.rsplit("\n", 1)
    return int(code), text


@pytest.fixture
def cluster():
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    # Not under pytest's 0700 temporary directory: only the cluster's own modes may
    # keep nobody out.
    base = tempfile.mkdtemp(prefix="psf-access-")
    os.chmod(base, 0o755)
    cluster = Cluster(base).start_control()
    try:
        cluster.add_agent("node1", os.path.join(base, "node1"))
        cluster.add_agent("node2", os.path.join(base, "node2"))
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_nobody_cannot_create_move_delete_or_lease_and_the_data_stays(cluster):
    node1, node2 = cluster.agents["node1"], cluster.agents["node2"]
    dataset_id = cluster.create_dataset(node1.uuid, metadata={"name": "kept"})["dataset_id"]
    cluster.wait_until_on(dataset_id, node1, timeout=30)
    with open(os.path.join(node1.path(dataset_id), "file"), "w") as data:
        data.write("precious")
    v1 = f"{cluster.control_url}/v1"
    calls = [
        ("POST", f"{v1}/configuration/datasets", {"primary": node2.uuid}),
        ("POST", f"{v1}/configuration/datasets/{dataset_id}", {"primary": node2.uuid}),
        ("DELETE", f"{v1}/configuration/datasets/{dataset_id}", None),
        ("POST", f"{v1}/configuration/leases",
         {"dataset_id": dataset_id, "node_uuid": node2.uuid, "expires": None}),
        ("DELETE", f"{v1}/configuration/leases/{dataset_id}", None),
        ("GET", f"{v1}/configuration/datasets", None),
        ("PUT", f"{cluster.control_url}/agent/v1/nodes/{node2.uuid}",
         {"host": "127.0.0.1", "agent_url": node2.url, "datasets": []}),
        ("PUT", f"{node2.url}/agent/v1/datasets/{dataset_id}/push?format=tar", {}),
    ]
    for method, url, body in calls:
        for token, code in ((None, 401), ("not-the-token", 403)):
            status, text = curl_as_nobody(method, url, body, token)
            assert status == code, (method, url, text)
            assert "description" in json.loads(text)
    assert curl_as_nobody("GET", f"{v1}/version")[0] == 200

    time.sleep(1)   # time enough for an agent to act on a change, had one been made
    [dataset] = [d for d in cluster.api("GET", "/configuration/datasets")
                 if d["dataset_id"] == dataset_id]
    assert dataset["primary"] == node1.uuid and not dataset.get("deleted")
    assert len(cluster.api("GET", "/configuration/datasets")) == 1
    assert cluster.api("GET", "/configuration/leases") == []
    assert cluster.primary_in_state(dataset_id)["primary"] == node1.uuid
    with open(os.path.join(node1.path(dataset_id), "file")) as data:
        assert data.read() == "precious"


def test_dataset_files_are_out_of_nobodys_reach(cluster):
    node1 = cluster.agents["node1"]
    dataset_id = cluster.create_dataset(node1.uuid)["dataset_id"]
    cluster.wait_until_on(dataset_id, node1, timeout=30)
    path = os.path.join(node1.path(dataset_id), "file")
    with open(path, "w") as data:
        data.write("secret")
    os.chmod(path, 0o644)  # a container's file as containers often leave them
    assert os.stat(node1.data_root).st_mode & 0o777 == 0o700
    assert os.stat(os.path.join(node1.data_root, "datasets")).st_mode & 0o777 == 0o700
    # the dataset directory itself keeps the mode its containers need
    assert os.stat(node1.path(dataset_id)).st_mode & 0o777 == 0o755
    for argv in (["cat", path], ["ls", node1.data_root], ["ls", node1.path(dataset_id)]):
        result = as_nobody(*argv)
        assert result.returncode != 0 and "Permission denied" in result.stderr, argv


def test_the_token_works_for_any_user(cluster):
    node1 = cluster.agents["node1"]
    status, text = curl_as_nobody(
        "POST", f"{cluster.control_url}/v1/configuration/datasets",
        {"primary": node1.uuid, "metadata": {"name": "made-by-nobody"}}, cluster.token)
    assert status == 201, text
    status, text = curl_as_nobody("GET", f"{node1.url}/agent/v1/metrics", token=cluster.token)
    assert status == 200, text


def test_an_agent_without_a_token_does_not_start(tmp_path):
    env = {key: value for key, value in os.environ.items()
           if key != "POWERSTRIP_FLOCKER_CLUSTER_TOKEN"}
    result = subprocess.run(
        [sys.executable, "-m", "powerstripflocker", "agent", "--control-url",
         "http://192.0.2.1:4523", "--data-root", str(tmp_path / "agent")],
        capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2, result.stderr
    assert "agent not started: no cluster token" in result.stderr
