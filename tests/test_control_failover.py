"""Clients given several control replicas (issue 14), on real sockets on loopback: two
real control services (each on its own SQLite file) behind one --control-url list, one
of them dead or answering 503 or silent; and a small Twisted proxy in front of a real one
that closes a kept-alive connection between two requests, or loses a create's answer."""

import json
import os
import subprocess
import sys
import tempfile
import urllib.request

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase
from twisted.web import resource, server
from twisted.web._newclient import ResponseNeverReceived

from powerstripflocker.cli.status import fetch
from powerstripflocker.clients.control_agent import ControlClient
from powerstripflocker.clients.flocker import AlreadyExists, ControlServiceUnreachable
from powerstripflocker.clients.flocker_client import FlockerClient
from powerstripflocker.clients.http import connection_pool, http_client

from .agent.cluster import Cluster, wait_for
from .support.processes import ManagedProcess, free_port

TOKEN = "failover-token"
NODE = "6c1b8a4d-6b8d-4f0a-9c55-1c2d8a0d2f11"

pytestmark = pytest.mark.integration


class Controls:
    """Two real control services, started once for this module."""

    shared = None

    @classmethod
    def get(cls):
        if cls.shared is None:
            clusters = []
            for name in ("one", "two"):
                base = tempfile.mkdtemp(prefix=f"psf-failover-{name}-")
                clusters.append(Cluster(base, token=TOKEN).start_control())
            cls.shared = cls(*clusters)
        return cls.shared

    def __init__(self, first, second):
        self.first, self.second = first, second


def teardown_module(module):
    if Controls.shared is not None:
        Controls.shared.first.stop()
        Controls.shared.second.stop()


def dead_url():
    return f"http://127.0.0.1:{free_port()}"


async def listen(site_or_factory):
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site_or_factory)
    return port, f"http://127.0.0.1:{port.getHost().port}"


class Unavailable(resource.Resource):
    """A replica that answers everything 503, as one that cannot reach its store."""

    isLeaf = True

    def render(self, request):
        request.setResponseCode(503)
        return b'{"description": "the store cannot be reached"}'


class Silent(Protocol):
    def dataReceived(self, data):
        pass


class Proxy(resource.Resource):
    """Forwards each request to upstream, and misbehaves on the client's side:
    close_between: a connection that has had its answer is closed when the next
    request arrives on it, unanswered (a server that closes after each answer, its
    close meeting the client's next request); lose_creates: the answer of that many
    creates, made upstream, is never sent (the connection is closed instead)."""

    isLeaf = True

    def __init__(self, upstream, close_between=False, lose_creates=0):
        super().__init__()
        self.upstream = upstream
        self.close_between = close_between
        self.lose_creates = lose_creates
        self.answered_channels = set()
        self.closed_unanswered = 0
        self.http = http_client(reactor, pool=connection_pool(reactor, persistent=False))

    def render(self, request):
        channel = request.channel
        if self.close_between and channel in self.answered_channels:
            self.closed_unanswered += 1
            request.transport.loseConnection()
            return server.NOT_DONE_YET
        Deferred.fromCoroutine(self._forward(request, channel))
        return server.NOT_DONE_YET

    async def _forward(self, request, channel):
        headers = {name: values for name, values in request.requestHeaders.getAllRawHeaders()
                   if name.lower() not in (b"host", b"connection", b"content-length")}
        response = await self.http.request(
            request.method.decode(), self.upstream + request.uri.decode(),
            data=request.content.read() or None, headers=headers)
        body = await response.content()
        create = request.method == b"POST" and request.path == b"/v1/configuration/datasets"
        if create and self.lose_creates:
            self.lose_creates -= 1
            request.transport.loseConnection()
            return
        request.setResponseCode(response.code)
        for name, values in response.headers.getAllRawHeaders():
            if name.lower() not in (b"content-length", b"connection", b"date", b"server"):
                request.responseHeaders.setRawHeaders(name, values)
        request.write(body)
        request.finish()
        self.answered_channels.add(channel)


