"""The Docker volume plugin protocol (VolumeDriver) over the same placement core.

`docker volume create -d flocker NAME` and `docker run --volume-driver flocker -v
NAME:/data` need no proxy: Docker asks this plugin, which creates, moves and waits
exactly as the Powerstrip adapter does, and holds the volume's lease from the first
Mount to the last Unmount.
"""

import functools
import json
import re

from klein import Klein
from twisted.logger import Logger
from werkzeug.exceptions import HTTPException

from powerstripflocker.clients.flocker import (
    MINIMUM_SIZE, REPLICAS_KEY, BadReplicaCount, FlockerAPIError, parse_replica_count,
)
from powerstripflocker.core.placement import PlacementError
from powerstripflocker.protocol.docker_json import InvalidRequest, check_json_depth
from powerstripflocker.core.mount_counts import MountCounts
from powerstripflocker.core.volumes import InvalidVolumeName, validate_name

log = Logger()

QUICK_ANSWER_SECONDS = 5.0  # Get, Path and List: Docker calls them often and waits on them
MAX_REQUEST_BYTES = 64 * 1024
_SIZE = re.compile(r"\s*([0-9]+)\s*(?:([kmgt])(?:i?b)?|b)?\s*\Z", re.IGNORECASE)
_UNITS = {None: 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4}
OPTIONS = ("size", "replicas")


class PluginError(Exception):
    """One line for the docker user."""


def parse_size(text):
    """Bytes from "1G", "512MiB", "100mb" or a plain byte count (binary units)."""
    match = _SIZE.match(str(text))
    if not match:
        raise PluginError(
            f"invalid size {text!r}: give bytes, or a number with K, M, G or T "
            "(binary units, e.g. 10G or 512MiB)")
    size = int(match.group(1)) * _UNITS[match.group(2) and match.group(2).lower()]
    if size < MINIMUM_SIZE:
        raise PluginError(f"invalid size {text!r}: a volume is at least 64M")
    if size % 1024:
        raise PluginError(f"invalid size {text!r}: give a multiple of 1024 bytes")
    return size


def parse_options(options):
    """(maximum_size, replicas) from Create's Opts (-o size=10G -o replicas=2), each None
    when not given; any unknown option is an error."""
    if options is None:
        return None, None
    if not isinstance(options, dict):
        raise PluginError("Opts must be an object")
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise PluginError(f"unknown option {unknown[0]!r}: the flocker driver takes "
                          + ", ".join(OPTIONS))
    maximum_size = parse_size(options["size"]) if "size" in options else None
    replicas = None
    if "replicas" in options:
        try:
            replicas = parse_replica_count(options["replicas"])
        except BadReplicaCount as error:
            raise PluginError(str(error)) from None
    return maximum_size, replicas


def _request_body(request):
    raw = request.content.read(MAX_REQUEST_BYTES + 1)
    if len(raw) > MAX_REQUEST_BYTES:
        raise PluginError("request body too large")
    if not raw.strip():
        return {}
    try:
        check_json_depth(raw)
    except InvalidRequest as reason:
        raise PluginError(str(reason)) from None
    try:
        body = json.loads(raw)
    except ValueError:
        raise PluginError("request body is not JSON") from None
    if not isinstance(body, dict):
        raise PluginError("request body must be a JSON object")
    return body


def plugin_error_document(message):
    """The body of a refusal, in the VolumeDriver protocol's words."""
    return {"Err": message}


def _name(body):
    name = body.get("Name")
    if not isinstance(name, str):
        raise PluginError("no volume Name given")
    try:
        return validate_name(name)
    except InvalidVolumeName as reason:
        raise PluginError(str(reason).replace("/flocker/", "")) from None


def refusal_message(error):
    """The one line a failed plugin call answers with, for the docker user."""
    if isinstance(error, (PluginError, PlacementError)):
        return str(error)
    if isinstance(error, FlockerAPIError):
        return f"the control service refused: {error.description}"
    return (f"internal error in the flocker volume plugin ({type(error).__name__}); "
            "see its log")


def _reply(request, document):
    request.setHeader(b"Content-Type", b"application/vnd.docker.plugins.v1.1+json")
    return json.dumps(document).encode()


def _plugin_call(handler):
    """A route of handler(self, body) -> its reply document; a failure, raised anywhere
    below, is answered by VolumePlugin.refuse."""

    @functools.wraps(handler)
    async def route(self, request):
        reply = await handler(self, _request_body(request))
        reply.setdefault("Err", "")
        return _reply(request, reply)

    return route


