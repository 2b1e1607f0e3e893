"""The lead's IFlockerAPI contract suite (tests/flocker_contract.py), unchanged, run
with the real FlockerClient against this control service in memory. Agents are
simulated: each node reports every dataset configured on it, as a converged agent
would; the two-process run with real agents lives with the agent tests."""

from twisted.internet import reactor

from powerstripflocker.clients.flocker import Node
from powerstripflocker.clients.flocker_client import FlockerClient

from ..flocker_contract import make_flocker_api_tests
from .helpers import NODE1, NODE2, harness, new_id


class SimulatedCluster:
    def __init__(self, testcase, **harness_options):
        self.h = harness(testcase, **harness_options)
        self.api = FlockerClient(reactor, self.h.base, http_client=self.h.treq)
        self.nodes = [Node(uuid=NODE1, host="10.0.0.1"), Node(uuid=NODE2, host="10.0.0.2")]
        self.eras = {node.uuid: new_id() for node in self.nodes}  # one agent run each

        self.users = {}  # (node uuid, dataset id) -> users that node reports
        self.sources = set()  # (node uuid, dataset id) a sender still holds while it pushes
        self.transfers = {}  # node uuid -> transfers that node reports

    async def converge(self):
        moving = {t["dataset_id"] for ts in self.transfers.values() for t in ts}
        for node in self.nodes:
            datasets = [
                dict({"dataset_id": d.dataset_id, "path": f"/flocker/{d.dataset_id}",
                      "maximum_size": d.maximum_size},
                     **({"users": self.users[node.uuid, d.dataset_id]}
                        if self.users.get((node.uuid, d.dataset_id)) else {}))
                for d in await self.h.service.datasets()
                if not d.deleted and (
                    d.primary == node.uuid and d.dataset_id not in moving
                    or (node.uuid, d.dataset_id) in self.users
                    or (node.uuid, d.dataset_id) in self.sources)
            ]
            await self.h.report(node.uuid, datasets, self.transfers.get(node.uuid, []),
                                host=node.host, era=self.eras[node.uuid])

    async def era_of(self, node):
        return self.eras[node.uuid]

    async def report_users(self, node, dataset_id, users):
        self.users[node.uuid, dataset_id] = list(users)
        await self.converge()

    async def report_transfer(self, sender, receiver, dataset_id, bytes_done,
                              bytes_total=None, stalled=False, error=None):
        transfer = {"dataset_id": dataset_id, "direction": "push", "peer": receiver.uuid,
                    "bytes_done": bytes_done, "bytes_total": bytes_total}
        if stalled:
            transfer.update(stalled=True, error=error, attempts=5)
        self.transfers[sender.uuid] = [transfer]
        self.sources.add((sender.uuid, dataset_id))
        await self.converge()

    async def settled(self, predicate, what):
        await self.converge()
        states = await self.api.list_datasets_state()
        assert predicate(states), f"not {what}: {states}"
        return states


async def start_simulated_cluster(testcase, **harness_options):
    """harness_options: Harness's (etcd=... for a replica on an etcd store)."""
    cluster = SimulatedCluster(testcase, **harness_options)
    await cluster.converge()
    return cluster


class ControlServiceContractTests(make_flocker_api_tests(start_simulated_cluster)):
    pass
