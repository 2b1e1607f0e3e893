import json
import os
import shutil
import tempfile
import time
import urllib.request

import pytest

from powerstripflocker.localcluster.cluster import LocalCluster
from powerstripflocker.localcluster.commands import adapter_container_command
from powerstripflocker.localcluster.layout import make_layout
from powerstripflocker.localcluster.machine import docker, missing_requirements
from powerstripflocker.localcluster.netns import free_slot

from ..support.images import ADAPTER_IMAGE, build_adapter_image
from ..support.processes import free_port


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


class ClusterUnderTest:
    """A LocalCluster plus the questions tests ask of it."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.layout = cluster.layout

    def docker(self, node, *args, **kwargs):
        return self.cluster.docker(node, *args, **kwargs)

    def direct(self, node, *args, **kwargs):
        """The docker CLI straight to the node's dockerd, bypassing the proxy."""
        return docker(self.layout.node(node).real_docker_host, *args, **kwargs)

    def api(self, path, prefix="/v1"):
        with open(self.layout.token_file) as token:
            request = urllib.request.Request(
                self.layout.control_url + prefix + path,
                headers={"Authorization": f"Bearer {token.read().strip()}"})
        with urllib.request.urlopen(request, timeout=30) as r:
            return json.load(r)

    def reported_users(self, node, dataset_id):
        """What node's agent last reported as using dataset_id (container names)."""
        view = self.api("/cluster?timeout=0", prefix="/agent/v1")
        uuid = self.node_uuid(node)
        return [user for report in view["nodes"] if report["uuid"] == uuid
                for entry in report["datasets"] if entry["dataset_id"] == dataset_id
                for user in entry.get("users", [])]

    def node_uuid(self, node):
        address = self.layout.node(node).address
        [uuid] = [n["uuid"] for n in self.api("/state/nodes") if n["host"] == address]
        return uuid

    def datasets_named(self, name):
        return [d for d in self.api("/configuration/datasets")
                if d.get("metadata", {}).get("name") == name and not d.get("deleted")]

    def state_of(self, dataset_id):
        return [s for s in self.api("/state/datasets") if s["dataset_id"] == dataset_id]


def start_cluster(base, **layout_options):
    """A LocalCluster (not started yet) on free ports; with hosts="netns", in a free
    address slot."""
    problem = missing_requirements(layout_options.get("hosts", "loopback"))
    if problem:
        pytest.skip(f"end-to-end tests need a local cluster: {problem}")
    run_dir = tempfile.mkdtemp(prefix="psf-", dir="/run" if os.path.isdir("/run") else None)
    if layout_options.get("hosts") == "netns":
        layout_options.setdefault("slot", free_slot())
    layout = make_layout(str(base), run_dir, control_port=free_port(), agent_port=free_port(),
                         adapter_port=free_port(), **layout_options)
    return LocalCluster(layout)


def daemon_error(stderr):
    """The one line the docker CLI prints for a daemon's refusal, or fail."""
    lines = [line for line in stderr.splitlines()
             if line.strip() and not line.startswith("Run 'docker run --help'")]
    assert len(lines) == 1 and lines[0].startswith("docker: Error response from daemon: "), \
        stderr
    return lines[0]


def wait_for(condition, timeout, what, interval=0.2):
    """condition()'s first truthy value within timeout seconds, or fail naming what."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"not within {timeout:g}s: {what}")


def keep_logs(local, where):
    """Copy the cluster's logs to where (pytest keeps its last runs' temporary
    directories), so a failure can be read after the cluster is gone."""
    shutil.rmtree(where, ignore_errors=True)
    if os.path.isdir(local.layout.log_dir):
        shutil.copytree(local.layout.log_dir, where)


def adapters_in_containers(local, archive_dir):
    """start() arguments that build the Dockerfile's image on the first node, load it on
    the others, and run every node's adapter as a container of it."""
    archive = os.path.join(archive_dir, "adapter-image.tar")

    def prepare_node(node):
        if node == local.layout.nodes[0]:
            build_adapter_image(node.real_docker_host)
            docker(node.real_docker_host, "save", "-o", archive, ADAPTER_IMAGE, timeout=600,
                   check=True)
        else:
            docker(node.real_docker_host, "load", "-i", archive, timeout=600, check=True)

    commands = {node.name: adapter_container_command(local.layout, node, ADAPTER_IMAGE)
                for node in local.layout.nodes}
    return {"adapter_commands": commands, "prepare_node": prepare_node}


@pytest.fixture(scope="session")
def cluster(request, tmp_path_factory):
    """A two-node cluster; tests parametrized indirectly with "container" get one whose
    adapters run as containers of the repository's Dockerfile."""
    adapters = getattr(request, "param", "host")
    base = tmp_path_factory.mktemp(f"cluster-{adapters}")
    local = start_cluster(base)
    try:
        local.start(**(adapters_in_containers(local, str(base)) if adapters == "container"
                       else {}))
        local.import_images()
        yield ClusterUnderTest(local)
    finally:
        local.stop()
