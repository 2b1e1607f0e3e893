"""powerstrip-flocker adapter: serve the Powerstrip hook endpoint for this node."""

from twisted.internet.defer import Deferred
from twisted.internet.task import react
from twisted.logger import Logger

from powerstripflocker.frontends.adapter import MAX_HOOK_BYTES, FlockerAdapter, hook_error_document
from powerstripflocker.frontends.options import (
    add_control_options, build_api, build_placement, check_control_options, check_maximum_size,
)
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


def run(options):
    check_control_options("adapter", options)
    check_maximum_size("adapter", options.maximum_size)

    async def serve(reactor):
        adapter = build_adapter(reactor, options)
        site = BoundedSite(adapter.resource(), MAX_HOOK_BYTES, error_document=hook_error_document)
        port = await server_endpoint(reactor, options.listen).listen(site)
        log.info("powerstrip-flocker adapter listening on {address}, control service "
                 "{control_url}", address=port.getHost(), control_url=options.control_url)
        await Deferred()

    react(lambda reactor: Deferred.fromCoroutine(serve(reactor)))
    return 0
