"""The contract suite against the in-memory fake, plus what only the fake offers."""

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from powerstripflocker.clients.flocker import HeldElsewhere
from powerstripflocker.clients.flocker_memory import MemoryFlockerAPI

from .flocker_contract import make_flocker_api_tests


class MemoryCluster:
    def __init__(self):
        self.api = MemoryFlockerAPI(Clock(), convergence_delay=None)
        self.nodes = [self.api.add_node("10.0.0.1"), self.api.add_node("10.0.0.2")]

    async def era_of(self, node):
        return self.api.eras[node.uuid]

    async def report_users(self, node, dataset_id, users):
        self.api.set_users(dataset_id, users)

    async def report_transfer(self, sender, receiver, dataset_id, bytes_done,
                              bytes_total=None, stalled=False, error=None):
        self.api.set_transfer(dataset_id, bytes_done, bytes_total, stalled, error)

    async def settled(self, predicate, what):
        self.api.converge()
        states = await self.api.list_datasets_state()
        assert predicate(states), f"not {what}: {states}"
        return states


async def start_memory_cluster(testcase):
    return MemoryCluster()


class MemoryFlockerAPIContractTests(make_flocker_api_tests(start_memory_cluster)):
    pass


class MemoryConvergenceTests(TestCase):
    def test_state_follows_configuration_after_the_convergence_delay(self):
        clock = Clock()
        api = MemoryFlockerAPI(clock, convergence_delay=2.0)
        node = api.add_node("10.0.0.1")
        created = self.successResultOf(api.create_dataset(primary=node.uuid))
        self.assertEqual(self.successResultOf(api.list_datasets_state()), [])
        clock.advance(2.0)
        [state] = self.successResultOf(api.list_datasets_state())
        self.assertEqual((state.dataset_id, state.primary), (created.dataset_id, node.uuid))

    def test_a_move_is_refused_until_the_lease_elsewhere_expires(self):
        clock = Clock()
        api = MemoryFlockerAPI(clock, convergence_delay=0.0)
        first, second = api.add_node("10.0.0.1"), api.add_node("10.0.0.2")
        created = self.successResultOf(api.create_dataset(primary=first.uuid))
        clock.advance(0)
        self.successResultOf(api.acquire_lease(created.dataset_id, first.uuid, 10))
        self.failureResultOf(api.move_dataset(created.dataset_id, second.uuid), HeldElsewhere)
        clock.advance(10)
        self.successResultOf(api.move_dataset(created.dataset_id, second.uuid))
        clock.advance(0)
        [state] = self.successResultOf(api.list_datasets_state())
        self.assertEqual(state.primary, second.uuid)
        self.assertEqual(self.successResultOf(api.list_leases()), [])
