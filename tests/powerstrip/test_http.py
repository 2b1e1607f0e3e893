"""The proxy's small HTTP toolkit: heads, framing and the chunked scanner."""

import pytest
from hypothesis import given, strategies as st

from powerstripflocker.powerstrip.http import (
    ChunkedScanner, Head, ProtocolError, error_response, find_head_end,
)


def chunked(parts, trailer=b""):
    return b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in parts if p) + b"0\r\n" + \
        trailer + b"\r\n"


@given(parts=st.lists(st.binary(min_size=1, max_size=300), max_size=8),
       cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=6),
       after=st.binary(max_size=20),
       trailer=st.sampled_from([b"", b"X-Trailer: 1\r\n"]))
def test_scanner_finds_the_end_however_the_stream_is_cut(parts, cuts, after, trailer):
    body = chunked(parts, trailer)
    stream = body + after
    scanner = ChunkedScanner(collect=True)
    points = sorted({c for c in cuts if c < len(stream)} | {0, len(stream)})
    consumed = 0
    end = None
    for start, stop in zip(points, points[1:]):
        piece = stream[start:stop]
        if end is not None:
            break
        found = scanner.feed(piece)
        if found >= 0:
            end = consumed + found
        consumed += len(piece)
    assert end == len(body)
    assert b"".join(scanner.parts) == b"".join(parts)
    assert scanner.size == sum(map(len, parts))


def test_scanner_refuses_garbage():
    with pytest.raises(ProtocolError):
        ChunkedScanner().feed(b"zz\r\n")


def test_head_framing():
    assert Head(b"POST / HTTP/1.1\r\nContent-Length: 5").framing() == ("length", 5)
    assert Head(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked").framing() == ("chunked", None)
    assert Head(b"GET / HTTP/1.1\r\nHost: x").framing() == ("none", None)
    assert Head(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nContent-Length: 3").framing() == (
        "length", 3)
    for bad in (b"Content-Length: -1", b"Content-Length: x", b"Content-Length: 1, 2",
                b"Transfer-Encoding: gzip"):
        with pytest.raises(ProtocolError):
            Head(b"POST / HTTP/1.1\r\n" + bad).framing()


def test_head_keeps_raw_lines_and_joins_repeated_headers():
    head = Head(b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nconnection: keep-alive\r\nX: 1")
    assert head.connection_tokens() == (b"upgrade", b"keep-alive")
    assert head.without(b"x") == [b"Connection: Upgrade", b"connection: keep-alive"]


def test_find_head_end():
    assert find_head_end(b"GET / HTTP/1.1\r\n\r\nbody") == 18
    assert find_head_end(b"GET / HTTP/1.1\r\n") == -1


def test_error_response_is_json_the_cli_prints():
    data = error_response(502, "adapter x: nope")
    assert data.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert b"Content-Type: application/json\r\n" in data
    assert data.endswith(b'\r\n\r\n{"message": "adapter x: nope"}')
