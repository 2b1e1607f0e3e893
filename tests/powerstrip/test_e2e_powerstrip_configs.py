"""Through the real proxy and dockerd: Powerstrip's own configurations, and a smuggled create.

Powerstrip's pass-through tests put null adapters before and after everything
("* *", pre and post). The proxy runs the post-hooks where a response can be
read whole and skips them on streams and hijacked connections, so docker run,
run -ti, logs, attach and build behave exactly as against dockerd, under the
CLI's own API version and under DOCKER_API_VERSION=1.40.
"""

import os
import re
import socket
import subprocess
import uuid

import pytest

from .test_e2e import TIMEOUT, docker

pytestmark = pytest.mark.e2e

API_VERSIONS = [None, "1.40"]


def docker_at(host, *args, api_version=None, **kwargs):
    """docker(...) with DOCKER_API_VERSION set when api_version is given."""
    saved = os.environ.get("DOCKER_API_VERSION")
    if api_version is not None:
        os.environ["DOCKER_API_VERSION"] = api_version
    try:
        return docker(host, *args, **kwargs)
    finally:
        if saved is None:
            os.environ.pop("DOCKER_API_VERSION", None)
        else:
            os.environ["DOCKER_API_VERSION"] = saved


def name(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def hook_kinds(env, since):
    return [(call["payload"]["Type"], call["payload"]["ClientRequest"]["Request"])
            for call in env.hook_calls()[since:]]


@pytest.mark.parametrize("api_version", API_VERSIONS)
def test_run_through_pre_and_post_hooks_on_everything(docker_env, api_version):
    before = len(docker_env.hook_calls())
    args = ("run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2; exit 3")
    direct = docker_at(docker_env.direct, *args, api_version=api_version)
    assert direct == (3, b"out\n", b"err\n")
    assert docker_at(docker_env.pre_and_post, *args, api_version=api_version) == direct
    calls = hook_kinds(docker_env, before)
    posts = [path for kind, path in calls if kind == "post-hook"]
    assert any(path.endswith("/containers/create") for path in posts)
    assert not any("/wait" in path or "/attach" in path for path in posts)
    assert any(kind == "pre-hook" and "/wait" in path for kind, path in calls)
    if api_version:
        assert all(path.startswith(f"/v{api_version}/") or path == "/_ping"
                   for _, path in calls)


@pytest.mark.parametrize("api_version", API_VERSIONS)
def test_run_detached_then_logs_and_logs_follow(docker_env, api_version):
    script = "for i in 1 2 3; do echo line$i; sleep 0.2; done; echo bye >&2"
    results = []
    for host in (docker_env.direct, docker_env.pre_and_post):
        status, out, err = docker_at(host, "run", "-d", "busybox", "sh", "-c", script,
                                     api_version=api_version)
        assert (status, err) == (0, b"")
        container = out.strip().decode()
        follow = docker_at(host, "logs", "-f", container, api_version=api_version)
        results.append((follow, docker_at(host, "logs", container, api_version=api_version)))
        docker(docker_env.direct, "rm", "-f", container)
    assert results[0][0] == (0, b"line1\nline2\nline3\n", b"bye\n")
    assert results[0][1] == results[0][0]
    assert results[1] == results[0]


@pytest.mark.parametrize("api_version", API_VERSIONS)
def test_run_ti_under_a_pty(docker_env, api_version):
    outputs = []
    env = dict(os.environ)
    if api_version:
        env["DOCKER_API_VERSION"] = api_version
    for host in (docker_env.direct, docker_env.pre_and_post):
        result = subprocess.run(
            ["script", "-qec", f"docker -H {host} run --rm -ti busybox sh -c 'echo tty; tty'",
             "/dev/null"], capture_output=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL,
            env=env)
        outputs.append((result.returncode, result.stdout))
    assert outputs[0][0] == 0 and b"/dev/pts/0" in outputs[0][1]
    assert outputs[1] == outputs[0]


def _attach_and_answer(host, container, api_version):
    """docker attach, a line to the container, its answer; stdin stays open until then,
    since dockerd ends an attach when its stdin closes."""
    env = dict(os.environ)
    if api_version:
        env["DOCKER_API_VERSION"] = api_version
    attach = subprocess.Popen(["docker", "-H", host, "attach", container], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    try:
        attach.stdin.write(b"hello\n")
        attach.stdin.flush()
        answer = attach.stdout.readline()
        attach.stdin.close()
        out, err = attach.stdout.read(), attach.stderr.read()
        return attach.wait(timeout=TIMEOUT), answer + out, err
    finally:
        attach.kill()
        attach.wait()


@pytest.mark.parametrize("api_version", API_VERSIONS)
def test_attach_to_a_running_container(docker_env, api_version):
    results = []
    for host in (docker_env.direct, docker_env.pre_and_post):
        container = name("attach")
        status, _, err = docker(docker_env.direct, "run", "-d", "-i", "--name", container,
                                "busybox", "sh", "-c", "read line; echo got $line; exit 5")
        assert status == 0, err
        try:
            results.append(_attach_and_answer(host, container, api_version))
        finally:
            docker(docker_env.direct, "rm", "-f", container)
    assert results[0] == (5, b"got hello\n", b"")
    assert results[1] == results[0]


def test_build_through_pre_and_post_hooks_on_everything(docker_env, tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM busybox\nCOPY f /f\nRUN cat /f > /g\nCMD cat /g\n")
    (tmp_path / "f").write_bytes(b"built with a post-hook on everything\n")
    status, out, err = docker(docker_env.pre_and_post, "build", "-t", "psf-e2e-preandpost", ".",
                              cwd=tmp_path, timeout=120)
    assert status == 0, err
    assert docker(docker_env.pre_and_post, "run", "--rm", "psf-e2e-preandpost") == (
        0, b"built with a post-hook on everything\n", b"")


def _raw_exchange(host, data):
    """Send data on one connection to host (unix://...) and read until it closes."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(TIMEOUT)
    client.connect(host[len("unix://"):])
    try:
        client.sendall(data)
        received = b""
        while True:
            piece = client.recv(65536)
            if not piece:
                return received
            received += piece
            if received.count(b"HTTP/1.1 ") >= 2 and received.endswith(b"\n"):
                return received
    finally:
        client.close()


def _smuggling(container, body):
    create = (b"POST /v1.41/containers/create?name=%s HTTP/1.1\r\nHost: d\r\n"
              b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n"
              b"\r\n%s" % (container.encode(), len(body), body))
    return b"GET /v1.41/version HTTP/1.1\r\nHost: d\r\n\n" + create


def test_a_create_hidden_behind_a_bare_lf_never_reaches_dockerd(docker_env):
    """dockerd itself takes the bytes as two requests and runs the hidden create (shown
    here without a bind); through the proxy the head is refused with 400, and the
    create with its /flocker bind reaches dockerd neither hooked nor unhooked."""
    shown = name("smuggled-direct")
    answer = _raw_exchange(docker_env.direct, _smuggling(shown, b'{"Image":"busybox"}'))
    try:
        assert re.search(rb"HTTP/1.1 201", answer), answer[:300]
        assert docker(docker_env.direct, "inspect", shown)[0] == 0
    finally:
        docker(docker_env.direct, "rm", "-f", shown)
    hidden = name("smuggled")
    body = (b'{"Image":"busybox","HostConfig":{"Binds":["/flocker/%s:/data"]}}'
            % hidden.encode())
    before = len(docker_env.hook_calls())
    answer = _raw_exchange(docker_env.proxy, _smuggling(hidden, body))
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:300]
    assert answer.count(b"HTTP/1.1 ") == 1
    assert docker(docker_env.direct, "inspect", hidden)[0] == 1
    assert docker_env.hook_calls()[before:] == []
    assert not os.path.exists(f"/flocker/{hidden}")
