"""Post-hooks on patterns that also match streaming or hijacked requests, as Powerstrip ran them.

They are accepted, skipped (and logged once) where the response is a stream,
a long poll or a hijacked connection, whatever the API version prefix, and run
everywhere else.
"""

import pytest
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from powerstripflocker.powerstrip.streaming import streaming_request

from .helpers import ProxyHarness, eventually, split_response

ECHO_EVERYWHERE = {"* *": {"pre": ["echo"], "post": ["echo"]}}


@pytest.mark.parametrize("prefix", ["", "/v1.24", "/v1.40", "/v1.41", "/v1.51", "/v2"])
@pytest.mark.parametrize("method, path, endpoint", [
    ("POST", "/containers/abc/wait", "POST /containers/{id}/wait"),
    ("POST", "/containers/abc/attach", "POST /containers/{id}/attach"),
    ("GET", "/containers/abc/logs", "GET /containers/{id}/logs"),
    ("GET", "/events", "GET /events"),
    ("POST", "/exec/abc/start", "POST /exec/{id}/start"),
    ("POST", "/images/docker.io/library/busybox/push", "POST /images/{name}/push"),
    ("POST", "/build", "POST /build"),
])
def test_streaming_endpoints_under_every_version_prefix(prefix, method, path, endpoint):
    assert streaming_request(method, prefix + path) == endpoint


@pytest.mark.parametrize("method, path", [
    ("GET", "/v1.40/containers/abc/json"), ("POST", "/v1.40/containers/create"),
    ("POST", "/v1.40/containers/abc/start"), ("GET", "/containers/abc/wait"),
    ("HEAD", "/_ping"), ("POST", "/v1.40/containers/abc/wait/x"),
    ("GET", "/v1.40x/events"),
])
def test_other_requests_are_not_streaming(method, path):
    assert streaming_request(method, path) is None


class SkippedPostHookTests(TestCase):

    def setUp(self):
        self.harness = ProxyHarness(self)
        self.daemon = self.harness.start_daemon(raw=True)
        self.harness.start_proxy(endpoints=ECHO_EVERYWHERE, adapters={"echo": "/echo"})
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def calls(self, kind):
        return [payload["ClientRequest"]["Request"] for _, payload in self.harness.adapter.calls
                if payload["Type"] == kind]

    def skipped_logs(self):
        return [e for e in self.events if "skipped" in e.get("log_format", "")]

    async def test_wait_headers_are_flushed_at_once_under_any_version(self):
        """A post-hook on POST /v1.40/containers/*/wait used to hang DOCKER_API_VERSION=1.40
        docker run: the CLI sends start only after wait's headers."""
        for n, version in enumerate(("v1.40", "v1.41", "v1.24")):
            peer = await self.harness.connect()
            peer.write(b"POST /%s/containers/abc/wait?condition=next-exit HTTP/1.1\r\n"
                       b"Host: d\r\nContent-Length: 0\r\n\r\n" % version.encode())
            conn = await self.daemon.connection(n)
            await conn.receive(b"\r\n\r\n")
            conn.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                       b"Transfer-Encoding: chunked\r\n\r\n")
            await peer.receive(b"200 OK")  # before the body, which comes at container exit
            status = b'{"StatusCode":0,"Error":null}'
            conn.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(status), status))
            await peer.receive(b"0\r\n\r\n")
        self.assertEqual(3, len(self.calls("pre-hook")))
        self.assertEqual([], self.calls("post-hook"))
        [logged] = self.skipped_logs()
        self.assertEqual("'POST /containers/{id}/wait'", logged["streaming"])

    async def test_post_hooks_still_run_on_ordinary_requests(self):
        peer = await self.harness.connect()
        peer.write(b"GET /v1.40/containers/json HTTP/1.1\r\nHost: d\r\n\r\n")
        conn = await self.daemon.connection()
        await conn.receive(b"\r\n\r\n")
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                   b"Content-Length: 2\r\n\r\n[]")
        await eventually(lambda: peer.received.endswith(b"[]"))
        self.assertEqual(200, split_response(peer.received)[0])
        self.assertEqual(["/v1.40/containers/json"], self.calls("post-hook"))
        self.assertEqual([], self.skipped_logs())

    async def test_an_upgrade_request_is_spliced_without_post_hooks(self):
        peer = await self.harness.connect()
        peer.write(b"POST /v1.40/containers/abc/attach/x?stream=1 HTTP/1.1\r\nHost: d\r\n"
                   b"Connection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n")
        conn = await self.daemon.connection()
        await conn.receive(b"\r\n\r\n")
        conn.write(b"HTTP/1.1 101 UPGRADED\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\nout")
        await peer.receive(b"out")
        peer.write(b"in")
        await conn.receive(b"in")
        self.assertEqual([], self.calls("post-hook"))
        [logged] = self.skipped_logs()
        self.assertEqual("Upgrade", logged["streaming"])

    async def test_a_stream_content_type_is_spliced_even_with_post_hooks(self):
        """A legacy hijack answers 200 with a raw stream; waiting for its end would hang."""
        peer = await self.harness.connect()
        peer.write(b"POST /v1.40/containers/abc/copy HTTP/1.1\r\nHost: d\r\n"
                   b"Content-Length: 0\r\n\r\n")
        conn = await self.daemon.connection()
        await conn.receive(b"\r\n\r\n")
        conn.write(b"HTTP/1.1 200 OK\r\n"
                   b"Content-Type: application/vnd.docker.raw-stream\r\n\r\nframes")
        await peer.receive(b"frames")
        self.assertEqual([], self.calls("post-hook"))
