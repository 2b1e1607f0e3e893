"""powerstrip-flocker adapter: serve the Powerstrip hook endpoint for this node."""

import os

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import react
from twisted.logger import Logger
from twisted.web.server import Site

from .adapter import FlockerAdapter
from .flocker import MINIMUM_SIZE, FlockerClient, tls_policy
from .metrics import Metrics
from .placement import DEFAULT_DEADLINE, Placement

HELP = "serve the Powerstrip hook that makes /flocker/NAME volumes local to this node"
DEFAULT_CONTROL_URL = "http://127.0.0.1:4523"
DEFAULT_LISTEN = "tcp:9999:interface=127.0.0.1"

log = Logger()


def configure(parser):
    parser.add_argument(
        "--control-url", default=os.environ.get("FLOCKER_CONTROL_SERVICE_BASE_URL",
                                                DEFAULT_CONTROL_URL),
        help="the Flocker v1 control service, with or without /v1 "
             "(env FLOCKER_CONTROL_SERVICE_BASE_URL; default %(default)s)",
    )
    identity = parser.add_mutually_exclusive_group()
    identity.add_argument(
        "--node-uuid", default=os.environ.get("MY_HOST_UUID"),
        help="this node's UUID in the cluster (env MY_HOST_UUID)",
    )
    identity.add_argument(
        "--node-address", default=os.environ.get("MY_NETWORK_IDENTITY"),
        help="this node's address as its agent reports it; the UUID is looked up in "
             "/v1/state/nodes (env MY_NETWORK_IDENTITY; default 127.0.0.1)",
    )
    parser.add_argument(
        "--listen", default=DEFAULT_LISTEN,
        help="Twisted endpoint to serve hooks on (default %(default)s)",
    )
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_DEADLINE,
        help="seconds a hook may wait for its volumes before failing (default %(default)g)",
    )
    parser.add_argument(
        "--request-timeout", type=float, default=10.0,
        help="seconds one control service request may take (default %(default)g)",
    )
    parser.add_argument("--maximum-size", type=int, default=None,
                        help="maximum_size in bytes for new datasets (default: none)")
    parser.add_argument("--tls-ca", help="cluster CA certificate: talk HTTPS to the control "
                                         "service and trust only this CA")
    parser.add_argument("--tls-cert", help="client certificate for mutual TLS")
    parser.add_argument("--tls-key", help="client private key for mutual TLS")


def build_adapter(reactor, options):
    policy = None
    if options.tls_ca:
        policy = tls_policy(options.tls_ca, options.tls_cert, options.tls_key)
    api = FlockerClient(reactor, options.control_url, timeout=options.request_timeout,
                        tls_policy=policy)
    node_address = options.node_address
    if options.node_uuid is None and node_address is None:
        node_address = "127.0.0.1"
    metrics = Metrics()
    placement = Placement(api, reactor, node_uuid=options.node_uuid,
                          node_address=node_address, deadline=options.timeout,
                          maximum_size=options.maximum_size, metrics=metrics)
    return FlockerAdapter(placement, api, metrics, reactor)


def run(options):
    if options.timeout <= 0 or options.request_timeout <= 0:
        raise SystemExit("powerstrip-flocker adapter: timeouts must be positive")
    size = options.maximum_size
    if size is not None and (size < MINIMUM_SIZE or size % 1024):
        raise SystemExit(
            f"powerstrip-flocker adapter: --maximum-size must be at least {MINIMUM_SIZE} "
            "bytes (64 MiB) and a multiple of 1024"
        )

    async def serve(reactor):
        adapter = build_adapter(reactor, options)
        port = await serverFromString(reactor, options.listen).listen(Site(adapter.resource()))
        log.info("powerstrip-flocker adapter listening on {address}, control service "
                 "{control_url}", address=port.getHost(), control_url=options.control_url)
        await Deferred()

    react(lambda reactor: Deferred.fromCoroutine(serve(reactor)))
    return 0