class VolumePlugin:
    """Klein app for /Plugin.Activate and /VolumeDriver.*."""

    app = Klein()

    def __init__(self, placement, make_keeper):
        """make_keeper(node_uuid) -> LeaseKeeper; called once this node is known."""
        self._placement = placement
        self._make_keeper = make_keeper
        self._keeper = None
        self._mount_counts = MountCounts()

    async def _lease_keeper(self):
        if self._keeper is None:
            node = await self._placement.this_node()
            if self._keeper is None:
                self._keeper = self._make_keeper(node.uuid)
                self._keeper.start()
        return self._keeper

    def stop(self):
        if self._keeper is not None:
            self._keeper.stop()

    def resource(self):
        return self.app.resource()

    @app.handle_errors(Exception)
    def refuse(self, request, failure):
        """Every failure of a call as the protocol wants it: 200 and {"Err": one line}."""
        if failure.check(HTTPException):
            return failure  # no such call: Klein's own 404 or 405
        if not failure.check(PluginError, PlacementError, FlockerAPIError):
            log.failure("volume plugin request failed unexpectedly", failure)
        message = refusal_message(failure.value)
        log.warn("{path}: {error}", path=request.path.decode(), error=message)
        return _reply(request, {"Err": message})

    @app.route("/Plugin.Activate", methods=["POST"])
    @_plugin_call
    async def activate(self, body):
        return {"Implements": ["VolumeDriver"]}

    @app.route("/VolumeDriver.Capabilities", methods=["POST"])
    @_plugin_call
    async def capabilities(self, body):
        return {"Capabilities": {"Scope": "global"}}

    @app.route("/VolumeDriver.Create", methods=["POST"])
    @_plugin_call
    async def create(self, body):
        name = _name(body)
        maximum_size, replicas = parse_options(body.get("Opts"))
        await self._placement.create(name, maximum_size, replicas)
        return {}

    @app.route("/VolumeDriver.Remove", methods=["POST"])
    @_plugin_call
    async def remove(self, body):
        _name(body)  # datasets outlive Docker's volume objects: delete through the API
        return {}

    @app.route("/VolumeDriver.Mount", methods=["POST"])
    @_plugin_call
    async def mount(self, body):
        name = _name(body)
        mount_id = str(body.get("ID") or "")
        volume = (await self._placement.place([name]))[name]
        if not self._mount_counts.is_mounted(name, mount_id):
            keeper = await self._lease_keeper()
            await keeper.hold(volume.dataset_id, f"mount:{mount_id}", "a docker volume mount")
        self._mount_counts.mounted(name, mount_id, volume.dataset_id)
        return {"Mountpoint": volume.path}

    @app.route("/VolumeDriver.Unmount", methods=["POST"])
    @_plugin_call
    async def unmount(self, body):
        mount_id = str(body.get("ID") or "")
        ended = self._mount_counts.unmounted(_name(body), mount_id)
        if ended is not None:
            keeper = await self._lease_keeper()
            await keeper.release(ended, f"mount:{mount_id}")
        return {}

    async def _view(self, name):
        view = await self._placement.view(name, QUICK_ANSWER_SECONDS)
        if view is None:
            raise PluginError(f"no such volume: {name}")
        return view

    @app.route("/VolumeDriver.Path", methods=["POST"])
    @_plugin_call
    async def path(self, body):
        return {"Mountpoint": (await self._view(_name(body))).local_path}

    @app.route("/VolumeDriver.Get", methods=["POST"])
    @_plugin_call
    async def get(self, body):
        view = await self._view(_name(body))
        status = {"dataset_id": view.dataset.dataset_id,
                  "primary": view.dataset.primary,
                  "state": "local" if view.local_path else (
                      "on another node" if view.holder else "pending")}
        if view.dataset.maximum_size:
            status["maximum_size"] = view.dataset.maximum_size
        if REPLICAS_KEY in view.dataset.metadata:
            status["replicas"] = view.dataset.metadata[REPLICAS_KEY]
        return {"Volume": {"Name": view.name, "Mountpoint": view.local_path,
                           "Status": status}}

    @app.route("/VolumeDriver.List", methods=["POST"])
    @_plugin_call
    async def list(self, body):
        views = await self._placement.views(QUICK_ANSWER_SECONDS)
        return {"Volumes": [{"Name": name, "Mountpoint": views[name].local_path}
                            for name in sorted(views)]}
