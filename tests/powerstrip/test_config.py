"""adapters.yml: validation with clear errors, and the glob rules of matching."""

import textwrap

import pytest
from hypothesis import given, strategies as st

from powerstripflocker.powerstrip.config import (
    ConfigurationError, Hooks, NO_HOOKS, load_configuration, parse_configuration,
)

GOOD = """
version: 1
endpoints:
  "POST /*/containers/create":
    pre: [flocker, weave]
    post: [weave]
  "POST /containers/create":
    pre: [flocker]
  "POST /*/containers/*/start":
    post: [weave]
adapters:
  flocker: http://flocker/flocker-adapter
  weave: http://weave:8080/extension
  unused: https://example.com/
"""


def parse(text):
    return parse_configuration(textwrap.dedent(text))


def refused(text):
    with pytest.raises(ConfigurationError) as info:
        parse(text)
    return str(info.value)


def test_good_file_is_parsed():
    config = parse(GOOD)
    assert config.version == 1
    assert [e.pattern for e in config.endpoints] == [
        "POST /*/containers/create", "POST /containers/create", "POST /*/containers/*/start"]
    assert config.endpoints[0].pre == ("flocker", "weave")
    assert config.endpoints[0].post == ("weave",)
    assert config.endpoints[1].post == ()
    assert config.adapters["weave"] == "http://weave:8080/extension"


def test_missing_version_means_version_1():
    assert parse("endpoints: {}\nadapters: {}\n").version == 1


def test_empty_endpoints_and_adapters_are_allowed():
    config = parse("version: 1\nendpoints: {}\nadapters: {}\n")
    assert config.hooks_for("POST", "/v1.41/containers/create") is NO_HOOKS


@pytest.mark.parametrize("version", ["2", "'1'", "true", "1.5", "1.0", "null"])
def test_unknown_version_is_refused(version):
    assert "unknown version" in refused(f"version: {version}\nendpoints: {{}}\nadapters: {{}}\n")


def test_undefined_adapter_is_named():
    message = refused("""
        endpoints:
          "POST /*/containers/create":
            pre: [flocker, missing]
        adapters:
          flocker: http://f/
    """)
    assert "'missing'" in message and "not defined" in message


@pytest.mark.parametrize("method", ["post", "FETCH", "P0ST", "GET,POST", "Get"])
def test_bad_method_is_refused(method):
    message = refused(f"""
        endpoints:
          "{method} /*/containers/create":
            pre: [a]
        adapters:
          a: http://a/
    """)
    assert "bad method" in message


@pytest.mark.parametrize("method", ["GET", "HEAD", "DELETE", "*", "P*", "[GP]*"])
def test_method_globs_and_known_methods_are_accepted(method):
    parse(f"""
        endpoints:
          "{method} /x":
            pre: [a]
        adapters:
          a: http://a/
    """)


@pytest.mark.parametrize("pattern", ["POST", "POST  /x", "POST x", "/x", "POST /x y"])
def test_malformed_endpoint_keys_are_refused(pattern):
    refused(f"""
        endpoints:
          "{pattern}":
            pre: [a]
        adapters:
          a: http://a/
    """)


def test_duplicate_endpoint_is_refused():
    message = refused("""
        endpoints:
          "POST /*/containers/create":
            pre: [a]
          "POST /*/containers/create":
            post: [a]
        adapters:
          a: http://a/
    """)
    assert "duplicate key 'POST /*/containers/create'" in message
    assert "line 5" in message and "line 3" in message


def test_duplicate_keys_are_refused_at_every_level():
    assert "duplicate key 'adapters'" in refused(
        "endpoints: {}\nadapters: {}\nadapters: {a: http://a/}\n")
    assert "duplicate key 'a'" in refused(
        "endpoints: {}\nadapters:\n  a: http://a/\n  a: http://b/\n")
    assert "duplicate key 'pre'" in refused("""
        endpoints:
          "POST /x":
            pre: [a]
            pre: [a]
        adapters:
          a: http://a/
    """)


@pytest.mark.parametrize("pattern", [
    "* *", "POST /*/containers/*", "POST /*/containers/*/attach", "GET /*/containers/*/logs",
    "GET /events", "GET /*/events", "POST /*/exec/*/start", "POST /*/containers/*/wait",
    "POST /v1.40/containers/*/wait", "POST /*/build", "POST /*/images/create",
    "GET /*/containers/*/stats",
])
def test_post_hooks_on_patterns_that_match_streaming_endpoints_are_accepted(pattern):
    """As in Powerstrip: the proxy skips them for streaming requests (test_streaming)."""
    config = parse(f"""
        endpoints:
          "{pattern}":
            post: [a]
        adapters:
          a: http://a/
    """)
    assert config.endpoints[0].post == ("a",)


