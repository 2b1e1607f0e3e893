"""powerstrip-flocker control: the Flocker-compatible control service."""

import argparse
import ipaddress
import os
import re

from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from powerstripflocker.clients.http import TOKEN_ENV, TOKEN_FILE_NAME, TokenError, client_token
from powerstripflocker.serving.credentials import make_token_file
from powerstripflocker.serving.lifecycle import PartService, run_until_stopped
from powerstripflocker.serving.listening import BoundedSite, server_endpoint
from powerstripflocker.control import migrate
from powerstripflocker.control.httpapi import MAX_BODY, ControlAPI
from powerstripflocker.control.service import DEFAULT_STATE_EXPIRY, ControlService
from powerstripflocker.clients.etcd_client import EtcdClient
from powerstripflocker.control.asyncstore import AsyncStore
from powerstripflocker.control.etcdstore import EtcdStore
from powerstripflocker.control.replicas import BadReplicaCount, parse_replica_count
from powerstripflocker.control.store import Store
from powerstripflocker.control.store_url import (
    BadStoreURL, EtcdURL, SQLiteURL, etcd_tls_files, parse_store_url,
)

HELP = ("run the Flocker-compatible control service (v1 REST API and agent protocol, on "
        "SQLite or, as one of several replicas, on etcd)")

DEFAULT_LISTEN = "tcp:4523:interface=127.0.0.1"
DEFAULT_DB = "/var/lib/powerstrip-flocker/control.db"

log = Logger()


def configure(parser):
    parser.add_argument(
        "--listen", default=DEFAULT_LISTEN,
        help=f"Twisted server endpoint for the v1 API and the agent protocol "
             f"(default {DEFAULT_LISTEN})",
    )
    parser.add_argument(
        "--db", default=None,
        help=f"SQLite database file: the same as --store sqlite://PATH (default {DEFAULT_DB})",
    )
    parser.add_argument(
        "--store", metavar="URL", default=None,
        help="where the configuration is kept: sqlite:///PATH (one control service), or "
             "etcd://HOST:PORT[,HOST:PORT...][/PREFIX] (etcds:// for TLS), which any number "
             "of control replicas may share (they then need --cluster-token-file or "
             f"{TOKEN_ENV})",
    )
    parser.add_argument("--store-ca", metavar="PEM", help="etcds://: the CA of etcd's members")
    parser.add_argument("--store-cert", metavar="PEM",
                        help="etcds://: a client certificate etcd accepts")
    parser.add_argument("--store-key", metavar="PEM", help="etcds://: the key of --store-cert")
    parser.add_argument(
        "--state-expiry", type=float, default=DEFAULT_STATE_EXPIRY, metavar="SECONDS",
        help="drop a node from state when its agent has not reported for this long "
             "(default 120)",
    )
    parser.add_argument(
        "--default-replicas", type=replica_count, default=0, metavar="N",
        help="copies besides the primary kept of a volume created without a count of its "
             "own (docker run -v /flocker/NAME); stored in its metadata at creation "
             "(default 0). Placement only so far: the nodes are chosen, no copy is made",
    )
    parser.add_argument(
        "--cluster-token-file", metavar="PATH",
        help=f"file holding the cluster token every v1 and agent request must carry as "
             f"'Authorization: Bearer' (or set {TOKEN_ENV}); without either, the token in "
             f"{TOKEN_FILE_NAME} next to the SQLite database, made on first start",
    )
    parser.add_argument(
        "--insecure-http", action="store_true",
        help="allow plain HTTP on an address other than loopback (the token then "
             "crosses the network in clear text); without it such a --listen needs TLS",
    )
    parser.add_argument("--tls-cert", metavar="PEM", help="serve TLS with this certificate")
    parser.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert")
    parser.add_argument(
        "--tls-ca", metavar="PEM",
        help="accept client certificates signed by this CA as credentials (mutual TLS, "
             "as Flocker 1.x); a client without one needs the token",
    )
    # Without an action, `control [options]` runs the service, as it always has.
    actions = parser.add_subparsers(
        dest="control_action", metavar="[migrate]",
        help="none: run the control service with the options above")
    migrate_parser = actions.add_parser("migrate", help=migrate.HELP, description=migrate.HELP)
    migrate.configure(migrate_parser)
    migrate_parser.set_defaults(run=migrate.run)


