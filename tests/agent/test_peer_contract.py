"""IPeerClient's contract, held against MemoryPeers and against PeerClient talking HTTP
to a real peer server (agent/peer.py) over a Mover with a directory backend."""

import os
import uuid

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from zope.interface.verify import verifyObject

from powerstripflocker.agent.backends import SendPlan, make_backend
from powerstripflocker.agent.faults import Faults
from powerstripflocker.agent.local import Busy, LocalUse
from powerstripflocker.agent.model import ClusterView
from powerstripflocker.agent.mover import Mover
from powerstripflocker.agent.peer import PeerApp, peer_site
from powerstripflocker.agent.streams.sending import ProcessBodyProducer
from powerstripflocker.clients.peer import IPeerClient, MemoryPeers, PeerClient, PeerError

SOURCE = "11111111-1111-4111-8111-111111111111"
TARGET = "22222222-2222-4222-8222-222222222222"
NOBODY_URL = "http://127.0.0.1:9"


class PeerContract:
    """make_peers() sets self.client, self.agent_url; place(dataset_id) makes the
    configuration move dataset_id to that agent; stream(dataset_id) -> (plan, body)."""

    async def test_it_provides_the_interface(self):
        verifyObject(IPeerClient, self.client)

    async def test_a_dataset_not_moving_there_is_not_accepted(self):
        described = await self.client.describe(self.agent_url, str(uuid.uuid4()))
        self.assertEqual((described["primary"], described["accepting"]), (False, False))
        self.assertIn("does not place", described["reason"])

    async def test_a_dataset_moving_there_is_accepted_in_the_formats_it_receives(self):
        dataset_id = str(uuid.uuid4())
        self.place(dataset_id)
        described = await self.client.describe(self.agent_url, dataset_id)
        self.assertEqual((described["dataset_id"], described["primary"],
                          described["accepting"], described["generation"]),
                         (dataset_id, False, True, None))
        self.assertIn("tar", described["formats"])

    async def test_a_push_of_a_dataset_not_moving_there_is_refused(self):
        dataset_id = str(uuid.uuid4())
        plan, body = await self.stream(dataset_id)
        with self.assertRaises(PeerError) as refused:
            await self.client.push(self.agent_url, plan, body)
        self.assertEqual(refused.exception.code, 403)

    async def test_a_pushed_copy_once_acquired_is_a_received_primary_there(self):
        dataset_id = str(uuid.uuid4())
        self.place(dataset_id)
        plan, body = await self.stream(dataset_id)
        pushed = await self.client.push(self.agent_url, plan, body, generation=3)
        self.assertEqual(pushed["dataset_id"], dataset_id)
        acquired = await self.client.acquire(self.agent_url, dataset_id, pushed["received"],
                                             None, generation=3)
        self.assertEqual(acquired["dataset_id"], dataset_id)
        self.assertTrue(acquired["path"].endswith(dataset_id))
        described = await self.client.describe(self.agent_url, dataset_id)
        self.assertEqual((described["primary"], described["origin"]), (True, "received"))
        with self.assertRaises(PeerError) as refused:
            await self.client.push(self.agent_url, *(await self.stream(dataset_id)))
        self.assertEqual(refused.exception.code, 409)

    async def test_acquiring_what_was_never_received_is_refused(self):
        dataset_id = str(uuid.uuid4())
        self.place(dataset_id)
        with self.assertRaises(PeerError) as refused:
            await self.client.acquire(self.agent_url, dataset_id, "0123456789abcdef", None)
        self.assertEqual(refused.exception.code, 404)

    async def test_an_agent_nobody_runs_does_not_answer(self):
        with self.assertRaises(Exception) as failed:
            await self.client.describe(NOBODY_URL, str(uuid.uuid4()))
        self.assertNotIsInstance(failed.exception, PeerError)


class MemoryPeersTests(PeerContract, TestCase):
    def setUp(self):
        self.client = MemoryPeers()
        self.agent_url = "http://10.0.0.2:4524"
        self.peer = self.client.add(self.agent_url)

    def place(self, dataset_id):
        self.peer.moving_here.add(dataset_id)

    async def stream(self, dataset_id):
        plan = SendPlan(dataset_id, "tar", ["true"], size=0)
        return plan, ProcessBodyProducer(reactor, plan.argv)


def configured(dataset_id):
    return {"dataset_id": dataset_id, "primary": TARGET, "metadata": {}, "deleted": False,
            "maximum_size": None, "manifested": True, "generation": None}


class PeerClientTests(PeerContract, TestCase):
    """PeerClient over loopback to a peer server whose Mover holds a directory backend."""

    async def setUp(self):
        base = self.mktemp()
        self.source = make_backend("directory", reactor, os.path.join(base, "source"))
        target = make_backend("directory", reactor, os.path.join(base, "target"))
        for backend in (self.source, target):
            os.makedirs(backend.data_root, exist_ok=True)
            await backend.start()
        self.configured = []

        async def fresh_view():
            return self.view()

        mover = Mover(reactor, target, TARGET, "127.0.0.1", Busy(), LocalUse(), None,
                      Faults(), self.view, fresh_view, lambda: None, lambda: None)
        site = peer_site(PeerApp(mover, TARGET, target.name, dict, Faults()), mover, None)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
        self.addCleanup(port.stopListening)
        self.agent_url = f"http://127.0.0.1:{port.getHost().port}"
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.client = PeerClient(reactor, SOURCE, http=HTTPClient(Agent(reactor, pool=pool)))

    def view(self):
        return ClusterView.from_json({"generation": 1, "datasets": self.configured,
                                      "leases": [], "nodes": []})

    def place(self, dataset_id):
        self.configured.append(configured(dataset_id))

    async def stream(self, dataset_id):
        if dataset_id not in self.source.local_datasets():
            await self.source.create(dataset_id, None)
            with open(os.path.join(self.source.path(dataset_id), "data"), "wb") as f:
                f.write(os.urandom(4096))
        plan = await self.source.prepare_send(dataset_id, [])
        return plan, ProcessBodyProducer(reactor, plan.argv)


