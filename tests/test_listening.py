"""The bounded Site and Request every listener but the proxy serves with, on a Clock and
a StringTransport: refusals from the head, bodies in memory, the head deadline."""

import io
import json

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource

from powerstripflocker.serving.credentials import Refusal
from powerstripflocker.serving.listening import (
    LISTEN_BACKLOG, BoundedRequest, BoundedSite, with_backlog,
)
from powerstripflocker.serving.head_deadline import HEAD_TIMEOUT


class Echo(Resource):
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.bodies = []

    def render(self, request):
        self.bodies.append(request.content)
        return b"ok:" + request.content.read()


def connect(site):
    channel = site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport


def refused_body(transport):
    head, _, body = transport.value().partition(b"\r\n\r\n")
    return head, json.loads(body)


class BoundsTests(TestCase):

    def setUp(self):
        self.clock = Clock()
        self.resource = Echo()
        self.site = BoundedSite(self.resource, 1000, reactor=self.clock)

    def test_a_body_over_the_limit_is_refused_from_its_content_length(self):
        channel, transport = connect(self.site)
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n")
        head, body = refused_body(transport)
        self.assertTrue(head.startswith(b"HTTP/1.1 413 "))
        self.assertIn(b"Connection: close", head)
        self.assertEqual(body, {"description": "the request body is larger than 1000 bytes"})
        self.assertTrue(transport.disconnecting)
        channel.dataReceived(b"x" * 1001)
        self.assertEqual(self.resource.bodies, [])

    def test_a_chunked_body_is_refused_once_past_the_limit(self):
        channel, transport = connect(self.site)
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        channel.dataReceived(b"258\r\n" + b"x" * 600 + b"\r\n")
        self.assertEqual(transport.value(), b"")
        channel.dataReceived(b"258\r\n" + b"x" * 600 + b"\r\n0\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "))
        self.assertEqual(self.resource.bodies, [])

    def test_a_body_within_the_limit_is_served_from_memory(self):
        site = BoundedSite(self.resource, 1 << 20, reactor=self.clock)
        channel, transport = connect(site)
        body = b"y" * (200 * 1024)  # twisted.web spools bodies over 100 KiB to /tmp
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                             % len(body) + body)
        [content] = self.resource.bodies
        self.assertIsInstance(content, io.BytesIO)
        self.assertIn(b"ok:" + body, transport.value())

    def test_a_refusal_speaks_the_listeners_dialect(self):
        site = BoundedSite(self.resource, 10, reactor=self.clock,
                           error_document=lambda message: {"Err": message})
        channel, transport = connect(site)
        channel.dataReceived(b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n")
        self.assertEqual(refused_body(transport)[1],
                         {"Err": "the request body is larger than 10 bytes"})

    def test_an_unauthorised_head_is_refused_before_its_body_is_read(self):
        seen = []

        def authorise(request):
            seen.append((request.head_method(), request.head_path(),
                         request.requestHeaders.getRawHeaders(b"authorization")))
            return Refusal(401, "no credentials", [(b"WWW-Authenticate", b"Bearer")])

        site = BoundedSite(self.resource, 1 << 30, authorise=authorise, reactor=self.clock)
        channel, transport = connect(site)
        channel.dataReceived(b"PUT /a/b?c=d HTTP/1.1\r\nAuthorization: x\r\n"
                             b"Expect: 100-continue\r\nContent-Length: 1073741824\r\n\r\n")
        self.assertEqual(seen, [(b"PUT", b"/a/b", [b"x"])])
        head, body = refused_body(transport)
        self.assertTrue(head.startswith(b"HTTP/1.1 401 "))
        self.assertIn(b"WWW-Authenticate: Bearer", head)
        self.assertNotIn(b"100 Continue", transport.value())
        self.assertEqual(body, {"description": "no credentials"})
        self.assertTrue(transport.disconnecting)

    def test_a_request_subclass_may_lift_the_limit(self):
        class Unbounded(BoundedRequest):
            def body_limit(self):
                return float("inf")

        site = BoundedSite(self.resource, 10, requestFactory=Unbounded, reactor=self.clock)
        channel, transport = connect(site)
        channel.dataReceived(b"POST / HTTP/1.1\r\nContent-Length: 20\r\n\r\n" + b"z" * 20)
        self.assertIn(b"ok:" + b"z" * 20, transport.value())


class HeadDeadlineTests(TestCase):

    def setUp(self):
        self.clock = Clock()
        self.site = BoundedSite(Echo(), 1000, reactor=self.clock)

    def test_a_client_that_sends_nothing_is_dropped(self):
        channel, transport = connect(self.site)
        self.clock.advance(HEAD_TIMEOUT - 0.1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(transport.disconnecting)

    def test_a_trickling_head_does_not_reset_the_clock(self):
        channel, transport = connect(self.site)
        for byte in b"GET / HTTP/1.1\r\nHost":
            channel.dataReceived(bytes([byte]))
            self.clock.advance(0.6)  # 20 bytes: 12 s
        self.assertTrue(transport.disconnecting)

    def test_a_complete_head_stops_it_and_the_next_head_starts_it_again(self):
        channel, transport = connect(self.site)
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"ok:", transport.value())
        self.clock.advance(HEAD_TIMEOUT * 3)   # idle between requests: not timed here
        self.assertFalse(transport.disconnecting)
        channel.dataReceived(b"GET / HTTP/1.1\r\n")
        self.clock.advance(HEAD_TIMEOUT + 0.1)
        self.assertTrue(transport.disconnecting)


class BacklogTests(TestCase):

    def test_endpoints_get_the_backlog_unless_they_name_one(self):
        self.assertEqual(with_backlog("tcp:4523:interface=127.0.0.1"),
                         f"tcp:4523:interface=127.0.0.1:backlog={LISTEN_BACKLOG}")
        self.assertEqual(with_backlog("unix:/run/x.sock"),
                         f"unix:/run/x.sock:backlog={LISTEN_BACKLOG}")
        self.assertEqual(with_backlog("tcp:1:backlog=5"), "tcp:1:backlog=5")
        self.assertEqual(with_backlog("systemd:domain=INET:index=0"),
                         "systemd:domain=INET:index=0")
