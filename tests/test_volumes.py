import json

import pytest
from hypothesis import given, strategies as st

from powerstripflocker.frontends.adapter import HookError, volume_uses
from powerstripflocker.protocol.hooks import ClientRequest
from powerstripflocker.protocol.docker_json import (
    MAX_JSON_DEPTH, InvalidRequest, NotJSON, check_json_depth, decode_body,
)
from powerstripflocker.core.volumes import (
    InvalidVolumeName, VolumeUse, clean_path, find_create_volumes, find_legacy_start_volumes,
    is_container_create, is_container_start, rewrite, unique_names, validate_name, volume_name,
)

names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,30}", fullmatch=True).filter(
    lambda name: name not in (".", "..")
)
container_paths = st.from_regex(r"/[a-z][a-z0-9/_]{0,15}", fullmatch=True)
options = st.sampled_from(["", ":ro", ":rw", ":z", ":Z", ":ro,z", ":rshared"])
flocker_modes = st.sampled_from(["", "ro", "rw", "rshared", "ro,rslave", "private,rw",
                                 "cached", "rprivate,ro,delegated"])
ordinary_binds = st.builds(
    lambda host, ctr, opt: f"{host}:{ctr}{opt}",
    st.from_regex(r"/(srv|var|home|tmp)/[a-z0-9_]{1,10}", fullmatch=True)
    | st.from_regex(r"[a-z][a-z0-9_]{1,10}", fullmatch=True),
    container_paths, options,
) | st.sampled_from(["/flocker/anonymous", "/flockery/a:/a", "/srv/flocker/a:/b"])
# Real paths, as the agent gives them: never under /flocker.
real_paths = st.from_regex(r"/var/lib/flocker-data/[a-f0-9]{8}", fullmatch=True)


def spellings(name):
    """Strategy: sources dockerd cleans to /flocker/name (extra slashes, '.', 'x/..')."""
    slashes = st.sampled_from(["/", "//", "/./", "/././", "///"])
    detours = st.lists(st.sampled_from(["tmp/../", "a/b/../../", "../", "./"]), max_size=2)
    return st.builds(lambda lead, detour, middle, tail: f"{lead}{''.join(detour)}flocker"
                     f"{middle}{name}{tail}",
                     slashes, detours, slashes, st.sampled_from(["", "/", "//", "/."]))


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


@pytest.mark.parametrize("path, cleaned", [
    # Go's own path.Clean examples and tests.
    ("", "."), (".", "."), ("/", "/"), ("//", "/"), ("abc", "abc"), ("abc/def", "abc/def"),
    ("a/b/c", "a/b/c"), ("..", ".."), ("../..", "../.."), ("../../abc", "../../abc"),
    ("/abc", "/abc"), ("/../abc", "/abc"), ("abc/", "abc"), ("/abc/", "/abc"),
    ("abc//def//ghi", "abc/def/ghi"), ("//abc", "/abc"), ("///abc///", "/abc"),
    ("abc/./def", "abc/def"), ("/./abc/def", "/abc/def"), ("abc/.", "abc"),
    ("abc/def/ghi/../jkl", "abc/def/jkl"), ("abc/def/..", "abc"), ("abc/def/../..", "."),
    ("/abc/def/../..", "/"), ("abc/def/../../..", ".."), ("/abc/def/../../..", "/"),
    ("abc/def/../../../ghi/jkl/../../../mno", "../../mno"), ("abc/./../def", "def"),
    ("abc//./../def", "def"), ("abc/../../././../def", "../../def"),
])
def test_paths_are_cleaned_as_go_cleans_them(path, cleaned):
    assert clean_path(path) == cleaned


@pytest.mark.parametrize("source", [
    "/flocker/x", "//flocker/x", "/./flocker/x", "/tmp/../flocker/x", "/flocker/x/",
    "/flocker//x", "/flocker/./x", "/../flocker/x", "/flocker/x/.", "///flocker///x///",
])
def test_every_spelling_of_a_volume_is_that_volume(source):
    assert volume_name(source) == "x"
    body = {"HostConfig": {"Binds": [f"{source}:/d"],
                           "Mounts": [{"Type": "bind", "Source": source, "Target": "/m"}]}}
    assert unique_names(find_create_volumes(body)) == ["x"]


