"""A client has HEAD_TIMEOUT seconds to send a whole request head, or is dropped.

Without it a client that connects and then sends nothing, or a byte now and
then (slowloris), holds a connection and its daemon connection for ever. The
clock runs from the moment a client connects and, on a kept-alive connection,
from the first byte of each later head. An idle kept-alive connection between
requests is not timed: the docker CLI keeps such connections in its pool.
"""

HEAD_TIMEOUT = 10.0


class HeadDeadline:
    """Calls expired() when started and not stopped within seconds (on clock, an IReactorTime)."""

    __slots__ = ("clock", "seconds", "expired", "call")

    def __init__(self, clock, seconds, expired):
        self.clock, self.seconds, self.expired = clock, seconds, expired
        self.call = None

    def start(self):
        """Start the clock, unless it is running already."""
        if self.call is None:
            self.call = self.clock.callLater(self.seconds, self._expire)

    def stop(self):
        if self.call is not None:
            self.call.cancel()
            self.call = None

    def _expire(self):
        self.call = None
        self.expired()
