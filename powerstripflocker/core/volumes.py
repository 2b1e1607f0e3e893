"""Find and rewrite /flocker/NAME volumes in Docker request bodies.

Pure functions over parsed JSON. The rule throughout: read a body exactly as dockerd
will (docker_json.py), and hand dockerd a body in which it can only see what the adapter
decided.

Where Docker names a host path: ``HostConfig.Binds`` strings (``/host:/ctr[:mode]``),
``HostConfig.Mounts`` objects of ``Type: bind``, and, for API < 1.24, the top-level
``Binds`` (and ``Mounts``) of a ``POST /containers/ID/start`` body, which dockerd decodes
as a HostConfig. Older dockerds also read a create body's top-level ``Binds`` as
HostConfig fields when the body has no HostConfig; a /flocker source there is refused.

Sources are cleaned as Go's ``path.Clean`` does, as dockerd does before binding: every
spelling of /flocker/NAME (``//flocker/x``, ``/./flocker/x``, ``/tmp/../flocker/x``,
``/flocker/x/``, ``/flocker//x``) is the volume NAME. The /flocker root itself, and a
``..`` after /flocker, are refused. A one-part bind (``"/flocker/x"``) is an anonymous
volume at that container path, not a host path, and is left alone.

The rewrite turns each /flocker bind of a create body into a ``HostConfig.Mounts``
entry of type bind: for Mounts, dockerd refuses a missing source ("bind source path does
not exist") where for Binds it would create an empty directory in the volume's place.
The entry keeps the bind's meaning: the container path as given, ro/rw as ReadOnly, a
propagation option as BindOptions.Propagation (none given: none set, so dockerd picks its
default as it does for Binds), consistency as Consistency. SELinux ``z``/``Z`` cannot be
expressed (dockerd never relabels a Mounts bind) and ``nocopy`` is refused by dockerd on
any bind, so both are refused here with a message saying why. Mounts needs dockerd 1.13
(API 1.25) or later. Everything we do not own is left as it came.
"""

import re
from dataclasses import dataclass

from powerstripflocker.protocol.docker_json import InvalidRequest, key_of, list_field

FLOCKER_ROOT = "/flocker"
MAX_NAME_LENGTH = 255
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
_CREATE_PATH = re.compile(r"(/v[0-9]+(\.[0-9]+)?)?/containers/create\Z")
_START_PATH = re.compile(r"(/v[0-9]+(\.[0-9]+)?)?/containers/[^/]+/start\Z")
# Each read-only option of a bind's mode, and what dockerd's parser of Binds sets in
# BindOptions for it.
_READ_ONLY_BIND_OPTIONS = {
    "ro": {}, "ro-non-recursive": {"ReadOnlyNonRecursive": True},
    "ro-force-recursive": {"ReadOnlyForceRecursive": True},
    "rro": {"ReadOnlyForceRecursive": True},
}
# Each option of a bind's mode and the kind it counts as, as dockerd's Linux parser
# counts them (at most one option of each kind).
_MODE_KINDS = {
    "rw": "access", "ro": "access",
    "ro-non-recursive": "access", "ro-force-recursive": "access", "rro": "access",
    "z": "label", "Z": "label",
    "private": "propagation", "rprivate": "propagation", "shared": "propagation",
    "rshared": "propagation", "slave": "propagation", "rslave": "propagation",
    "nocopy": "copy",
    "consistent": "consistency", "cached": "consistency", "delegated": "consistency",
}


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


def clean_path(path):
    """The path as Go's path.Clean makes it, which is how dockerd reads a bind source."""
    rooted = path.startswith("/")
    parts = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == ".." and parts and parts[-1] != "..":
            parts.pop()
        elif part == ".." and rooted:
            continue
        else:
            parts.append(part)
    cleaned = "/".join(parts)
    if rooted:
        return "/" + cleaned
    return cleaned or "."


