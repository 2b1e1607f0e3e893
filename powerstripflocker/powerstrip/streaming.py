"""Requests whose responses are streams, long polls or hijacked connections.

Post-hooks need the whole response before the client gets a byte of it. On
these requests that would hang the client (``docker run`` sends ``start`` only
once ``wait`` has sent its headers) or never let it print (``logs -f``,
``events``, pull progress), so the proxy skips post-hooks there and runs them
everywhere else, as Powerstrip skipped them on hijacked responses. dockerd
routes ``/vN.N/...`` (any version) and the unversioned path alike, and so does
this list.
"""

import re

_ID = "[^/]+"
_NAME = ".+"  # image and plugin names contain slashes
_VERSION_PREFIX = "(?:/v[0-9.]+)?"

STREAMING_ENDPOINTS = (
    ("POST", f"/containers/{_ID}/attach"),
    ("GET", f"/containers/{_ID}/attach/ws"),
    ("POST", f"/containers/{_ID}/wait"),
    ("GET", f"/containers/{_ID}/logs"),
    ("GET", f"/containers/{_ID}/stats"),
    ("GET", f"/containers/{_ID}/export"),
    ("GET", f"/containers/{_ID}/archive"),
    ("POST", f"/exec/{_ID}/start"),
    ("GET", "/events"),
    ("POST", "/build"),
    ("POST", "/images/create"),
    ("POST", "/images/load"),
    ("GET", "/images/get"),
    ("GET", f"/images/{_NAME}/get"),
    ("POST", f"/images/{_NAME}/push"),
    ("GET", f"/services/{_ID}/logs"),
    ("GET", f"/tasks/{_ID}/logs"),
    ("POST", "/plugins/pull"),
    ("POST", f"/plugins/{_NAME}/upgrade"),
    ("POST", f"/plugins/{_NAME}/push"),
    ("POST", "/session"),
    ("POST", "/grpc"),
)

_MATCHERS = tuple(
    (f"{method} {path}".replace(_ID, "{id}").replace(_NAME, "{name}"),
     method, re.compile(_VERSION_PREFIX + path).fullmatch)
    for method, path in STREAMING_ENDPOINTS
)


def streaming_request(method, path):
    """The endpoint (e.g. ``POST /containers/{id}/wait``) when the request with this
    method and routed path (no query) answers with a stream; else None."""
    for endpoint, endpoint_method, matches in _MATCHERS:
        if method == endpoint_method and matches(path):
            return endpoint
    return None
