"""`powerstrip-flocker proxy` as a real process: options, socket, validation at start."""

import grp
import json
import os
import signal
import socket
import stat
import subprocess
import sys

import pytest

from tests.support.processes import ManagedProcess, free_port

pytestmark = pytest.mark.integration

CONFIG = """\
version: 1
endpoints:
  "POST /*/containers/create":
    pre: [flocker]
  "POST /containers/create":
    pre: [flocker]
adapters:
  flocker: http://127.0.0.1:1/flocker-adapter
"""


def unix_request(path, raw):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(raw)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


@pytest.fixture
def workdir(tmp_path):
    # unix socket paths must stay short
    short = tmp_path / "w"
    short.mkdir()
    (short / "adapters.yml").write_text(CONFIG)
    return short


def start(workdir, *args, listen=None):
    listen = listen or f"unix://{workdir}/p.sock"
    process = ManagedProcess.command(
        ["proxy", "--config", str(workdir / "adapters.yml"), "--listen", listen,
         "--docker", f"unix://{workdir}/absent.sock", *args],
        str(workdir / "proxy.log"))
    return process.start()


def test_serves_on_a_unix_socket_with_mode_0660_and_group_docker(workdir):
    proxy = start(workdir)
    try:
        path = str(workdir / "p.sock")
        proxy.wait_until(lambda: os.path.exists(path) and "listening" in proxy.tail())
        mode = os.stat(path)
        assert stat.S_IMODE(mode.st_mode) == 0o660
        try:
            assert mode.st_gid == grp.getgrnam("docker").gr_gid
        except KeyError:
            pass
        answer = unix_request(path, b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 502 ")
        assert b"Content-Type: application/json" in answer
        message = json.loads(answer.partition(b"\r\n\r\n")[2])["message"]
        assert "cannot reach the Docker daemon at unix://" in message
        # a hooked create fails at the adapter, before any request reaches Docker
        body = b'{"Image": "busybox"}'
        answer = unix_request(path, b"POST /v1.41/containers/create HTTP/1.1\r\nHost: d\r\n"
                              b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                              % (len(body), body))
        assert answer.startswith(b"HTTP/1.1 502 ")
        assert b"adapter flocker" in answer and b"unreachable" in answer
    finally:
        proxy.stop()
    assert proxy.process.returncode == 0
    assert not os.path.exists(path), "socket left behind after SIGTERM"


@pytest.mark.parametrize("form", ["tcp://127.0.0.1:{port}", "tcp:{port}:interface=127.0.0.1"])
def test_tcp_listen_address(workdir, form):
    port = free_port()
    proxy = start(workdir, listen=form.format(port=port))
    try:
        proxy.wait_until(lambda: "listening" in proxy.tail())
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET /v1.41/info HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 502")
    finally:
        proxy.stop()


def test_stale_socket_is_replaced_but_a_live_one_is_refused(workdir):
    path = str(workdir / "p.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # file left, nobody listening
    first = start(workdir)
    try:
        first.wait_until(lambda: "listening" in first.tail())
        second = ManagedProcess.command(
            ["proxy", "--config", str(workdir / "adapters.yml"), "--listen", f"unix://{path}",
             "--docker", "unix:///nonexistent.sock"], str(workdir / "second.log")).start()
        assert second.process.wait(timeout=30) == 2
        assert "in use by another server" in second.tail()
    finally:
        first.stop()


@pytest.mark.parametrize("text, fragment", [
    ("version: 2\nendpoints: {}\nadapters: {}\n", "unknown version 2"),
    ('endpoints:\n  "POST /x":\n    pre: [nobody]\nadapters: {}\n', "'nobody'"),
    ('endpoints:\n  "post /x":\n    pre: [a]\nadapters:\n  a: http://a/\n', "bad method"),
    ("endpoints: {}\nadapters: {}\nendpoints: {}\n", "duplicate key 'endpoints'"),
])
def test_invalid_configuration_stops_the_start(workdir, text, fragment):
    (workdir / "adapters.yml").write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "powerstripflocker", "proxy", "--config",
         str(workdir / "adapters.yml"), "--listen", f"unix://{workdir}/p.sock",
         "--docker", "unix:///nonexistent.sock"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert fragment in result.stderr
    assert str(workdir / "adapters.yml") in result.stderr
    assert not os.path.exists(workdir / "p.sock")


def test_listen_and_docker_must_differ(workdir):
    result = subprocess.run(
        [sys.executable, "-m", "powerstripflocker", "proxy", "--config",
         str(workdir / "adapters.yml"), "--listen", f"unix://{workdir}/p.sock",
         "--docker", f"unix://{workdir}/p.sock"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "talk to itself" in result.stderr


def test_docker_host_is_the_default_upstream(workdir):
    env = dict(os.environ, DOCKER_HOST=f"unix://{workdir}/from-env.sock")
    result = subprocess.run(
        [sys.executable, "-m", "powerstripflocker", "proxy", "--help"],
        capture_output=True, text=True, timeout=60, env=env)
    assert "--docker" in result.stdout and "DOCKER_HOST" in result.stdout
    proxy = ManagedProcess.command(
        ["proxy", "--config", str(workdir / "adapters.yml"), "--listen",
         f"unix://{workdir}/p.sock"], str(workdir / "proxy.log"), env=env).start()
    try:
        proxy.wait_until(lambda: "listening" in proxy.tail())
        assert f"unix://{workdir}/from-env.sock" in proxy.tail()
    finally:
        proxy.kill(signal.SIGTERM)


def test_sighup_reloads_a_valid_configuration_and_keeps_the_old_one_otherwise(workdir):
    (workdir / "adapters.yml").write_text("version: 1\nendpoints: {}\nadapters: {}\n")
    proxy = start(workdir)
    path = str(workdir / "p.sock")
    body = b'{"Image": "busybox"}'
    create = (b"POST /v1.41/containers/create HTTP/1.1\r\nHost: d\r\n"
              b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    try:
        proxy.wait_until(lambda: "listening" in proxy.tail())
        assert b"cannot reach the Docker daemon" in unix_request(path, create)
        (workdir / "adapters.yml").write_text(CONFIG)
        proxy.process.send_signal(signal.SIGHUP)
        proxy.wait_until(lambda: "reloaded" in proxy.tail())
        assert b"adapter flocker" in unix_request(path, create)
        (workdir / "adapters.yml").write_text("version: 3\nendpoints: {}\nadapters: {}\n")
        proxy.process.send_signal(signal.SIGHUP)
        proxy.wait_until(lambda: "kept the previous configuration" in proxy.tail())
        assert b"adapter flocker" in unix_request(path, create)
    finally:
        proxy.stop()
    assert proxy.process.returncode == 0
