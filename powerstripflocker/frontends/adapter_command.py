"""powerstrip-flocker adapter: serve the Powerstrip hook endpoint for this node."""

from twisted.logger import Logger

from powerstripflocker.frontends.adapter import MAX_HOOK_BYTES, FlockerAdapter, hook_error_document
from powerstripflocker.frontends.options import (
    add_control_options, build_api, build_placement, check_control_options, check_maximum_size,
)
from powerstripflocker.serving.lifecycle import PartService, run_until_stopped
from powerstripflocker.serving.listening import BoundedSite, server_endpoint
from powerstripflocker.frontends.metrics import Metrics

HELP = "serve the Powerstrip hook that makes /flocker/NAME volumes local to this node"
DEFAULT_LISTEN = "tcp:9999:interface=127.0.0.1"

log = Logger()


def configure(parser):
    add_control_options(parser)
    parser.add_argument(
        "--listen", default=DEFAULT_LISTEN,
        help="Twisted endpoint to serve hooks on (default %(default)s)",
    )
    parser.add_argument("--maximum-size", type=int, default=None,
                        help="maximum_size in bytes for new datasets (default: none)")


def build_adapter(reactor, options):
    api = build_api(reactor, options)
    metrics = Metrics()
    placement = build_placement(reactor, api, options, metrics, options.maximum_size)
    return FlockerAdapter(placement, api, metrics, reactor)


class AdapterService(PartService):
    """The hook endpoint, listening from start to stop."""

    name = "adapter"

    def __init__(self, reactor, options):
        self.reactor = reactor
        self.options = options
        self._port = None

    async def start(self):
        adapter = build_adapter(self.reactor, self.options)
        site = BoundedSite(adapter.resource(), MAX_HOOK_BYTES, error_document=hook_error_document)
        self._port = await server_endpoint(self.reactor, self.options.listen).listen(site)
        log.info("powerstrip-flocker adapter listening on {address}, control service "
                 "{control_url}", address=self._port.getHost(),
                 control_url=self.options.control_url)

    async def stop(self):
        await self._port.stopListening()


def check_options(options):
    check_control_options("adapter", options)
    check_maximum_size("adapter", options.maximum_size)


def run(options):
    check_options(options)
    return run_until_stopped(lambda reactor: AdapterService(reactor, options), "adapter")