class ConfigurationError(Exception):
    pass


def replica_count(text):
    """argparse type of --default-replicas."""
    try:
        return parse_replica_count(text)
    except BadReplicaCount as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def token_path(db):
    """Where the control service keeps the token it made: next to its database."""
    if db == ":memory:":
        return None
    return os.path.join(os.path.dirname(os.path.abspath(db)), TOKEN_FILE_NAME)


def store_location(options):
    """The SQLiteURL or EtcdURL that --store or --db names (--db by default), and the
    TLSFiles for etcds:// (or None); ConfigurationError for what cannot work."""
    if options.store is not None and options.db is not None:
        raise ConfigurationError("give --store or --db, not both (--db PATH is "
                                 "--store sqlite://PATH)")
    if options.store is None:
        location = SQLiteURL(options.db or DEFAULT_DB)
    else:
        try:
            location = parse_store_url(options.store)
        except BadStoreURL as error:
            raise ConfigurationError(f"--store: {error}")
    try:
        tls = etcd_tls_files(location, options.store_ca, options.store_cert,
                             options.store_key)
    except BadStoreURL as error:
        raise ConfigurationError(str(error))
    return location, tls


def read_token(options, location, environ=os.environ):
    """(token, where it came from, made now?): the given token, else the one kept next to
    the SQLite database, made on first start."""
    try:
        # A token given (file, then environment) is read as the clients read it.
        token = client_token(options.cluster_token_file, None, environ)
        if token is not None:
            return token, options.cluster_token_file or f"${TOKEN_ENV}", False
        if not isinstance(location, SQLiteURL):
            # Replicas must share one token, and none of them may make its own.
            raise ConfigurationError(
                f"--store {location} needs the cluster token every replica shares: give "
                f"--cluster-token-file or {TOKEN_ENV}")
        path = token_path(location.path)
        if path is None:
            raise ConfigurationError(
                f"--db :memory: keeps no token: give --cluster-token-file or {TOKEN_ENV}")
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        token, made = make_token_file(path)
        return token, path, made
    except TokenError as error:
        raise ConfigurationError(str(error))
    except OSError as error:
        raise ConfigurationError(f"cannot make the cluster token: {error}")


def is_loopback_listen(description):
    """Whether a Twisted server endpoint listens on loopback only (or a unix socket)."""
    kind, *fields = re.split(r"(?<!\\):", description)
    if kind == "unix":
        return True
    interface = next((field.partition("=")[2] for field in fields
                      if field.startswith("interface=")), "").replace("\\:", ":")
    if kind not in ("tcp", "tcp6", "ssl") or not interface:
        return False
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return interface == "localhost"


def secure_database_files(path):
    """Database, WAL, SHM and lock file readable by this user only (SQLite gives the WAL
    and SHM the database's mode); an older 0644 database is tightened too."""
    if path == ":memory:":
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    for name in (path, path + "-wal", path + "-shm", path + ".lock"):
        if os.path.exists(name):
            os.chmod(name, 0o600)


def tls_options(cert_path, key_path, ca_path):
    """Server TLS context; with a CA, a client certificate it signed is credentials."""
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
    # A certificate is asked for and verified, not required: a client without one is
    # answered 401 by the API (or served, with the token), not cut off in the handshake.
    return ssl.CertificateOptions(
        privateKey=certificate.privateKey.original, certificate=certificate.original,
        verify=bool(authorities), caCerts=[ca.original for ca in authorities] or None,
        requireCertificate=False,
    )


