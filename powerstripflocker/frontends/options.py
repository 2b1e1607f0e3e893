"""Options and wiring shared by the frontends (adapter, volume plugin, release):
where the control service is, who this node is, and how long to wait."""

import os

from powerstripflocker.clients.http import (
    CONTROL_URL_ENV, DEFAULT_CONTROL_URL, TOKEN_SOURCES, command_token, control_url_argument,
    tls_policy,
)
from powerstripflocker.clients.flocker import MINIMUM_SIZE
from powerstripflocker.clients.flocker_client import FlockerClient
from powerstripflocker.core.placement import DEFAULT_CLAIM_SECONDS, DEFAULT_DEADLINE, Placement


def add_control_options(parser, deadline=DEFAULT_DEADLINE):
    parser.add_argument(
        "--control-url", default=os.environ.get(CONTROL_URL_ENV, DEFAULT_CONTROL_URL),
        type=control_url_argument,
        help=f"the Flocker v1 control service, with or without /v1, or a comma-separated "
             f"list of its replicas, asked in turn when one is unreachable, slow or "
             f"answers 503 (env {CONTROL_URL_ENV}; default %(default)s)",
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
        "--timeout", type=float, default=deadline,
        help="seconds to wait for a volume to be local before failing (default %(default)g)",
    )
    parser.add_argument(
        "--request-timeout", type=float, default=10.0,
        help="seconds one control service request may take (default %(default)g)",
    )
    parser.add_argument(
        "--claim-seconds", type=float, default=DEFAULT_CLAIM_SECONDS,
        help="expiry of the claim (a lease) this node takes on a volume before answering "
             "with its path; the agent renews it once a container uses the volume, and it "
             "lapses by itself if none does (default %(default)g)",
    )
    parser.add_argument(
        "--cluster-token-file", default=None,
        help=f"the cluster token ({TOKEN_SOURCES}), sent as a bearer token with every "
             "request to the control service",
    )
    parser.add_argument("--tls-ca", help="cluster CA certificate: talk HTTPS to the control "
                                         "service and trust only this CA")
    parser.add_argument("--tls-cert", help="client certificate for mutual TLS")
    parser.add_argument("--tls-key", help="client private key for mutual TLS")


def add_operator_options(parser):
    """How an operator's one-shot command (release, restore) reaches the control
    service: its URL, one request's timeout, the cluster token and TLS."""
    parser.add_argument(
        "--control-url", default=os.environ.get(CONTROL_URL_ENV, DEFAULT_CONTROL_URL),
        type=control_url_argument,
        help=f"the Flocker v1 control service, with or without /v1, or a comma-separated "
             f"list of its replicas (env {CONTROL_URL_ENV}; default %(default)s)")
    parser.add_argument("--request-timeout", type=float, default=10.0,
                        help="seconds one control service request may take (default "
                             "%(default)g)")
    parser.add_argument("--cluster-token-file", default=None,
                        help=f"the cluster token ({TOKEN_SOURCES}), sent as a bearer "
                             "token to the control service")
    parser.add_argument("--tls-ca", help="cluster CA certificate of an https control URL")
    parser.add_argument("--tls-cert", help="client certificate for mutual TLS")
    parser.add_argument("--tls-key", help="client private key for mutual TLS")


def check_control_options(command, options):
    """Exit with a clear message on option values that cannot work."""
    if options.timeout <= 0 or options.request_timeout <= 0 or options.claim_seconds <= 0:
        raise SystemExit(f"powerstrip-flocker {command}: timeouts must be positive")
    if bool(options.tls_cert) != bool(options.tls_key):
        raise SystemExit(f"powerstrip-flocker {command}: give --tls-cert and --tls-key together")


def check_maximum_size(command, size):
    if size is not None and (size < MINIMUM_SIZE or size % 1024):
        raise SystemExit(
            f"powerstrip-flocker {command}: --maximum-size must be at least {MINIMUM_SIZE} "
            "bytes (64 MiB) and a multiple of 1024"
        )


def build_api(reactor, options):
    policy = None
    if options.tls_ca:
        policy = tls_policy(options.tls_ca, options.tls_cert, options.tls_key)
    return FlockerClient(reactor, options.control_url, timeout=options.request_timeout,
                         tls_policy=policy, token=command_token(options))


def build_placement(reactor, api, options, metrics=None, maximum_size=None):
    node_address = options.node_address
    if options.node_uuid is None and node_address is None:
        node_address = "127.0.0.1"
    return Placement(api, reactor, node_uuid=options.node_uuid, node_address=node_address,
                     deadline=options.timeout, maximum_size=maximum_size, metrics=metrics,
                     claim_seconds=options.claim_seconds)
