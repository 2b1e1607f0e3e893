"""The Docker volume plugin protocol (VolumeDriver) over the same placement core.

`docker volume create -d flocker NAME` and `docker run --volume-driver flocker -v
NAME:/data` need no proxy: Docker asks this plugin, which creates, moves and waits
exactly as the Powerstrip adapter does, and holds the volume's lease from the first
Mount to the last Unmount.
"""

import json
import re

from klein import Klein
from twisted.logger import Logger

from powerstripflocker.clients.flocker import MINIMUM_SIZE, FlockerAPIError
from powerstripflocker.core.placement import PlacementError
from powerstripflocker.core.docker_json import InvalidRequest, check_json_depth
from powerstripflocker.core.volumes import InvalidVolumeName, validate_name

log = Logger()

QUICK_ANSWER_SECONDS = 5.0  # Get, Path and List: Docker calls them often and waits on them
MAX_REQUEST_BYTES = 64 * 1024
_SIZE = re.compile(r"\s*([0-9]+)\s*(?:([kmgt])(?:i?b)?|b)?\s*\Z", re.IGNORECASE)
_UNITS = {None: 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4}
OPTIONS = ("size",)


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
    """maximum_size from Create's Opts; any unknown option is an error."""
    if options is None:
        return None
    if not isinstance(options, dict):
        raise PluginError("Opts must be an object")
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise PluginError(f"unknown option {unknown[0]!r}: the flocker driver takes "
                          + ", ".join(OPTIONS))
    return parse_size(options["size"]) if "size" in options else None


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


class VolumePlugin:
    """Klein app for /Plugin.Activate and /VolumeDriver.*."""

    app = Klein()

    def __init__(self, placement, make_keeper):
        """make_keeper(node_uuid) -> LeaseKeeper; called once this node is known."""
        self._placement = placement
        self._make_keeper = make_keeper
        self._keeper = None
        self._mounts = {}  # name -> {mount id: count}
        self._datasets = {}  # name -> dataset_id of its mounts

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

    async def _answer(self, request, handler):
        request.setHeader(b"Content-Type", b"application/vnd.docker.plugins.v1.1+json")
        try:
            reply = await handler(_request_body(request))
            reply.setdefault("Err", "")
        except (PluginError, PlacementError) as reason:
            reply = {"Err": str(reason)}
        except FlockerAPIError as reason:
            reply = {"Err": f"the control service refused: {reason.description}"}
        except Exception as reason:
            log.failure("volume plugin request failed unexpectedly")
            reply = {"Err": f"internal error in the flocker volume plugin "
                            f"({type(reason).__name__}); see its log"}
        if reply["Err"]:
            log.warn("{path}: {error}", path=request.path.decode(), error=reply["Err"])
        return json.dumps(reply).encode()

    @app.route("/Plugin.Activate", methods=["POST"])
    def activate(self, request):
        async def handle(body):
            return {"Implements": ["VolumeDriver"]}
        return self._answer(request, handle)

    @app.route("/VolumeDriver.Capabilities", methods=["POST"])
    def capabilities(self, request):
        async def handle(body):
            return {"Capabilities": {"Scope": "global"}}
        return self._answer(request, handle)

    @app.route("/VolumeDriver.Create", methods=["POST"])
    def create(self, request):
        async def handle(body):
            name = _name(body)
            maximum_size = parse_options(body.get("Opts"))
            await self._placement.create(name, maximum_size)
            return {}
        return self._answer(request, handle)

    @app.route("/VolumeDriver.Remove", methods=["POST"])
    def remove(self, request):
        async def handle(body):
            _name(body)  # datasets outlive Docker's volume objects: delete through the API
            return {}
        return self._answer(request, handle)

    @app.route("/VolumeDriver.Mount", methods=["POST"])
    def mount(self, request):
        async def handle(body):
            name = _name(body)
            mount_id = str(body.get("ID") or "")
            volume = (await self._placement.place([name]))[name]
            counts = self._mounts.setdefault(name, {})
            if not counts.get(mount_id):
                keeper = await self._lease_keeper()
                await keeper.hold(volume.dataset_id, f"mount:{mount_id}", "a docker volume mount")
            counts[mount_id] = counts.get(mount_id, 0) + 1
            self._datasets[name] = volume.dataset_id
            return {"Mountpoint": volume.path}
        return self._answer(request, handle)

    @app.route("/VolumeDriver.Unmount", methods=["POST"])
    def unmount(self, request):
        async def handle(body):
            name = _name(body)
            mount_id = str(body.get("ID") or "")
            counts = self._mounts.get(name, {})
            if counts.get(mount_id):
                counts[mount_id] -= 1
                if not counts[mount_id]:
                    del counts[mount_id]
                    keeper = await self._lease_keeper()
                    await keeper.release(self._datasets[name], f"mount:{mount_id}")
            return {}
        return self._answer(request, handle)

    async def _view(self, name):
        view = await self._placement.view(name, QUICK_ANSWER_SECONDS)
        if view is None:
            raise PluginError(f"no such volume: {name}")
        return view

    @app.route("/VolumeDriver.Path", methods=["POST"])
    def path(self, request):
        async def handle(body):
            return {"Mountpoint": (await self._view(_name(body))).local_path}
        return self._answer(request, handle)

    @app.route("/VolumeDriver.Get", methods=["POST"])
    def get(self, request):
        async def handle(body):
            view = await self._view(_name(body))
            status = {"dataset_id": view.dataset.dataset_id,
                      "primary": view.dataset.primary,
                      "state": "local" if view.local_path else (
                          "on another node" if view.holder else "pending")}
            if view.dataset.maximum_size:
                status["maximum_size"] = view.dataset.maximum_size
            return {"Volume": {"Name": view.name, "Mountpoint": view.local_path,
                               "Status": status}}
        return self._answer(request, handle)

    @app.route("/VolumeDriver.List", methods=["POST"])
    def list(self, request):
        async def handle(body):
            views = await self._placement.views(QUICK_ANSWER_SECONDS)
            return {"Volumes": [{"Name": name, "Mountpoint": views[name].local_path}
                                for name in sorted(views)]}
        return self._answer(request, handle)
