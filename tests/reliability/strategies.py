"""Hypothesis strategies for bad input: hook envelopes, Docker create bodies, names."""

import json

from hypothesis import strategies as st

from powerstripflocker.frontends.adapter import HookError, parse_hook, volume_uses
from powerstripflocker.protocol.docker_json import InvalidRequest
from powerstripflocker.core.volumes import volume_name

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2 ** 70, max_value=2 ** 70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=10,
)


def is_invalid_name(name):
    """True if /flocker/NAME is refused: Docker's path cleaning makes some names (a/)
    spellings of a valid one."""
    try:
        volume_name(f"/flocker/{name}")
    except InvalidRequest:
        return True
    return False


# Names a user might type that must be refused, and anything else hypothesis finds that
# validate_name refuses. No ':' (in a -v bind it ends the host path: "/flocker/a:b" is "a").
invalid_names = (
    st.sampled_from(["", ".", "..", "a/b", "a/", "/", "../etc", "..%2f", "x" * 256, " a",
                     "-a", "_a", ".a", "a b", "a\x00b", "vol\u00e9", "a\nb", "a\\b", "*",
                     "a?b", "$(id)", "`id`", "a;b", "~root", "\u202ename"])
    | st.text(max_size=300)
).filter(lambda name: ":" not in name and is_invalid_name(name))

valid_names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,10}", fullmatch=True)
flocker_sources = st.builds(
    lambda name, rest: f"/flocker/{name}{rest}", valid_names | st.text(max_size=12),
    st.sampled_from(["", "/", "/x", "//", "/.."]))
bind_strings = (
    st.builds(lambda source, tail: source + tail, flocker_sources | st.text(max_size=20),
              st.sampled_from(["", ":/d", ":/d:ro", ":", "::", ":/d:z,ro", ":/d:rw:extra"]))
    | st.text(max_size=30))
mounts = st.lists(
    st.fixed_dictionaries({}, optional={
        "Type": st.sampled_from(["bind", "volume", "tmpfs", "BIND"]) | json_values,
        "Source": flocker_sources | st.text(max_size=20) | json_values,
        "Target": st.text(max_size=10) | json_values,
        "ReadOnly": json_values,
        "BindOptions": json_values,
    }) | json_values, max_size=4) | json_values
host_configs = st.fixed_dictionaries({}, optional={
    "Binds": st.lists(bind_strings | json_values, max_size=4) | json_values,
    "Mounts": mounts,
    "VolumesFrom": json_values,
}) | json_values
create_bodies = st.fixed_dictionaries({}, optional={
    "Image": st.just("busybox") | json_values,
    "HostConfig": host_configs,
    "Binds": st.lists(bind_strings, max_size=3) | json_values,   # a legacy start body
    "Volumes": json_values,
}) | json_values

body_texts = create_bodies.map(json.dumps) | st.text(max_size=60) \
    | st.just('{"HostConfig": {"Binds": ["/flocker/a') | st.just("")
requests = st.sampled_from([
    "/v1.41/containers/create", "/containers/create?name=x", "/v1.23/containers/abc/start",
    "/containers/abc/start", "/v1.41/containers/json", "/_ping", "/v1.41/containers/create/",
    "/v1.41/containers/create?name=%2e%2e", "/v9999999999999999999.1/containers/create",
]) | st.text(max_size=40)
methods = st.sampled_from(["POST", "GET", "PUT", "post", ""]) | st.text(max_size=8)
envelopes = st.fixed_dictionaries({}, optional={
    "PowerstripProtocolVersion": st.sampled_from([1, 1.0, "1", 2, 0, True, None, [1]])
    | json_values,
    "Type": st.sampled_from(["pre-hook", "post-hook", "prehook", "PRE-HOOK", ""]) | json_values,
    "ClientRequest": st.fixed_dictionaries({}, optional={
        "Method": methods | json_values, "Request": requests | json_values,
        "Body": body_texts | json_values}) | json_values,
    "ServerResponse": st.fixed_dictionaries({}, optional={
        "Code": st.integers(min_value=-1, max_value=1000) | json_values,
        "Body": st.text(max_size=20) | json_values,
        "ContentType": st.sampled_from(["application/json", None]) | json_values,
    }) | json_values,
}) | json_values

