"""The real proxy process under 1 GiB bodies: refused early, nothing spooled, memory bounded.

No dockerd is needed: a hooked create with an oversized body is refused before
the proxy asks the daemon anything.
"""

import os
import socket
import time

import pytest

from tests.support.limits import (
    GIB, MIB, chunked_piece, exchange, grown_in_tmp, peak_rss_kib, send_body, tmp_files,
)
from tests.support.processes import ManagedProcess

pytestmark = pytest.mark.integration

CONFIG = """\
version: 1
endpoints:
  "POST /*/containers/create":
    pre: [flocker]
adapters:
  flocker: http://127.0.0.1:9/flocker-adapter
"""
CREATE_HEAD = (b"POST /v1.41/containers/create HTTP/1.1\r\nHost: d\r\n"
               b"Content-Type: application/json\r\n")


@pytest.fixture
def proxy(tmp_path):
    config = tmp_path / "adapters.yml"
    config.write_text(CONFIG)
    sock = str(tmp_path / "proxy.sock")
    process = ManagedProcess.command(
        ["proxy", "--config", str(config), "--listen", f"unix://{sock}",
         "--docker", f"unix://{tmp_path / 'no-daemon.sock'}"],
        str(tmp_path / "proxy.log")).start()
    try:
        process.wait_until(lambda: os.path.exists(sock), what=f"listening on {sock}")
        yield process, sock
    finally:
        process.stop()


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_gib_body_is_refused_before_64_mib_and_memory_stays_bounded(proxy, framing):
    process, sock = proxy
    peak_at_start = peak_rss_kib(process.process.pid)
    tmp_before = tmp_files()
    if framing == "content-length":
        head = CREATE_HEAD + b"Content-Length: %d\r\n\r\n" % GIB
        piece = b" " * MIB
    else:
        head = CREATE_HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
        piece = chunked_piece()
    response, sent = send_body(sock, head, piece)
    assert response.startswith(b"HTTP/1.1 413 "), response[:200]
    assert sent < 64 * MIB
    # at most the default --max-body (16 MiB) of a chunked JSON body is held for hooks
    assert peak_rss_kib(process.process.pid) - peak_at_start < 40 * 1024
    assert process.process.poll() is None
    assert grown_in_tmp(tmp_before) == []


def test_a_slow_head_is_dropped_at_10_s_while_other_clients_are_served(proxy):
    process, sock = proxy
    slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    slow.connect(sock)
    started = time.monotonic()
    slow.sendall(b"GET /v1.41/info HTTP/1.1\r\nHo")
    slow.settimeout(30)
    for _ in range(3):
        time.sleep(2)
        slow.sendall(b"s")  # a byte now and then does not reset the clock
        assert exchange(sock, CREATE_HEAD + b"Content-Length: %d\r\n\r\n" % GIB).startswith(
            b"HTTP/1.1 413 "), "another client was not served"
    assert slow.recv(100) == b""
    elapsed = time.monotonic() - started
    slow.close()
    assert 9.5 < elapsed < 12, elapsed
