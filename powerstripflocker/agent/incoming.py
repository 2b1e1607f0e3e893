"""A push's body streamed as it arrives (agent <-> agent protocol, peer.py): twisted.web
would buffer a request body before calling the resource, so PushRequest swaps its content
for IncomingPush as soon as the headers are in (gotLength); IncomingPush asks the receiver
whether to take it, then hands the body to a ProcessSink (or, refused, to a DiscardSink).
On plain TCP the chunks' bytes go socket -> pipe by splice(2) (streams/chunked.py)."""

import inspect
import math
import re
from urllib.parse import parse_qs

from twisted.internet import defer
from twisted.logger import Logger

from powerstripflocker.agent.receiver import Refused
from powerstripflocker.agent.streams.chunked import splice_request_body
from powerstripflocker.agent.streams.processes import failure_cause
from powerstripflocker.agent.streams.receiving import DiscardSink
from powerstripflocker.protocol.ids import UUID_PATTERN, canonical_uuid
from powerstripflocker.serving.listening import BoundedRequest

log = Logger()

PUSH_PATH = re.compile(rb"^/agent/v1/datasets/(" + UUID_PATTERN.encode() + rb")/push(\?.*)?$")
MAX_REFUSED_BODY = 1 << 20      # read at most this much of a refused push, then hang up


def peer_uuid(request):
    """The sending node's UUID from X-Powerstrip-Flocker-Node, or "unknown"."""
    name = request.getHeader(b"x-powerstrip-flocker-node") or b""
    return canonical_uuid(name.decode("latin-1")) or "unknown"


async def _maybe_await(value):
    if inspect.isawaitable(value):
        return await value
    return value


