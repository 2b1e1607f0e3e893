"""Volumes in use are never moved away; the Docker volume plugin frontend. Two real
dockerd nodes; in-use tracking comes from each node's Docker, however a container
was started."""

import time

import pytest

from .test_killer_demo import ok, unique

GiB = 1024 ** 3


def wait_until(condition, what, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"not {what} after {timeout}s")


def leased_to(cluster, dataset_id):
    return [lease["node_uuid"] for lease in cluster.api("/configuration/leases")
            if lease["dataset_id"] == dataset_id]


def read_on_node1(cluster, dataset_id, file_name):
    [state] = cluster.state_of(dataset_id)
    assert state["primary"] == cluster.node_uuid("node1")
    with open(f"{state['path']}/{file_name}") as data:
        return data.read()


@pytest.mark.parametrize("started", ["through the proxy", "directly on dockerd",
                                     "exiting on its own"])
def test_a_volume_in_use_on_node1_is_refused_on_node2_until_its_container_ends(
        cluster, started):
    name = unique("db")
    volume = f"/flocker/{name}:/data"
    ok(cluster.docker("node1", "run", "--rm", "-v", volume, "busybox", "true"))
    [dataset] = cluster.datasets_named(name)
    node1 = cluster.node_uuid("node1")
    lifetime = "8" if started == "exiting on its own" else "300"
    run, bind = cluster.docker, volume
    if started == "directly on dockerd":
        # Bypassing the proxy means binding the dataset's real path, as a restart policy
        # or anyone who copied it from `docker inspect` would.
        [state] = cluster.state_of(dataset["dataset_id"])
        run, bind = cluster.direct, f"{state['path']}:/data"
    container = ok(run("node1", "run", "-d", "--name", f"web-{name}", "-v", bind, "busybox",
                       "sh", "-c", f"echo precious > /data/file; exec sleep {lifetime}")).strip()
    wait_until(lambda: leased_to(cluster, dataset["dataset_id"]) == [node1],
               "leased to node1")
    # The kernel shows the mount first; Docker's answer, with the container's name, may
    # come a moment later (the refusal names the process until then).
    wait_until(lambda: any(user.startswith(f"web-{name}") for user in
                           cluster.reported_users("node1", dataset["dataset_id"])),
               "the container named in node1's report")

    began = time.monotonic()
    refused = cluster.docker("node2", "run", "--rm", "-v", volume, "busybox", "cat",
                             "/data/file")
    assert time.monotonic() - began < 5
    assert refused.returncode == 125, refused
    assert f"volume '{name}' is in use on 127.0.0.1 (node {node1}, container web-{name}, " \
           "since " in refused.stderr
    assert "stop it there first" in refused.stderr
    assert cluster.datasets_named(name)[0]["primary"] == node1
    assert read_on_node1(cluster, dataset["dataset_id"], "file") == "precious\n"

    if started == "exiting on its own":
        ok(cluster.direct("node1", "wait", container))
    else:
        ok(cluster.docker("node1", "stop", "-t", "1", container))
    moved = cluster.docker("node2", "run", "--rm", "-v", volume, "busybox", "cat", "/data/file")
    assert moved.returncode == 0, (moved.stderr, cluster.cluster.log_tail("node1-agent"))
    assert moved.stdout == "precious\n"
    assert node1 not in leased_to(cluster, dataset["dataset_id"])
    ok(cluster.direct("node1", "rm", container))


def test_plugin_volume_created_on_node1_is_read_on_node2_and_listed_on_both(cluster):
    name = unique("plugged")
    ok(cluster.direct("node1", "volume", "create", "-d", "flocker", "-o", "size=1G", name))
    [dataset] = cluster.datasets_named(name)
    assert (dataset["primary"], dataset["maximum_size"]) == (cluster.node_uuid("node1"), GiB)
    ok(cluster.direct("node1", "run", "--rm", "--volume-driver", "flocker", "-v",
                      f"{name}:/data", "busybox", "sh", "-c", "echo plugged > /data/file"))
    assert ok(cluster.direct("node2", "run", "--rm", "--volume-driver", "flocker", "-v",
                             f"{name}:/data", "busybox", "cat", "/data/file")) == "plugged\n"
    assert cluster.datasets_named(name)[0]["primary"] == cluster.node_uuid("node2")
    for node in ("node1", "node2"):
        listed = ok(cluster.direct(node, "volume", "ls", "--format", "{{.Driver}} {{.Name}}"))
        assert f"flocker {name}" in listed.splitlines(), (node, listed)
        inspected = ok(cluster.direct(node, "volume", "inspect", "--format",
                                      "{{.Driver}} {{.Scope}} {{.Status.dataset_id}}", name))
        assert inspected.split() == ["flocker", "global", dataset["dataset_id"]]


def test_plugin_refuses_a_bad_size_with_one_clear_line(cluster):
    name = unique("bad")
    result = cluster.direct("node1", "volume", "create", "-d", "flocker", "-o", "size=banana",
                            name)
    assert result.returncode != 0
    assert "invalid size 'banana'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert cluster.datasets_named(name) == []


def test_a_plugin_volume_in_use_on_node1_is_refused_by_the_plugin_on_node2(cluster):
    name = unique("shared")
    container = ok(cluster.direct("node1", "run", "-d", "--volume-driver", "flocker", "-v",
                                  f"{name}:/data", "busybox", "sleep", "300")).strip()
    [dataset] = cluster.datasets_named(name)
    node1 = cluster.node_uuid("node1")
    wait_until(lambda: leased_to(cluster, dataset["dataset_id"]) == [node1], "leased")
    refused = cluster.direct("node2", "run", "--rm", "--volume-driver", "flocker", "-v",
                             f"{name}:/data", "busybox", "true")
    assert refused.returncode != 0
    assert f"volume '{name}' is in use on 127.0.0.1" in refused.stderr
    ok(cluster.direct("node1", "rm", "-f", container))
    ok(cluster.direct("node2", "run", "--rm", "--volume-driver", "flocker", "-v",
                      f"{name}:/data", "busybox", "true"))