def volume_name(host_path):
    """The volume name if dockerd would read host_path as under /flocker, else None.

    Raises InvalidVolumeName for the /flocker root itself, for a '..' after /flocker
    (a name cannot climb out of the namespace), and for a bad name.
    """
    if not isinstance(host_path, str) or not host_path.startswith("/"):
        return None
    cleaned = clean_path(host_path)
    parts = [part for part in host_path.split("/") if part not in ("", ".")]
    if parts[:1] == ["flocker"] and ".." in parts[1:]:
        raise InvalidVolumeName(
            f"invalid volume {host_path!r}: '..' is not a name, and a volume path must "
            "not climb out of /flocker"
        )
    if cleaned == FLOCKER_ROOT:
        raise InvalidVolumeName(
            f"invalid volume {host_path!r}: the name is empty; bind a volume as "
            "/flocker/NAME, never the /flocker root itself"
        )
    if not cleaned.startswith(FLOCKER_ROOT + "/"):
        return None
    return validate_name(cleaned[len(FLOCKER_ROOT) + 1:])


def _host_config(body):
    if not isinstance(body, dict):
        raise InvalidRequest("the Docker request body must be a JSON object")
    key = key_of(body, "HostConfig", "the Docker request body")
    host_config = None if key is None else body[key]
    if host_config is None:
        return {}
    if not isinstance(host_config, dict):
        raise InvalidRequest("HostConfig must be a JSON object")
    return host_config


@dataclass(frozen=True)
class Bind:
    """A Binds entry split as dockerd splits it: source, container path and mode."""

    source: str
    target: str | None  # None for a one-part bind: an anonymous volume at source
    mode: str

    @classmethod
    def parse(cls, text):
        parts = text.split(":")
        if len(parts) == 1:
            return cls(text, None, "")
        return cls(parts[0], parts[1], ":".join(parts[2:]))

    def mode_options(self):
        """{kind: option} of the mode, refused as dockerd would refuse it."""
        options = {}
        for option in self.mode.split(",") if self.mode else []:
            kind = _MODE_KINDS.get(option)
            if kind is None or kind in options:
                raise InvalidRequest(
                    f"invalid mode {self.mode!r} in a bind of {self.source!r}: use at most "
                    "one each of rw/ro (or rro, ro-non-recursive, ro-force-recursive), "
                    "z/Z, nocopy, a propagation (rprivate, rshared, "
                    "rslave, private, shared, slave) and a consistency (consistent, "
                    "cached, delegated), separated by ','"
                )
            options[kind] = option
        return options


def _flocker_bind(text, where):
    """(name, Bind) if the Binds entry text binds a /flocker volume, else None."""
    if not isinstance(text, str):
        raise InvalidRequest(f"{where} entries must be strings")
    bind = Bind.parse(text)
    if bind.target is None:
        return None
    name = volume_name(bind.source)
    if name is None:
        return None
    if text.count(":") > 2:
        raise InvalidRequest(
            f"invalid bind {text!r}: use /flocker/NAME:CONTAINER_PATH[:MODE]")
    _check_target(bind.target, bind.source)
    bind.mode_options()
    return name, bind


def _check_target(target, source):
    if not isinstance(target, str) or not target.startswith("/") \
            or clean_path(target) == "/":
        raise InvalidRequest(
            f"invalid container path {target!r} for {source!r}: it must be absolute "
            "and not '/'"
        )


def _check_expressible_as_mount(bind):
    """Refuse the modes a Mounts entry cannot carry, rather than silently drop them."""
    options = bind.mode_options()
    if "label" in options:
        raise InvalidRequest(
            f"the SELinux relabel option {options['label']!r} on {bind.source!r} is not "
            "supported: a /flocker volume is bound as a Mounts entry (so that Docker fails "
            "rather than bind an empty directory if the volume is missing), and Docker "
            "cannot relabel a Mounts bind; label the volume directories instead"
        )
    if "copy" in options:
        raise InvalidRequest(
            f"'nocopy' on {bind.source!r} is not valid: it applies only to named "
            "volumes, and Docker refuses it on a bind"
        )


def _flocker_mount(mount, where):
    """The volume name if the Mounts entry binds a /flocker volume, else None."""
    if not isinstance(mount, dict):
        raise InvalidRequest(f"{where} entries must be objects")
    type_key = key_of(mount, "Type", f"a {where} entry")
    source_key = key_of(mount, "Source", f"a {where} entry")
    if type_key is None or mount[type_key] != "bind" or source_key is None:
        return None
    name = volume_name(mount[source_key])
    if name is not None:
        target_key = key_of(mount, "Target", f"a {where} entry")
        _check_target(None if target_key is None else mount[target_key],
                      mount[source_key])
        _bind_options(mount, where)
    return name


