"""What the agent <-> agent protocol (peer.py) needs of the agent: the receiving side
of a move, IReceiver (the Mover provides it), and how it turns a request down."""

from zope.interface import Attribute, Interface


class Refused(Exception):
    """A peer request we turn down: HTTP code and a description."""

    def __init__(self, code, description):
        super().__init__(description)
        self.code = code
        self.description = description


class IReceiver(Interface):
    """What the agent <-> agent protocol needs of the agent: the receiving side of a
    move. Refusals are Refused(code, description)."""

    address = Attribute("this node's address, named in the errors it reports")

    def describe(dataset_id):
        """(async) What the snapshots endpoint answers for dataset_id."""

    def accept_push(dataset_id, stream_format, parent, snapshot, generation):
        """(async) The backend's ReceivePlan for a push, dataset_id held busy until
        receive_ended; raise Refused unless dataset_id is to be received here now."""

    def open_sink(dataset_id, plan, peer, total, transport):
        """(sink, progress): the ProcessSink a push's body goes to (pausing transport
        while it is full) and the Progress counting it."""

    def receive_ended(dataset_id, progress, result, details):
        """A push accepted by accept_push is over (progress None: nothing was received);
        result "received", "failed" or "interrupted"."""

    def acquire(dataset_id, received, maximum_size, peer, generation=None):
        """(async) Make the received copy primary here: {"dataset_id", "path"}."""
