"""The IEtcd contract against the in-memory fake, on a Clock."""

from twisted.internet.task import Clock

from powerstripflocker.clients.etcd_memory import MemoryEtcd

from .etcd_contract import make_etcd_tests


class MemoryHarness:
    def __init__(self):
        self.clock = Clock()
        self.etcd = MemoryEtcd(self.clock)

    async def elapse(self, seconds):
        self.clock.advance(seconds)

    async def until(self, predicate, what):
        assert predicate(), f"not {what}"


async def start_memory_etcd(testcase):
    return MemoryHarness()


class MemoryEtcdContractTests(make_etcd_tests(start_memory_etcd)):
    pass
