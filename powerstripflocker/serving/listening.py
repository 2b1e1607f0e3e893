"""Bounded HTTP listeners: the twisted.web Site and Request that the adapter, the
volume plugin, the agent's peer listener and the control service serve with.

What a client may cost each of them is bounded before anything is read:

* a body over the site's limit is answered 413 from its Content-Length alone, and a
  chunked one as soon as it passes the limit; the connection is closed, so the rest
  is never read;
* a body is kept in memory, never spooled to a temporary file (twisted.web writes
  bodies over 100 KiB to /tmp), since it is at most the limit;
* credentials (when the site asks for them) are checked from the head, so a client
  without them is refused before one byte of its body is read;
* a client has HEAD_TIMEOUT seconds to send each request head, or is dropped;
* listen backlogs are LISTEN_BACKLOG, so a burst of connections is not refused.
"""

import io
import json

from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.web import http, server

from powerstripflocker.serving.credentials import Refusal
from powerstripflocker.serving.head_deadline import HEAD_TIMEOUT, HeadDeadline

LISTEN_BACKLOG = 512
_BACKLOG_KINDS = ("tcp", "tcp6", "ssl", "unix")

log = Logger()


def description_document(description):
    """The error body of the Flocker API and the agent protocol."""
    return {"description": description}


def with_backlog(description):
    """A Twisted server endpoint description with backlog=LISTEN_BACKLOG unless it
    names a backlog of its own."""
    kind = description.split(":", 1)[0]
    if kind not in _BACKLOG_KINDS or ":backlog=" in description:
        return description
    return f"{description}:backlog={LISTEN_BACKLOG}"


def server_endpoint(reactor, description):
    return serverFromString(reactor, with_backlog(description))


def _raw_response(code, document, headers):
    body = json.dumps(document).encode("utf-8") + b"\n"
    lines = [b"HTTP/1.1 %d %s" % (code, http.RESPONSES.get(code, b"Refused")),
             b"Content-Type: application/json",
             b"Content-Length: %d" % len(body),
             b"Connection: close"]
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class BoundedRequest(server.Request):
    """A Request whose body is held in memory up to the site's limit, and which is
    refused from its head (credentials, Content-Length) when the site says so."""

    refused = False
    body_bytes = 0

    def head_path(self):
        """The request target's path, known once the head is in (before self.path)."""
        return getattr(self.channel, "_path", b"").split(b"?", 1)[0]

    def head_method(self):
        return getattr(self.channel, "_command", b"")

    def body_limit(self):
        return self.channel.site.max_body

    def gotLength(self, length):
        self.content = io.BytesIO()
        answer = self.channel.site.check_head(self)
        if answer is None and length is not None and length > self.body_limit():
            answer = self.too_large()
        if answer is not None:
            self.refuse(answer)

    def too_large(self):
        return Refusal(413, f"the request body is larger than {self.body_limit()} bytes")

    def handleContentChunk(self, data):
        if self.refused:
            return
        self.body_bytes += len(data)
        if self.body_bytes > self.body_limit():
            self.refuse(self.too_large())
            return
        self.content.write(data)

    def requestReceived(self, command, path, version):
        if self.refused:
            return  # answered already; the connection is closing
        super().requestReceived(command, path, version)

    def refuse(self, answer):
        """Answer now, from the head (and what was read of the body), and close the
        connection without reading on."""
        self.refused = True
        channel = self.channel
        channel.refused = True
        log.info("refused {method} {path} and closed the connection unread: {code} "
                 "{description}",
                 method=self.head_method().decode("latin-1"),
                 path=self.head_path().decode("latin-1"), code=answer.code,
                 description=answer.description)
        channel.transport.write(_raw_response(
            answer.code, channel.site.error_document(answer.description), answer.headers))
        channel.loseConnection()


class BoundedChannel(http.HTTPChannel):
    """An HTTPChannel that drops a client whose request head takes longer than
    HEAD_TIMEOUT (counted from the connection or from the first byte of a later head;
    an idle kept-alive connection is left to the site's idle timeout), and reads
    nothing more once a request was refused."""

    refused = False
    head_timeout = HEAD_TIMEOUT

    def connectionMade(self):
        super().connectionMade()
        self._awaiting_head = True
        # The factory gives every channel its reactor's callLater.
        self._head_deadline = HeadDeadline(self, self.head_timeout, self._head_expired)
        self._head_deadline.start()

    def dataReceived(self, data):
        if self.refused:
            return
        if self._awaiting_head:
            self._head_deadline.start()
        super().dataReceived(data)

    def rawDataReceived(self, data):
        if self.refused:
            return
        super().rawDataReceived(data)

    def allHeadersReceived(self):
        self._awaiting_head = False
        self._head_deadline.stop()
        super().allHeadersReceived()

    def _send100Continue(self):
        if not self.refused:
            super()._send100Continue()

    def _respondToBadRequestAndDisconnect(self):
        if not self.refused:
            super()._respondToBadRequestAndDisconnect()

    def requestDone(self, request):
        self._awaiting_head = True
        if self._dataBuffer:
            self._head_deadline.start()  # the start of a pipelined head is in already
        super().requestDone(request)

    def connectionLost(self, reason):
        self._head_deadline.stop()
        super().connectionLost(reason)

    def _head_expired(self):
        log.info("dropped {peer}: no complete request head within {seconds:g}s",
                 peer=str(self.transport.getPeer()), seconds=self.head_timeout)
        self.transport.abortConnection()


class BoundedSite(server.Site):
    """A Site of BoundedChannels and BoundedRequests (or a subclass of it given as
    requestFactory).

    max_body: the largest body a request may have. error_document(description): the
    JSON body of a refusal, in the listener's dialect. authorise(request): None to
    serve the request, or the Refusal to answer with, decided from the head alone.
    """

    protocol = BoundedChannel

    def __init__(self, resource, max_body, error_document=description_document,
                 authorise=None, requestFactory=BoundedRequest, **kwargs):
        super().__init__(resource, requestFactory=requestFactory, **kwargs)
        self.max_body = max_body
        self.error_document = error_document
        self.authorise = authorise
        self.displayTracebacks = False

    def check_head(self, request):
        return None if self.authorise is None else self.authorise(request)
