"""How every client of the cluster's HTTP services is set up, in one place: the cluster
token it sends, the TLS policy it trusts, how it connects (IP addresses directly, so that
a refused connection is reported at once), its connection pool, and the control
service's URLs: one or a list of its replicas, and failing over between them (Replicas).

The token is found the way the control service finds it: --cluster-token-file, the
environment, then, for a control service on this machine, the file it made in its
default place.
"""

import argparse
import ipaddress
import os
from urllib.parse import urlsplit

import treq
from twisted.internet import error as neterror
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import CancelledError, TimeoutError as DeferredTimeoutError
from twisted.internet.endpoints import (
    HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS,
)
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.client import (
    Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool, _HTTP11ClientFactory,
)
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IAgentEndpointFactory
from twisted.web._newclient import RequestTransmissionFailed, ResponseNeverReceived
from zope.interface import implementer

log = Logger()

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


def _all_local(control_urls):
    """Whether every URL of a --control-url list names this machine."""
    return all(is_local_url(url.strip()) for url in control_urls.split(","))


def client_token(token_file, control_url, environ=os.environ,
                 default_file=DEFAULT_TOKEN_FILE):
    """The token a client sends: from token_file, else the environment, else (for a
    control service on this machine) the file it made in its default place; or None."""
    if token_file:
        return read_token_file(token_file)
    token = environ.get(TOKEN_ENV, "").strip()
    if token:
        return token
    if control_url is not None and _all_local(control_url) and os.path.exists(default_file):
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


def tcp_endpoint(reactor, host, port):
    """The client endpoint of host:port. An IP address is connected to directly: a
    HostnameEndpoint, even given an address, reports a refused connection only at its
    next attempt (0.3 s later), which every failover from a dead control replica or etcd
    member would pay. A name goes through HostnameEndpoint (resolved, each address tried).
    Each endpoint keeps its own connect timeout (30 s for all three, as Agent's)."""
    if isIPAddress(host):
        return TCP4ClientEndpoint(reactor, host, port)
    if isIPv6Address(host):
        return TCP6ClientEndpoint(reactor, host, port)
    return HostnameEndpoint(reactor, host, port)


@implementer(IAgentEndpointFactory)
class _EndpointFactory:
    """How an Agent connects: as Twisted's own factory does (TCP for http; for https,
    TLS over it with the connection creator policy gives the URL's host and port), but
    over tcp_endpoint."""

    def __init__(self, reactor, policy):
        self._reactor = reactor
        self._policy = policy

    def endpointForURI(self, uri):
        try:
            host = uri.host.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError(f"the host of {uri.toBytes()!r} is not ASCII") from None
        endpoint = tcp_endpoint(self._reactor, host, uri.port)
        if uri.scheme == b"http":
            return endpoint
        if uri.scheme == b"https":
            return wrapClientTLS(self._policy.creatorForNetloc(uri.host, uri.port), endpoint)
        raise SchemeNotSupported(f"unsupported scheme: {uri.scheme!r}")


def http_client(reactor, policy=None, pool=None):
    """A treq HTTPClient over pool (default: a quiet persistent one) whose https URLs
    are checked with policy (default: the system's trust store)."""
    endpoints = _EndpointFactory(reactor, policy or BrowserLikePolicyForHTTPS())
    agent = Agent.usingEndpointFactory(reactor, endpoints, pool=pool or connection_pool(reactor))
    return treq.client.HTTPClient(agent)


# -- the control service's replicas: one URL list, and failing over between them --------

class ControlUrlError(ValueError):
    """A --control-url list holding an item that is not a control service URL."""


def control_roots(control_urls):
    """The roots (see control_root) of a comma-separated list of control service URLs,
    or of a sequence of them, in their order and without repeats. ControlUrlError names
    the first item that is not an http(s)://HOST[:PORT][/PATH] URL."""
    items = control_urls.split(",") if isinstance(control_urls, str) else list(control_urls)
    roots = []
    for item in items:
        root = control_root(item)
        parts = urlsplit(root)
        try:
            parts.port
            well_formed = parts.scheme in ("http", "https") and bool(parts.hostname)
        except ValueError:
            well_formed = False
        if not well_formed or parts.query or parts.fragment:
            raise ControlUrlError(f"{item.strip()!r} in the control URL list "
                                  f"{control_urls!r} is not an http(s)://HOST[:PORT] URL")
        if root not in roots:
            roots.append(root)
    return tuple(roots)