def _bind_options(mount, where):
    """(key, value) of a Mounts entry's BindOptions object, (None, None) if it has none."""
    key = key_of(mount, "BindOptions", f"a {where} entry")
    options = None if key is None else mount[key]
    if options is None:
        return None, None
    if not isinstance(options, dict):
        raise InvalidRequest(f"{where} BindOptions must be an object")
    key_of(options, "CreateMountpoint", f"a {where} entry's BindOptions")
    return key, options


@dataclass(frozen=True)
class VolumeUse:
    """One place in a request body that names a /flocker volume."""

    name: str
    field: str  # "Binds", "Mounts", "LegacyBinds" or "LegacyMounts"
    index: int


def _bind_uses(binds, field, where, becomes_mount):
    uses = []
    for index, text in enumerate(binds):
        found = _flocker_bind(text, where)
        if found is not None:
            name, bind = found
            if becomes_mount:
                _check_expressible_as_mount(bind)
            uses.append(VolumeUse(name, field, index))
    return uses


def _mount_uses(mounts, field, where):
    uses = []
    for index, mount in enumerate(mounts):
        name = _flocker_mount(mount, where)
        if name is not None:
            uses.append(VolumeUse(name, field, index))
    return uses


def _refuse_top_level_flocker_sources(body):
    """Old dockerds read a create body's top-level Binds and Mounts as HostConfig's
    (newer ones ignore them): a /flocker source there would reach dockerd unrewritten."""
    for field in ("Binds", "Mounts"):
        key = key_of(body, field, "the create body")
        entries = body[key] if key is not None else None
        if not isinstance(entries, list):
            continue
        for entry in entries:
            source = None
            if isinstance(entry, str) and Bind.parse(entry).target is not None:
                source = Bind.parse(entry).source
            elif isinstance(entry, dict):
                source_key = key_of(entry, "Source", f"a top-level {field} entry")
                source = entry[source_key] if source_key is not None else None
            if isinstance(source, str) and source.startswith("/") \
                    and (clean_path(source) + "/").startswith(FLOCKER_ROOT + "/"):
                raise InvalidRequest(
                    f"{source!r} in the create body's top-level {field!r} is not "
                    f"supported: put it in HostConfig.{field}"
                )


def find_create_volumes(body):
    """Every /flocker volume named by a container create body, in body order."""
    host_config = _host_config(body)
    _refuse_top_level_flocker_sources(body)
    return (_bind_uses(list_field(host_config, "Binds", "HostConfig"), "Binds",
                       "HostConfig.Binds", becomes_mount=True)
            + _mount_uses(list_field(host_config, "Mounts", "HostConfig"), "Mounts",
                          "HostConfig.Mounts"))


def find_legacy_start_volumes(body):
    """Every /flocker volume in an API < 1.24 start body (itself a HostConfig)."""
    if body is None:
        return []
    if not isinstance(body, dict):
        raise InvalidRequest("the Docker request body must be a JSON object")
    return (_bind_uses(list_field(body, "Binds"), "LegacyBinds", "Binds",
                       becomes_mount=False)
            + _mount_uses(list_field(body, "Mounts"), "LegacyMounts", "Mounts"))


def unique_names(uses):
    """The distinct volume names of uses, in first-seen order: one name is one dataset."""
    return list(dict.fromkeys(use.name for use in uses))


def _with_field(document, field, value):
    """A copy of document whose one spelling of field is replaced by field: value.

    The canonical spelling takes the old key's place, so that the rewritten body holds
    the field exactly once.
    """
    old_key = key_of(document, field, "the body")
    copy = {}
    for key, item in document.items():
        if key == old_key:
            copy[field] = value
        else:
            copy[key] = item
    if old_key is None:
        copy[field] = value
    return copy