@given(names.flatmap(lambda name: st.tuples(st.just(name), spellings(name))))
def test_any_spelling_that_cleans_to_a_volume_is_recognised(named):
    name, source = named
    assert clean_path(source) == f"/flocker/{name}"
    body = {"HostConfig": {"Binds": [f"{source}:/data:ro"]}}
    assert find_create_volumes(body) == [VolumeUse(name, "Binds", 0)]
    assert find_legacy_start_volumes({"Binds": [f"{source}:/data"]}) == [
        VolumeUse(name, "LegacyBinds", 0)]


@pytest.mark.parametrize("source", [
    "/flocker", "/flocker/", "//flocker//", "/flocker/.", "/tmp/../flocker", "/./flocker/./",
])
def test_the_flocker_root_itself_is_refused(source):
    for body in ({"HostConfig": {"Binds": [f"{source}:/d"]}},
                 {"HostConfig": {"Mounts": [{"Type": "bind", "Source": source,
                                             "Target": "/d"}]}}):
        with pytest.raises(InvalidVolumeName, match="never the /flocker root itself"):
            find_create_volumes(body)


@pytest.mark.parametrize("source, reason", [
    ("/flocker/..", "'..' is not a name"),
    ("/flocker/../etc", "must not climb out of /flocker"),
    ("/flocker/x/../y", "must not climb out of /flocker"),
    ("/flocker/x/..", "must not climb out of /flocker"),
    ("/flocker/a/b", "no nested volumes"),
    ("/tmp/../flocker/a/b", "no nested volumes"),
    ("/flocker/-x", "starting with a letter or digit"),
])
def test_names_that_are_no_names_are_refused(source, reason):
    with pytest.raises(InvalidVolumeName, match=reason):
        find_create_volumes({"HostConfig": {"Binds": [f"{source}:/data"]}})


def test_one_part_binds_and_lookalikes_are_not_ours():
    body = {"HostConfig": {"Binds": [
        "/flocker/x", "//flocker/y", "/flockery/a:/y", "flocker/a:/z", "/srv/flocker/a:/s",
        "/flocker.d/a:/f",
    ]}}
    assert find_create_volumes(body) == []
    assert find_legacy_start_volumes({"Binds": ["/flocker/x"]}) == []


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


def test_body_without_host_config_has_no_volumes():
    assert find_create_volumes({"Image": "busybox"}) == []
    assert find_create_volumes({"HostConfig": None}) == []
    assert find_create_volumes({"HostConfig": {"Binds": None, "Mounts": None}}) == []


@pytest.mark.parametrize("body, message", [
    ([], "must be a JSON object"),
    ({"HostConfig": []}, "HostConfig must be a JSON object"),
    ({"HostConfig": {"Binds": "/flocker/a:/a"}}, "HostConfig.Binds must be a list"),
    ({"HostConfig": {"Binds": [1]}}, "entries must be strings"),
    ({"HostConfig": {"Mounts": ["x"]}}, "entries must be objects"),
    ({"HostConfig": {"Mounts": [{"Type": "bind", "Source": "/flocker/a", "Target": "/a",
                                 "BindOptions": "rshared"}]}}, "BindOptions must be an object"),
])
def test_malformed_bodies_are_refused(body, message):
    with pytest.raises(InvalidRequest, match=message):
        find_create_volumes(body)


def rewritten_host_config(binds=(), mounts=None, paths=None):
    host_config = {"Binds": list(binds)}
    if mounts is not None:
        host_config["Mounts"] = mounts
    body = {"Image": "busybox", "HostConfig": host_config}
    uses = find_create_volumes(body)
    paths = paths or {name: f"/real/{name}" for name in unique_names(uses)}
    return rewrite(body, uses, paths)["HostConfig"]


