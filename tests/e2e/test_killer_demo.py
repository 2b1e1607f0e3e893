"""The original's acceptance tests and its three TODOs, on two real dockerd nodes
through the real proxies, adapters, agents and control service."""

import os
import uuid

import pytest


def unique(prefix):
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def ok(result):
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def bind_sources(cluster, node, container):
    mounts = ok(cluster.docker(node, "inspect", "--format",
                               "{{range .Mounts}}{{.Source}}={{.Destination}} {{end}}",
                               container)).split()
    return dict(reversed(mount.split("=", 1)) for mount in mounts)


ADAPTER_AS_HOST_PROCESS_AND_AS_CONTAINER = pytest.mark.parametrize(
    "cluster", ["host", "container"], indirect=True)


@ADAPTER_AS_HOST_PROCESS_AND_AS_CONTAINER
def test_first_use_creates_one_dataset_named_after_the_volume_on_this_node(cluster):
    name = unique("test001")
    ok(cluster.docker("node1", "run", "--rm", "-v", f"/flocker/{name}:/data", "busybox", "true"))
    [dataset] = cluster.datasets_named(name)
    assert dataset["primary"] == cluster.node_uuid("node1")
    assert dataset["metadata"] == {"name": name}


def test_the_container_writes_into_the_datasets_real_path(cluster):
    name = unique("test002")
    container = ok(cluster.docker("node1", "run", "-d", "-v", f"/flocker/{name}:/data",
                                  "busybox", "sh", "-c", "echo fish > /data/file")).strip()
    assert ok(cluster.docker("node1", "wait", container)).strip() == "0"
    [dataset] = cluster.datasets_named(name)
    [state] = cluster.state_of(dataset["dataset_id"])
    assert state["primary"] == cluster.node_uuid("node1")
    assert bind_sources(cluster, "node1", container) == {"/data": state["path"]}
    with open(os.path.join(state["path"], "file")) as written:
        assert written.read() == "fish\n"
    ok(cluster.docker("node1", "rm", container))


def test_the_same_name_twice_on_one_node_is_one_dataset_and_path(cluster):
    name = unique("test003")
    first = ok(cluster.docker("node1", "run", "-d", "-v", f"/flocker/{name}:/data", "busybox",
                              "true")).strip()
    second = ok(cluster.docker("node1", "run", "-d", "-v", f"/flocker/{name}:/data", "busybox",
                               "true")).strip()
    assert len(cluster.datasets_named(name)) == 1
    assert bind_sources(cluster, "node1", first) == bind_sources(cluster, "node1", second)
    ok(cluster.docker("node1", "rm", "-f", first, second))


@ADAPTER_AS_HOST_PROCESS_AND_AS_CONTAINER
def test_data_written_on_node1_is_read_on_node2(cluster):
    name = unique("test004")
    volume = f"/flocker/{name}:/data"
    ok(cluster.docker("node1", "run", "--rm", "-v", volume, "busybox",
                      "sh", "-c", "echo chicken > /data/file"))
    assert ok(cluster.docker("node2", "run", "--rm", "-v", volume, "busybox",
                             "cat", "/data/file")) == "chicken\n"
    [dataset] = cluster.datasets_named(name)
    assert dataset["primary"] == cluster.node_uuid("node2")
    [state] = cluster.state_of(dataset["dataset_id"])
    assert state["primary"] == cluster.node_uuid("node2")


def test_data_persists_across_moves_there_and_back(cluster):
    volume = f"/flocker/{unique('test005')}:/data"
    ok(cluster.docker("node1", "run", "--rm", "-v", volume, "busybox",
                      "sh", "-c", "echo one > /data/log"))
    ok(cluster.docker("node2", "run", "--rm", "-v", volume, "busybox",
                      "sh", "-c", "echo two >> /data/log"))
    assert ok(cluster.docker("node1", "run", "--rm", "-v", volume, "busybox",
                             "cat", "/data/log")) == "one\ntwo\n"


def test_one_run_creates_one_volume_and_moves_another_before_starting(cluster):
    new, remote = unique("new"), unique("remote")
    ok(cluster.docker("node2", "run", "--rm", "-v", f"/flocker/{remote}:/data", "busybox",
                      "sh", "-c", "echo from-node2 > /data/file"))
    output = ok(cluster.docker(
        "node1", "run", "--rm", "-v", f"/flocker/{new}:/new", "-v", f"/flocker/{remote}:/old",
        "busybox", "sh", "-c", "cat /old/file; ls -A /new | wc -l"))
    assert output.split() == ["from-node2", "0"]
    node1 = cluster.node_uuid("node1")
    assert [d["primary"] for d in cluster.datasets_named(new)] == [node1]
    assert [d["primary"] for d in cluster.datasets_named(remote)] == [node1]


def test_ordinary_binds_read_only_and_mount_syntax_behave_as_dockers_own(cluster, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "hello").write_text("plain\n")
    name = unique("test007")
    script = ("cat /plain/hello; echo x > /plain/new && echo plain-writable; "
              "echo y > /ro/f 2>/dev/null || echo ro-refused; "
              "echo z > /data/f && echo flocker-writable")
    result = cluster.docker(
        "node1", "run", "--rm", "-v", f"{plain}:/plain", "-v", f"/flocker/{name}-ro:/ro:ro",
        "--mount", f"type=bind,source=/flocker/{name},target=/data", "busybox", "sh", "-c",
        script)
    assert ok(result).split() == ["plain", "plain-writable", "ro-refused", "flocker-writable"]
    assert (plain / "new").read_text() == "x\n"
    [dataset] = cluster.datasets_named(name)
    [state] = cluster.state_of(dataset["dataset_id"])
    assert open(os.path.join(state["path"], "f")).read() == "z\n"


@pytest.mark.parametrize("arguments", [
    ("run", "--rm", "busybox", "echo", "hi"),
    ("run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2; exit 3"),
    ("run", "--rm", "-v", "/tmp:/host-tmp:ro", "busybox", "ls", "-d", "/host-tmp"),
])
def test_runs_without_flocker_volumes_behave_as_direct(cluster, arguments):
    through_proxy = cluster.docker("node1", *arguments)
    direct = cluster.direct("node1", *arguments)
    assert (through_proxy.returncode, through_proxy.stdout, through_proxy.stderr) == (
        direct.returncode, direct.stdout, direct.stderr)


def test_ps_logs_and_exec_through_the_proxy_match_direct(cluster):
    container = ok(cluster.docker("node1", "run", "-d", "busybox", "sh", "-c",
                                  "echo started; sleep 300")).strip()
    try:
        for arguments in [("ps", "--no-trunc", "--filter", f"id={container}"),
                          ("logs", container), ("exec", container, "echo", "inside"),
                          ("exec", container, "sh", "-c", "exit 7")]:
            through_proxy = cluster.docker("node1", *arguments)
            direct = cluster.direct("node1", *arguments)
            assert (through_proxy.returncode, through_proxy.stdout) == (
                direct.returncode, direct.stdout), arguments
        assert "started" in ok(cluster.docker("node1", "logs", container))
    finally:
        ok(cluster.docker("node1", "rm", "-f", container))