class FailoverTests(TestCase):
    def setUp(self):
        self.controls = Controls.get()
        self.live = self.controls.first.control_url

    def client(self, control_url, **kwargs):
        api = FlockerClient(reactor, control_url, token=TOKEN, **kwargs)
        self.addCleanup(api.http_client._agent._pool.closeCachedConnections)
        return api

    async def served(self, thing):
        port, url = await listen(thing)
        self.addCleanup(port.stopListening)
        return url

    def test_requests_go_through_the_live_replica_when_the_first_is_dead(self):
        async def check():
            api = self.client(f"{dead_url()}/v1,{self.live}/v1")
            created = await api.create_dataset(NODE, metadata={"name": "through-live"})
            listed = await api.list_datasets_configuration()
            self.assertIn(created.dataset_id, [d.dataset_id for d in listed.datasets])
            self.assertEqual(api.base_url, self.live + "/v1")
            self.assertEqual(await api.version(), (await self.client(self.live).version()))
        return Deferred.fromCoroutine(check())

    def test_a_replica_answering_503_or_nothing_is_passed_over(self):
        async def check():
            unavailable = await self.served(server.Site(Unavailable()))
            silent = await self.served(Factory.forProtocol(Silent))
            api = self.client(f"{unavailable},{silent},{self.live}", timeout=0.5)
            created = await api.create_dataset(NODE, metadata={"name": "past-503"})
            self.assertEqual(api.base_url, self.live + "/v1")
            # It sticks with the one that answered: the next request asks it first.
            moved = await api.move_dataset(created.dataset_id, NODE)
            self.assertEqual(moved.dataset_id, created.dataset_id)
        return Deferred.fromCoroutine(check())

    def test_the_next_replica_is_used_once_the_one_that_answered_dies(self):
        async def check():
            port, first = await listen(server.Site(Proxy(self.live)))
            second = self.controls.second.control_url
            api = self.client(f"{first},{second}")
            await api.list_nodes()
            self.assertEqual(api.base_url, first + "/v1")
            await port.stopListening()
            await api.http_client._agent._pool.closeCachedConnections()
            self.assertEqual(await api.list_nodes(), [])
            self.assertEqual(api.base_url, second + "/v1")
        return Deferred.fromCoroutine(check())

    def test_the_agents_client_and_status_fail_over_too(self):
        async def check():
            client = http_client(reactor, pool=connection_pool(reactor, persistent=False))
            control = ControlClient(f"{dead_url()},{self.live}", token=TOKEN, http=client)
            view = await control.cluster(timeout=0)
            self.assertIn("generation", view)
            self.assertEqual(control.base_url, self.live)
            created = await self.client(self.live).create_dataset(
                NODE, metadata={"name": "for-status"})
            unavailable = await self.served(server.Site(Unavailable()))
            configuration, *_, cluster = await fetch(
                client, f"{unavailable},{dead_url()},{self.live}", TOKEN)
            self.assertIn(created.dataset_id, [d["dataset_id"] for d in configuration])
            self.assertIsNotNone(cluster)
        return Deferred.fromCoroutine(check())

    def test_a_post_on_a_connection_the_server_closed_between_requests_is_sent_again(self):
        async def check():
            proxy = Proxy(self.live, close_between=True)
            url = await self.served(server.Site(proxy))
            # What happened before: a plain client's POST on that connection fails.
            plain = http_client(reactor)
            self.addCleanup(plain._agent._pool.closeCachedConnections)
            headers = {"Authorization": [f"Bearer {TOKEN}"]}
            await (await plain.get(url + "/v1/version", headers=headers)).content()
            with self.assertRaises(ResponseNeverReceived):
                await plain.post(url + "/v1/configuration/datasets", headers=headers,
                                 data=json.dumps({"primary": NODE}).encode())
            api = self.client(url)
            names = [f"closing-{i}" for i in range(5)]
            for name in names:
                configuration = await api.datasets_named(name)
                created = await api.create_dataset(
                    NODE, metadata={"name": name},
                    if_configuration_matches=configuration.tag)
                self.assertEqual(created.name, name)
            self.assertGreaterEqual(proxy.closed_unanswered, 5)
            for name in names:
                self.assertEqual(len((await api.datasets_named(name)).datasets), 1)
        return Deferred.fromCoroutine(check())

    def test_a_create_whose_answer_was_lost_makes_one_dataset(self):
        async def check():
            for tagged in (False, True):
                name = f"lost-answer-{tagged}"
                proxy = Proxy(self.live, lose_creates=1)
                api = self.client(await self.served(server.Site(proxy)))
                tag = (await api.datasets_named(name)).tag if tagged else None
                created = await api.create_dataset(
                    NODE, metadata={"name": name}, if_configuration_matches=tag)
                self.assertEqual(proxy.lose_creates, 0)
                [stored] = (await self.client(self.live).datasets_named(name)).datasets
                self.assertEqual(stored, created)
        return Deferred.fromCoroutine(check())