@pytest.mark.parametrize("mode, mount", [
    ("", {"ReadOnly": False}),
    (":", {"ReadOnly": False}),
    (":rw", {"ReadOnly": False}),
    (":ro", {"ReadOnly": True}),
    (":rshared", {"ReadOnly": False, "BindOptions": {"Propagation": "rshared"}}),
    (":ro,rslave", {"ReadOnly": True, "BindOptions": {"Propagation": "rslave"}}),
    (":private,rw", {"ReadOnly": False, "BindOptions": {"Propagation": "private"}}),
    (":cached,ro", {"ReadOnly": True, "Consistency": "cached"}),
    (":ro-non-recursive", {"ReadOnly": True, "BindOptions": {"ReadOnlyNonRecursive": True}}),
    (":rshared,rro", {"ReadOnly": True, "BindOptions": {"ReadOnlyForceRecursive": True,
                                                        "Propagation": "rshared"}}),
    (":ro-force-recursive", {"ReadOnly": True,
                             "BindOptions": {"ReadOnlyForceRecursive": True}}),
])
def test_a_flocker_bind_becomes_a_bind_mount_with_the_same_meaning(mode, mount):
    host_config = rewritten_host_config(["/srv:/srv", f"/flocker/x:/data{mode}", "n:/n:ro"])
    assert host_config == {
        "Binds": ["/srv:/srv", "n:/n:ro"],
        "Mounts": [dict({"Type": "bind", "Source": "/real/x", "Target": "/data"}, **mount)],
    }


@pytest.mark.parametrize("bind, message", [
    ("/flocker/x:/d:z", "SELinux relabel option 'z'"),
    ("/flocker/x:/d:ro,Z", "SELinux relabel option 'Z'"),
    ("/flocker/x:/d:nocopy", "'nocopy' on '/flocker/x' is not valid"),
    ("/flocker/x:/d:ro,rw", "invalid mode 'ro,rw'"),
    ("/flocker/x:/d:ro,rro", "invalid mode 'ro,rro'"),
    ("/flocker/x:/d:rshared,rslave", "invalid mode"),
    ("/flocker/x:/d:ro,", "invalid mode 'ro,'"),
    ("/flocker/x:/d:bogus", "invalid mode 'bogus'"),
    ("/flocker/x:/d:ro:extra", "use /flocker/NAME:CONTAINER_PATH"),
    ("/flocker/x:ro", "invalid container path 'ro'"),
    ("/flocker/x:", "invalid container path ''"),
    ("/flocker/x:/", "invalid container path '/'"),
    ("/flocker/x:/a/..", "invalid container path '/a/..'"),
    ("/flocker/x:relative", "must be absolute"),
])
def test_modes_and_container_paths_a_mount_cannot_carry_are_refused(bind, message):
    with pytest.raises(InvalidRequest, match=message):
        find_create_volumes({"HostConfig": {"Binds": [bind]}})


def test_flocker_mounts_are_rewritten_in_place_keeping_their_options():
    mounts = [
        {"Type": "volume", "Source": "named", "Target": "/v"},
        {"Type": "bind", "Source": "//flocker/logs/", "Target": "/logs", "ReadOnly": True,
         "BindOptions": {"Propagation": "rshared", "NonRecursive": True,
                         "CreateMountpoint": True}, "Consistency": "cached"},
        {"type": "bind", "source": "/flocker/lower", "target": "/l"},
    ]
    host_config = rewritten_host_config(["/flocker/demo:/d:ro"], mounts)
    assert host_config == {"Binds": [], "Mounts": [
        {"Type": "volume", "Source": "named", "Target": "/v"},
        {"Type": "bind", "Source": "/real/logs", "Target": "/logs", "ReadOnly": True,
         "BindOptions": {"Propagation": "rshared", "NonRecursive": True},
         "Consistency": "cached"},
        {"Type": "bind", "Source": "/real/lower", "target": "/l"},
        {"Type": "bind", "Source": "/real/demo", "Target": "/d", "ReadOnly": True},
    ]}
    assert mounts[1]["BindOptions"]["CreateMountpoint"] is True, "the input is not modified"


def test_mounts_only_leave_binds_untouched():
    body = {"HostConfig": {"Mounts": [{"Type": "bind", "Source": "/flocker/m",
                                       "Target": "/m"}], "Privileged": False}}
    uses = find_create_volumes(body)
    assert rewrite(body, uses, {"m": "/real/m"}) == {"HostConfig": {
        "Mounts": [{"Type": "bind", "Source": "/real/m", "Target": "/m"}],
        "Privileged": False}}


