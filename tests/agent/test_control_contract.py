"""IControlClient's contract, held against MemoryControl and against ControlClient
talking to a real control service in-process (tests/control/helpers.py's Harness)."""

from twisted.internet import defer
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from powerstripflocker.clients.control_agent import (
    ControlClient, ControlError, IControlClient, MemoryControl)
from tests.control.helpers import BASE, NODE1, NODE2, harness

REPORT = {"host": "10.0.0.1", "agent_url": "http://10.0.0.1:4524", "datasets": [],
          "transfers": []}
ERA = "5e1c0a9e-8c43-4b7a-9f31-6f2d4c9b1a77"


class ControlContract:
    """setUp sets self.control; settle() lets answers in flight arrive."""

    def settle(self):
        pass

    async def test_it_provides_the_interface(self):
        verifyObject(IControlClient, self.control)

    async def test_a_report_of_an_era_is_answered_with_a_generation_and_in_the_view(self):
        answer = await self.control.report(NODE1, REPORT, era=ERA)
        self.assertIsInstance(answer["generation"], int)
        view = await self.control.cluster(-1, timeout=0)
        self.assertGreaterEqual(view["generation"], answer["generation"])
        [node] = [n for n in view["nodes"] if n["uuid"] == NODE1]
        self.assertEqual((node["host"], node["agent_url"], node["datasets"]),
                         (REPORT["host"], REPORT["agent_url"], []))
        self.assertLessEqual({"generation", "datasets", "nodes", "leases"}, set(view))

    async def test_a_report_without_its_host_is_refused(self):
        with self.assertRaises(ControlError):
            await self.control.report(NODE1, {"agent_url": "http://x:1", "datasets": []})

    async def test_a_poll_at_the_current_generation_waits_for_a_change(self):
        current = (await self.control.cluster(-1, timeout=0))["generation"]
        poll = defer.ensureDeferred(self.control.cluster(current, timeout=30))
        answered = []
        poll.addCallback(answered.append)
        self.settle()
        self.assertEqual(answered, [])
        await self.control.report(NODE2, REPORT)
        self.settle()
        [view] = answered
        self.assertGreater(view["generation"], current)
        self.assertIn(NODE2, [n["uuid"] for n in view["nodes"]])

    async def test_an_earlier_generation_is_answered_at_once(self):
        await self.control.report(NODE1, REPORT)
        current = (await self.control.cluster(-1, timeout=0))["generation"]
        view = await self.control.cluster(current - 1, timeout=30)
        self.assertEqual(view["generation"], current)


class MemoryControlTests(ControlContract, TestCase):
    def setUp(self):
        self.control = MemoryControl()


class ControlClientTests(ControlContract, TestCase):
    def setUp(self):
        self.h = harness(self, token="s3cret")
        self.control = ControlClient(BASE, token="s3cret", http=self.h.treq)

    def settle(self):
        self.h.treq.flush()
