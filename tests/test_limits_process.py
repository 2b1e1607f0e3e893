"""The real adapter, plugin, agent and control service processes under hostile clients:
a 1 GiB body (sized or chunked; with and without credentials) is refused before 64 MiB
was read, nothing grows in /tmp and peak memory stays bounded; deeply nested JSON is a
400 (or a plugin Err); listen backlogs are at least 512; a head that trickles in is
dropped at 10 s while other clients are served. The proxy's own versions are in
tests/powerstrip/test_limits_process.py.
"""

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import time
import uuid

import pytest

from tests.support.limits import (
    GIB, MIB, chunked_piece, connect, exchange, grown_in_tmp, peak_rss_kib, send_body,
    tmp_files,
)
from tests.support.processes import ManagedProcess, free_port

pytestmark = pytest.mark.integration

# 30,000 levels: far past Python's recursion limit, and within the plugin's and the
# agent's 64 KiB bodies (100,000 would be refused for its size alone).
DEEP_JSON = b"[" * 30_000 + b"]" * 30_000


class Listener:
    """One started process, where it listens, and the request line + headers of a
    request with a JSON body it parses (the credentials included, when it needs them)."""

    def __init__(self, process, address, head, deep_path, refusal_key="description"):
        self.process = process
        self.address = address
        self.head = head
        self.deep_path = deep_path
        self.refusal_key = refusal_key

    @property
    def pid(self):
        return self.process.process.pid


def _token_file(tmp_path):
    token = secrets.token_hex(32)
    path = tmp_path / "cluster.token"
    path.write_text(token + "\n")
    return token, str(path)


def _start_control(tmp_path, token_file, port):
    process = ManagedProcess.command(
        ["control", "--listen", f"tcp:{port}:interface=127.0.0.1", "--db",
         str(tmp_path / "control" / "control.db"), "--cluster-token-file", token_file],
        str(tmp_path / "control.log")).start()
    process.wait_for_http(f"http://127.0.0.1:{port}/v1/version")
    return process


@contextlib.contextmanager
def started_listener(kind, tmp_path):
    token, token_file = _token_file(tmp_path)
    auth = b"Authorization: Bearer %s\r\n" % token.encode()
    started = []
    try:
        if kind == "control":
            port = free_port()
            started.append(_start_control(tmp_path, token_file, port))
            yield Listener(started[-1], ("127.0.0.1", port),
                           b"POST /v1/configuration/datasets HTTP/1.1\r\nHost: c\r\n" + auth,
                           "/v1/configuration/datasets")
        elif kind == "agent":
            control_port, port = free_port(), free_port()
            started.append(_start_control(tmp_path, token_file, control_port))
            process = ManagedProcess.command(
                ["agent", "--control-url", f"http://127.0.0.1:{control_port}",
                 "--data-root", str(tmp_path / "agent"),
                 "--listen", f"tcp:{port}:interface=127.0.0.1",
                 "--cluster-token-file", token_file], str(tmp_path / "agent.log")).start()
            started.append(process)
            process.wait_for_http(f"http://127.0.0.1:{port}/agent/v1/health")
            path = f"/agent/v1/datasets/{uuid.uuid4()}/acquire"
            yield Listener(process, ("127.0.0.1", port),
                           b"POST %s HTTP/1.1\r\nHost: a\r\n%s" % (path.encode(), auth), path)
        elif kind == "adapter":
            port = free_port()
            process = ManagedProcess.command(
                ["adapter", "--control-url", f"http://127.0.0.1:{free_port()}",
                 "--node-uuid", str(uuid.uuid4()),
                 "--listen", f"tcp:{port}:interface=127.0.0.1"],
                str(tmp_path / "adapter.log")).start()
            started.append(process)
            process.wait_for_http(f"http://127.0.0.1:{port}/metrics")
            yield Listener(process, ("127.0.0.1", port),
                           b"POST /flocker-adapter HTTP/1.1\r\nHost: a\r\n", "/flocker-adapter",
                           refusal_key="message")
        else:
            sock = str(tmp_path / "flocker.sock")
            process = ManagedProcess.command(
                ["plugin", "--control-url", f"http://127.0.0.1:{free_port()}",
                 "--node-uuid", str(uuid.uuid4()), "--socket", sock],
                str(tmp_path / "plugin.log")).start()
            started.append(process)
            process.wait_until(lambda: os.path.exists(sock), what=f"listening on {sock}")
            yield Listener(process, sock,
                           b"POST /VolumeDriver.Create HTTP/1.1\r\nHost: p\r\n",
                           "/VolumeDriver.Create", refusal_key="Err")
    finally:
        for process in reversed(started):
            process.stop()


