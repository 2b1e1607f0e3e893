"""adapters.yml: loading, validation and request matching.

The file (Powerstrip protocol version 1)::

    version: 1
    endpoints:
      "POST /*/containers/create":
        pre: [flocker]
      "POST /containers/create":
        pre: [flocker]
    adapters:
      flocker: http://127.0.0.1:9191/flocker-adapter

Matching: each endpoint key is ``"METHOD PATH-GLOB"``, compared with
``fnmatch`` rules (case-sensitive) against ``"<method> <path>"`` of a request,
where ``<path>`` is the request target as the client sent it with everything
from the first ``?`` removed (query strings are never matched). ``*`` matches
any run of characters *including* ``/``, ``?`` one character, ``[...]`` a
class. So ``/*/containers/create`` matches ``/v1.41/containers/create`` but
not the unversioned ``/containers/create``: list both keys to catch both.
The method is a glob too (``"* /*/containers/create"``). The path matched is
the one dockerd routes: percent escapes decoded (``containers%2Fcreate`` is
``containers/create``).

Post-hooks may name any pattern, ``"* *"`` included; the proxy skips them for
requests answered with a stream or a hijacked connection (see streaming.py).

When several keys match one request, their hooks run in the order the keys
appear in the file (pre-hooks of all keys first in that order, likewise
post-hooks); an adapter named under two matching keys is called twice.
"""

import fnmatch
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import yaml

SUPPORTED_VERSIONS = (1,)
KNOWN_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")
TOP_LEVEL_KEYS = ("version", "endpoints", "adapters")
HOOK_KINDS = ("pre", "post")

class ConfigurationError(Exception):
    """adapters.yml cannot be used; the message says where and why."""


@dataclass(frozen=True)
class Endpoint:
    pattern: str
    pre: tuple = ()
    post: tuple = ()

    def matches(self, subject):
        return fnmatch.fnmatchcase(subject, self.pattern)


@dataclass(frozen=True)
class Hooks:
    """The adapters to call for one request, in order."""
    pre: tuple = ()
    post: tuple = ()


NO_HOOKS = Hooks()


@dataclass(frozen=True)
class Configuration:
    version: int = 1
    endpoints: tuple = ()
    adapters: dict = field(default_factory=dict)
    _any: object = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        live = [e for e in self.endpoints if e.pre or e.post]
        if live:
            regex = "|".join(f"(?:{fnmatch.translate(e.pattern)})" for e in live)
            object.__setattr__(self, "_any", re.compile(regex).match)

    def hooks_for(self, method, target):
        """The Hooks for a request; target may carry a query string (ignored)."""
        if self._any is None:
            return NO_HOOKS
        path = target.split("?", 1)[0]
        subject = f"{method} {path}"
        if not self._any(subject):
            return NO_HOOKS
        pre, post = [], []
        for endpoint in self.endpoints:
            if endpoint.matches(subject):
                pre.extend(endpoint.pre)
                post.extend(endpoint.post)
        return Hooks(tuple(pre), tuple(post))


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a mapping with the same key twice."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                raise ConfigurationError(
                    f"line {key_node.start_mark.line + 1}: a mapping key must be a plain value"
                )
            if key in seen:
                raise ConfigurationError(
                    f"line {key_node.start_mark.line + 1}: duplicate key {key!r} "
                    f"(first on line {seen[key] + 1}); YAML would silently keep only the "
                    f"last one, so merge the two entries"
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def load_configuration(path):
    """Read and validate adapters.yml at path."""
    try:
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
    except OSError as e:
        raise ConfigurationError(f"{path}: cannot read: {e.strerror or e}")
    try:
        return parse_configuration(text)
    except ConfigurationError as e:
        raise ConfigurationError(f"{path}: {e}")


def parse_configuration(text):
    """Validate the text of adapters.yml and return a Configuration."""
    try:
        document = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        raise ConfigurationError(f"not valid YAML: {e}")
    if not isinstance(document, dict):
        raise ConfigurationError(
            "must be a mapping with the keys 'version', 'endpoints' and 'adapters'"
        )
    unknown = sorted(set(map(str, document)) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise ConfigurationError(
            f"unknown top-level key(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(TOP_LEVEL_KEYS)}"
        )
    version = document.get("version", 1)
    if type(version) is not int or version not in SUPPORTED_VERSIONS:
        raise ConfigurationError(
            f"unknown version {version!r}; this proxy speaks Powerstrip protocol version 1"
        )
    for key in ("endpoints", "adapters"):
        if key not in document:
            raise ConfigurationError(f"the key {key!r} is required (it may be {{}})")
        if not isinstance(document[key], dict):
            raise ConfigurationError(f"{key!r} must be a mapping")
    adapters = {}
    for name, url in document["adapters"].items():
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"adapter name {name!r} must be a non-empty string")
        adapters[name] = _check_url(name, url)
    endpoints = []
    for pattern, hooks in document["endpoints"].items():
        endpoints.append(_check_endpoint(pattern, hooks, adapters))
    return Configuration(version=version, endpoints=tuple(endpoints), adapters=adapters)


def _check_url(name, url):
    if not isinstance(url, str):
        raise ConfigurationError(f"adapter {name!r}: the URL must be a string, not {url!r}")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"adapter {name!r}: {url!r} is not an http:// or https:// URL with a host"
        )
    return url


def _check_endpoint(pattern, hooks, adapters):
    where = f"endpoint {pattern!r}"
    if not isinstance(pattern, str):
        raise ConfigurationError(f"{where}: the key must be a string \"METHOD /path-glob\"")
    method, space, path = pattern.partition(" ")
    if not space or not method or not path or " " in path or "\t" in pattern:
        raise ConfigurationError(
            f"{where}: must be \"METHOD /path-glob\" with exactly one space, "
            f"e.g. \"POST /*/containers/create\""
        )
    if not re.fullmatch(r"[A-Z*?\[\]!]+", method) or not any(
        fnmatch.fnmatchcase(known, method) for known in KNOWN_METHODS
    ):
        raise ConfigurationError(
            f"{where}: bad method {method!r}; use one of {', '.join(KNOWN_METHODS)} "
            f"(upper case) or a glob such as '*'"
        )
    if not (path.startswith("/") or path.startswith("*")):
        raise ConfigurationError(f"{where}: the path glob must start with '/' (or '*')")
    if not isinstance(hooks, dict) or not hooks:
        raise ConfigurationError(f"{where}: must be a mapping with 'pre' and/or 'post' lists")
    unknown = sorted(set(map(str, hooks)) - set(HOOK_KINDS))
    if unknown:
        raise ConfigurationError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; allowed: pre, post"
        )
    lists = {}
    for kind in HOOK_KINDS:
        names = hooks.get(kind) or []
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ConfigurationError(f"{where}: {kind!r} must be a list of adapter names")
        for name in names:
            if name not in adapters:
                raise ConfigurationError(
                    f"{where}: {kind}-hook names adapter {name!r}, which is not defined "
                    f"under 'adapters'"
                )
        lists[kind] = tuple(names)
    return Endpoint(pattern, lists["pre"], lists["post"])
