"""A chunked request body whose chunk bytes go from the socket to a ProcessSink by
splice(2), its framing read through twisted.web."""

from twisted.internet import main
from twisted.web import http

from powerstripflocker.agent.streams.kernel import SPLICE, SPLICE_FLAGS, spliceable

FRAMING_READ = 64               # a read for a chunk size line: little of the body with it
MAX_SIZE_LINE = 1024            # twisted.web's limit on a chunk size line, kept


def splice_request_body(request):
    """Decode request's chunked body with a SplicedChunkedDecoder when it comes over
    plain TCP; True when installed. Call from gotLength, before any body byte."""
    channel = request.channel
    transport = channel.transport
    if not (isinstance(getattr(channel, "_transferDecoder", None),
                       http._ChunkedTransferDecoder) and spliceable(transport)):
        return False
    channel._transferDecoder = SplicedChunkedDecoder(request)
    return True


class SplicedChunkedDecoder:
    """A chunked request body whose chunk bytes go from the socket to the request's
    content by splice(2) whenever the content offers a target (ProcessSink), and through
    twisted.web otherwise.

    It stands in for twisted.web's _ChunkedTransferDecoder (the same checks: size line
    length and digits, CRLF after each chunk, trailer size) and takes over the
    connection's doRead until the last chunk: while a chunk's bytes are due it splices
    them; size lines, CRLFs and trailers are read in FRAMING_READ pieces through the
    channel, which hands them to dataReceived here.
    """

    def __init__(self, request):
        self.request = request
        self.channel = request.channel
        self.transport = request.channel.transport
        self.socket_fd = self.transport.socket.fileno()
        self.state = "SIZE"
        self.length = 0               # bytes of the current chunk still due
        self.buffer = b""
        self.trailer_bytes = 0
        self.spliced = 0
        self.read_size = self.transport.bufferSize
        self.transport.doRead = self.doRead

    def _restore(self):
        self.transport.__dict__.pop("doRead", None)
        self.transport.bufferSize = self.read_size

    def doRead(self):
        """The connection's doRead while the body comes."""
        target = None
        if self.state == "BODY":
            offer = getattr(self.request.content, "splice_target", None)
            target = offer() if offer is not None else None
        if target is None:
            self.transport.bufferSize = FRAMING_READ if self.state != "BODY" else \
                self.read_size
            return type(self.transport).doRead(self.transport)
        fd, limit = target
        try:
            moved = SPLICE(self.socket_fd, fd, min(self.length, limit), flags=SPLICE_FLAGS)
        except BlockingIOError:
            self.request.content.stdin_full()
            return None
        except OSError:
            return main.CONNECTION_LOST
        if not moved:
            return main.CONNECTION_DONE
        self.channel.resetTimeout()
        self.length -= moved
        self.spliced += moved
        if not self.length:
            self.state = "CRLF"
        self.request.content.spliced(moved)
        return None

    def dataReceived(self, data):
        self.buffer += data
        while self.buffer and self.state != "FINISHED":
            if not getattr(self, "_" + self.state)():
                break

    def _SIZE(self):
        end = self.buffer.find(b"\r\n")
        if end == -1:
            if len(self.buffer) > MAX_SIZE_LINE:
                raise http._MalformedChunkedDataError("chunk size line too long")
            return False
        line, self.buffer = self.buffer[:end], self.buffer[end + 2:]
        size = line.split(b";", 1)[0].strip()
        if not size or size.lstrip(b"0123456789abcdefABCDEF"):
            raise http._MalformedChunkedDataError("chunk size is not hexadecimal")
        self.length = int(size, 16)
        self.state = "BODY" if self.length else "TRAILER"
        return True

    def _BODY(self):
        data, self.buffer = self.buffer[:self.length], self.buffer[self.length:]
        self.length -= len(data)
        if not self.length:
            self.state = "CRLF"
        self.request.handleContentChunk(data)
        return True

    def _CRLF(self):
        if len(self.buffer) < 2:
            return False
        if self.buffer[:2] != b"\r\n":
            raise http._MalformedChunkedDataError("chunk did not end with CRLF")
        self.buffer = self.buffer[2:]
        self.state = "SIZE"
        return True

    def _TRAILER(self):
        end = self.buffer.find(b"\r\n")
        if end == -1:
            if self.trailer_bytes + len(self.buffer) > 2 ** 16:
                raise http._MalformedChunkedDataError("trailer too long")
            return False
        line, self.buffer = self.buffer[:end], self.buffer[end + 2:]
        self.trailer_bytes += len(line) + 2
        if line:
            return True
        self.state = "FINISHED"
        self._restore()
        rest, self.buffer = self.buffer, b""
        self.channel._finishRequestBody(rest)
        return False

