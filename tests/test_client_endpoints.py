"""How the shared HTTP client connects (clients/http.py), on real sockets on loopback: an IP
address directly, so a refused connection is reported at once (a HostnameEndpoint reports
it only at its next attempt, 0.3 s later, which every failover to the next control replica
or etcd member paid); a name through HostnameEndpoint; https over either with the same
certificate checks as before."""

import tempfile

import pytest
from twisted.internet import error as neterror
from twisted.internet import reactor, ssl
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint, SSL4ServerEndpoint, TCP4ClientEndpoint, TCP4ServerEndpoint,
    TCP6ClientEndpoint,
)
from twisted.protocols.policies import WrappingFactory
from twisted.trial.unittest import TestCase
from twisted.web import resource, server
from twisted.web.client import URI, BrowserLikePolicyForHTTPS, ResponseNeverReceived

from powerstripflocker.clients.http import (
    Replicas, _EndpointFactory, connection_pool, http_client, tls_policy, within,
)

from .support.etcd import make_certificates

# Generous: a refused connection on loopback fails within milliseconds.
DEADLINE = 10.0


class RecordingPolicy:
    """An IPolicyForHTTPS that records what it is asked for."""

    def __init__(self):
        self.asked = []

    def creatorForNetloc(self, hostname, port):
        self.asked.append((hostname, port))
        return BrowserLikePolicyForHTTPS().creatorForNetloc(hostname, port)


@pytest.mark.parametrize("url, endpoint_type", [
    (b"http://127.0.0.1:4523/v1", TCP4ClientEndpoint),
    (b"http://[::1]:4523/v1", TCP6ClientEndpoint),
    (b"http://localhost:4523/v1", HostnameEndpoint),
    (b"http://control.example:4523/v1", HostnameEndpoint),
    (b"http://127.1:4523/v1", HostnameEndpoint),
])
def test_ip_addresses_are_connected_to_directly_and_names_through_hostname_endpoint(
        url, endpoint_type):
    endpoint = _EndpointFactory(reactor, RecordingPolicy()).endpointForURI(URI.fromBytes(url))
    assert type(endpoint) is endpoint_type
    # The connect timeout is each endpoint's default, 30 s, as with Twisted's own factory.
    assert endpoint._timeout == 30


@pytest.mark.parametrize("url, endpoint_type, netloc", [
    (b"https://127.0.0.1:4523/v1", TCP4ClientEndpoint, (b"127.0.0.1", 4523)),
    (b"https://[::1]/v1", TCP6ClientEndpoint, (b"::1", 443)),
    (b"https://localhost:2379", HostnameEndpoint, (b"localhost", 2379)),
])
def test_https_is_tls_from_the_policy_over_the_same_endpoints(url, endpoint_type, netloc):
    policy = RecordingPolicy()
    endpoint = _EndpointFactory(reactor, policy).endpointForURI(URI.fromBytes(url))
    assert type(endpoint._wrappedEndpoint) is endpoint_type
    assert policy.asked == [netloc]


