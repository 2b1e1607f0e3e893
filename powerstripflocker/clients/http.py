"""How every client of the cluster's HTTP services is set up, in one place: the cluster
token it sends, the TLS policy it trusts, its connection pool, and the control
service's URL.

The token is found the way the control service finds it: --cluster-token-file, the
environment, then, for a control service on this machine, the file it made in its
default place.
"""

import ipaddress
import os
from urllib.parse import urlsplit

import treq
from twisted.web.client import (
    Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool, _HTTP11ClientFactory,
)

DEFAULT_CONTROL_URL = "http://127.0.0.1:4523"
CONTROL_URL_ENV = "FLOCKER_CONTROL_SERVICE_BASE_URL"
TOKEN_ENV = "POWERSTRIP_FLOCKER_CLUSTER_TOKEN"
TOKEN_FILE_NAME = "cluster.token"
DEFAULT_STATE_DIRECTORY = "/var/lib/powerstrip-flocker"
DEFAULT_TOKEN_FILE = os.path.join(DEFAULT_STATE_DIRECTORY, TOKEN_FILE_NAME)
TOKEN_SOURCES = (f"or ${TOKEN_ENV}; else, for a control service on this machine, the one "
                 f"it made in {DEFAULT_TOKEN_FILE}")


class TokenError(Exception):
    """A token file that cannot be read or holds nothing."""


def read_token_file(path):
    try:
        with open(path, encoding="utf-8") as token_file:
            token = token_file.read().strip()
    except OSError as error:
        raise TokenError(f"cannot read the cluster token file {path}: {error.strerror}")
    if not token:
        raise TokenError(f"the cluster token file {path} holds no token")
    return token


def is_local_url(url):
    """Whether url names a service on this machine (a loopback address or localhost)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def client_token(token_file, control_url, environ=os.environ,
                 default_file=DEFAULT_TOKEN_FILE):
    """The token a client sends: from token_file, else the environment, else (for a
    control service on this machine) the file it made in its default place; or None."""
    if token_file:
        return read_token_file(token_file)
    token = environ.get(TOKEN_ENV, "").strip()
    if token:
        return token
    if control_url is not None and is_local_url(control_url) and os.path.exists(default_file):
        try:
            return read_token_file(default_file)
        except TokenError:
            return None
    return None


def command_token(options, environ=os.environ):
    """The token of a command given --cluster-token-file and --control-url; a token file
    that cannot be read ends the command, saying why."""
    try:
        return client_token(options.cluster_token_file, options.control_url, environ)
    except TokenError as error:
        raise SystemExit(str(error)) from None


def control_root(control_url):
    """The control service's root (scheme://host:port, and any path before its APIs)
    from a URL given with or without /v1, with or without a trailing slash: the v1 API
    is under root + "/v1", the agent protocol under root + "/agent/v1"."""
    url = control_url.strip().rstrip("/")
    if url.endswith("/v1"):
        url = url[:-len("/v1")].rstrip("/")
    return url


def tls_policy(ca_path=None, cert_path=None, key_path=None):
    """The IPolicyForHTTPS of https:// URLs: trusting only the cluster CA when one is
    given (else the system's trust store), presenting a client certificate when one is
    given (Flocker 1.x's api.crt/api.key or plugin.crt/plugin.key; the key may be in the
    certificate's file). A client certificate without the CA is a ValueError."""
    from twisted.internet import ssl

    if ca_path is None:
        if cert_path:
            raise ValueError("a client certificate needs the cluster CA too")
        return BrowserLikePolicyForHTTPS()
    with open(ca_path, "rb") as ca_file:
        trust_root = ssl.Certificate.loadPEM(ca_file.read())
    client_certificate = None
    if cert_path:
        with open(cert_path, "rb") as cert_file:
            pem = cert_file.read()
        if key_path:
            with open(key_path, "rb") as key_file:
                pem += b"\n" + key_file.read()
        client_certificate = ssl.PrivateCertificate.loadPEM(pem)

    class ClusterPolicy(BrowserLikePolicyForHTTPS):
        def creatorForNetloc(self, hostname, port):
            return ssl.optionsForClientTLS(
                hostname.decode("ascii"), trustRoot=trust_root,
                clientCertificate=client_certificate,
            )
    return ClusterPolicy()


class _QuietFactory(_HTTP11ClientFactory):
    # No "Starting factory" line per connection: a command's output stays its own.
    noisy = False


def connection_pool(reactor, persistent=True, max_per_host=4):
    """An HTTPConnectionPool that logs nothing per connection."""
    pool = HTTPConnectionPool(reactor, persistent=persistent)
    pool._factory = _QuietFactory
    pool.maxPersistentPerHost = max_per_host
    return pool


def http_client(reactor, policy=None, pool=None):
    """A treq HTTPClient over pool (default: a quiet persistent one) whose https URLs
    are checked with policy (default: the system's trust store)."""
    agent = Agent(reactor, contextFactory=policy or BrowserLikePolicyForHTTPS(),
                  pool=pool or connection_pool(reactor))
    return treq.client.HTTPClient(agent)
