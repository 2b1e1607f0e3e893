"""Requests that match no hook: relayed as streams, byte for byte, both ways."""

import json

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from .helpers import ProxyHarness, eventually, sleep, split_response

ATTACH = (b"POST /v1.41/containers/abc/attach?stderr=1&stdout=1&stream=1 HTTP/1.1\r\n"
          b"Host: api.moby.localhost\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
          b"Content-Type: text/plain\r\nContent-Length: 0\r\n\r\n")
UPGRADED = (b"HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.multiplexed-stream"
            b"\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n")


class PassThroughTests(TestCase):
    """With the fast path on; PassThroughPlainRelayTests runs them with it off."""

    fast_path = True

    def setUp(self):
        self.harness = ProxyHarness(self, fast_path=self.fast_path)

    async def test_get_with_query_reaches_daemon_intact(self):
        daemon = self.harness.start_daemon()
        self.harness.start_proxy()
        code, headers, body, _ = await self.harness.request(
            "GET", "/v1.41/info?return=%2Fx&b=1")
        self.assertEqual(200, code)
        self.assertEqual("/v1.41/info?return=%2Fx&b=1", json.loads(body)["uri"])
        self.assertEqual("1.41", headers["api-version"])
        self.assertEqual("/v1.41/info?return=%2Fx&b=1", daemon.requests[0][1])

    async def test_post_body_and_headers_pass_unchanged(self):
        daemon = self.harness.start_daemon()
        self.harness.start_proxy()
        code, _, body, _ = await self.harness.request(
            "POST", "/v1.41/towel", b'{"Number": 7}', content_type="application/json",
            headers=["X-Registry-Auth: secret"])
        self.assertEqual(200, code)
        self.assertEqual({"Number": 7, "SeenByFakeDocker": 42}, json.loads(body))
        method, uri, headers, seen = daemon.requests[0]
        self.assertEqual(b'{"Number": 7}', seen)
        self.assertEqual("secret", headers["x-registry-auth"])

    async def test_endpoints_with_empty_hook_lists_pass_through(self):
        daemon = self.harness.start_daemon()
        self.harness.start_proxy(endpoints={"POST /*/towel": {"pre": [], "post": []}})
        code, _, body, _ = await self.harness.request(
            "POST", "/v1.41/towel", b'{"Number": 1}', content_type="application/json")
        self.assertEqual((200, 1), (code, json.loads(body)["Number"]))
        self.assertEqual(1, len(daemon.requests))

    async def test_keep_alive_uses_one_daemon_connection(self):
        self.harness.start_daemon()
        self.harness.start_proxy()
        peer = await self.harness.connect()
        for n in range(3):
            before = len(peer.received)
            peer.write(b"GET /v1.41/containers/json HTTP/1.1\r\nHost: d\r\n\r\n")
            await eventually(lambda: peer.received.count(b"HTTP/1.1 200") == n + 1
                             and peer.received.endswith(b"}"))
            self.assertGreater(len(peer.received), before)
        self.assertFalse(peer.closed)
        self.assertEqual(1, self.harness.daemon_factory.connections)

    async def test_pipelined_requests_are_answered_in_order(self):
        daemon = self.harness.start_daemon()
        self.harness.start_proxy()
        peer = await self.harness.connect()
        peer.write(b"GET /v1.41/a HTTP/1.1\r\nHost: d\r\n\r\n"
                   b"POST /v1.41/b HTTP/1.1\r\nHost: d\r\nContent-Length: 3\r\n\r\nxyz"
                   b"GET /v1.41/c HTTP/1.1\r\nHost: d\r\n\r\n")
        await eventually(lambda: peer.received.count(b"HTTP/1.1 200") == 3
                         and peer.received.endswith(b"}"))
        uris = [json.loads(part.partition(b"\r\n\r\n")[2].split(b"HTTP/1.1")[0])["uri"]
                for part in peer.received.split(b"HTTP/1.1 200")[1:]]
        self.assertEqual(["/v1.41/a", "/v1.41/b", "/v1.41/c"], uris)
        self.assertEqual(b"xyz", daemon.requests[1][3])

    async def test_head_ping_headers_without_waiting_for_a_body(self):
        daemon = self.harness.start_daemon(raw=True)
        self.harness.start_proxy()
        peer = await self.harness.connect()
        peer.write(b"HEAD /_ping HTTP/1.1\r\nHost: d\r\n\r\n")
        conn = await daemon.connection()
        await conn.receive(b"\r\n\r\n")
        ping = (b"HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nBuilder-Version: 1\r\n"
                b"Docker-Experimental: false\r\nOstype: linux\r\nContent-Length: 2\r\n"
                b"Content-Type: text/plain; charset=utf-8\r\n\r\n")
        conn.write(ping)
        await peer.receive(b"\r\n\r\n")
        self.assertEqual(ping, peer.received)
        # the connection is free for the next request at once
        peer.write(b"GET /v1.41/version HTTP/1.1\r\nHost: d\r\n\r\n")
        await conn.receive(b"GET /v1.41/version")

    async def test_bodyless_post_reaches_daemon_with_content_length_zero(self):
        daemon = self.harness.start_daemon(raw=True)
        self.harness.start_proxy()
        peer = await self.harness.connect()
        peer.write(b"POST /v1.41/containers/abc/start HTTP/1.1\r\nHost: d\r\n\r\n")
        conn = await daemon.connection()
        await conn.receive(b"\r\n\r\n")
        self.assertIn(b"\r\nContent-Length: 0\r\n", conn.received)
        # and one that had it keeps exactly one
        conn.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await peer.receive(b"204")
        peer.write(b"POST /v1.41/containers/abc/wait HTTP/1.1\r\nHost: d\r\n"
                   b"Content-Length: 0\r\n\r\n")
        await conn.receive(b"/wait")
        await conn.receive(b"\r\n\r\n")
        self.assertEqual(1, conn.received.split(b"/wait")[1].lower().count(b"content-length"))

    async def test_chunked_request_body_is_streamed_not_buffered(self):
        daemon = self.harness.start_daemon(raw=True)
        self.harness.start_proxy()
        peer = await self.harness.connect()
        peer.write(b"PUT /v1.41/containers/abc/archive?path=/ HTTP/1.1\r\nHost: d\r\n"
                   b"Content-Type: application/x-tar\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"5\r\nfirst\r\n")
        conn = await daemon.connection()
        # the daemon sees the first chunk while the client has not sent the rest
        await conn.receive(b"5\r\nfirst\r\n")
        peer.write(b"6\r\nsecond\r\n")
        await conn.receive(b"6\r\nsecond\r\n")
        peer.write(b"0\r\n\r\n")
        await conn.receive(b"0\r\n\r\n")
        self.assertIn(b"Transfer-Encoding: chunked", conn.received)
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await peer.receive(b"200 OK")
        # the end of the chunked body was found: the next request goes through
        peer.write(b"GET /v1.41/next HTTP/1.1\r\nHost: d\r\n\r\n")
        await conn.receive(b"GET /v1.41/next")

    async def test_large_request_body_streams_through(self):
        daemon = self.harness.start_daemon(raw=True)
        self.harness.start_proxy()
        peer = await self.harness.connect()
        size = 8 * 1024 * 1024
        peer.write(b"POST /v1.41/build HTTP/1.1\r\nHost: d\r\n"
                   b"Content-Type: application/x-tar\r\nContent-Length: %d\r\n\r\n" % size)
        peer.write(b"x" * size)
        conn = await daemon.connection()
        await eventually(lambda: len(conn.received) >= size, timeout=20)
        head, _, body = conn.received.partition(b"\r\n\r\n")
        self.assertEqual(size, len(body))

    async def test_response_headers_flushed_before_any_body(self):
        """`wait`: the docker CLI sends `start` only after these headers arrive."""
        daemon = self.harness.start_daemon(raw=True)
        self.harness.start_proxy()
        peer = await self.harness.connect()
        peer.write(b"POST /v1.41/containers/abc/wait?condition=next-exit HTTP/1.1\r\n"
                   b"Host: d\r\nContent-Length: 0\r\n\r\n")
        conn = await daemon.connection()
        await conn.receive(b"\r\n\r\n")
        head = (b"HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")
        conn.write(head)
        await peer.receive(b"\r\n\r\n")
        self.assertEqual(head, peer.received)
        # meanwhile the CLI starts the container on another connection
        other = await self.harness.connect()
        other.write(b"POST /v1.41/containers/abc/start HTTP/1.1\r\nHost: d\r\n"
                    b"Content-Length: 0\r\n\r\n")
        conn2 = await daemon.connection(1)
        await conn2.receive(b"/start")
        result = b'{"StatusCode":0,"Error":null}'
        conn.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(result), result))
        await peer.receive(b"0\r\n\r\n")
        self.assertTrue(peer.received.endswith(b'{"StatusCode":0,"Error":null}\r\n0\r\n\r\n'))

    async def test_chunked_response_relayed_chunk_by_chunk(self):
        daemon = self.harness.start_daemon(raw=True)
        self.harness.start_proxy()
        peer = await self.harness.connect()
        peer.write(b"GET /v1.41/events HTTP/1.1\r\nHost: d\r\n\r\n")
        conn = await daemon.connection()
        await conn.receive(b"\r\n\r\n")
        conn.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nevent\r\n")
        await peer.receive(b"5\r\nevent\r\n")
        conn.write(b"6\r\nevent2\r\n")
        await peer.receive(b"event2\r\n")
        conn.write(b"0\r\n\r\n")
        await peer.receive(b"0\r\n\r\n")
        peer.write(b"GET /v1.41/info HTTP/1.1\r\nHost: d\r\n\r\n")
        await conn.receive(b"GET /v1.41/info")
        self.assertFalse(peer.closed)

    async def test_close_delimited_response_ends_with_the_connection(self):
        daemon = self.harness.start_daemon(raw=True)
        self.harness.start_proxy()
        peer = await self.harness.connect()
        peer.write(b"GET /v1.41/containers/abc/export HTTP/1.1\r\nHost: d\r\n\r\n")
        conn = await daemon.connection()
        await conn.receive(b"\r\n\r\n")
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-tar\r\n\r\nabc")
        await peer.receive(b"abc")
        conn.write(b"\x00\xffdef")
        conn.close()
        await eventually(lambda: peer.eof)
        self.assertTrue(peer.received.endswith(b"\r\n\r\nabc\x00\xffdef"))

    async def test_hijack_relays_101_verbatim_then_bytes_both_ways_with_half_close(self):
        daemon = self.harness.start_daemon(raw=True)
        self.harness.start_proxy()
        peer = await self.harness.connect()
        peer.write(ATTACH)
        conn = await daemon.connection()
        await conn.receive(b"\r\n\r\n")
        self.assertEqual(ATTACH, conn.received)
        conn.write(UPGRADED + b"early")
        await peer.receive(b"early")
        self.assertEqual(UPGRADED + b"early", peer.received)
        peer.write(b"stdin data")
        await conn.receive(b"stdin data")
        # the client half-closes (as the CLI does right after the 101)
        peer.half_close()
        await eventually(lambda: conn.eof, what="EOF at the daemon")
        self.assertFalse(conn.closed)
        # output still flows to the client after its EOF
        conn.write(b"output after eof")
        await peer.receive(b"output after eof")
        conn.close()
        await eventually(lambda: peer.eof, what="client closed")

    async def test_hijack_daemon_half_close_reaches_client(self):
        daemon = self.harness.start_daemon(raw=True)
        self.harness.start_proxy()
        peer = await self.harness.connect()
        peer.write(ATTACH)
        conn = await daemon.connection()
        await conn.receive(b"\r\n\r\n")
        conn.write(UPGRADED)
        await peer.receive(b"\r\n\r\n")
        conn.write(b"bye")
        conn.half_close()
        await eventually(lambda: peer.eof, what="EOF at the client")
        self.assertTrue(peer.received.endswith(b"bye"))
        peer.write(b"late stdin")
        await conn.receive(b"late stdin")
        peer.close()
        await eventually(lambda: conn.closed, what="daemon side closed")

    async def test_client_bytes_sent_before_101_reach_the_stream(self):
        daemon = self.harness.start_daemon(raw=True)
        self.harness.start_proxy()
        peer = await self.harness.connect()
        peer.write(ATTACH + b"typed ahead")
        conn = await daemon.connection()
        await conn.receive(b"\r\n\r\n")
        await sleep(0.05)
        self.assertEqual(ATTACH, conn.received)  # held until the daemon agrees to upgrade
        conn.write(UPGRADED)
        await conn.receive(b"typed ahead")

    async def test_upgrade_answered_with_an_error_stays_plain_http(self):
        daemon = self.harness.start_daemon(raw=True)
        self.harness.start_proxy()
        peer = await self.harness.connect()
        peer.write(ATTACH)
        conn = await daemon.connection()
        await conn.receive(b"\r\n\r\n")
        error = b'{"message":"No such container: abc"}'
        conn.write(b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n%s" % (len(error), error))
        await peer.receive(error)
        self.assertEqual(404, split_response(peer.received)[0])
        peer.write(b"GET /v1.41/info HTTP/1.1\r\nHost: d\r\n\r\n")
        await conn.receive(b"GET /v1.41/info")

    async def test_legacy_hijack_200_raw_stream_is_spliced(self):
        daemon = self.harness.start_daemon(raw=True)
        self.harness.start_proxy()
        peer = await self.harness.connect()
        peer.write(b"POST /v1.20/containers/abc/attach?stdin=1&stream=1 HTTP/1.1\r\n"
                   b"Host: d\r\nContent-Length: 0\r\n\r\n")
        conn = await daemon.connection()
        await conn.receive(b"\r\n\r\n")
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.raw-stream\r\n\r\n")
        await peer.receive(b"raw-stream\r\n\r\n")
        peer.write(b"typed")
        await conn.receive(b"typed")
        peer.half_close()
        await eventually(lambda: conn.eof)
        conn.write(b"out")
        await peer.receive(b"out")

    async def test_daemon_unreachable_gives_502_json_and_one_attempt_per_request(self):
        self.harness.start_daemon(raw=True)
        closed_port = self.harness.daemon_port.getHost().port
        await self.harness.daemon_port.stopListening()
        factory = self.harness.start_proxy(docker_port=closed_port)
        attempts = []
        real = factory.docker_endpoint

        class Counting:
            def connect(self, protocol_factory):
                attempts.append(1)
                return real.connect(protocol_factory)
        factory.docker_endpoint = Counting()
        code, headers, body, peer = await self.harness.request("GET", "/v1.41/info")
        self.assertEqual(502, code)
        self.assertEqual("application/json", headers["content-type"])
        self.assertIn("cannot reach the Docker daemon", json.loads(body)["message"])
        # one early attempt when the client connected, one for the request; no loop
        await sleep(0.3)
        self.assertEqual(2, len(attempts))

    async def test_daemon_closing_without_an_answer_gives_502(self):
        daemon = self.harness.start_daemon(raw=True)
        self.harness.start_proxy()
        peer = await self.harness.connect()
        peer.write(b"GET /v1.41/info HTTP/1.1\r\nHost: d\r\n\r\n")
        conn = await daemon.connection()
        await conn.receive(b"\r\n\r\n")
        conn.close()
        await eventually(lambda: peer.eof)
        code, headers, body = split_response(peer.received)
        self.assertEqual(502, code)
        self.assertIn("without answering", json.loads(body)["message"])

    async def test_client_half_close_after_a_request_still_gets_the_answer(self):
        daemon = self.harness.start_daemon(raw=True)
        self.harness.start_proxy()
        peer = await self.harness.connect()
        peer.write(b"GET /v1.41/info HTTP/1.1\r\nHost: d\r\n\r\n")
        peer.half_close()
        conn = await daemon.connection()
        await conn.receive(b"\r\n\r\n")
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await peer.receive(b"\r\n\r\nok")
        await eventually(lambda: peer.closed, what="the proxy closing after the answer")

    async def test_truncated_response_closes_the_client(self):
        daemon = self.harness.start_daemon(raw=True)
        self.harness.start_proxy()
        peer = await self.harness.connect()
        peer.write(b"GET /v1.41/info HTTP/1.1\r\nHost: d\r\n\r\n")
        conn = await daemon.connection()
        await conn.receive(b"\r\n\r\n")
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")
        await peer.receive(b"short")
        conn.close()
        await eventually(lambda: peer.eof)

    async def test_slow_client_pauses_the_daemon_instead_of_buffering(self):
        daemon = self.harness.start_daemon(raw=True)
        self.harness.start_proxy()
        peer = await self.harness.connect()
        peer.transport.pauseProducing()  # the client stops reading
        peer.write(b"GET /v1.41/containers/abc/logs?follow=1 HTTP/1.1\r\nHost: d\r\n\r\n")
        conn = await daemon.connection()
        await conn.receive(b"\r\n\r\n")
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.raw-stream\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (65536, b"y" * 65536)
        for _ in range(400):  # 25 MiB offered by the daemon
            conn.write(chunk)
        await sleep(0.5)
        # the proxy stopped reading from the daemon: most of it is still with the daemon
        self.assertGreater(len(conn.transport._tempDataBuffer) + len(conn.transport.dataBuffer),
                           10 * 1024 * 1024)
        peer.transport.resumeProducing()
        await eventually(lambda: len(peer.received) > 400 * 65536, timeout=30)

    async def test_unix_socket_daemon(self):
        import tempfile
        import os
        from twisted.internet.endpoints import UNIXClientEndpoint
        from twisted.web import server as web_server
        from .helpers import FakeDocker
        directory = tempfile.mkdtemp(prefix="psf-")
        path = os.path.join(directory, "docker.sock")
        fake = FakeDocker()
        port = reactor.listenUNIX(path, web_server.Site(fake))
        self.addCleanup(port.stopListening)
        self.harness.start_daemon()
        factory = self.harness.start_proxy()
        factory.docker_endpoint = UNIXClientEndpoint(reactor, path)
        code, _, body, _ = await self.harness.request("GET", "/v1.41/info")
        self.assertEqual(200, code)
        self.assertEqual(1, len(fake.requests))


class PassThroughPlainRelayTests(PassThroughTests):
    """The same requests with the fast path off: every byte through Twisted's plain relay."""

    fast_path = False


class HijackTeardownTests(TestCase):

    fast_path = True

    async def test_daemon_connection_is_opened_early_and_used_for_the_first_request(self):
        harness = ProxyHarness(self, fast_path=self.fast_path)
        daemon = harness.start_daemon(raw=True)
        harness.start_proxy()
        peer = await harness.connect()
        conn = await daemon.connection()  # before the client sent anything
        peer.write(b"GET /v1.41/info HTTP/1.1\r\nHost: d\r\n\r\n")
        await conn.receive(b"GET /v1.41/info")
        self.assertEqual(1, len(daemon.connections))

    async def test_client_vanishing_mid_stream_closes_the_daemon_side(self):
        harness = ProxyHarness(self, fast_path=self.fast_path)
        daemon = harness.start_daemon(raw=True)
        harness.start_proxy()
        peer = await harness.connect()
        peer.write(ATTACH)
        conn = await daemon.connection()
        await conn.receive(b"\r\n\r\n")
        conn.write(UPGRADED)
        await peer.receive(b"\r\n\r\n")
        peer.transport.abortConnection()
        await eventually(lambda: conn.eof, what="the proxy closing the daemon side")


class HijackTeardownPlainRelayTests(HijackTeardownTests):

    fast_path = False


class MalformedRequestTests(TestCase):

    fast_path = True

    async def test_garbage_gets_400_json(self):
        harness = ProxyHarness(self, fast_path=self.fast_path)
        daemon = harness.start_daemon(raw=True)
        harness.start_proxy()
        peer = await harness.connect()
        peer.write(b"NONSENSE\r\n\r\n")
        await eventually(lambda: peer.eof)
        code, headers, body = split_response(peer.received)
        self.assertEqual((400, "application/json"), (code, headers["content-type"]))
        self.assertIn("malformed request", json.loads(body)["message"])
        self.assertEqual(b"", b"".join(c.received for c in daemon.connections))

    async def test_oversized_head_gets_431(self):
        harness = ProxyHarness(self, fast_path=self.fast_path)
        daemon = harness.start_daemon(raw=True)
        harness.start_proxy()
        peer = await harness.connect()
        peer.write(b"GET / HTTP/1.1\r\nX: " + b"a" * 70000)
        await eventually(lambda: peer.eof)
        self.assertEqual(431, split_response(peer.received)[0])
        self.assertEqual(b"", b"".join(c.received for c in daemon.connections))


class MalformedRequestPlainRelayTests(MalformedRequestTests):

    fast_path = False


class PlainRelayTests(TestCase):
    """fast_path=False: no direct socket writes, no recv() reads, no splice(2)."""

    async def test_a_hijacked_stream_moves_without_the_fast_path(self):
        from powerstripflocker.powerstrip import fastpath
        used = []
        self.patch(fastpath, "kernel_relays", lambda *args: used.append("splice") or [])
        self.patch(fastpath, "_write_now", lambda *args: used.append("write now"))
        self.patch(fastpath, "_plain_reads", lambda *args: used.append("plain reads"))
        harness = ProxyHarness(self, fast_path=False)
        daemon = harness.start_daemon(raw=True)
        harness.start_proxy()
        peer = await harness.connect()
        peer.write(ATTACH)
        conn = await daemon.connection()
        await conn.receive(b"\r\n\r\n")
        conn.write(UPGRADED + b"out")
        await peer.receive(b"out")
        peer.write(b"in")
        await conn.receive(b"in")
        self.assertFalse(harness.factory.fast_path)
        self.assertEqual([], used)


class KernelSpliceTests(TestCase):
    """Hijacked streams move through splice(2); order and backpressure must hold."""

    async def hijacked(self, harness):
        from powerstripflocker.powerstrip import fastpath
        real = fastpath.kernel_relays
        self.relays = []

        def recording(client, upstream):
            relays = real(client, upstream)
            self.relays.extend(relays)
            return relays
        self.patch(fastpath, "kernel_relays", recording)
        daemon = harness.start_daemon(raw=True)
        harness.start_proxy()
        peer = await harness.connect()
        peer.write(ATTACH)
        conn = await daemon.connection()
        await conn.receive(b"\r\n\r\n")
        conn.write(UPGRADED)
        await peer.receive(b"\r\n\r\n")
        return peer, conn

    async def test_large_streams_both_ways_arrive_whole_and_in_order(self):
        import os as _os
        harness = ProxyHarness(self)
        peer, conn = await self.hijacked(harness)
        self.assertTrue(harness.factory.fast_path)
        down = _os.urandom(20 * 1024 * 1024)
        up = _os.urandom(5 * 1024 * 1024)
        for start in range(0, len(down), 1 << 20):
            conn.write(down[start:start + (1 << 20)])
        peer.write(up)
        await eventually(lambda: len(peer.received) >= len(UPGRADED) + len(down), timeout=30)
        await eventually(lambda: len(conn.received) >= len(ATTACH) + len(up), timeout=30)
        self.assertEqual(UPGRADED + down, peer.received)
        self.assertEqual(ATTACH + up, conn.received)
        self.assertEqual(2, len(self.relays), "the streams did not go through splice(2)")
        peer.half_close()
        await eventually(lambda: conn.eof)
        conn.close()
        await eventually(lambda: peer.eof)
        await eventually(lambda: all(r.read_end == -1 for r in self.relays),
                         what="the pipes closed")

    async def test_slow_reader_pauses_the_stream_through_the_pipe(self):
        harness = ProxyHarness(self)
        peer, conn = await self.hijacked(harness)
        peer.transport.pauseProducing()
        chunk = b"z" * (1 << 20)
        for _ in range(40):
            conn.write(chunk)
        await sleep(0.5)
        left_with_daemon = len(conn.transport._tempDataBuffer) + len(conn.transport.dataBuffer)
        self.assertGreater(left_with_daemon, 20 * (1 << 20))
        peer.transport.resumeProducing()
        await eventually(lambda: len(peer.received) >= len(UPGRADED) + 40 * len(chunk),
                         timeout=30)
        self.assertEqual(UPGRADED + chunk * 40, peer.received)