class QuietSite(BoundedSite):
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
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        lock = open(os.open(lock_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "a")
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
    """The v1 API and the agent protocol, bounded, with credentials checked from the head."""
    api = ControlAPI(service, token)
    return QuietSite(api.resource(), MAX_BODY,
                     authorise=lambda request: api.refusal(request.head_path(), request))


class ControlServer(PartService):
    """The control service from start to stop: its store (a SQLite database locked
    against a second control service, or etcd shared with other replicas), the cluster
    token, the API listening."""

    name = "control"

    def __init__(self, reactor, options):
        self.reactor = reactor
        self.options = options
        self._lock = self._store = self._service = self._port = None
        self._closing_store = None

    async def start(self):
        try:
            await self._open()
        except ConfigurationError as error:
            self._close()
            log.error("control service not started: {error}", error=str(error))
            raise SystemExit(2)
        except Exception:
            self._close()
            log.failure("control service failed")
            raise SystemExit(1)

    async def _open(self):
        reactor, options = self.reactor, self.options
        if options.tls_ca and not options.tls_cert:
            raise ConfigurationError("--tls-ca needs --tls-cert and --tls-key")
        context = None
        if options.tls_cert or options.tls_key:
            context = tls_options(options.tls_cert, options.tls_key, options.tls_ca)
        plain_http = context is None and not options.listen.startswith("ssl:")
        if plain_http and not options.insecure_http and not is_loopback_listen(options.listen):
            raise ConfigurationError(
                f"--listen {options.listen} is not loopback: serve TLS there (--tls-cert, "
                f"--tls-key) or, on a network you trust, give --insecure-http")
        location, store_tls = store_location(options)
        if isinstance(location, SQLiteURL):
            self._lock = lock_database(location.path)
        token, token_source, token_made = read_token(options, location)
        if token_made:
            log.info("made the cluster token in {path} (mode 0600): give it to the agents "
                     "and clients with --cluster-token-file", path=token_source)
        else:
            log.info("the cluster token is the one in {source}", source=token_source)
        self._store = self._open_store(location, store_tls)
        self._service = ControlService(self._store, reactor, state_expiry=options.state_expiry,
                                       default_replicas=options.default_replicas)
        factory = make_site(self._service, token)
        if context is not None:
            from twisted.protocols.tls import TLSMemoryBIOFactory
            factory = TLSMemoryBIOFactory(context, False, factory)
        try:
            endpoint = server_endpoint(reactor, options.listen)
            self._port = await endpoint.listen(factory)
        except (ValueError, TypeError, KeyError, CannotListenError) as error:
            raise ConfigurationError(f"cannot listen on {options.listen!r}: {error}")
        await self._service.start()
        address = self._port.getHost()
        log.info(
            "control service listening on {address} ({scheme}; every request but "
            "/v1/version, /healthz and /metrics needs {auth}; store {store})",
            address=f"{getattr(address, 'host', '')}:{getattr(address, 'port', '')}",
            scheme="https" + (" with client certificates" if options.tls_ca else "")
            if context else "http",
            auth="the cluster token or a client certificate" if options.tls_ca
            else "the cluster token",
            store=location,
        )
        factory.noisy = False

    async def stop(self):
        log.info("control service stopping")
        await self._port.stopListening()
        # Waiting agents are answered now, while the store still reads.
        await self._service.stop()
        self._close()
        if self._closing_store is not None:
            await self._closing_store

    def _open_store(self, location, tls):
        if isinstance(location, EtcdURL):
            # A node report lives in etcd as long as the state expiry unless renewed.
            return EtcdStore(EtcdClient(self.reactor, location.endpoints, tls=tls),
                             report_ttl=self.options.state_expiry, clock=self.reactor)
        try:
            secure_database_files(location.path)
            return AsyncStore(Store(location.path))
        except Exception as error:
            raise ConfigurationError(f"cannot open database {location.path}: {error}")

    def _close(self):
        if self._store is not None:
            self._closing_store = self._store.close()
            self._store = None
        if self._lock is not None:
            self._lock.close()


def run(options):
    return run_until_stopped(lambda reactor: ControlServer(reactor, options), "control")
