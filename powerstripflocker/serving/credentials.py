"""The cluster's credentials as a server checks them: the cluster token (a shared
secret sent as `Authorization: Bearer TOKEN`) or a client certificate signed by the
cluster CA.

The control service makes the token on first start when it is given none, in its data
directory next to its database; clients find it with clients/http.py.
"""

import hmac
import os
import secrets

from powerstripflocker.clients.http import read_token_file

NO_CREDENTIALS = ("this request needs credentials: the cluster token "
                  "(Authorization: Bearer TOKEN) or a client certificate signed by the "
                  "cluster CA")
WRONG_CREDENTIALS = "the credentials given are not this cluster's: check the cluster token"
CHALLENGE = [(b"WWW-Authenticate", b'Bearer realm="powerstrip-flocker"')]


class Refusal:
    """An answer given from a request's head: status, description, extra headers."""

    def __init__(self, code, description, headers=()):
        self.code = code
        self.description = description
        self.headers = list(headers)


def make_token_file(path):
    """(token, created): the token in path, made there (32 random bytes, hex, mode 0600)
    when the file does not exist."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)
        return read_token_file(path), False
    token = secrets.token_hex(32)
    with os.fdopen(descriptor, "w", encoding="utf-8") as token_file:
        token_file.write(token + "\n")
        token_file.flush()
        os.fsync(token_file.fileno())
    return token, True


def has_client_certificate(transport):
    """A TLS peer that sent a certificate: the handshake verified it against the
    cluster CA (a server asks for one only when it was given the CA). Twisted's TLS
    wrapper offers getPeerCertificate without declaring ISSLTransport."""
    peer_certificate = getattr(transport, "getPeerCertificate", None)
    return peer_certificate is not None and peer_certificate() is not None


def refusal(headers, transport, token):
    """None when the request (its headers and transport) carries the cluster's
    credentials, else the Refusal to answer with: 401 without any, 403 with others."""
    if has_client_certificate(transport):
        return None
    given = headers.getRawHeaders(b"authorization") or []
    if not given:
        return Refusal(401, NO_CREDENTIALS, CHALLENGE)
    if token is None or len(given) != 1:
        return Refusal(403, WRONG_CREDENTIALS)
    if not hmac.compare_digest(given[0], b"Bearer " + token.encode("utf-8")):
        return Refusal(403, WRONG_CREDENTIALS)
    return None