def _mount_for_bind(bind, path):
    """The Mounts entry that means what the Binds entry meant, with path as source.

    BindOptions only as dockerd's own parser of Binds sets them: for a propagation
    (without one, dockerd picks the default, rprivate or rslave under its own root, just
    as for Binds) and for the recursive read-only modes.
    """
    options = bind.mode_options()
    read_only = options.get("access") in _READ_ONLY_BIND_OPTIONS
    mount = {"Type": "bind", "Source": path, "Target": bind.target, "ReadOnly": read_only}
    bind_options = dict(_READ_ONLY_BIND_OPTIONS.get(options.get("access"), {}))
    if "propagation" in options:
        bind_options["Propagation"] = options["propagation"]
    if bind_options:
        mount["BindOptions"] = bind_options
    if "consistency" in options:
        mount["Consistency"] = options["consistency"]
    return mount


def _rewritten_mount(mount, path):
    """The Mounts entry with path as its source, keys we set spelled canonically.

    CreateMountpoint is dropped: the volume's directory is made by powerstrip-flocker,
    and a missing one must make Docker fail, never make Docker create it empty.
    """
    rewritten = _with_field(_with_field(mount, "Type", "bind"), "Source", path)
    key, options = _bind_options(mount, "HostConfig.Mounts")
    if options is not None:
        create_key = key_of(options, "CreateMountpoint", "BindOptions")
        rewritten[key] = {k: v for k, v in options.items() if k != create_key}
    return rewritten


def _rewrite_mounts(mounts, uses, paths):
    rewritten = list(mounts)
    for use in uses:
        rewritten[use.index] = _rewritten_mount(mounts[use.index], paths[use.name])
    return rewritten


def _rewrite_legacy(body, uses, paths):
    # An API < 1.24 start body keeps its Binds as Binds: HostConfig.Mounts only exists
    # from API 1.25, so a daemon that still takes this old path may ignore Mounts, and a
    # container silently without its volume is worse than Docker re-creating a missing
    # source directory.
    rewritten = dict(body)
    bind_uses = [use for use in uses if use.field == "LegacyBinds"]
    mount_uses = [use for use in uses if use.field == "LegacyMounts"]
    if bind_uses:
        binds = list(list_field(body, "Binds"))
        for use in bind_uses:
            bind = Bind.parse(binds[use.index])
            binds[use.index] = paths[use.name] + binds[use.index][len(bind.source):]
        rewritten = _with_field(rewritten, "Binds", binds)
    if mount_uses:
        mounts = list_field(body, "Mounts")
        rewritten = _with_field(rewritten, "Mounts",
                                _rewrite_mounts(mounts, mount_uses, paths))
    return rewritten


def rewrite(body, uses, paths):
    """A copy of body with each use pointing at paths[use.name] instead of /flocker.

    In a create body each /flocker bind leaves HostConfig.Binds (every other bind stays,
    in order, as it was) and becomes a HostConfig.Mounts entry of type bind, after the
    Mounts already there; a /flocker Mounts entry gets its Source replaced in place. The
    input is not modified; values we do not rewrite are the same objects.
    """
    if not uses:
        return dict(body)
    if any(use.field.startswith("Legacy") for use in uses):
        return _rewrite_legacy(body, uses, paths)
    host_config = _host_config(body)
    binds = list_field(host_config, "Binds", "HostConfig")
    mount_uses = [use for use in uses if use.field == "Mounts"]
    bind_paths = {use.index: paths[use.name] for use in uses if use.field == "Binds"}
    mounts = _rewrite_mounts(list_field(host_config, "Mounts", "HostConfig"), mount_uses,
                             paths)
    mounts += [_mount_for_bind(Bind.parse(binds[index]), path)
               for index, path in sorted(bind_paths.items())]
    rewritten_host_config = host_config
    if bind_paths:
        rewritten_host_config = _with_field(
            rewritten_host_config, "Binds",
            [bind for index, bind in enumerate(binds) if index not in bind_paths])
    if bind_paths or mount_uses:
        rewritten_host_config = _with_field(rewritten_host_config, "Mounts", mounts)
    return _with_field(body, "HostConfig", rewritten_host_config)


def strip_query(request_target):
    return request_target.partition("?")[0]


def is_container_create(method, request_target):
    return method == "POST" and bool(_CREATE_PATH.match(strip_query(request_target)))


def is_container_start(method, request_target):
    return method == "POST" and bool(_START_PATH.match(strip_query(request_target)))
