"""Calling Powerstrip adapters: pre-hook and post-hook chains.

Every failure of an adapter (unreachable, timeout, non-2xx, a body that is
not JSON, missing or mistyped fields) becomes one AdapterError with the HTTP
status and message the docker client will see. The chain stops there.
"""

import json

from twisted.internet import defer, error as netError
from twisted.logger import Logger
from twisted.web.client import ResponseFailed, ResponseNeverReceived

from powerstripflocker.clients.http import connection_pool, http_client
from powerstripflocker.protocol import hooks as envelope

DEFAULT_TIMEOUT = 150.0

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
        self._pool = connection_pool(reactor, max_per_host=8)
        self._http = http_client(reactor, pool=self._pool)

    def set_adapters(self, adapters):
        self._adapters = dict(adapters)

    def close(self):
        """Drop cached connections to adapters (for a clean shutdown)."""
        return self._pool.closeCachedConnections()

    async def run_pre(self, names, client_request):
        """Run the pre-hooks in order over a ClientRequest; return the final one.

        Its body is a str (the client's JSON text) or None; an adapter that
        answers Body null leaves the body as it was.
        """
        for name in names:
            answer = await self._call(name, envelope.pre_hook_request(client_request))
            method, target, body = _reply(
                envelope.parse_pre_hook_reply, answer, f"adapter {name}")
            if body is None:
                body = client_request.body
            client_request = envelope.ClientRequest(method, target, body)
        return client_request

    async def run_post(self, names, client_request, code, content_type, body):
        """Run the post-hooks in order; return the final (code, content_type, body)."""
        for name in names:
            answer = await self._call(
                name, envelope.post_hook_request(client_request, code, content_type, body))
            code, content_type, body = _reply(
                envelope.parse_post_hook_reply, answer, f"adapter {name}")
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


def _reply(parse, answer, who):
    try:
        return parse(answer, who)
    except envelope.EnvelopeError as e:
        raise AdapterError(502, e.message) from None


def _describe(e):
    if hasattr(e, "reasons"):  # ResponseFailed and friends wrap failures
        return "; ".join(r.getErrorMessage() for r in e.reasons)
    return str(e) or type(e).__name__
