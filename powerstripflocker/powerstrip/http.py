"""The little HTTP/1.1 the proxy needs: message heads, body framing, chunked scanning.

The pass-through path relays bytes as they arrive. It only parses what it must
to know where one message ends and the next begins (Content-Length,
Transfer-Encoding: chunked, close-delimited responses, bodyless statuses).
"""

import json
from http.client import responses

MAX_HEAD = 64 * 1024
MAX_CHUNK_LINE = 4096


class ProtocolError(Exception):
    """The peer sent something that is not HTTP/1.x."""


class Head:
    """One parsed message head: first line, raw header lines, a few headers by name."""

    __slots__ = ("first", "lines", "headers")

    def __init__(self, raw):
        lines = raw.split(b"\r\n")
        self.first = lines[0]
        self.lines = lines[1:]
        headers = {}
        for line in self.lines:
            name, colon, value = line.partition(b":")
            if not colon:
                raise ProtocolError(f"header line without a colon: {line[:80]!r}")
            name = name.strip().lower()
            value = value.strip()
            if name in headers:
                headers[name] += b", " + value
            else:
                headers[name] = value
        self.headers = headers

    def framing(self):
        """(kind, length): ("chunked", None), ("length", n) or ("none", None)."""
        headers = self.headers
        te = headers.get(b"transfer-encoding")
        if te is not None:
            if te.lower().rsplit(b",", 1)[-1].strip() == b"chunked":
                return "chunked", None
            raise ProtocolError(f"unsupported Transfer-Encoding {te!r}")
        cl = headers.get(b"content-length")
        if cl is not None:
            try:
                values = {int(v) for v in cl.split(b",")}
            except ValueError:
                raise ProtocolError(f"bad Content-Length {cl!r}")
            if len(values) != 1 or min(values) < 0:
                raise ProtocolError(f"bad Content-Length {cl!r}")
            return "length", values.pop()
        return "none", None

    def connection_tokens(self):
        value = self.headers.get(b"connection")
        if not value:
            return ()
        return tuple(t.strip().lower() for t in value.split(b","))

    def without(self, *names):
        """Header lines minus the named headers (lower-case bytes)."""
        return [
            line for line in self.lines
            if line.partition(b":")[0].strip().lower() not in names
        ]


def find_head_end(buffer):
    """Index just past the blank line ending a head, or -1."""
    end = buffer.find(b"\r\n\r\n")
    return -1 if end < 0 else end + 4


def media_type(value):
    if not value:
        return b""
    return value.split(b";", 1)[0].strip().lower()


class ChunkedScanner:
    """Follows a chunked body through a byte stream, optionally collecting its data.

    feed(data) returns the index in data just past the end of the body, or -1
    when the body goes on. The bytes themselves are left to the caller to relay
    unchanged; with collect=True the decoded data is kept in .parts.
    """

    __slots__ = ("state", "remaining", "line", "parts", "size")

    SIZE, DATA, TRAILER, DONE = range(4)

    def __init__(self, collect=False):
        self.state = self.SIZE
        self.remaining = 0
        self.line = b""
        self.parts = [] if collect else None
        self.size = 0

    def feed(self, data):
        i = 0
        n = len(data)
        while i < n:
            state = self.state
            if state == self.DATA:
                take = min(self.remaining, n - i)
                if self.parts is not None:
                    # the last two bytes of each chunk are its CRLF
                    data_left = self.remaining - 2
                    keep = min(take, max(data_left, 0))
                    if keep:
                        self.parts.append(data[i:i + keep])
                i += take
                self.remaining -= take
                if not self.remaining:
                    self.state = self.SIZE
                continue
            newline = data.find(b"\n", i)
            if newline < 0:
                self.line += data[i:]
                if len(self.line) > MAX_CHUNK_LINE:
                    raise ProtocolError("chunk size line too long")
                return -1
            line = self.line + data[i:newline]
            self.line = b""
            i = newline + 1
            if state == self.SIZE:
                text = line.split(b";", 1)[0].strip()
                try:
                    size = int(text, 16)
                except ValueError:
                    raise ProtocolError(f"bad chunk size {text[:40]!r}")
                if size < 0:
                    raise ProtocolError("negative chunk size")
                if size == 0:
                    self.state = self.TRAILER
                else:
                    self.size += size
                    self.remaining = size + 2
                    self.state = self.DATA
            else:  # TRAILER: lines until an empty one
                if not line.strip():
                    self.state = self.DONE
                    return i
        return -1


def status_line(code, version=b"HTTP/1.1"):
    reason = responses.get(code, "Unknown").encode("ascii")
    return version + b" %d " % code + reason


def error_response(code, message, extra_headers=()):
    """A complete JSON error response the docker CLI prints as one line; closes the connection."""
    body = json.dumps({"message": message}).encode("utf-8")
    lines = [
        status_line(code),
        b"Content-Type: application/json",
        b"Content-Length: %d" % len(body),
        b"Connection: close",
        *extra_headers,
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
