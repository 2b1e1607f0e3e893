"""Flow control between the proxy's two connections.

Each connection reads while no reason to pause it remains (backpressure from
the other side's write buffer, a request waiting for hooks or for the daemon
connection, a pipelined request behind the current one, bytes after an
Upgrade request). Nothing is buffered beyond the kernel and Twisted's write
buffers.
"""

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer


class Flow:
    """Pauses reading from a transport while any reason to pause remains."""

    __slots__ = ("transport", "reasons")

    def __init__(self, transport):
        self.transport = transport
        self.reasons = set()

    def pause(self, reason):
        if not self.reasons:
            self.transport.pauseProducing()
        self.reasons.add(reason)

    def resume(self, reason):
        if reason in self.reasons:
            self.reasons.discard(reason)
            if not self.reasons:
                self.transport.resumeProducing()


@implementer(IPushProducer)
class Backpressure:
    """Registered on one transport: when its write buffer fills, stop reading the other.

    pause and resume take a reason; they pause and resume the other side's Flow.
    """

    __slots__ = ("pause", "resume")

    def __init__(self, pause, resume):
        self.pause, self.resume = pause, resume

    def pauseProducing(self):
        self.pause("backpressure")

    def resumeProducing(self):
        self.resume("backpressure")

    def stopProducing(self):
        pass
