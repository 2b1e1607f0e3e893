"""Reading a transport while no reason to pause it remains: the one way the proxy's
connections and the agent's receiving streams pause the network."""


class Flow:
    """Pauses reading from a transport while any reason to pause remains."""

    __slots__ = ("transport", "reasons")

    def __init__(self, transport):
        self.transport = transport
        self.reasons = set()

    @property
    def held(self):
        """Whether the transport stays paused (a resume of it would be wrong)."""
        return bool(self.reasons)

    def pause(self, reason):
        if not self.reasons:
            self.transport.pauseProducing()
        self.reasons.add(reason)

    def resume(self, reason):
        if reason in self.reasons:
            self.reasons.discard(reason)
            if not self.reasons:
                self.transport.resumeProducing()

    def resume_all(self):
        if self.reasons:
            self.reasons.clear()
            self.transport.resumeProducing()