@pytest.mark.parametrize("body", [
    {"hostconfig": {"binds": ["/flocker/x:/d"]}},
    {"HOSTCONFIG": {"BINDS": ["/flocker/x:/d"]}},
    {"Hoſtconfig": {"Bındſ": ["/flocker/x:/d"]}},
    {"HostConfig": {"mounts": [{"TYPE": "bind", "SOURCE": "/flocker/x", "TARGET": "/d"}]}},
    {"HostConfig": {"Mountſ": [{"type": "bind", "ſource": "/flocker/x", "target": "/d"}]}},
])
def test_keys_are_matched_as_gos_decoder_matches_them(body):
    assert unique_names(find_create_volumes(body)) == ["x"]
    rewritten = rewrite(body, find_create_volumes(body), {"x": "/real/x"})
    assert list(rewritten) == ["HostConfig"], "one canonical key"
    host_config = rewritten["HostConfig"]
    assert [key for key in host_config if key.lower() in ("binds", "mounts")] == [
        key for key in ("Binds", "Mounts") if key in host_config]
    [mount] = host_config["Mounts"]
    assert (mount["Type"], mount["Source"]) == ("bind", "/real/x")
    assert find_create_volumes(rewritten) == []


def test_lookalike_keys_that_go_does_not_fold_are_not_read():
    body = {"HostConfig": {"B\u0456nds": ["/flocker/x:/d"], "M\u043eunts": [
        {"Type": "bind", "Source": "/flocker/y", "Target": "/y"}], "Binds\u200b": []},
        "HostConfig ": {"Binds": ["/flocker/z:/z"]}}
    assert find_create_volumes(body) == []
    assert rewrite(body, [], {}) == body


@pytest.mark.parametrize("body, message", [
    ({"HostConfig": {}, "hostconfig": {"Binds": ["/flocker/x:/d"]}},
     "'HostConfig' and 'hostconfig'"),
    ({"HostConfig": {"Binds": [], "binds": ["/flocker/x:/d"]}}, "'Binds' and 'binds'"),
    ({"HostConfig": {"Mounts": [], "MOUNTS": []}}, "send one 'Mounts'"),
    ({"HostConfig": {"Mounts": [{"Type": "bind", "Source": "/srv", "source": "/flocker/x",
                                 "Target": "/d"}]}}, "'Source' and 'source'"),
    ({"HostConfig": {"Mounts": [{"Type": "volume", "type": "bind", "Source": "/flocker/x",
                                 "Target": "/d"}]}}, "'Type' and 'type'"),
    ({"HostConfig": {"Mounts": [{"Type": "bind", "Source": "/flocker/x", "Target": "/d",
                                 "BindOptions": {"CreateMountpoint": False,
                                                 "createmountpoint": True}}]}},
     "'CreateMountpoint' and 'createmountpoint'"),
])
def test_two_spellings_of_one_field_are_refused_as_ambiguous(body, message):
    with pytest.raises(InvalidRequest, match=message):
        find_create_volumes(body)


@pytest.mark.parametrize("body", [
    {"Binds": ["/flocker/x:/d"]},
    {"binds": ["//flocker/x:/d"]},
    {"Mounts": [{"Type": "bind", "Source": "/flocker/x", "Target": "/d"}]},
    {"Binds": ["/flocker:/d"]},
])
def test_a_create_bodys_top_level_flocker_binds_are_refused(body):
    with pytest.raises(InvalidRequest, match="top-level"):
        find_create_volumes(dict(body, Image="busybox"))


def test_a_create_bodys_other_top_level_binds_are_left_alone():
    body = {"Binds": ["/srv:/srv", "/flocker/anonymous", 7], "Mounts": "junk",
            "HostConfig": {"Binds": ["/flocker/x:/d"]}}
    assert find_create_volumes(body) == [VolumeUse("x", "Binds", 0)]
    assert {k: v for k, v in rewrite(body, find_create_volumes(body), {"x": "/r"}).items()
            if k != "HostConfig"} == {"Binds": ["/srv:/srv", "/flocker/anonymous", 7],
                                      "Mounts": "junk"}