def test_an_agent_given_a_dead_replica_first_registers_through_the_live_one(tmp_path):
    cluster = Cluster(str(tmp_path), token=TOKEN).start_control()
    try:
        agent = cluster.add_agent("node1", os.path.join(cluster.base, "node1"), options=[
            "--control-url", f"{dead_url()},{cluster.control_url}/v1"])
        wait_for(lambda: [n["uuid"] for n in cluster.api("GET", "/state/nodes")]
                 == [agent.uuid], timeout=30, what="the agent registered",
                 on_timeout=cluster.logs)
        dataset_id = cluster.create_dataset(agent.uuid)["dataset_id"]
        held = cluster.wait_until_on(dataset_id, agent, timeout=30)
        assert held["path"] == agent.path(dataset_id)
    finally:
        cluster.stop()


class UnreachableTests(TestCase):
    def test_when_every_replica_fails_the_error_names_them_all(self):
        async def check():
            first, second = dead_url(), dead_url()
            api = FlockerClient(reactor, f"{first},{second}", connect_retries=0)
            self.addCleanup(api.http_client._agent._pool.closeCachedConnections)
            with self.assertRaises(ControlServiceUnreachable) as raised:
                await api.list_nodes()
            self.assertEqual(str(raised.exception).split(": ")[0],
                             "cannot reach the control service at any of its replicas "
                             f"{first}/v1, {second}/v1")
            self.assertIn("ConnectionRefusedError", str(raised.exception))
        return Deferred.fromCoroutine(check())


class RestoredOnce(resource.Resource):
    """A control service whose first restore is carried out and its answer lost."""

    isLeaf = True

    def __init__(self, dataset_id):
        super().__init__()
        self.dataset = {"dataset_id": dataset_id, "primary": NODE, "metadata": {},
                        "deleted": True}
        self.restores = 0

    def render_POST(self, request):
        self.restores += 1
        if self.dataset["deleted"]:
            self.dataset["deleted"] = False
            request.transport.loseConnection()
            return server.NOT_DONE_YET
        request.setResponseCode(409)
        return b'{"description": "dataset is not deleted."}'

    def render_GET(self, request):
        request.setHeader(b"X-Configuration-Tag", b"t")
        return json.dumps([self.dataset]).encode()


class RestoreTests(TestCase):
    def test_a_restore_whose_answer_was_lost_is_done(self):
        async def check():
            dataset_id = "0e0d1a52-3c8f-4b7e-8a1d-2f7c9b3e6a20"
            service = RestoredOnce(dataset_id)
            port, url = await listen(server.Site(service))
            self.addCleanup(port.stopListening)
            api = FlockerClient(reactor, url, token=TOKEN)
            self.addCleanup(api.http_client._agent._pool.closeCachedConnections)
            restored = await api.restore_dataset(dataset_id)
            self.assertEqual((restored.dataset_id, restored.deleted), (dataset_id, False))
            self.assertEqual(service.restores, 2)
        return Deferred.fromCoroutine(check())