@pytest.fixture(params=["adapter", "plugin", "agent", "control"])
def listener(request, tmp_path):
    with started_listener(request.param, tmp_path) as started:
        yield started


@pytest.fixture(params=["agent", "control"])
def listener_with_credentials(request, tmp_path):
    with started_listener(request.param, tmp_path) as started:
        yield started


def _body_of(answer):
    return json.loads(answer.split(b"\r\n\r\n", 1)[1])


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_gib_body_is_refused_before_64_mib_and_nothing_is_spooled(listener, framing):
    peak_at_start = peak_rss_kib(listener.pid)
    before = tmp_files()
    if framing == "content-length":
        head = listener.head + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % GIB
        piece = b" " * MIB
    else:
        head = listener.head + b"Content-Type: application/json\r\n" \
                               b"Transfer-Encoding: chunked\r\n\r\n"
        piece = chunked_piece()
    answer, sent = send_body(listener.address, head, piece)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:300]
    assert "larger than" in _body_of(answer)[listener.refusal_key]
    assert sent < 64 * MIB
    assert peak_rss_kib(listener.pid) - peak_at_start < 20 * 1024
    assert listener.process.process.poll() is None
    assert grown_in_tmp(before) == []


def test_a_gib_body_without_credentials_is_refused_from_the_head(listener_with_credentials):
    listener = listener_with_credentials
    head = b"\r\n".join(line for line in listener.head.split(b"\r\n")
                        if not line.startswith(b"Authorization"))
    for credentials, code in [(b"", b"401"), (b"Authorization: Bearer wrong\r\n", b"403")]:
        answer, sent = send_body(
            listener.address,
            head + credentials + b"Content-Length: %d\r\n\r\n" % GIB, b" " * MIB)
        assert answer.startswith(b"HTTP/1.1 " + code), answer[:300]
        assert sent < 64 * MIB


def test_deeply_nested_json_is_a_clear_400(listener):
    answer = exchange(listener.address, listener.head + b"Content-Type: application/json\r\n"
                      b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(DEEP_JSON)
                      + DEEP_JSON)
    status = answer.split(b" ", 2)[1]
    if listener.refusal_key == "Err":
        # the VolumeDriver protocol answers 200 with its Err
        assert status == b"200", answer[:300]
        assert b'{"Err": "the request body is nested deeper than 400 levels"}' in answer
    else:
        assert status == b"400", answer[:300]
        assert "Traceback" not in answer.decode("latin-1")
    assert listener.process.process.poll() is None


def test_a_slow_head_is_dropped_at_10_s_while_other_clients_are_served(listener):
    slow = connect(listener.address)
    started = time.monotonic()
    slow.sendall(b"GET /nothing HTTP/1.1\r\nHo")
    for _ in range(3):
        time.sleep(2)
        slow.sendall(b"s")  # a byte now and then does not reset the clock
        answer = exchange(listener.address, listener.head + b"Content-Length: %d\r\n\r\n" % GIB)
        assert answer.startswith(b"HTTP/1.1 413 "), "another client was not served"
    try:
        assert slow.recv(100) == b""
    except ConnectionResetError:
        pass  # dropped with a reset: just as gone
    elapsed = time.monotonic() - started
    slow.close()
    assert 9.5 < elapsed < 12, elapsed


def _listen_backlog(address):
    """The backlog of the socket listening on address, as ss(8) reports it (Send-Q)."""
    if isinstance(address, str):
        lines = subprocess.run(["ss", "-lxH"], capture_output=True, text=True).stdout
        wanted = address
    else:
        lines = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True).stdout
        wanted = f"{address[0]}:{address[1]}"
    for line in lines.splitlines():
        fields = line.split()
        if wanted in fields:
            return int(fields[3] if isinstance(address, str) else fields[2])
    raise AssertionError(f"nothing listens on {wanted}")


def test_a_burst_of_connections_fits_the_listen_backlog(listener):
    assert _listen_backlog(listener.address) >= 512
    if not isinstance(listener.address, str):
        return
    # A unix socket refuses (EAGAIN) a connection beyond its backlog at once: 300
    # clients connecting while the process cannot accept all fit.
    listener.process.process.send_signal(signal.SIGSTOP)
    clients = []
    try:
        for _ in range(300):
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.setblocking(False)
            clients.append((client, client.connect_ex(listener.address)))
    finally:
        listener.process.process.send_signal(signal.SIGCONT)
        for client, _ in clients:
            client.close()
    assert [error for _, error in clients if error != 0] == []