def test_legacy_start_body_binds_stay_binds():
    body = {"Binds": ["//flocker/old/:/data:rw,z", "/srv:/srv", "/flocker/anon"],
            "Privileged": False}
    uses = find_legacy_start_volumes(body)
    assert uses == [VolumeUse("old", "LegacyBinds", 0)]
    rewritten = rewrite(body, uses, {"old": "/real/old"})
    assert rewritten == {"Binds": ["/real/old:/data:rw,z", "/srv:/srv", "/flocker/anon"],
                         "Privileged": False}
    assert body["Binds"][0] == "//flocker/old/:/data:rw,z"


def test_legacy_start_body_keys_any_case_and_its_mounts():
    body = {"binds": ["/flocker/a:/a"],
            "mounts": [{"Type": "bind", "Source": "/flocker/b", "Target": "/b"}]}
    uses = find_legacy_start_volumes(body)
    assert uses == [VolumeUse("a", "LegacyBinds", 0), VolumeUse("b", "LegacyMounts", 0)]
    assert rewrite(body, uses, {"a": "/real/a", "b": "/real/b"}) == {
        "Binds": ["/real/a:/a"],
        "Mounts": [{"Type": "bind", "Source": "/real/b", "Target": "/b"}]}
    with pytest.raises(InvalidRequest, match="ambiguous"):
        find_legacy_start_volumes({"Binds": [], "binds": ["/flocker/a:/a"]})


def test_decode_body_refuses_what_dockerd_could_read_otherwise():
    assert decode_body('{"HostConfig": {"Binds": ["/flocker/x:/d"]}}') == {
        "HostConfig": {"Binds": ["/flocker/x:/d"]}}
    for text, message in [
        ('{"HostConfig": {}, "HostConfig": {"Binds": []}}', "'HostConfig' appears twice"),
        ('{"Labels": {"a": "1", "a": "2"}}', "'a' appears twice"),
        ('{"Labels": {"a": "1", "A": "2"}}', None),
    ]:
        if message is None:
            assert decode_body(text) == {"Labels": {"a": "1", "A": "2"}}, "map keys differ"
        else:
            with pytest.raises(InvalidRequest, match=message):
                decode_body(text)
    for text in ["{not json", "", '{"a": NaN}', '{"a": Infinity}', "\ufeff{}", '{"a": 1,}']:
        with pytest.raises(NotJSON):
            decode_body(text)
    with pytest.raises(InvalidRequest, match="content after its JSON value") as refused:
        decode_body('{"Binds": ["/flocker/x:/d"]} trailing')
    assert not isinstance(refused.value, NotJSON), "a start body like it is not passed on"