def test_an_adapter_given_a_dead_replica_first_places_a_volume_through_the_live_one(tmp_path):
    cluster = Cluster(str(tmp_path), token=TOKEN).start_control()
    adapter = None
    try:
        agent = cluster.add_agent("node1", os.path.join(cluster.base, "node1"))
        port = free_port()
        adapter = ManagedProcess.command(
            ["adapter", "--control-url", f"{dead_url()}/v1,{cluster.control_url}",
             "--node-uuid", agent.uuid, "--cluster-token-file", cluster.token_file,
             "--listen", f"tcp:{port}:interface=127.0.0.1", "--timeout", "30"],
            os.path.join(cluster.base, "adapter.log")).start()
        adapter.wait_for_http(f"http://127.0.0.1:{port}/metrics")
        hook = {"PowerstripProtocolVersion": 1, "Type": "pre-hook", "ClientRequest": {
            "Method": "POST", "Request": "/v1.41/containers/create",
            "Body": json.dumps({"HostConfig": {"Binds": ["/flocker/failover:/data"]}})}}
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/flocker-adapter", data=json.dumps(hook).encode(),
            method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            reply = json.loads(response.read())
        [dataset] = [d for d in cluster.api("GET", "/configuration/datasets")
                     if d["metadata"].get("name") == "failover"]
        host_config = json.loads(reply["ModifiedClientRequest"]["Body"])["HostConfig"]
        [mount] = host_config["Mounts"]
        assert (mount["Source"], mount["Target"]) == (agent.path(dataset["dataset_id"]),
                                                      "/data")
    finally:
        if adapter is not None:
            adapter.stop()
        cluster.stop()


@pytest.mark.parametrize("command", ["adapter", "plugin", "agent", "status", "release",
                                     "restore"])
def test_a_bad_item_in_the_list_is_refused_before_starting(command):
    volume = ["name"] if command in ("release", "restore") else []
    result = subprocess.run(
        [sys.executable, "-m", "powerstripflocker", command, "--control-url",
         "http://127.0.0.1:4523,127.0.0.1:4524", *volume],
        capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "'127.0.0.1:4524' in the control URL list" in result.stderr


class NotDeleted(resource.Resource):
    """A control service holding a dataset that is not deleted: a restore is refused."""

    isLeaf = True

    def __init__(self, dataset_id):
        super().__init__()
        self.dataset = {"dataset_id": dataset_id, "primary": NODE, "metadata": {},
                        "deleted": False}

    def render_POST(self, request):
        request.setResponseCode(409)
        return b'{"description": "dataset is not deleted."}'

    def render_GET(self, request):
        request.setHeader(b"X-Configuration-Tag", b"t")
        return json.dumps([self.dataset]).encode()


class RefusedRestoreTests(TestCase):
    def test_a_dead_replica_first_does_not_make_a_refused_restore_look_done(self):
        # A connection refused carried no restore: the one refusal is the answer.
        async def check():
            dataset_id = "5b7e2c1d-9a4f-4e3b-8c6d-1f2a3b4c5d6e"
            port, url = await listen(server.Site(NotDeleted(dataset_id)))
            self.addCleanup(port.stopListening)
            api = FlockerClient(reactor, f"{dead_url()},{url}", token=TOKEN)
            self.addCleanup(api.http_client._agent._pool.closeCachedConnections)
            with self.assertRaises(AlreadyExists) as refused:
                await api.restore_dataset(dataset_id)
            self.assertEqual(refused.exception.description, "dataset is not deleted.")
        return Deferred.fromCoroutine(check())
