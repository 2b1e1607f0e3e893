"""Message bodies as the proxy sees them: where one ends, and reading one whole.

Relayed bodies go on as they arrive; Framing and CloseDelimited only say where
they end. WholeBody reads a body whole up to a limit, for hooks: a JSON
request body before the pre-hooks, a response before the post-hooks.
"""

from powerstripflocker.powerstrip.http import ChunkedScanner


class Framing:
    """Where a message body ends: by length, or by chunked framing.

    A chunked request body also goes through check (a ChunkedCheck), so that
    llhttp agrees on every byte of it.
    """

    __slots__ = ("remaining", "scanner", "check")

    def __init__(self, kind, length, collect=False, check=None):
        self.remaining = length if kind == "length" else None
        self.scanner = ChunkedScanner(collect) if kind == "chunked" else None
        self.check = check

    def split(self, data):
        """(part of data in this body, rest after it or None if the body goes on)."""
        if self.scanner is None:
            if len(data) < self.remaining:
                self.remaining -= len(data)
                return data, None
            end = self.remaining
            self.remaining = 0
            return data[:end], data[end:]
        end = self.scanner.feed(data)
        if self.check is not None:
            self.check.feed(data if end < 0 else data[:end], end >= 0)
        if end < 0:
            return data, None
        return data[:end], data[end:]


class CloseDelimited:
    """A response body that ends when the daemon closes the connection."""

    __slots__ = ()
    scanner = None

    def split(self, data):
        return data, None


def request_framing(request, kind, length, collect=False):
    """The Framing of a client request's body, or None when it has none."""
    if kind == "chunked":
        return Framing(kind, length, collect, request.chunked_check())
    if kind == "length" and length:
        return Framing(kind, length, collect)
    return None


class BodyTooLarge(Exception):
    """A body read whole went over its limit."""


class WholeBody:
    """Reads one body whole, up to limit bytes of content (a chunked body decoded).

    feed() raises ProtocolError for bad framing and BodyTooLarge past the limit.
    """

    __slots__ = ("framing", "limit", "parts", "size")

    def __init__(self, framing, limit):
        self.framing = framing  # a Framing made with collect=True, or CloseDelimited
        self.limit = limit
        self.parts = []
        self.size = 0

    def feed(self, data):
        """(content, rest of data after the body) once the body is whole, else None."""
        part, rest = self.framing.split(data)
        scanner = self.framing.scanner
        if scanner is None:
            self.parts.append(part)
            self.size += len(part)
        else:
            self.size = scanner.size
        if self.size > self.limit:
            raise BodyTooLarge()
        if rest is None:
            return None
        return self.content(), rest

    def content(self):
        """The body read so far (all of it, when it ended with the connection)."""
        scanner = self.framing.scanner
        return b"".join(self.parts if scanner is None else scanner.parts)
