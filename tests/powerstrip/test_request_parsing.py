"""request_parsing: heads and chunked bodies as llhttp reads them, and the path dockerd routes."""

import pytest

from powerstripflocker.powerstrip.http import ChunkedScanner, ProtocolError
from powerstripflocker.powerstrip.request_parsing import parse_request, routed_path


def test_a_good_head_gives_its_request_line_and_headers():
    request = parse_request(b"POST /v1.41/containers/create?name=x HTTP/1.1\r\n"
                            b"Host: d\r\nContent-Type: application/json\r\n"
                            b"Content-Length: 2\r\n\r\n")
    assert (request.method, request.target, request.version) == (
        b"POST", b"/v1.41/containers/create?name=x", b"HTTP/1.1")
    assert request.path == b"/v1.41/containers/create"
    assert request.head.framing() == ("length", 2)


def test_an_upgrade_head_is_whole():
    request = parse_request(b"POST /v1.41/exec/abc/start HTTP/1.1\r\nHost: d\r\n"
                            b"Connection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 2\r\n\r\n")
    assert request.head.headers[b"upgrade"] == b"tcp"


@pytest.mark.parametrize("raw, reason", [
    (b"GET / HTTP/1.1\r\nHost: d\r\n\nPOST /containers/create HTTP/1.1\r\n\r\n",
     "Invalid header field char"),
    (b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", "whitespace"),
    (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", "Duplicate"),
    (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
     "Transfer-Encoding can't be present with Content-Length"),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "only chunked"),
    (b"GET / HTTP/1.2\r\n\r\n", "Invalid HTTP version"),
    (b"GET / HTTP/2.0\r\n\r\n", "1.0 or 1.1"),
    (b"GET / HTTP/1.1\r\n", "does not end"),
    (b"GET  / HTTP/1.1\r\nHost: d\r\n\r\n", "METHOD SP TARGET SP VERSION"),
    (b"\nPOST /v1.41/containers/create HTTP/1.1\r\nHost: d\r\n\r\n", "empty lines"),
])
def test_refused_heads_say_why(raw, reason):
    with pytest.raises(ProtocolError, match=reason):
        parse_request(raw)


def test_routed_path_decodes_escapes_as_go_does():
    assert routed_path(b"/v1.41/containers%2Fcreate?x=%2F") == b"/v1.41/containers/create"
    assert routed_path(b"/v1.41/%63ontainers/create") == b"/v1.41/containers/create"
    with pytest.raises(ProtocolError, match="percent escape"):
        routed_path(b"/v1.41/containers/%g1/json")


def _scan(request, data):
    scanner, check = ChunkedScanner(), request.chunked_check()
    end = scanner.feed(data)
    check.feed(data if end < 0 else data[:end], end >= 0)
    return end


def test_chunked_check_agrees_with_the_scanner_on_a_good_body():
    request = parse_request(b"PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    body = b"3;ext=1\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n"
    assert _scan(request, body + b"GET /next") == len(body)


@pytest.mark.parametrize("body", [b"0x3\r\nabc\r\n0\r\n\r\n", b"3 \r\nabc\r\n0\r\n\r\n",
                                  b"3\nabc\r\n0\r\n\r\n", b"3\r\nabcd\r\n0\r\n\r\n"])
def test_chunked_check_refuses_what_the_scanner_would_let_through(body):
    request = parse_request(b"PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    with pytest.raises(ProtocolError):
        _scan(request, body)
