import os

import pytest

from .support import ReliabilityCluster


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/reliability/" in str(item.fspath):
            item.add_marker(pytest.mark.reliability)


@pytest.fixture
def make_cluster(tmp_path):
    """make_cluster(**agent faults by name) -> a control service and agents node1, node2
    (directory backend) as real processes; all stopped at teardown, even on failure."""
    clusters = []

    def make(node1_faults=None, node2_faults=None):
        cluster = ReliabilityCluster(str(tmp_path))
        clusters.append(cluster)
        cluster.start_control()
        cluster.add_agent("node1", os.path.join(str(tmp_path), "node1"), faults=node1_faults)
        cluster.add_agent("node2", os.path.join(str(tmp_path), "node2"), faults=node2_faults)
        return cluster

    yield make
    for cluster in clusters:
        cluster.stop()
