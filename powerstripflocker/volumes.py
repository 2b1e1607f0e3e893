"""Find and rewrite /flocker/NAME volumes in Docker request bodies.

Pure functions over parsed JSON. Docker names a host path in three places:
``HostConfig.Binds`` strings (``/host:/ctr[:opts]``), ``HostConfig.Mounts``
objects of ``Type: bind``, and, for API < 1.24, a top-level ``Binds`` list in
the body of ``POST /containers/ID/start``. Everything we do not own is left
byte-for-byte as it came.
"""

import re
from dataclasses import dataclass

FLOCKER_ROOT = "/flocker/"
MAX_NAME_LENGTH = 255
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
_CREATE_PATH = re.compile(r"(/v[0-9]+(\.[0-9]+)?)?/containers/create\Z")
_START_PATH = re.compile(r"(/v[0-9]+(\.[0-9]+)?)?/containers/[^/]+/start\Z")


class InvalidRequest(ValueError):
    """The request cannot be understood; the message says why, for the docker user."""


class InvalidVolumeName(InvalidRequest):
    pass


def validate_name(name):
    """Return name if it may name a volume, else raise InvalidVolumeName saying why."""
    shown = f"/flocker/{name}"
    if name == "":
        raise InvalidVolumeName(f"invalid volume {shown!r}: the name is empty")
    if name.endswith("/"):
        raise InvalidVolumeName(
            f"invalid volume {shown!r}: the name must not end with '/'"
        )
    if "/" in name:
        raise InvalidVolumeName(
            f"invalid volume {shown!r}: a name must not contain '/' (no nested volumes)"
        )
    if name in (".", ".."):
        raise InvalidVolumeName(f"invalid volume {shown!r}: {name!r} is not a name")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidVolumeName(
            f"invalid volume {shown[:40]!r}...: a name has at most {MAX_NAME_LENGTH} "
            f"characters, this one has {len(name)}"
        )
    if not _NAME_PATTERN.match(name):
        raise InvalidVolumeName(
            f"invalid volume {shown!r}: use letters, digits, '_', '.' and '-', "
            "starting with a letter or digit"
        )
    return name


def volume_name(host_path):
    """The volume name if host_path is under /flocker/, else None. Raises on a bad name."""
    if not isinstance(host_path, str) or not host_path.startswith(FLOCKER_ROOT):
        return None
    return validate_name(host_path[len(FLOCKER_ROOT):])


@dataclass(frozen=True)
class VolumeUse:
    """One place in a request body that names a /flocker volume."""

    name: str
    field: str  # "Binds", "Mounts" or "LegacyBinds"
    index: int


def _bind_source(bind):
    """Split a Binds entry into (host source, rest including the leading ':')."""
    source, separator, rest = bind.partition(":")
    return source, separator + rest


def _list_field(container, key, where):
    value = container.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidRequest(f"{where} must be a list, not {type(value).__name__}")
    return value


def _host_config(body):
    if not isinstance(body, dict):
        raise InvalidRequest("the Docker request body must be a JSON object")
    host_config = body.get("HostConfig")
    if host_config is None:
        return {}
    if not isinstance(host_config, dict):
        raise InvalidRequest("HostConfig must be a JSON object")
    return host_config


def find_create_volumes(body):
    """Every /flocker volume named by a container create body, in body order."""
    host_config = _host_config(body)
    uses = []
    for index, bind in enumerate(_list_field(host_config, "Binds", "HostConfig.Binds")):
        if not isinstance(bind, str):
            raise InvalidRequest("HostConfig.Binds entries must be strings")
        name = volume_name(_bind_source(bind)[0])
        if name is not None:
            uses.append(VolumeUse(name, "Binds", index))
    for index, mount in enumerate(_list_field(host_config, "Mounts", "HostConfig.Mounts")):
        if not isinstance(mount, dict):
            raise InvalidRequest("HostConfig.Mounts entries must be objects")
        if mount.get("Type") == "bind":
            name = volume_name(mount.get("Source"))
            if name is not None:
                uses.append(VolumeUse(name, "Mounts", index))
    return uses


def find_legacy_start_volumes(body):
    """Every /flocker volume in an API < 1.24 start body's top-level Binds."""
    if body is None:
        return []
    if not isinstance(body, dict):
        raise InvalidRequest("the Docker request body must be a JSON object")
    uses = []
    for index, bind in enumerate(_list_field(body, "Binds", "Binds")):
        if not isinstance(bind, str):
            raise InvalidRequest("Binds entries must be strings")
        name = volume_name(_bind_source(bind)[0])
        if name is not None:
            uses.append(VolumeUse(name, "LegacyBinds", index))
    return uses


def unique_names(uses):
    """The distinct volume names of uses, in first-seen order: one name is one dataset."""
    return list(dict.fromkeys(use.name for use in uses))


def _rewrite_bind(bind, path):
    return path + _bind_source(bind)[1]


def rewrite(body, uses, paths):
    """A copy of body with each use's host path replaced by paths[use.name].

    Only the lists that hold a use are copied; every other value is the same object,
    so it serialises exactly as before.
    """
    rewritten = dict(body)
    if any(use.field == "LegacyBinds" for use in uses):
        rewritten["Binds"] = list(body["Binds"])
    if any(use.field in ("Binds", "Mounts") for use in uses):
        host_config = rewritten["HostConfig"] = dict(body["HostConfig"])
        for field in ("Binds", "Mounts"):
            if any(use.field == field for use in uses):
                host_config[field] = list(body["HostConfig"][field])
    for use in uses:
        path = paths[use.name]
        if use.field == "LegacyBinds":
            rewritten["Binds"][use.index] = _rewrite_bind(body["Binds"][use.index], path)
        elif use.field == "Binds":
            binds = rewritten["HostConfig"]["Binds"]
            binds[use.index] = _rewrite_bind(binds[use.index], path)
        else:
            mounts = rewritten["HostConfig"]["Mounts"]
            mounts[use.index] = dict(mounts[use.index], Source=path)
    return rewritten


def strip_query(request_target):
    return request_target.partition("?")[0]


def is_container_create(method, request_target):
    return method == "POST" and bool(_CREATE_PATH.match(strip_query(request_target)))


def is_container_start(method, request_target):
    return method == "POST" and bool(_START_PATH.match(strip_query(request_target)))
