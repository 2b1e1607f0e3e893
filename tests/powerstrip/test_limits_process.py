"""The real proxy process under 1 GiB bodies: refused early, nothing spooled, memory bounded.

No dockerd is needed: a hooked create with an oversized body is refused before
the proxy asks the daemon anything.
"""

import os
import socket
import threading
import time

import pytest

from tests.support.processes import ManagedProcess

pytestmark = pytest.mark.integration

GIB = 1 << 30
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


def _peak_rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def _send_gib(sock_path, head, body_piece):
    """Send head, then body_piece until 1 GiB or the proxy stops reading; returns
    (response bytes, body bytes sent)."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(30)
    client.connect(sock_path)
    sent = [0]

    def send():
        try:
            client.sendall(head)
            while sent[0] < GIB:
                client.sendall(body_piece)
                sent[0] += len(body_piece)
        except OSError:
            pass

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    response = b""
    try:
        while True:
            piece = client.recv(65536)
            if not piece:
                break
            response += piece
    except OSError:
        pass
    sender.join(30)
    client.close()
    return response, sent[0]


def _exchange(sock_path, data):
    """Send data on a new connection and read until the proxy closes it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(30)
        client.connect(sock_path)
        client.sendall(data)
        response = b""
        while True:
            piece = client.recv(65536)
            if not piece:
                return response
            response += piece


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_gib_body_is_refused_before_64_mib_and_memory_stays_bounded(proxy, framing):
    process, sock = proxy
    peak_at_start = _peak_rss_kib(process.process.pid)
    tmp_before = set(os.listdir("/tmp"))
    if framing == "content-length":
        head = CREATE_HEAD + b"Content-Length: %d\r\n\r\n" % GIB
        piece = b" " * (1 << 20)
    else:
        head = CREATE_HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
        piece = b"%x\r\n%s\r\n" % (1 << 20, b" " * (1 << 20))
    response, sent = _send_gib(sock, head, piece)
    assert response.startswith(b"HTTP/1.1 413 "), response[:200]
    assert sent < 64 * (1 << 20)
    # at most the default --max-body (16 MiB) of a chunked JSON body is held for hooks
    assert _peak_rss_kib(process.process.pid) - peak_at_start < 40 * 1024
    assert process.process.poll() is None
    grown = [name for name in set(os.listdir("/tmp")) - tmp_before
             if os.path.getsize(os.path.join("/tmp", name)) > (1 << 20)
             if os.path.isfile(os.path.join("/tmp", name))]
    assert grown == []


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
        assert _exchange(sock, CREATE_HEAD + b"Content-Length: %d\r\n\r\n" % GIB).startswith(
            b"HTTP/1.1 413 "), "another client was not served"
    assert slow.recv(100) == b""
    elapsed = time.monotonic() - started
    slow.close()
    assert 9.5 < elapsed < 12, elapsed