def test_decode_body_bounds_the_depth_without_recursing():
    assert decode_body("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH) is not None
    for depth in (MAX_JSON_DEPTH + 1, 100_000):
        with pytest.raises(InvalidRequest, match=f"deeper than {MAX_JSON_DEPTH}") as refused:
            decode_body('{"a": ' * depth + "1" + "}" * depth)
        assert not isinstance(refused.value, NotJSON)
    brackets_in_strings = json.dumps({"Cmd": ["[" * 1000, '\\"{' * 1000]})
    assert decode_body(brackets_in_strings) == json.loads(brackets_in_strings)


def test_depth_is_checked_on_bytes_too():
    check_json_depth('{"a": ["\u00e9[[[", "\\"["]}'.encode() + b"\xff")
    with pytest.raises(InvalidRequest, match="nested deeper"):
        check_json_depth(b"\xff" + b"[" * (MAX_JSON_DEPTH + 1))


@pytest.mark.parametrize("request_target, body, message", [
    ("/v1.41/containers/create", '{"HostConfig": {}, "HostConfig": {"Binds": ["/flocker/x:/d"]}}',
     "appears twice"),
    ("/v1.41/containers/create", '{"HostConfig": {"Binds": [], "binds": ["/flocker/x:/d"]}}',
     "ambiguous"),
    ("/v1.41/containers/create", '{"a": ' * 100_000 + "1" + "}" * 100_000, "nested deeper"),
    ("/v1.23/containers/abc/start", '{"Binds": ["/srv:/s"], "Binds": ["/flocker/x:/d"]}',
     "appears twice"),
    ("/v1.23/containers/abc/start", "[" * 100_000, "nested deeper"),
    ("/v1.23/containers/abc/start", '{"Binds": ["/flocker/x:/d"]} {}', "content after"),
    ("/v1.41/containers/create", '{"HostConfig": {"Binds": ["/flocker:/d"]}}',
     "never the /flocker root itself"),
])
def test_the_adapter_answers_refused_bodies_with_a_400_and_the_reason(
        request_target, body, message):
    with pytest.raises(HookError) as refused:
        volume_uses(ClientRequest("POST", request_target, body))
    assert refused.value.status == 400
    assert message in refused.value.message


def test_a_legacy_start_body_that_is_not_json_passes_as_before():
    assert volume_uses(ClientRequest("POST", "/v1.23/containers/abc/start", "{oops")) is None


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
    assert rewritten["HostConfig"] == {
        "Binds": ["/srv/web:/web", "/etc/hosts:/h:ro,z"],
        "Mounts": [
            {"Type": "bind", "Source": "/var/lib/d/2", "Target": "/logs", "ReadOnly": True,
             "BindOptions": {"Propagation": "rprivate"}},
            {"Type": "bind", "Source": "/var/lib/d/1", "Target": "/data", "ReadOnly": True},
        ],
        "NetworkMode": "default",
    }
    assert {k: v for k, v in rewritten.items() if k != "HostConfig"} == {
        k: v for k, v in original.items() if k != "HostConfig"}
    assert body == original, "the input body is not modified"


flocker_binds = st.builds(
    lambda name, source, ctr, mode: (name, f"{source}:{ctr}" + (f":{mode}" if mode else ""),
                                     ctr, mode),
    names, st.sampled_from(["/flocker/{}", "//flocker/{}/", "/tmp/../flocker/{}"]),
    container_paths, flocker_modes,
).map(lambda t: (t[0], t[1].format(t[0]), t[2], t[3]))


@given(
    st.lists(st.one_of(ordinary_binds.map(lambda b: (None, b, None, None)), flocker_binds),
             max_size=8),
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
    real_paths,
)
def test_rewrite_moves_flocker_binds_to_mounts_and_changes_nothing_else(
        binds, mounts, extra, real_root):
    body = dict(extra, HostConfig={"Binds": [b for _, b, _, _ in binds],
                                   "Mounts": [m for _, m in mounts], "Privileged": False})
    before = json.dumps(body)
    uses = find_create_volumes(body)
    paths = {name: f"{real_root}/{index}" for index, name in enumerate(unique_names(uses))}
    rewritten = decode_body(json.dumps(rewrite(body, uses, paths)))
    assert json.dumps(body) == before
    assert {k: v for k, v in rewritten.items() if k != "HostConfig"} == extra
    host_config = rewritten["HostConfig"]
    assert host_config["Privileged"] is False
    assert host_config["Binds"] == [bind for name, bind, _, _ in binds if name is None]
    expected_mounts = [dict(mount, Source=paths[name]) if name is not None else mount
                       for name, mount in mounts]
    for name, _, target, mode in binds:
        if name is not None:
            options = mode.split(",") if mode else []
            mount = {"Type": "bind", "Source": paths[name], "Target": target,
                     "ReadOnly": "ro" in options}
            propagation = [o for o in options if o.endswith(("private", "shared", "slave"))]
            if propagation:
                mount["BindOptions"] = {"Propagation": propagation[0]}
            consistency = [o for o in options if o in ("cached", "delegated")]
            if consistency:
                mount["Consistency"] = consistency[0]
            expected_mounts.append(mount)
    assert host_config["Mounts"] == expected_mounts
    assert set(paths) == {n for n, *_ in binds + mounts if n is not None}
    assert find_create_volumes(rewritten) == [], "nothing of /flocker is left"
    assert rewrite(rewritten, [], {}) == rewritten, "a second pass changes nothing"


# -- key spellings and repeats, against a model of Go's decoder ---------------------

def spelled(field):
    """Strategy: spellings of field that Go's decoder matches to it."""
    special = {"k": "\u212a", "s": "\u017f", "i": "\u0131"}
    return st.lists(st.booleans(), min_size=len(field), max_size=len(field)).flatmap(
        lambda flips: st.lists(st.booleans(), min_size=len(field), max_size=len(field)).map(
            lambda odd: "".join(
                special[c.lower()] if odd[i] and c.lower() in special
                else (c.swapcase() if flips[i] else c) for i, c in enumerate(field))))


class Pairs(list):
    """A JSON object as written: its (key, value) pairs, repeats and all."""


def encode(value):
    if isinstance(value, Pairs):
        return "{" + ", ".join(f"{json.dumps(k)}: {encode(v)}" for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(map(encode, value)) + "]"
    return json.dumps(value)


def fold(key):
    return key.translate({0x212a: "k", 0x17f: "s", 0x131: "i"}).lower()


def go_decode_into(current, value):
    """What Go leaves in a field after decoding value into it: objects merge into what
    is there, arrays decode element by element into what is there, scalars replace."""
    if isinstance(value, Pairs):
        merged = dict(current) if isinstance(current, dict) else {}
        for key, item in value:
            merged[fold(key)] = go_decode_into(merged.get(fold(key)), item)
        return merged
    if isinstance(value, list):
        old = current if isinstance(current, list) else []
        return [go_decode_into(old[i] if i < len(old) else None, item)
                for i, item in enumerate(value)]
    return value


def sources_dockerd_binds(text):
    """The bind sources dockerd would act on, read with Go's decoding rules."""
    document = go_decode_into(None, json.loads(
        text, object_pairs_hook=Pairs))
    host_config = document.get("hostconfig") or {}
    sources = [bind.split(":")[0] for bind in host_config.get("binds") or []
               if isinstance(bind, str) and bind.count(":") >= 1]
    sources += [mount.get("source") for mount in host_config.get("mounts") or []
                if isinstance(mount, dict) and mount.get("type") == "bind"]
    return [source for source in sources if isinstance(source, str)]


def key_pairs(field, values, repeats):
    """Strategy: one spelling of field with a value, or, with repeats, one to three."""
    return st.lists(st.tuples(spelled(field), values), min_size=1,
                    max_size=3 if repeats else 1)


def create_texts(repeats):
    """Strategy: create bodies as text, their keys spelled any way Go matches."""
    sources = st.sampled_from(["/flocker/x", "//flocker/y", "/srv/z", "/tmp/../flocker/w"])
    mounts = st.builds(
        lambda types, sources, targets: Pairs(types + sources + targets),
        key_pairs("Type", st.sampled_from(["bind", "volume"]), repeats),
        key_pairs("Source", sources, repeats), key_pairs("Target", st.just("/t"), repeats))
    host_configs = st.builds(
        lambda binds, mounts: Pairs(binds + mounts),
        key_pairs("Binds", st.lists(st.builds("{}:/d".format, sources), max_size=2), repeats),
        key_pairs("Mounts", st.lists(mounts, max_size=2), repeats))
    return st.builds(lambda pairs: encode(Pairs([("Image", "busybox")] + pairs)),
                     key_pairs("HostConfig", host_configs, repeats))


def flocker_names_dockerd_sees(text):
    return sorted({clean_path(source)[len("/flocker/"):]
                   for source in sources_dockerd_binds(text)
                   if clean_path(source).startswith("/flocker/")})


def rewritten_text(body, uses):
    return json.dumps(rewrite(body, uses, {name: f"/real/{name}"
                                           for name in unique_names(uses)}))


@given(create_texts(repeats=False))
def test_any_key_spelling_is_read_and_rewritten_as_dockerd_reads_it(text):
    body = decode_body(text)
    uses = find_create_volumes(body)
    assert sorted(unique_names(uses)) == flocker_names_dockerd_sees(text)
    after = rewritten_text(body, uses)
    assert flocker_names_dockerd_sees(after) == []
    assert sorted(sources_dockerd_binds(after)) == sorted(
        f"/real/{clean_path(s)[len('/flocker/'):]}" if clean_path(s).startswith("/flocker/")
        else s for s in sources_dockerd_binds(text))


@given(create_texts(repeats=True))
def test_no_key_spelling_or_repeat_lets_a_flocker_source_through(text):
    try:
        body = decode_body(text)
        uses = find_create_volumes(body)
    except InvalidRequest:
        return
    assert sorted(unique_names(uses)) == flocker_names_dockerd_sees(text)
    assert flocker_names_dockerd_sees(rewritten_text(body, uses)) == []


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
