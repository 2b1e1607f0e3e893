"""Real servers and clients on loopback for the proxy's conformance tests.

RawServer is a fake Docker daemon that records every byte it gets and lets a
test answer byte for byte (101s, chunked streams, half-close). RawClient is
the same on the client side. Both run in the trial reactor next to the proxy.
"""

import json

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.web import resource, server
from zope.interface import implementer

from powerstripflocker.powerstrip.config import parse_configuration
from powerstripflocker.powerstrip.hooks import HookCaller
from powerstripflocker.powerstrip.proxy import ProxyFactory

from .adapters import site as adapter_site


async def eventually(predicate, timeout=5.0, what="condition"):
    """Let the reactor run until predicate() is true; fail after timeout seconds."""
    waited = 0.0
    while not predicate():
        if waited > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        d = defer.Deferred()
        reactor.callLater(0.01, d.callback, None)
        await d
        waited += 0.01


async def sleep(seconds):
    d = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    await d


@implementer(IHalfCloseableProtocol)
class RawPeer(Protocol):
    """Records what arrives and whether the peer half-closed or closed."""

    def __init__(self):
        self._received = bytearray()
        self.eof = False          # the other side will send nothing more
        self.closed = False       # the connection is gone both ways
        self.write_closed = False

    def readConnectionLost(self):
        self.eof = True
        if self.write_closed:
            self.transport.loseConnection()

    @property
    def received(self):
        return bytes(self._received)

    def dataReceived(self, data):
        self._received += data

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        self.eof = True
        self.closed = True

    def write(self, data):
        self.transport.write(data)

    def half_close(self):
        self.write_closed = True
        self.transport.loseWriteConnection()

    def close(self):
        self.transport.loseConnection()

    async def receive(self, marker, timeout=5.0):
        await eventually(lambda: marker in self.received, timeout,
                         what=f"{marker!r} in {self.received[-300:]!r}")


class RawServer(Factory):
    """A fake daemon: every connection is a RawPeer the test drives."""

    def __init__(self):
        self.connections = []

    def buildProtocol(self, addr):
        peer = RawPeer()
        self.connections.append(peer)
        return peer

    async def connection(self, index=0):
        await eventually(lambda: len(self.connections) > index, what="a daemon connection")
        return self.connections[index]


class FakeDocker(resource.Resource):
    """A fake daemon on twisted.web (an HTTP server independent of the proxy's code)."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.requests = []  # (method, uri, headers dict, body bytes)

    def render(self, request):
        body = request.content.read()
        headers = {k.decode().lower(): b", ".join(v).decode()
                   for k, v in request.requestHeaders.getAllRawHeaders()}
        self.requests.append((request.method.decode(), request.uri.decode(), headers, body))
        path = request.path.decode()
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Api-Version", b"1.41")
        if path.endswith("/towel"):
            document = json.loads(body)
            document["SeenByFakeDocker"] = 42
            return json.dumps(document).encode()
        if path.endswith("/fail"):
            request.setResponseCode(500)
            return json.dumps({"message": "daemon says no", "Number": 1}).encode()
        if path == "/_ping":
            request.setHeader(b"Content-Type", b"text/plain")
            request.setHeader(b"Ostype", b"linux")
            return b"OK"
        return json.dumps({"method": request.method.decode(), "uri": request.uri.decode(),
                           "body": body.decode("latin-1"), "Number": 1}).encode()


class RawClient:
    """Opens raw connections to the proxy."""

    def __init__(self, port):
        self.port = port

    async def connect(self):
        peer = RawPeer()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        await endpoint.connect(Factory.forProtocol(lambda: peer))
        return peer


def split_response(data):
    """(status code, headers dict lower-case, body) of one whole response with Content-Length."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    code = int(lines[0].split(b" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode()] = value.strip().decode()
    if "content-length" in headers:
        body = body[:int(headers["content-length"])]
    return code, headers, body


class ProxyHarness:
    """A proxy on loopback in front of a daemon, with the test adapters.

    fast_path=False: the proxy relays every byte through Twisted's plain relay.
    """

    def __init__(self, testcase, fast_path=True):
        self.testcase = testcase
        self.fast_path = fast_path
        self.adapter, adapter_factory = adapter_site()
        self.adapter_port = reactor.listenTCP(0, adapter_factory, interface="127.0.0.1")
        testcase.addCleanup(self.adapter_port.stopListening)
        self.adapter_url = f"http://127.0.0.1:{self.adapter_port.getHost().port}"

    def start_daemon(self, raw=False):
        if raw:
            self.daemon = RawServer()
            factory = self.daemon
        else:
            self.daemon = FakeDocker()
            factory = server.Site(self.daemon)
            factory.connections = 0
            build = factory.buildProtocol

            def counting(addr):
                factory.connections += 1
                return build(addr)
            factory.buildProtocol = counting
        self.daemon_factory = factory
        if raw:
            self.testcase.addCleanup(self._close_daemon_connections)
        self.daemon_port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.testcase.addCleanup(self.daemon_port.stopListening)
        return self.daemon

    def start_proxy(self, endpoints=None, adapters=None, docker_port=None, timeout=5.0,
                    max_body=1024 * 1024, clock=None):
        """clock, when given, times the proxy's request-head deadline (a task.Clock)."""
        adapters = adapters or {}
        config = {"version": 1, "endpoints": endpoints or {}, "adapters": {
            name: (self.adapter_url + url if url.startswith("/") else url)
            for name, url in adapters.items()
        }}
        configuration = parse_configuration(json.dumps(config))
        self.hooks = HookCaller(reactor, configuration.adapters, timeout=timeout)
        self.testcase.addCleanup(self.hooks.close)
        if docker_port is None:
            docker_port = self.daemon_port.getHost().port
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", docker_port)
        self.factory = ProxyFactory(clock or reactor, configuration, self.hooks, endpoint,
                                    f"tcp://127.0.0.1:{docker_port}", max_body=max_body,
                                    fast_path=self.fast_path)
        self.proxy_port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.testcase.addCleanup(self.proxy_port.stopListening)
        self.client = RawClient(self.proxy_port.getHost().port)
        return self.factory

    async def _close_daemon_connections(self):
        for peer in self.daemon.connections:
            if not peer.closed:
                peer.transport.abortConnection()
        await eventually(lambda: all(p.closed for p in self.daemon.connections))
        await sleep(0.02)

    async def connect(self):
        peer = await self.client.connect()
        self.testcase.addCleanup(self._close, peer)
        return peer

    async def _close(self, peer):
        if not peer.closed:
            peer.transport.abortConnection()
            await eventually(lambda: peer.closed)
        # let the proxy close its side to the daemon too
        await sleep(0.02)

    async def request(self, method, path, body=None, headers=(), content_type=None):
        """One whole request on a new connection; returns (code, headers, body, peer)."""
        peer = await self.connect()
        lines = [f"{method} {path} HTTP/1.1", "Host: docker"]
        if content_type:
            lines.append(f"Content-Type: {content_type}")
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        lines.extend(headers)
        peer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))
        await eventually(lambda: _complete(peer), what="a whole response")
        code, response_headers, response_body = split_response(peer.received)
        return code, response_headers, response_body, peer


def _complete(peer):
    data = peer.received
    if b"\r\n\r\n" not in data:
        return False
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return peer.eof
