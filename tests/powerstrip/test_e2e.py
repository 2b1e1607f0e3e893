"""The real docker CLI through the proxy prints and exits exactly as against dockerd directly."""

import re
import subprocess
import time
import uuid

import pytest

pytestmark = pytest.mark.e2e

TIMEOUT = 60
HEX_ID = re.compile(rb"\b[0-9a-f]{12}(?:[0-9a-f]{52})?\b")


@pytest.fixture(params=["fast path", "plain relay"])
def docker_env(request, docker_environment):
    """Each test through the proxy with its fast path on, then with --no-fast-path."""
    if request.param == "fast path":
        return docker_environment
    return docker_environment.plain_relay()


def docker(host, *args, input=None, timeout=TIMEOUT, cwd=None):
    """(exit status, stdout, stderr) of the docker CLI against host; a hang fails the test."""
    result = subprocess.run(["docker", "-H", host, *args], input=input, capture_output=True,
                            timeout=timeout, cwd=cwd)
    return result.returncode, result.stdout, result.stderr


def both(env, *args, **kwargs):
    return docker(env.direct, *args, **kwargs), docker(env.proxy, *args, **kwargs)


def name(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_run_rm_echo(docker_env):
    before = len(docker_env.hook_calls())
    direct, proxied = both(docker_env, "run", "--rm", "busybox", "echo", "hi")
    assert direct == (0, b"hi\n", b"")
    assert proxied == direct
    kinds = [call["payload"]["Type"] for call in docker_env.hook_calls()[before:]]
    assert kinds == ["pre-hook", "post-hook"], "the create hooks did not run"


def test_run_exit_status_and_stderr(docker_env):
    direct, proxied = both(docker_env, "run", "--rm", "busybox", "sh", "-c",
                           "echo out; echo err >&2; exit 7")
    assert direct == (7, b"out\n", b"err\n")
    assert proxied == direct


def test_run_detached_then_logs_follow_until_exit(docker_env):
    script = "for i in 1 2 3 4 5; do echo line$i; sleep 0.2; done; echo bye >&2"
    results = []
    for host in (docker_env.direct, docker_env.proxy):
        status, out, err = docker(host, "run", "-d", "busybox", "sh", "-c", script)
        assert (status, err) == (0, b"")
        container = out.strip()
        assert re.fullmatch(rb"[0-9a-f]{64}", container)
        results.append(docker(host, "logs", "-f", container.decode()))
        docker(docker_env.direct, "rm", "-f", container.decode())
    assert results[0] == (0, b"line1\nline2\nline3\nline4\nline5\n", b"bye\n")
    assert results[1] == results[0]


def test_run_interactive_stdin(docker_env):
    direct, proxied = both(docker_env, "run", "-i", "--rm", "busybox", "cat", input=b"hi\n")
    assert direct == (0, b"hi\n", b"")
    assert proxied == direct


def test_run_interactive_larger_stdin_roundtrip(docker_env):
    data = bytes(range(256)) * 4096  # 1 MiB through stdin and back
    direct, proxied = both(docker_env, "run", "-i", "--rm", "busybox", "cat", input=data)
    assert direct == (0, data, b"")
    assert proxied == direct


@pytest.fixture
def sleeper(docker_env):
    container = name("sleeper")
    status, _, err = docker(docker_env.direct, "run", "-d", "--name", container, "busybox",
                            "sleep", "300")
    assert status == 0, err
    yield container
    docker(docker_env.direct, "rm", "-f", container)


def test_exec(docker_env, sleeper):
    direct, proxied = both(docker_env, "exec", sleeper, "sh", "-c",
                           "echo out; echo err >&2; exit 3")
    assert direct == (3, b"out\n", b"err\n")
    assert proxied == direct
    direct, proxied = both(docker_env, "exec", "-i", sleeper, "cat", input=b"piped\n")
    assert direct == (0, b"piped\n", b"")
    assert proxied == direct


def test_cp_both_ways(docker_env, sleeper, tmp_path):
    payload = bytes(range(256)) * 1000
    source = tmp_path / "payload.bin"
    source.write_bytes(payload)
    for label, host in (("direct", docker_env.direct), ("proxy", docker_env.proxy)):
        status, out, err = docker(host, "cp", str(source), f"{sleeper}:/tmp/{label}.bin")
        assert (status, err) == (0, b""), err
        back = tmp_path / f"back-{label}.bin"
        status, out, err = docker(host, "cp", f"{sleeper}:/tmp/{label}.bin", str(back))
        assert (status, err) == (0, b""), err
        assert back.read_bytes() == payload
    # what went in through the proxy is what the container holds
    _, direct_sum, _ = docker(docker_env.direct, "exec", sleeper, "md5sum", "/tmp/direct.bin")
    _, proxy_sum, _ = docker(docker_env.direct, "exec", sleeper, "md5sum", "/tmp/proxy.bin")
    assert direct_sum.split()[0] == proxy_sum.split()[0]


def test_build_small_context(docker_env, tmp_path):
    (tmp_path / "Dockerfile").write_text(
        "FROM busybox\nCOPY greeting /greeting\nRUN cat /greeting > /built\nCMD cat /built\n")
    (tmp_path / "greeting").write_text("built through the proxy\n")
    outputs = []
    for label, host in (("direct", docker_env.direct), ("proxy", docker_env.proxy)):
        status, out, err = docker(host, "build", "--no-cache", "-t", f"psf-e2e-{label}", ".",
                                  cwd=tmp_path, timeout=120)
        outputs.append((status, HEX_ID.sub(b"<id>", out).replace(label.encode(), b"<label>"),
                        err))
        assert status == 0, err
        assert docker(host, "run", "--rm", f"psf-e2e-{label}") == (
            0, b"built through the proxy\n", b"")
    assert outputs[1] == outputs[0]
    assert b"Successfully built <id>" in outputs[0][1]


def test_ps_inspect_rm(docker_env, sleeper):
    # ps: the relative times may tick between two calls, so allow one tick
    first = docker(docker_env.direct, "ps", "-a")
    proxied = docker(docker_env.proxy, "ps", "-a")
    second = docker(docker_env.direct, "ps", "-a")
    assert proxied in (first, second)
    assert sleeper.encode() in proxied[1]
    formatted = both(docker_env, "ps", "-a", "--no-trunc", "--format",
                     "{{.ID}} {{.Image}} {{.Command}} {{.Names}} {{.State}}")
    assert formatted[1] == formatted[0]
    direct, proxied = both(docker_env, "inspect", sleeper)
    assert direct[0] == 0 and proxied == direct
    direct, proxied = both(docker_env, "inspect", "no-such-container")
    assert direct[0] == 1 and proxied == direct
    victims = []
    for _ in range(2):
        victim = name("victim")
        assert docker(docker_env.direct, "create", "--name", victim, "busybox", "true")[0] == 0
        victims.append(victim)
    assert docker(docker_env.direct, "rm", victims[0]) == (0, victims[0].encode() + b"\n", b"")
    assert docker(docker_env.proxy, "rm", victims[1]) == (0, victims[1].encode() + b"\n", b"")
    direct, proxied = both(docker_env, "rm", victims[0])
    assert direct[0] == 1 and proxied == direct


def test_events_since_until(docker_env):
    since = int(time.time()) - 1
    marker = name("events")
    docker(docker_env.direct, "run", "--rm", "--name", marker, "busybox", "true")
    time.sleep(1.1)
    until = int(time.time())
    args = ("events", "--since", str(since), "--until", str(until),
            "--filter", f"container={marker}")
    direct, proxied = both(docker_env, *args)
    assert direct[0] == 0 and b"die" in direct[1]
    assert proxied == direct
    direct, proxied = both(docker_env, *args, "--format", "{{json .}}")
    assert proxied == direct


def test_refusing_adapter_stops_run_with_its_message(docker_env):
    before = docker(docker_env.direct, "ps", "-aq", "--no-trunc")[1]
    status, out, err = docker(docker_env.refusing, "run", "--rm", "busybox", "echo", "hi")
    assert status == 125
    assert out == b""
    assert re.search(rb"Error response from daemon: .*nope", err), err
    assert b"Unable to find image" not in err
    assert docker(docker_env.direct, "ps", "-aq", "--no-trunc")[1] == before


def test_run_with_a_tty(docker_env):
    """-t: raw stream over the hijacked connection, resize calls, under a real pty."""
    outputs = []
    for host in (docker_env.direct, docker_env.proxy):
        result = subprocess.run(
            ["script", "-qec", f"docker -H {host} run --rm -t busybox sh -c 'echo tty; tty'",
             "/dev/null"], capture_output=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
        outputs.append((result.returncode, result.stdout))
    assert outputs[0][0] == 0 and b"/dev/pts/0" in outputs[0][1]
    assert outputs[1] == outputs[0]


def test_export_stream_is_byte_identical(docker_env, sleeper):
    direct, proxied = both(docker_env, "export", sleeper, timeout=120)
    assert direct[0] == 0 and len(direct[1]) > 1_000_000
    assert proxied == direct


@pytest.mark.parametrize("args, stdin", [
    (("run", "--rm", "busybox", "echo", "hi"), None),
    (("run", "-i", "--rm", "busybox", "cat"), b"through every hook\n"),
    (("run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2; exit 4"), None),
])
def test_every_request_through_two_pre_hooks(docker_env, args, stdin):
    """A "* *" endpoint: _ping, create, attach (hijack), wait, start all go through adapters."""
    direct = docker(docker_env.direct, *args, input=stdin)
    assert docker(docker_env.catch_all, *args, input=stdin) == direct


def test_exec_and_build_through_catch_all_hooks(docker_env, sleeper, tmp_path):
    direct, proxied = docker(docker_env.direct, "exec", "-i", sleeper, "cat",
                             input=b"x" * 100000), \
        docker(docker_env.catch_all, "exec", "-i", sleeper, "cat", input=b"x" * 100000)
    assert direct == (0, b"x" * 100000, b"")
    assert proxied == direct
    (tmp_path / "Dockerfile").write_text("FROM busybox\nCOPY f /f\nCMD cat /f\n")
    (tmp_path / "f").write_bytes(b"tar body streamed past hooks that saw Body null\n")
    status, out, err = docker(docker_env.catch_all, "build", "-t", "psf-e2e-catchall", ".",
                              cwd=tmp_path, timeout=120)
    assert status == 0, err
    assert docker(docker_env.direct, "run", "--rm", "psf-e2e-catchall") == (
        0, b"tar body streamed past hooks that saw Body null\n", b"")