def control_url_argument(text):
    """argparse type of --control-url: the text as given, once every item is checked."""
    try:
        control_roots(text)
    except ControlUrlError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def cancelled(reason):
    """Whether a failed request failed because it was cancelled (HTTP client failures
    wrap their causes in .reasons)."""
    if isinstance(reason, CancelledError):
        return True
    return any(wrapped.check(CancelledError) for wrapped in getattr(reason, "reasons", ()))


def describe(reason):
    text = str(reason).strip()
    return f"{type(reason).__name__}: {text}" if text else type(reason).__name__


def _timed_out(result, timeout):
    """Whatever a request cancelled by our timeout failed with, the cause is the timeout."""
    raise DeferredTimeoutError(timeout, "no answer")


def within(deferred, seconds, reactor):
    """deferred, failing with TimeoutError (not a cancellation: that is the caller's
    deadline) when it has not fired within seconds."""
    return deferred.addTimeout(seconds, reactor, onTimeoutCancel=_timed_out)


# A request never reached the service: connecting again cannot repeat it.
NOT_CONNECTED = (neterror.ConnectError, neterror.DNSLookupError)
# The connection was closed with no answer: most often a kept-alive one that the server
# (or a proxy) closed between two requests, which Twisted retries itself for GET only.
_CLOSED_UNANSWERED = (ResponseNeverReceived, RequestTransmissionFailed)
_UNAVAILABLE = NOT_CONNECTED + _CLOSED_UNANSWERED + (DeferredTimeoutError,)
UNAVAILABLE_CODE = 503


class Replicas:
    """The control service's replicas as one client sees them (its --control-url list).

    call(attempt) asks the replica that answered last, and the next one in the list when
    it cannot be reached, does not answer in time or answers 503; it sticks with the one
    that answers. Bounded: each replica once per request, plus one retry of a request
    whose connection was closed before any answer, plus connect_retries more rounds
    when every replica refused the connection or answered 503 (none is still at work
    on the request: one replica dead and the other's store electing a leader answers
    so for a moment). Whoever calls sends only requests that are safe to send twice."""

    def __init__(self, control_urls, reactor=None, connect_retries=0, first_delay=0.1):
        self.roots = control_roots(control_urls)
        if not self.roots:
            raise ControlUrlError("no control service URL given")
        self._reactor = reactor
        self._connect_retries = connect_retries
        self._first_delay = first_delay
        self._current = 0

    @property
    def root(self):
        """The replica asked first: the last one that answered."""
        return self.roots[self._current]

    def in_turn(self):
        """The replicas in the order they are asked now."""
        return self.roots[self._current:] + self.roots[:self._current]

    async def call(self, attempt, unavailable=lambda answer: False):
        """attempt(root) -> awaitable answer; unavailable(answer): whether an answer
        says "ask another replica" (an HTTP answer of 503). The answer of the first
        replica that gives an acceptable one; else the last replica's answer or error."""
        count = len(self.roots)
        delay = self._first_delay
        closed_retried = False
        for round_number in range(self._connect_retries + 1):
            last_round = round_number == self._connect_retries
            index, tried = self._current, 0
            # Whether every replica so far refused the connection or answered 503.
            only_not_now = True
            while tried < count:
                last = tried == count - 1
                try:
                    answer = await attempt(self.roots[index])
                except Exception as error:
                    if cancelled(error) or not isinstance(error, _UNAVAILABLE):
                        raise
                    if isinstance(error, _CLOSED_UNANSWERED) and not closed_retried:
                        closed_retried = True
                        log.debug("asking {root} again: {reason}", root=self.roots[index],
                                  reason=describe(error))
                        continue
                    only_not_now = only_not_now and isinstance(error, NOT_CONNECTED)
                    if last and (last_round or not only_not_now):
                        raise
                    log.debug("control service {root} unavailable: {reason}",
                              root=self.roots[index], reason=describe(error))
                else:
                    if not unavailable(answer) or (
                            last and (last_round or not only_not_now)):
                        self._current = index
                        return answer
                    log.debug("control service {root} answered 503", root=self.roots[index])
                index, tried = (index + 1) % count, tried + 1
            await self._sleep(delay)
            delay *= 4

    async def _sleep(self, seconds):
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor
        await deferLater(reactor, seconds, lambda: None)
