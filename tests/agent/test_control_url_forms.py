"""An agent takes the control service's URL in every form a client takes it: with or
without /v1, with or without a trailing slash (issue 13). Before, an agent given /v1
asked /v1/agent/v1/... and was answered 404 for as long as it ran."""

import os

import pytest

from .cluster import Cluster


@pytest.fixture
def cluster(tmp_path):
    cluster = Cluster(str(tmp_path)).start_control()
    yield cluster
    cluster.stop()


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
def test_an_agent_given_the_v1_url_holds_its_datasets(cluster, suffix):
    agent = cluster.add_agent("node1", os.path.join(cluster.base, "node1"),
                              options=["--control-url", cluster.control_url + suffix])
    dataset_id = cluster.create_dataset(agent.uuid)["dataset_id"]
    held = cluster.wait_until_on(dataset_id, agent, timeout=30)
    assert held["path"] == agent.path(dataset_id)
    assert os.path.isdir(agent.path(dataset_id))
    nodes = cluster.api("GET", "/state/nodes")
    assert [node["uuid"] for node in nodes] == [agent.uuid]