class RecordingReactor:
    """The real reactor, recording the delays of the calls scheduled through it: a
    HostnameEndpoint schedules its next attempt this way."""

    def __init__(self):
        self.delays = []

    def callLater(self, delay, *args, **kwargs):
        self.delays.append(delay)
        return reactor.callLater(delay, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(reactor, name)

    def attempt_pauses(self):
        """The short pauses scheduled (a HostnameEndpoint's is 0.3 s; a pool's idle
        timeout is minutes)."""
        return [delay for delay in self.delays if 0 < delay < 1]


class Hello(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"hello"


async def listen(factory):
    return await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)


async def closed_port():
    """A port on 127.0.0.1 that was listened on a moment ago and is closed now."""
    port = await listen(server.Site(Hello()))
    number = port.getHost().port
    await port.stopListening()
    return number


class RefusedConnectionTests(TestCase):

    async def test_a_refused_ip_address_fails_at_once_with_connection_refused(self):
        clock = RecordingReactor()
        http = http_client(clock, pool=connection_pool(clock, persistent=False))
        url = f"http://127.0.0.1:{await closed_port()}/v1/version"
        with self.assertRaises(neterror.ConnectionRefusedError):
            await within(http.get(url), DEADLINE, reactor)
        # No attempt was scheduled after a pause: the refusal itself failed the request.
        self.assertEqual(clock.attempt_pauses(), [])

    async def test_a_dead_first_replica_is_passed_over_for_the_live_second(self):
        clock = RecordingReactor()
        http = http_client(clock, pool=connection_pool(clock))
        # The first replica's connections are kept by a WrappingFactory, to be cut.
        first_site = WrappingFactory(server.Site(Hello()))
        first, second = await listen(first_site), await listen(server.Site(Hello()))
        self.addCleanup(second.stopListening)
        replicas = Replicas([f"http://127.0.0.1:{port.getHost().port}"
                             for port in (first, second)], reactor=reactor)
        self.addCleanup(http._agent._pool.closeCachedConnections)

        async def version(root):
            response = await http.get(root + "/v1/version")
            return response.code, await response.content()

        async def call():
            return await within(Deferred.fromCoroutine(replicas.call(version)), DEADLINE,
                                reactor)

        first_root = replicas.root
        self.assertEqual(await call(), (200, b"hello"))
        self.assertEqual(replicas.root, first_root)
        # The first replica dies with a connection kept alive in the client's pool.
        await first.stopListening()
        self.assertTrue(first_site.protocols)
        for connection in list(first_site.protocols):
            connection.transport.abortConnection()
        # Refused (after its kept-alive connection closed, perhaps unanswered first):
        # the second answers, with no pause between.
        self.assertEqual(await call(), (200, b"hello"))
        self.assertNotEqual(replicas.root, first_root)
        self.assertEqual(clock.attempt_pauses(), [])


class IPAddressTLSTests(TestCase):
    """https to an IP address goes through the direct endpoint and still checks the
    member's certificate: signed by the cluster CA, and naming that address."""

    @classmethod
    def setUpClass(cls):
        pytest.importorskip("cryptography")
        cls.paths = make_certificates(tempfile.mkdtemp(prefix="psf-endpoints-tls-"))
        cls.other = make_certificates(tempfile.mkdtemp(prefix="psf-endpoints-other-"))

    async def serve(self, interface="127.0.0.1"):
        """An https server with the certificate for 127.0.0.1 the cluster CA signed,
        asking for a client certificate signed by it; its URL as seen at interface."""
        with open(self.paths["server"], "rb") as cert, open(self.paths["server-key"],
                                                             "rb") as key:
            identity = ssl.PrivateCertificate.loadPEM(cert.read() + b"\n" + key.read())
        with open(self.paths["ca"], "rb") as ca:
            authority = ssl.Certificate.loadPEM(ca.read())
        options = identity.options(authority)
        port = await SSL4ServerEndpoint(reactor, 0, options, interface=interface).listen(
            server.Site(Hello()))
        self.addCleanup(port.stopListening)
        return f"https://{interface}:{port.getHost().port}/"

    def client(self, paths, clock=reactor):
        policy = tls_policy(paths["ca"], paths["client"], paths["client-key"])
        return http_client(clock, policy, connection_pool(clock, persistent=False))

    async def test_a_certificate_from_the_cluster_ca_for_the_address_is_trusted(self):
        clock = RecordingReactor()
        response = await within(self.client(self.paths, clock).get(await self.serve()),
                                DEADLINE, reactor)
        self.assertEqual(await response.content(), b"hello")
        # Connected directly: a HostnameEndpoint schedules its next attempt even when the
        # first one connects.
        self.assertEqual(clock.attempt_pauses(), [])

    async def test_a_certificate_for_another_address_is_refused(self):
        url = await self.serve("127.0.0.2")
        with self.assertRaises(ResponseNeverReceived) as raised:
            await within(self.client(self.paths).get(url), DEADLINE, reactor)
        self.assertIn("IPAddressMismatch", str(raised.exception.reasons[0].value))

    async def test_a_certificate_another_ca_signed_is_refused(self):
        url = await self.serve()
        with self.assertRaises(ResponseNeverReceived) as raised:
            await within(self.client(self.other).get(url), DEADLINE, reactor)
        self.assertIn("certificate verify failed", str(raised.exception.reasons[0].value))
