"""powerstrip-flocker control: the Flocker-compatible control service."""

import os

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.web.server import Site

from .httpapi import ControlAPI, LimitedRequest
from .service import DEFAULT_STATE_EXPIRY, ControlService
from .store import Store

HELP = "run the Flocker-compatible control service (v1 REST API, SQLite, agent protocol)"

DEFAULT_LISTEN = "tcp:4523:interface=127.0.0.1"
DEFAULT_DB = "/var/lib/powerstrip-flocker/control.db"
TOKEN_ENV = "POWERSTRIP_FLOCKER_CLUSTER_TOKEN"

log = Logger()


def configure(parser):
    parser.add_argument(
        "--listen", default=DEFAULT_LISTEN,
        help=f"Twisted server endpoint for the v1 API and the agent protocol "
             f"(default {DEFAULT_LISTEN})",
    )
    parser.add_argument(
        "--db", default=DEFAULT_DB, help=f"SQLite database file (default {DEFAULT_DB})",
    )
    parser.add_argument(
        "--state-expiry", type=float, default=DEFAULT_STATE_EXPIRY, metavar="SECONDS",
        help="drop a node from state when its agent has not reported for this long "
             "(default 120)",
    )
    parser.add_argument(
        "--cluster-token-file", metavar="PATH",
        help=f"file holding the cluster token agents must send as 'Authorization: Bearer' "
             f"(or set {TOKEN_ENV}); without one the agent protocol is open",
    )
    parser.add_argument("--tls-cert", metavar="PEM", help="serve TLS with this certificate")
    parser.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert")
    parser.add_argument(
        "--tls-ca", metavar="PEM",
        help="require client certificates signed by this CA (mutual TLS, as Flocker 1.x)",
    )


class ConfigurationError(Exception):
    pass


def read_token(options, environ=os.environ):
    if options.cluster_token_file:
        try:
            with open(options.cluster_token_file, encoding="utf-8") as token_file:
                token = token_file.read().strip()
        except OSError as error:
            raise ConfigurationError(f"cannot read --cluster-token-file: {error}")
    else:
        token = environ.get(TOKEN_ENV, "").strip()
    if options.cluster_token_file and not token:
        raise ConfigurationError(f"{options.cluster_token_file} holds no token")
    return token or None


def tls_options(cert_path, key_path, ca_path):
    """Server TLS context; with a CA, clients must present a certificate it signed."""
    from twisted.internet import ssl

    def read(path, what):
        try:
            with open(path, "rb") as pem:
                return pem.read()
        except OSError as error:
            raise ConfigurationError(f"cannot read {what}: {error}")

    if not (cert_path and key_path):
        raise ConfigurationError("--tls-cert and --tls-key go together")
    try:
        certificate = ssl.PrivateCertificate.loadPEM(
            read(cert_path, "--tls-cert") + b"\n" + read(key_path, "--tls-key")
        )
        authorities = []
        if ca_path:
            authorities = [ssl.Certificate.loadPEM(read(ca_path, "--tls-ca"))]
    except Exception as error:
        raise ConfigurationError(f"invalid TLS certificate or key: {error}")
    return certificate.options(*authorities)


class QuietSite(Site):
    """Access log lines at debug level: agents poll and report all the time."""

    def log(self, request):
        log.debug(
            "{client} {method} {uri} {code}",
            client=getattr(request.getClientAddress(), "host", "-"),
            method=request.method.decode("ascii", "replace"),
            uri=request.uri.decode("ascii", "replace"),
            code=request.code,
        )


def lock_database(path):
    """Hold an exclusive lock next to the database for the life of the process:
    two control services on one database would each think they own the cluster."""
    import fcntl

    if path == ":memory:":
        return open(os.devnull)
    lock_path = path + ".lock"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        lock = open(lock_path, "a")
    except OSError as error:
        raise ConfigurationError(f"cannot open {lock_path}: {error}")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise ConfigurationError(
            f"another control service is using {path} (it holds {lock_path})"
        )
    return lock


def make_site(service, token):
    site = QuietSite(ControlAPI(service, token).resource(), requestFactory=LimitedRequest)
    site.displayTracebacks = False
    return site


async def serve(reactor, options):
    if options.tls_ca and not options.tls_cert:
        raise ConfigurationError("--tls-ca needs --tls-cert and --tls-key")
    token = read_token(options)
    context = None
    if options.tls_cert or options.tls_key:
        context = tls_options(options.tls_cert, options.tls_key, options.tls_ca)
    lock = lock_database(options.db)
    try:
        store = Store(options.db)
    except Exception as error:
        raise ConfigurationError(f"cannot open database {options.db}: {error}")
    service = ControlService(store, reactor, state_expiry=options.state_expiry)
    factory = make_site(service, token)
    if context is not None:
        from twisted.protocols.tls import TLSMemoryBIOFactory
        factory = TLSMemoryBIOFactory(context, False, factory)
    try:
        endpoint = serverFromString(reactor, options.listen)
        port = await endpoint.listen(factory)
    except (ValueError, TypeError, KeyError, CannotListenError) as error:
        store.close()
        raise ConfigurationError(f"cannot listen on {options.listen!r}: {error}")
    service.start()
    address = port.getHost()
    log.info(
        "control service listening on {address} ({scheme}; agent protocol {auth}; "
        "database {db})",
        address=f"{getattr(address, 'host', '')}:{getattr(address, 'port', '')}",
        scheme="https" + (" with client certificates" if options.tls_ca else "")
        if context else "http",
        auth="needs the cluster token" if token else "open (no cluster token)",
        db=options.db,
    )
    factory.noisy = False
    stopped = Deferred()

    def shutdown():
        log.info("control service stopping")
        service.stop()
        store.close()
        lock.close()
        stopped.callback(None)

    reactor.addSystemEventTrigger("before", "shutdown", port.stopListening)
    reactor.addSystemEventTrigger("after", "shutdown", shutdown)
    await stopped


def run(options):
    from twisted.internet import task

    status = []

    async def main(reactor):
        try:
            await serve(reactor, options)
        except ConfigurationError as error:
            log.error("control service not started: {error}", error=str(error))
            status.append(2)
        except Exception:
            log.failure("control service failed")
            status.append(1)

    try:
        task.react(lambda reactor: ensureDeferred(main(reactor)))
    except SystemExit as exit:
        if status:
            return status[0]
        return exit.code or 0
    return status[0] if status else 0
