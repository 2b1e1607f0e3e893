"""The proxy listener's limits: slow request heads, connection bursts, oversized bodies."""

import json
import os
import shutil
import socket
import tempfile

from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from powerstripflocker.powerstrip.endpoints import ListenAddress

from .helpers import ProxyHarness, eventually, sleep, split_response

GET = b"GET /v1.41/info HTTP/1.1\r\nHost: d\r\n\r\n"


class SlowHeadTests(TestCase):

    def setUp(self):
        self.harness = ProxyHarness(self)
        self.daemon = self.harness.start_daemon()
        self.clock = Clock()
        self.harness.start_proxy(clock=self.clock)

    async def request(self, peer, answers):
        peer.write(GET)
        await eventually(lambda: peer.received.count(b"HTTP/1.1 200") == answers
                         and peer.received.endswith(b"}"))

    async def test_a_client_without_a_whole_head_in_10s_is_dropped_while_others_are_served(self):
        silent = await self.harness.connect()
        trickling = await self.harness.connect()
        trickling.write(b"GET /v1.41/info HTTP/1.1\r\nHo")
        await sleep(0.05)
        self.clock.advance(5)
        trickling.write(b"st: d\r\n")
        await sleep(0.05)
        self.clock.advance(4.9)
        served = await self.harness.connect()
        await self.request(served, 1)
        self.assertFalse(silent.eof or trickling.eof)
        self.clock.advance(0.2)
        await eventually(lambda: silent.eof and trickling.eof, what="both slow clients dropped")
        self.assertEqual((b"", b""), (silent.received, trickling.received))
        self.assertEqual(["/v1.41/info"], [uri for _, uri, _, _ in self.daemon.requests])
        self.assertFalse(served.eof)

    async def test_an_idle_kept_alive_connection_is_not_timed_but_its_next_head_is(self):
        peer = await self.harness.connect()
        await self.request(peer, 1)
        self.clock.advance(60)
        await sleep(0.05)
        self.assertFalse(peer.eof)
        await self.request(peer, 2)
        peer.write(b"GET /v1.41/info HTTP/1.1\r\n")
        await sleep(0.05)
        self.clock.advance(9.9)
        await sleep(0.05)
        self.assertFalse(peer.eof)
        self.clock.advance(0.2)
        await eventually(lambda: peer.eof)
        self.assertEqual(2, len(self.daemon.requests))


class BacklogTests(TestCase):

    async def test_a_burst_of_600_connections_fits_the_unix_listen_queue(self):
        directory = tempfile.mkdtemp(prefix="psf-backlog-")
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "proxy.sock")
        listen = ListenAddress(reactor, f"unix://{path}")
        port = await listen.endpoint.listen(Factory.forProtocol(Protocol))
        self.addCleanup(port.stopListening)
        clients = []
        self.addCleanup(lambda: [c.close() for c in clients])
        # no reactor turn in this loop: nothing is accepted, so the queue alone holds them
        for _ in range(600):
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.setblocking(False)
            clients.append(client)
            try:
                client.connect(path)
            except BlockingIOError:
                break
        self.assertGreaterEqual(len(clients), 512)


class BodyLimitTests(TestCase):

    async def test_413_from_the_content_length_alone(self):
        harness = ProxyHarness(self)
        daemon = harness.start_daemon(raw=True)
        harness.start_proxy(endpoints={"POST /*/containers/create": {"pre": ["echo"]}},
                            adapters={"echo": "/echo"}, max_body=64 * 1024 * 1024)
        peer = await harness.connect()
        peer.write(b"POST /v1.41/containers/create HTTP/1.1\r\nHost: d\r\n"
                   b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (1 << 30))
        await eventually(lambda: peer.eof, what="a 413 before any body byte was sent")
        code, headers, body = split_response(peer.received)
        self.assertEqual((413, "application/json"), (code, headers["content-type"]))
        self.assertIn("limit of 67108864 bytes", json.loads(body)["message"])
        self.assertEqual([], harness.adapter.calls)
        self.assertEqual(b"", b"".join(c.received for c in daemon.connections))
