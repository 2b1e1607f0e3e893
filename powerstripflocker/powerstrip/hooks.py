"""Calling Powerstrip adapters: pre-hook and post-hook chains.

Every failure of an adapter (unreachable, timeout, non-2xx, a body that is
not JSON, missing or mistyped fields) becomes one AdapterError with the HTTP
status and message the docker client will see. The chain stops there.
"""

import json
import re

import treq
from twisted.internet import defer, error as netError
from twisted.logger import Logger
from twisted.web.client import (
    Agent, HTTPConnectionPool, ResponseFailed, ResponseNeverReceived,
)

PROTOCOL_VERSION = 1
DEFAULT_TIMEOUT = 150.0
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TARGET = re.compile(r"/[\x21-\x7e]*")

log = Logger()


class AdapterError(Exception):
    """An adapter failed; .code and .message are what the client gets."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


class HookCaller:
    """Posts hook requests to the adapters named in a Configuration."""

    def __init__(self, reactor, adapters, timeout=DEFAULT_TIMEOUT):
        self._reactor = reactor
        self._adapters = adapters
        self.timeout = timeout
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = 8
        self._pool._factory = type(
            "QuietHTTP11ClientFactory", (self._pool._factory,), {"noisy": False})
        self._http = treq.client.HTTPClient(Agent(reactor, pool=self._pool))

    def set_adapters(self, adapters):
        self._adapters = dict(adapters)

    def close(self):
        """Drop cached connections to adapters (for a clean shutdown)."""
        return self._pool.closeCachedConnections()

    async def run_pre(self, names, method, target, body):
        """Run the pre-hooks in order; return the final (method, target, body).

        body is a str (the client's JSON text) or None; an adapter that answers
        Body null leaves the body as it was.
        """
        for name in names:
            answer = await self._call(name, {
                "PowerstripProtocolVersion": PROTOCOL_VERSION,
                "Type": "pre-hook",
                "ClientRequest": {"Method": method, "Request": target, "Body": body},
            })
            modified = _field(name, answer, "ModifiedClientRequest", dict)
            method = _field(name, modified, "Method", str, "ModifiedClientRequest.")
            target = _field(name, modified, "Request", str, "ModifiedClientRequest.")
            new_body = _field(name, modified, "Body", (str, type(None)), "ModifiedClientRequest.")
            if not _TOKEN.fullmatch(method):
                raise AdapterError(502, f"adapter {name} returned a bad Method {method[:40]!r}")
            if not _TARGET.fullmatch(target):
                raise AdapterError(
                    502, f"adapter {name} returned a bad Request {target[:80]!r} "
                         f"(must be a path starting with '/', no spaces)"
                )
            if new_body is not None:
                body = new_body
        return method, target, body

    async def run_post(self, names, client_request, code, content_type, body):
        """Run the post-hooks in order; return the final (code, content_type, body)."""
        for name in names:
            answer = await self._call(name, {
                "PowerstripProtocolVersion": PROTOCOL_VERSION,
                "Type": "post-hook",
                "ClientRequest": client_request,
                "ServerResponse": {"ContentType": content_type, "Body": body, "Code": code},
            })
            modified = _field(name, answer, "ModifiedServerResponse", dict)
            code = _field(name, modified, "Code", int, "ModifiedServerResponse.")
            content_type = _field(
                name, modified, "ContentType", (str, type(None)), "ModifiedServerResponse."
            )
            body = _field(name, modified, "Body", str, "ModifiedServerResponse.")
            if isinstance(code, bool) or not 200 <= code <= 599:
                raise AdapterError(502, f"adapter {name} returned a bad Code {code!r}")
            if content_type is not None and not re.fullmatch(r"[\x20-\x7e]*", content_type):
                raise AdapterError(502, f"adapter {name} returned a bad ContentType")
        return code, content_type, body

    async def _call(self, name, payload):
        url = self._adapters.get(name)
        if url is None:  # dropped by a configuration reload while this request waited
            raise AdapterError(502, f"adapter {name} is no longer configured")
        d = defer.Deferred.fromCoroutine(self._post(url, payload))
        timed_out = []

        def expire():
            timed_out.append(True)
            d.cancel()
        timer = self._reactor.callLater(self.timeout, expire)
        try:
            status, content = await d
        except Exception as e:
            if timed_out:
                raise AdapterError(
                    502, f"adapter {name} ({url}) did not answer within {self.timeout:g} s")
            if isinstance(e, (netError.ConnectError, netError.DNSLookupError)):
                raise AdapterError(
                    502, f"adapter {name} ({url}) is unreachable: {_describe(e)}")
            if isinstance(e, (ResponseFailed, ResponseNeverReceived)):
                raise AdapterError(502, f"adapter {name} ({url}) closed the connection "
                                        f"without answering (did it stop?): {_describe(e)}")
            raise AdapterError(502, f"adapter {name} ({url}) failed: {_describe(e)}")
        finally:
            if timer.active():
                timer.cancel()
        try:
            answer = json.loads(content)
        except ValueError:
            answer = None
        if not 200 <= status < 300:
            message = answer.get("message") if isinstance(answer, dict) else None
            if isinstance(message, str) and message:
                code = status if 400 <= status <= 599 and status != 404 else 502
                raise AdapterError(code, f"adapter {name}: {message}")
            snippet = content[:200].decode("utf-8", "replace").strip()
            raise AdapterError(
                502, f"adapter {name} answered HTTP {status}"
                     + (f": {snippet}" if snippet else " with an empty body")
            )
        if not isinstance(answer, dict):
            raise AdapterError(502, f"adapter {name} answered HTTP {status} with a body "
                                    f"that is not a JSON object")
        return answer

    async def _post(self, url, payload):
        response = await self._http.post(
            url, data=json.dumps(payload).encode("utf-8"),
            headers={b"Content-Type": [b"application/json"]},
        )
        content = await response.content()
        return response.code, content


def _field(name, mapping, key, kind, prefix=""):
    if key not in mapping:
        raise AdapterError(502, f"adapter {name}'s answer lacks {prefix}{key}")
    value = mapping[key]
    if not isinstance(value, kind):
        raise AdapterError(502, f"adapter {name}'s answer has a bad {prefix}{key}: {value!r:.80}")
    return value


def _describe(e):
    if hasattr(e, "reasons"):  # ResponseFailed and friends wrap failures
        return "; ".join(r.getErrorMessage() for r in e.reasons)
    return str(e) or type(e).__name__
