"""Client requests read as dockerd reads them, or refused.

The proxy decides from its own reading of a request whether hooks run. dockerd
is a Go net/http server, which is lenient where a hand-written reader may not
be (a bare LF ends a line, so ``\\r\\n\\n`` ends a head), so any disagreement
about where a head or a body ends lets a second request reach dockerd unseen
and unhooked. Every request head, and every chunked request body, is therefore
also read by llhttp (Node.js's parser, through httptools) with all its
leniencies off; what it refuses (bare LF or CR line ends, obs-fold,
Content-Length with Transfer-Encoding, two Content-Lengths, a bad chunk size)
gets a 400 before a byte is forwarded, and so does a header value that ends in
white space (llhttp keeps it in the value, Go trims it). What both accept is
relayed verbatim.
"""

import re
from urllib.parse import unquote_to_bytes

import httptools

from powerstripflocker.powerstrip.http import Head, ProtocolError

HTTP_VERSIONS = ("1.0", "1.1")
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
# a header value (after the colon and any leading white space) that ends in white space;
# an empty one ("Name: ", as Go writes it) is empty to llhttp and Go alike
_TRAILING_WHITE_SPACE = re.compile(rb"\n[^:\r\n]*:[ \t]*[^ \t\r\n][^\r\n]*[ \t]\r\n")


class _Events:
    """What llhttp reports about one request; its callbacks are all the proxy needs."""

    __slots__ = ("messages", "head_complete", "message_complete")

    def __init__(self):
        self.messages = 0
        self.head_complete = False
        self.message_complete = False

    def on_message_begin(self):
        self.messages += 1

    def on_headers_complete(self):
        self.head_complete = True

    def on_message_complete(self):
        self.message_complete = True


class Request:
    """A request head llhttp accepted: the Head, its request line, and the path as
    dockerd routes it (percent-decoded, without the query)."""

    __slots__ = ("head", "method", "target", "version", "path", "_parser", "_events")

    def __init__(self, head, method, target, version, path, parser, events):
        self.head, self.method, self.target, self.version = head, method, target, version
        self.path = path
        self._parser, self._events = parser, events

    def chunked_check(self):
        """A check that follows this request's chunked body with the same llhttp parser."""
        return ChunkedCheck(self._parser, self._events)


def parse_request(raw_head):
    """The Request for raw_head (a whole head, ending with its blank line).

    Raises ProtocolError with llhttp's reason when it refuses the head, or when
    dockerd would refuse it anyway (an HTTP version other than 1.0 and 1.1, a
    Transfer-Encoding other than chunked, a bad percent escape in the path), or
    when it starts with the CR or LF bytes llhttp skips: strip those first
    (without_empty_lines) and forward what is left.
    """
    if raw_head[:1] in (b"\r", b"\n"):
        raise ProtocolError("empty lines before the request line")
    events = _Events()
    parser = httptools.HttpRequestParser(events)
    try:
        parser.feed_data(raw_head)
    except httptools.HttpParserUpgrade:
        pass  # an Upgrade request: llhttp stops right after its head, as it should
    except httptools.HttpParserError as e:
        raise ProtocolError(str(e) or type(e).__name__)
    if not events.head_complete or events.messages != 1:
        raise ProtocolError("the request head does not end where it seems to")
    version = parser.get_http_version()
    if version not in HTTP_VERSIONS:
        raise ProtocolError(f"HTTP version {version} is not 1.0 or 1.1")
    if _TRAILING_WHITE_SPACE.search(raw_head):
        raise ProtocolError("white space at the end of a header line")
    head = Head(raw_head[:-4])
    request_line = head.first.split(b" ")
    if len(request_line) != 3:
        raise ProtocolError("the request line is not METHOD SP TARGET SP VERSION")
    method, target, version_text = request_line
    encoding = head.headers.get(b"transfer-encoding")
    if encoding is not None and encoding.lower() != b"chunked":
        raise ProtocolError(f"Transfer-Encoding {encoding[:80]!r}: dockerd accepts only chunked")
    return Request(head, method, target, version_text, routed_path(target), parser, events)


def without_empty_lines(data):
    """data without the CR and LF bytes before a request line, which llhttp and Go's
    server both skip (RFC 9112 2.2); forwarded, they would be read differently."""
    return data.lstrip(b"\r\n")


def routed_path(target):
    """The path dockerd's router matches: the target up to '?', percent-decoded as Go's
    url.Parse decodes it (so ``containers%2Fcreate`` is ``containers/create``)."""
    path = target.split(b"?", 1)[0]
    if b"%" not in path:
        return path
    if _BAD_ESCAPE.search(path):
        raise ProtocolError(f"bad percent escape in {path[:80]!r}")
    return unquote_to_bytes(path)


class ChunkedCheck:
    """llhttp reading a chunked request body alongside the proxy's ChunkedScanner.

    The scanner says where the body ends; llhttp must agree on every byte up to
    there and on the end itself, else the request is refused.
    """

    __slots__ = ("parser", "events")

    def __init__(self, parser, events):
        self.parser, self.events = parser, events

    def feed(self, data, ends_here):
        """Check data, the next bytes of the body; ends_here when the scanner saw its end."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            raise ProtocolError(f"bad chunked body: {e}")
        if self.events.messages != 1 or self.events.message_complete != ends_here:
            raise ProtocolError("the chunked body does not end where it seems to")