# Create bodies shaped as Docker sends them, with some binds and mounts of /flocker
# volumes (valid or not) among fuzzed ones.
plausible_binds = st.lists(
    st.builds(lambda name, tail: f"/flocker/{name}{tail}", valid_names,
              st.sampled_from([":/d", ":/d:ro", ":/e:z", ""])) | bind_strings, max_size=4)
plausible_mounts = st.lists(st.fixed_dictionaries(
    {"Type": st.sampled_from(["bind", "volume"]), "Source": flocker_sources,
     "Target": st.sampled_from(["/m", "/n", ""]) | st.text(max_size=5)},
    optional={"ReadOnly": st.booleans() | json_values}), max_size=3)
plausible_bodies = st.fixed_dictionaries(
    {"Image": st.just("busybox"),
     "HostConfig": st.fixed_dictionaries({}, optional={"Binds": plausible_binds | st.none(),
                                                       "Mounts": plausible_mounts})},
    optional={"Binds": plausible_binds}).map(json.dumps)


def _create_hooks(bodies):
    return st.builds(
        lambda request, body: json.dumps({
            "PowerstripProtocolVersion": 1, "Type": "pre-hook",
            "ClientRequest": {"Method": "POST", "Request": request, "Body": body}}).encode(),
        st.sampled_from(["/v1.41/containers/create", "/containers/create?name=x",
                         "/v1.23/containers/abc/start"]),
        bodies)


# Well-formed envelopes of a create or legacy start whose Docker body is fuzzed: these
# reach the parsing of Binds and Mounts.
create_hooks = _create_hooks(plausible_bodies | body_texts | json_values)
plausible_create_hooks = _create_hooks(plausible_bodies)

raw_hooks = envelopes.map(lambda document: json.dumps(document).encode()) \
    | create_hooks | st.binary(max_size=200) \
    | st.just(b'{"PowerstripProtocolVersion": 1, "Type": "pre-hook", "ClientRequest": ') \
    | st.just(b"\xff\xfe{}") | st.just(b"[]" * 1000)


def hook_with_invalid_name(name, where):
    """A well-formed pre-hook for a container create that names /flocker/<name>."""
    host_config = {"Binds": ["/tmp:/tmp", f"/flocker/{name}:/data:ro"]} if where == "Binds" \
        else {"Mounts": [{"Type": "bind", "Source": f"/flocker/{name}", "Target": "/d"}]}
    body = {"Image": "busybox", "HostConfig": host_config}
    return json.dumps({"PowerstripProtocolVersion": 1, "Type": "pre-hook",
                       "ClientRequest": {"Method": "POST", "Request": "/v1.41/containers/create",
                                         "Body": json.dumps(body)}}).encode()


def would_place_volumes(raw):
    """True when the adapter would accept raw and make volumes local (valid input that
    legitimately creates or moves datasets); bad input never does."""
    try:
        hook = parse_hook(raw)
        return hook.type == "pre-hook" and volume_uses(hook.client_request) is not None
    except HookError:
        return False


def assert_clean_refusal(status, body, allowed=(200, 400, 413)):
    """A deliberate answer: an allowed status, JSON, a one-line message on refusal, and no
    traceback or HTML."""
    assert status in allowed, (status, body)
    text = body.decode("utf-8", "replace")
    assert "Traceback" not in text and 'File "' not in text, text
    assert "<html" not in text.lower(), text
    answer = json.loads(body)
    if status != 200:
        assert isinstance(answer, dict), answer
        message = answer.get("message", answer.get("description"))
        assert isinstance(message, str) and message and "\n" not in message, answer
    return answer
