import json

import pytest
from hypothesis import given, strategies as st

from powerstripflocker.volumes import (
    InvalidRequest, InvalidVolumeName, VolumeUse, find_create_volumes,
    find_legacy_start_volumes, is_container_create, is_container_start, rewrite, unique_names,
    validate_name,
)

names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,30}", fullmatch=True).filter(
    lambda name: name not in (".", "..")
)
container_paths = st.from_regex(r"/[a-z][a-z0-9/_]{0,15}", fullmatch=True)
options = st.sampled_from(["", ":ro", ":rw", ":z", ":Z", ":ro,z", ":rshared"])
ordinary_binds = st.builds(
    lambda host, ctr, opt: f"{host}:{ctr}{opt}",
    st.from_regex(r"/(srv|var|home|tmp)/[a-z0-9_]{1,10}", fullmatch=True)
    | st.from_regex(r"[a-z][a-z0-9_]{1,10}", fullmatch=True),
    container_paths, options,
)
flocker_binds = st.builds(lambda name, ctr, opt: (name, f"/flocker/{name}:{ctr}{opt}"),
                          names, container_paths, options)


@pytest.mark.parametrize("name", ["demo", "a", "db-1", "my_volume.v2", "9lives", "x" * 255])
def test_valid_names_are_accepted(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("name, reason", [
    ("", "empty"),
    (".", "not a name"),
    ("..", "not a name"),
    ("a/b", "nested"),
    ("demo/", "must not end with '/'"),
    ("x" * 256, "at most 255"),
    ("-dash", "starting with a letter or digit"),
    (".hidden", "starting with a letter or digit"),
    ("sp ace", "use letters, digits"),
    ("semi;colon", "use letters, digits"),
    ("ünïcode", "use letters, digits"),
])
def test_invalid_names_are_refused_with_the_rule_broken(name, reason):
    with pytest.raises(InvalidVolumeName, match=reason):
        validate_name(name)


def test_binds_mounts_and_their_order_are_found():
    body = {"HostConfig": {
        "Binds": ["/srv/a:/a", "/flocker/demo:/data:ro", "named:/n", "/flocker/demo:/again"],
        "Mounts": [
            {"Type": "volume", "Source": "/flocker/ignored", "Target": "/v"},
            {"Type": "bind", "Source": "/flocker/logs", "Target": "/logs"},
        ],
    }}
    uses = find_create_volumes(body)
    assert uses == [
        VolumeUse("demo", "Binds", 1), VolumeUse("demo", "Binds", 3),
        VolumeUse("logs", "Mounts", 1),
    ]
    assert unique_names(uses) == ["demo", "logs"]


def test_flocker_root_itself_and_lookalikes_are_not_ours():
    body = {"HostConfig": {"Binds": ["/flocker:/x", "/flockery/a:/y", "flocker/a:/z"]}}
    assert find_create_volumes(body) == []


def test_body_without_host_config_has_no_volumes():
    assert find_create_volumes({"Image": "busybox"}) == []
    assert find_create_volumes({"HostConfig": None}) == []


@pytest.mark.parametrize("body, message", [
    ([], "must be a JSON object"),
    ({"HostConfig": []}, "HostConfig must be a JSON object"),
    ({"HostConfig": {"Binds": "/flocker/a:/a"}}, "HostConfig.Binds must be a list"),
    ({"HostConfig": {"Binds": [1]}}, "entries must be strings"),
    ({"HostConfig": {"Mounts": ["x"]}}, "entries must be objects"),
])
def test_malformed_bodies_are_refused(body, message):
    with pytest.raises(InvalidRequest, match=message):
        find_create_volumes(body)


def test_invalid_flocker_name_in_a_bind_is_refused():
    with pytest.raises(InvalidVolumeName, match="nested"):
        find_create_volumes({"HostConfig": {"Binds": ["/flocker/a/b:/data"]}})
    with pytest.raises(InvalidVolumeName, match="not a name"):
        find_create_volumes({"HostConfig": {"Mounts": [
            {"Type": "bind", "Source": "/flocker/..", "Target": "/d"}]}})


def test_legacy_start_body_binds():
    body = {"Binds": ["/flocker/old:/data:rw", "/srv:/srv"], "Privileged": False}
    uses = find_legacy_start_volumes(body)
    assert uses == [VolumeUse("old", "LegacyBinds", 0)]
    rewritten = rewrite(body, uses, {"old": "/real/old"})
    assert rewritten == {"Binds": ["/real/old:/data:rw", "/srv:/srv"], "Privileged": False}
    assert body["Binds"][0] == "/flocker/old:/data:rw"


def test_the_acceptance_example_rewrites_only_flocker_sources():
    body = {
        "Image": "busybox", "Cmd": ["sh"], "Labels": {"a": "b"},
        "HostConfig": {
            "Binds": ["/srv/web:/web", "/flocker/demo:/data:ro", "/etc/hosts:/h:ro,z"],
            "Mounts": [{"Type": "bind", "Source": "/flocker/logs", "Target": "/logs",
                        "ReadOnly": True, "BindOptions": {"Propagation": "rprivate"}}],
            "NetworkMode": "default",
        },
    }
    original = json.loads(json.dumps(body))
    uses = find_create_volumes(body)
    rewritten = rewrite(body, uses, {"demo": "/var/lib/d/1", "logs": "/var/lib/d/2"})
    assert rewritten["HostConfig"]["Binds"] == [
        "/srv/web:/web", "/var/lib/d/1:/data:ro", "/etc/hosts:/h:ro,z"]
    assert rewritten["HostConfig"]["Mounts"] == [{
        "Type": "bind", "Source": "/var/lib/d/2", "Target": "/logs", "ReadOnly": True,
        "BindOptions": {"Propagation": "rprivate"}}]
    rest = {k: v for k, v in rewritten["HostConfig"].items() if k not in ("Binds", "Mounts")}
    assert rest == {"NetworkMode": "default"}
    assert {k: v for k, v in rewritten.items() if k != "HostConfig"} == {
        k: v for k, v in original.items() if k != "HostConfig"}
    assert body == original, "the input body is not modified"


@given(
    st.lists(st.one_of(ordinary_binds.map(lambda b: (None, b)), flocker_binds), max_size=8),
    st.lists(st.one_of(
        st.builds(lambda n, t: (n, {"Type": "bind", "Source": f"/flocker/{n}", "Target": t}),
                  names, container_paths),
        st.builds(lambda t: (None, {"Type": "bind", "Source": "/srv/x", "Target": t}),
                  container_paths),
        st.builds(lambda n, t: (None, {"Type": "volume", "Source": n, "Target": t}),
                  names, container_paths),
    ), max_size=4),
    st.dictionaries(st.sampled_from(["Image", "Cmd", "Env", "Labels"]),
                    st.text(max_size=10) | st.lists(st.text(max_size=5), max_size=3)),
)
def test_rewrite_changes_flocker_sources_and_nothing_else(binds, mounts, extra):
    body = dict(extra, HostConfig={"Binds": [b for _, b in binds],
                                   "Mounts": [m for _, m in mounts], "Privileged": False})
    before = json.dumps(body)
    uses = find_create_volumes(body)
    paths = {name: f"/data/{index}" for index, name in enumerate(unique_names(uses))}
    rewritten = json.loads(json.dumps(rewrite(body, uses, paths)))
    assert json.dumps(body) == before
    assert {k: v for k, v in rewritten.items() if k != "HostConfig"} == extra
    assert rewritten["HostConfig"]["Privileged"] is False
    for (name, bind), new in zip(binds, rewritten["HostConfig"]["Binds"], strict=True):
        if name is None:
            assert new == bind
        else:
            assert new == paths[name] + bind[len(f"/flocker/{name}"):]
    for (name, mount), new in zip(mounts, rewritten["HostConfig"]["Mounts"], strict=True):
        expected = dict(mount, Source=paths[name]) if name is not None else mount
        assert new == expected
    assert set(paths) == {n for n, _ in binds + mounts if n is not None}


@pytest.mark.parametrize("method, target, create, start", [
    ("POST", "/v1.41/containers/create", True, False),
    ("POST", "/v1.41/containers/create?name=web", True, False),
    ("POST", "/containers/create", True, False),
    ("POST", "/v1/containers/create", True, False),
    ("GET", "/v1.41/containers/create", False, False),
    ("POST", "/v1.41/containers/abc/start", False, True),
    ("POST", "/containers/abc/start", False, True),
    ("POST", "/v1.41/containers/abc/stop", False, False),
    ("POST", "/v1.41/containers/create/extra", False, False),
])
def test_which_requests_are_creates_and_starts(method, target, create, start):
    assert is_container_create(method, target) is create
    assert is_container_start(method, target) is start
