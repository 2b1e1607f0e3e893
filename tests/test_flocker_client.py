"""The treq Flocker client against servers that misbehave on a real socket: one that
accepts and never answers, and the caller's own cancellation."""

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from powerstripflocker.clients.flocker import ControlServiceUnreachable
from powerstripflocker.clients.flocker_client import FlockerClient


class Silent(Protocol):
    """Reads the request and never answers, as a peer behind a cut link."""

    def dataReceived(self, data):
        pass


class SilentServerTests(TestCase):
    async def _client(self, timeout):
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(Silent))
        self.addCleanup(port.stopListening)
        client = FlockerClient(reactor, f"http://127.0.0.1:{port.getHost().port}",
                               timeout=timeout)
        self.addCleanup(client.http_client._agent._pool.closeCachedConnections)
        return client

    def test_no_answer_in_time_is_unreachable_not_a_cancellation(self):
        async def check():
            client = await self._client(timeout=0.3)
            with self.assertRaises(ControlServiceUnreachable) as raised:
                await client.list_nodes()
            self.assertIn("no answer within 0.3s", str(raised.exception))
        return Deferred.fromCoroutine(check())

    def test_the_callers_cancellation_stays_a_cancellation(self):
        async def check():
            client = await self._client(timeout=30)
            waiting = client.list_nodes()
            await deferLater(reactor, 0.2, lambda: None)
            waiting.cancel()
            with self.assertRaises(CancelledError):
                await waiting
        return Deferred.fromCoroutine(check())
