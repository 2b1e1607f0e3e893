"""Flow control between the proxy's two connections.

Each connection reads while no reason to pause its serving.flow.Flow remains
(backpressure from the other side's write buffer, a request waiting for hooks or
for the daemon connection, a pipelined request behind the current one, bytes
after an Upgrade request). Nothing is buffered beyond the kernel and Twisted's write
buffers.
"""

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer


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
