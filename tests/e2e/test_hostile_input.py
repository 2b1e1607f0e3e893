"""Every way of spelling a /flocker bind that dockerd would read as one reaches the
volume or is refused in one line: through the real proxy, adapter and dockerd, no
container is ever created with a bind whose cleaned source is under /flocker/."""

import json
import os
import socket

import pytest

from .conftest import daemon_error
from .test_killer_demo import ok, unique


def one_daemon_error(result):
    assert result.returncode == 125, (result.returncode, result.stdout, result.stderr)
    return daemon_error(result.stderr)


def raw_request(socket_path, method, path, body):
    """One HTTP/1.1 request over the node's docker socket; (status, parsed body)."""
    data = json.dumps(body).encode() if not isinstance(body, bytes) else body
    head = (f"{method} {path} HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode()
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(120)
        conn.connect(socket_path)
        conn.sendall(head + data)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    headers, _, payload = rest.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in headers.lower():
        payload = _unchunk(payload)
    return int(status_line.split()[1]), payload.decode("utf-8", "replace")


def _unchunk(payload):
    body = b""
    while payload:
        size, _, payload = payload.partition(b"\r\n")
        length = int(size.split(b";")[0], 16)
        if length == 0:
            break
        body, payload = body + payload[:length], payload[length + 2:]
    return body


@pytest.fixture(scope="module")
def volume(cluster):
    """A volume with a file in it, written on node1."""
    name = unique("spelt")
    ok(cluster.docker("node1", "run", "--rm", "-v", f"/flocker/{name}:/d", "busybox", "sh",
                      "-c", "echo kept > /d/file"))
    return name


@pytest.fixture(autouse=True)
def no_host_flocker_directory():
    """Docker never creates a host /flocker (its way of binding a missing source)."""
    existed = os.path.exists("/flocker")
    yield
    assert os.path.exists("/flocker") == existed


def sources(cluster, node, container):
    [details] = json.loads(ok(cluster.direct(node, "inspect", container)))
    return [(mount["Type"], mount.get("Source", ""), mount["Destination"])
            for mount in details["Mounts"]]


def dataset_path(cluster, name, node):
    [dataset] = cluster.datasets_named(name)
    [state] = [s for s in cluster.state_of(dataset["dataset_id"])
               if s["primary"] == cluster.node_uuid(node)]
    return state["path"]


@pytest.mark.parametrize("spelling, node", [
    ("-v //flocker/{name}:/d", "node2"), ("-v /./flocker/{name}:/d", "node1"),
    ("-v /tmp/../flocker/{name}:/d", "node2"), ("-v /flocker/{name}/:/d", "node1"),
    ("-v /flocker//{name}:/d:ro", "node2"),
    ("--mount type=bind,source=//flocker/{name},target=/d", "node1"),
])
def test_every_spelling_docker_cleans_to_the_volume_mounts_it(cluster, volume, spelling,
                                                              node):
    arguments = spelling.format(name=volume).split(" ", 1)
    assert ok(cluster.docker(node, "run", "--rm", *arguments, "busybox", "cat",
                             "/d/file")) == "kept\n"


@pytest.mark.parametrize("root", ["/flocker", "/flocker/", "//flocker/."])
def test_the_namespace_root_itself_is_refused_in_one_line(cluster, root):
    refused = one_daemon_error(cluster.docker("node1", "run", "--rm", "-v", f"{root}:/d",
                                              "busybox", "true"))
    assert "flocker" in refused


def test_a_one_part_bind_is_an_anonymous_volume_left_to_docker(cluster):
    container = unique("anon")
    ok(cluster.docker("node1", "run", "--name", container, "-v", "/flocker/anon",
                      "busybox", "true"))
    try:
        [(kind, _, destination)] = sources(cluster, "node1", container)
        assert (kind, destination) == ("volume", "/flocker/anon")
    finally:
        cluster.direct("node1", "rm", "-v", container)


@pytest.mark.parametrize("host_config", [
    lambda name: {"hostconfig": {"binds": [f"/flocker/{name}:/d"]}},
    lambda name: {"HOSTCONFIG": {"Binds": [f"//flocker/{name}:/d"]}},
    lambda name: {"HostConfig": {"mounts": [{"type": "bind", "source": f"/flocker/{name}",
                                            "target": "/d"}]}},
])
def test_keys_in_any_case_reach_the_volume_as_dockers_decoder_reads_them(
        cluster, volume, host_config):
    body = dict({"Image": "busybox", "Cmd": ["cat", "/d/file"]}, **host_config(volume))
    socket_path = cluster.layout.node("node2").docker_socket
    status, answer = raw_request(socket_path, "POST", "/v1.41/containers/create", body)
    assert status == 201, answer
    container = json.loads(answer)["Id"]
    try:
        [(kind, source, destination)] = sources(cluster, "node2", container)
        assert (kind, destination) == ("bind", "/d")
        assert source == dataset_path(cluster, volume, "node2")
        assert not source.startswith("/flocker")
        ok(cluster.docker("node2", "start", container))
        assert ok(cluster.direct("node2", "wait", container)).strip() == "0"
        assert ok(cluster.direct("node2", "logs", container)) == "kept\n"
    finally:
        cluster.direct("node2", "rm", "-f", container)


def test_a_repeated_key_is_refused_and_no_container_is_made(cluster, volume):
    body = (b'{"Image": "busybox", "HostConfig": {"Binds": ["/tmp:/t"]}, '
            b'"HostConfig": {"Binds": ["/flocker/' + volume.encode() + b':/d"]}}')
    socket_path = cluster.layout.node("node1").docker_socket
    before = ok(cluster.direct("node1", "ps", "-aq")).split()
    status, answer = raw_request(socket_path, "POST", "/v1.41/containers/create", body)
    assert status == 400, answer
    assert "HostConfig" in json.loads(answer)["message"]
    assert ok(cluster.direct("node1", "ps", "-aq")).split() == before


def test_a_request_smuggled_behind_a_bare_lf_never_reaches_dockerd(cluster, volume):
    hidden = json.dumps({"Image": "busybox", "HostConfig": {
        "Binds": [f"/flocker/{volume}:/d"]}}).encode()
    smuggled = (b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\n"
                b"POST /v1.41/containers/create HTTP/1.1\r\nHost: docker\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (len(hidden), hidden))
    before = ok(cluster.direct("node1", "ps", "-aq")).split()
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(30)
        conn.connect(cluster.layout.node("node1").docker_socket)
        conn.sendall(smuggled)
        answer = conn.recv(65536)
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert ok(cluster.direct("node1", "ps", "-aq")).split() == before