class IncomingPush:
    """One push being received: decide (async), stream into a subprocess, commit."""

    def __init__(self, receiver, request, dataset_id, params):
        self.receiver = receiver
        self.request = request
        self.dataset_id = dataset_id.lower()
        self.params = params
        self.transport = request.channel.transport
        self.buffer = []
        self.body_done = False
        self.lost = False
        self.refusal = None
        self.sink = None
        self.plan = None
        self.progress = None
        self.result = defer.Deferred()
        self.decided = defer.Deferred()
        request.content = self          # buffer the first bytes while deciding
        self.transport.pauseProducing()
        defer.ensureDeferred(self._decide())

    # file-like while undecided
    def write(self, data):
        self.buffer.append(data)

    def seek(self, *args):
        return 0

    def tell(self):
        return sum(len(chunk) for chunk in self.buffer)

    def read(self, *args):
        return b""

    def close(self):
        pass

    async def _decide(self):
        log.debug("push of {dataset_id} from {peer}: headers in, deciding",
                  dataset_id=self.dataset_id, peer=self.peer_name())
        try:
            generation = self.params.get("generation")
            self.plan = await self.receiver.accept_push(
                self.dataset_id, self.params.get("format", ""),
                self.params.get("parent") or None, self.params.get("snapshot") or None,
                int(generation) if generation and generation.isdigit() else None)
        except Refused as e:
            self.refusal = e
        except Exception as e:
            log.failure("deciding on a push of {dataset_id}", dataset_id=self.dataset_id)
            self.refusal = Refused(500, f"{type(e).__name__}: {e}")
        if self.lost:
            if self.plan is not None:
                await self._discard()
                self._finish_transfer(None)
            return
        if self.refusal is None:
            try:
                sink = self._start_receiving()
            except Exception as e:
                log.failure("starting the receive of {dataset_id}", dataset_id=self.dataset_id)
                self.refusal = Refused(500, f"{type(e).__name__}: {e}")
                if self.sink is not None:
                    self.sink.abort()
                    self.sink = None
                await self._discard()
                self._finish_transfer(None)
        if self.refusal is not None:
            log.warn("refused push of {dataset_id} from {peer}: {code} {reason}",
                     dataset_id=self.dataset_id, peer=self.peer_name(), code=self.refusal.code,
                     reason=self.refusal.description)
            sink = DiscardSink(limit=MAX_REFUSED_BODY,
                               on_exceeded=self.transport.abortConnection)
        for chunk in self.buffer:
            sink.write(chunk)
        self.buffer = []
        self.request.content = sink
        if not (self.sink is not None and self.sink.pauser.held):
            self.transport.resumeProducing()
        self.decided.callback(None)
        if self.body_done:
            await self._complete()

    def _start_receiving(self):
        size = self.params.get("size")
        self.sink, self.progress = self.receiver.open_sink(
            self.dataset_id, self.plan, self.peer_name(),
            int(size) if size and size.isdigit() else None, self.transport)
        log.info("receiving {dataset_id} from {peer} ({stream_format}, parent {parent}, "
                 "about {size} bytes)", dataset_id=self.dataset_id, peer=self.peer_name(),
                 stream_format=self.params.get("format"), parent=self.params.get("parent"),
                 size=self.params.get("size"))
        return self.sink

    def peer_name(self):
        return peer_uuid(self.request)

    def body_received(self):
        """The whole body arrived (twisted.web is about to render the request)."""
        self.body_done = True
        if self.decided.called:
            defer.ensureDeferred(self._complete())
        return self.result

    async def _complete(self):
        if self.refusal is not None:
            self.result.callback((self.refusal.code, {"description": self.refusal.description}))
            return
        self.sink.close_input()
        try:
            await self.sink.finished
            received = await _maybe_await(self.plan.commit())
        except Exception as e:
            log.error("receive of {dataset_id} from {peer} failed: {error}",
                      dataset_id=self.dataset_id, peer=self.peer_name(), error=e)
            await self._discard()
            self._finish_transfer("failed")
            # The sender reports this text as the move's error: the cause and where.
            self.result.callback((500, {"description": f"{failure_cause(e)} on "
                                                       f"{self.receiver.address}"}))
            return
        seconds = self.progress.seconds()
        log.info("received {dataset_id} from {peer}: {bytes} bytes in {seconds:.2f}s "
                 "({rate_mb:.1f} MB/s)", dataset_id=self.dataset_id, peer=self.peer_name(),
                 bytes=self.sink.bytes, seconds=seconds,
                 rate_mb=self.sink.bytes / max(seconds, 1e-6) / 1e6)
        self._finish_transfer("received", received=received)
        self.result.callback((200, {"dataset_id": self.dataset_id, "received": received,
                                    "bytes": self.sink.bytes}))

    def connection_lost(self):
        if self.body_done:
            return
        self.lost = True
        if self.sink is not None:
            log.warn("push of {dataset_id} from {peer} interrupted after {bytes} bytes",
                     dataset_id=self.dataset_id, peer=self.peer_name(), bytes=self.sink.bytes)
            self.sink.abort()
            d = defer.ensureDeferred(self._discard())
            d.addBoth(lambda _: self._finish_transfer("interrupted"))

    async def _discard(self):
        try:
            await _maybe_await(self.plan.discard())
        except Exception:
            log.failure("discarding a partial receive of {dataset_id}",
                        dataset_id=self.dataset_id)

    def _finish_transfer(self, result, received=None):
        self.receiver.receive_ended(
            self.dataset_id, self.progress if result is not None else None, result,
            {"format": self.params.get("format"), "parent": self.params.get("parent"),
             "snapshot": received})


class PushRequest(BoundedRequest):
    """A Request that streams PUT .../push bodies (of any size) instead of buffering
    them; every other body is bounded."""

    incoming = None

    def body_limit(self):
        return math.inf if self.incoming is not None else super().body_limit()

    def gotLength(self, length):
        command = getattr(self.channel, "_command", b"")
        path = getattr(self.channel, "_path", b"")
        match = PUSH_PATH.match(path) if command == b"PUT" else None
        receiver = getattr(self.channel.site, "receiver", None)
        if match is None or receiver is None:
            return super().gotLength(length)
        refused = self.channel.site.check_head(self)
        if refused is not None:
            return super().gotLength(length)   # answers the refusal, reads nothing
        query = (match.group(2) or b"?")[1:].decode("latin-1")
        params = {k: v[-1] for k, v in parse_qs(query).items()}
        self.incoming = IncomingPush(receiver, self, match.group(1).decode(), params)
        splice_request_body(self)

    def handleContentChunk(self, data):
        if self.incoming is not None:
            self.content.write(data)    # the push's buffer, then its sink
            return
        super().handleContentChunk(data)

    def connectionLost(self, reason):
        if self.incoming is not None:
            self.incoming.connection_lost()
        return super().connectionLost(reason)
