import json
import os
import tempfile
import urllib.request

import pytest

from powerstripflocker.localcluster import LocalCluster, docker, make_layout, missing_requirements

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

    def api(self, path):
        with urllib.request.urlopen(self.layout.control_url + "/v1" + path, timeout=30) as r:
            return json.load(r)

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
    problem = missing_requirements()
    if problem:
        pytest.skip(f"end-to-end tests need a local cluster: {problem}")
    run_dir = tempfile.mkdtemp(prefix="psf-", dir="/run" if os.path.isdir("/run") else None)
    layout = make_layout(str(base), run_dir, control_port=free_port(), agent_port=free_port(),
                         adapter_port=free_port(), **layout_options)
    return LocalCluster(layout)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    local = start_cluster(tmp_path_factory.mktemp("cluster"))
    try:
        local.start()
        local.import_images()
        yield ClusterUnderTest(local)
    finally:
        local.stop()
