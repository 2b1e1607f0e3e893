"""powerstrip-flocker plugin: the Docker volume plugin on a unix socket."""

import os

from twisted.internet.defer import maybeDeferred
from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.logger import Logger

from powerstripflocker.frontends.options import (
    add_control_options, build_api, build_placement, check_control_options,
)
from powerstripflocker.core.lease_keeper import DEFAULT_LEASE_SECONDS, LeaseKeeper
from powerstripflocker.serving.lifecycle import PartService, run_until_stopped
from powerstripflocker.serving.listening import LISTEN_BACKLOG, BoundedSite
from powerstripflocker.frontends.plugin import (
    MAX_REQUEST_BYTES, VolumePlugin, plugin_error_document,
)

HELP = "serve the Docker volume plugin protocol (docker run --volume-driver flocker)"
PLUGIN_DIRECTORY = "/run/docker/plugins"
# Docker gives Mount two minutes; fail with our own message well before that.
MOUNT_DEADLINE = 100.0

log = Logger()


def configure(parser):
    add_control_options(parser, deadline=MOUNT_DEADLINE)
    parser.add_argument("--driver-name", default="flocker",
                        help="the volume driver name Docker users give (default %(default)s)")
    parser.add_argument("--socket", default=None,
                        help=f"unix socket to serve on (default {PLUGIN_DIRECTORY}/NAME.sock, "
                             "where Docker finds it)")
    parser.add_argument("--lease-seconds", type=float, default=DEFAULT_LEASE_SECONDS,
                        help="expiry of the lease held on a mounted volume; renewed while it "
                             "stays mounted (default %(default)g)")


def socket_path(options):
    return options.socket or os.path.join(PLUGIN_DIRECTORY, f"{options.driver_name}.sock")


class PluginService(PartService):
    """The volume plugin on its unix socket, from start to stop; stopping also ends the
    leases it holds on mounted volumes."""

    name = "plugin"

    def __init__(self, reactor, options):
        self.reactor = reactor
        self.options = options
        self._plugin = None
        self._port = None

    async def start(self):
        reactor, options = self.reactor, self.options
        path = socket_path(options)
        api = build_api(reactor, options)
        placement = build_placement(reactor, api, options)
        self._plugin = VolumePlugin(placement, lambda node_uuid: LeaseKeeper(
            api, node_uuid, reactor, options.lease_seconds))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.exists(path):
            os.unlink(path)  # a stale socket from an earlier run would stop us listening
        site = BoundedSite(self._plugin.resource(), MAX_REQUEST_BYTES,
                           error_document=plugin_error_document)
        self._port = await UNIXServerEndpoint(reactor, path, backlog=LISTEN_BACKLOG,
                                              mode=0o600).listen(site)
        log.info("volume plugin {driver} listening on {path}", driver=options.driver_name,
                 path=path)

    async def stop(self):
        try:
            await self._port.stopListening()
        finally:
            # The mount leases end even when the socket would not close.
            await maybeDeferred(self._plugin.stop)


def check_options(options):
    check_control_options("plugin", options)
    if options.lease_seconds <= 0:
        raise SystemExit("powerstrip-flocker plugin: --lease-seconds must be positive")


def run(options):
    check_options(options)
    return run_until_stopped(lambda reactor: PluginService(reactor, options), "plugin")
