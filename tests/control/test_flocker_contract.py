"""The lead's IFlockerAPI contract suite (tests/flocker_contract.py), unchanged, run
with the real FlockerClient against this control service in memory. Agents are
simulated: each node reports every dataset configured on it, as a converged agent
would; the two-process run with real agents lives with the agent tests."""

from twisted.internet import reactor

from powerstripflocker.flocker import FlockerClient, Node

from ..flocker_contract import make_flocker_api_tests
from .helpers import BASE, NODE1, NODE2, harness


class SimulatedCluster:
    def __init__(self, testcase):
        self.h = harness(testcase)
        self.api = FlockerClient(reactor, BASE, http_client=self.h.treq)
        self.nodes = [Node(uuid=NODE1, host="10.0.0.1"), Node(uuid=NODE2, host="10.0.0.2")]

    async def converge(self):
        for node in self.nodes:
            datasets = [
                {"dataset_id": d.dataset_id, "path": f"/flocker/{d.dataset_id}",
                 "maximum_size": d.maximum_size}
                for d in self.h.store.datasets() if d.primary == node.uuid and not d.deleted
            ]
            await self.h.report(node.uuid, datasets, host=node.host)

    async def settled(self, predicate, what):
        await self.converge()
        states = await self.api.list_datasets_state()
        assert predicate(states), f"not {what}: {states}"
        return states


async def start_simulated_cluster(testcase):
    cluster = SimulatedCluster(testcase)
    await cluster.converge()
    return cluster


class ControlServiceContractTests(make_flocker_api_tests(start_simulated_cluster)):
    pass