def test_pre_hooks_on_streaming_endpoints_are_fine():
    parse("""
        endpoints:
          "* *":
            pre: [a]
        adapters:
          a: http://a/
    """)


def test_unknown_keys_are_refused():
    assert "unknown top-level key(s) 'plugins'" in refused(
        "endpoints: {}\nadapters: {}\nplugins: {}\n")
    assert "unknown key(s) 'prehooks'" in refused("""
        endpoints:
          "POST /x":
            prehooks: [a]
        adapters:
          a: http://a/
    """)


@pytest.mark.parametrize("text, fragment", [
    ("- a\n- b\n", "must be a mapping"),
    ("adapters: {}\n", "'endpoints' is required"),
    ("endpoints: {}\n", "'adapters' is required"),
    ("endpoints: []\nadapters: {}\n", "'endpoints' must be a mapping"),
    ('endpoints:\n  "POST /x": {}\nadapters: {}\n', "must be a mapping with 'pre'"),
    ('endpoints:\n  "POST /x":\nadapters: {}\n', "must be a mapping with 'pre'"),
    ('endpoints:\n  "POST /x":\n    pre: a\nadapters:\n  a: http://a/\n', "must be a list"),
    ("endpoints: {}\nadapters:\n  a: ftp://a/\n", "not an http:// or https:// URL"),
    ("endpoints: {}\nadapters:\n  a: 12\n", "must be a string"),
    ("endpoints: {\n", "not valid YAML"),
])
def test_structural_errors_are_explained(text, fragment):
    assert fragment in refused(text)


def test_load_names_the_file(tmp_path):
    path = tmp_path / "adapters.yml"
    path.write_text("version: 7\nendpoints: {}\nadapters: {}\n")
    with pytest.raises(ConfigurationError, match=f"{path}: unknown version 7"):
        load_configuration(str(path))
    with pytest.raises(ConfigurationError, match="cannot read"):
        load_configuration(str(tmp_path / "absent.yml"))


# -- matching ---------------------------------------------------------------

def hooks(config_text, method, target):
    return parse(config_text).hooks_for(method, target)


def test_versioned_glob_does_not_match_unversioned_paths():
    config = parse(GOOD)
    assert config.hooks_for("POST", "/v1.41/containers/create").pre == ("flocker", "weave")
    assert config.hooks_for("POST", "/v1.51/containers/create?name=web").pre == (
        "flocker", "weave")
    # the separate unversioned key catches the unversioned form
    assert config.hooks_for("POST", "/containers/create").pre == ("flocker",)


def test_star_crosses_slashes_and_query_is_ignored():
    config = parse(GOOD)
    assert config.hooks_for("POST", "/v1.41/containers/abc/start").post == ("weave",)
    assert config.hooks_for("POST", "/v1.41/containers/a/b/start?x=/start").post == ("weave",)
    assert config.hooks_for("POST", "/v1.41/containers/create/x") is NO_HOOKS
    assert config.hooks_for("GET", "/v1.41/containers/create") is NO_HOOKS


def test_matching_is_case_sensitive_and_question_mark_is_one_character():
    text = """
        endpoints:
          "* /v1.4?/info":
            pre: [a]
        adapters:
          a: http://a/
    """
    assert hooks(text, "GET", "/v1.41/info") == Hooks(("a",), ())
    assert hooks(text, "DELETE", "/v1.40/info") == Hooks(("a",), ())
    assert hooks(text, "GET", "/V1.41/info") is NO_HOOKS
    assert hooks(text, "GET", "/v1.4/info") is NO_HOOKS


def test_hooks_of_several_keys_concatenate_in_file_order():
    text = """
        endpoints:
          "POST /*/create":
            pre: [b]
          "* *":
            pre: [a, b]
            post: []
          "POST /v1.41/*":
            pre: [c]
        adapters:
          a: http://a/
          b: http://b/
          c: http://c/
    """
    assert hooks(text, "POST", "/v1.41/create").pre == ("b", "a", "b", "c")


@given(version=st.from_regex(r"v1\.[0-9]{1,2}", fullmatch=True),
       query=st.text(alphabet="abc=&/?", max_size=10))
def test_any_version_prefix_and_query_match(version, query):
    config = parse_configuration(GOOD)
    target = f"/{version}/containers/create" + (f"?{query}" if query else "")
    assert config.hooks_for("POST", target).pre == ("flocker", "weave")
