"""A request that goes through hooks, from its head to the response the client gets.

The client side holds the request while the exchange reads its JSON body
whole (up to the limit), runs the pre-hooks and rewrites the request from
their answer. With post-hooks the daemon side feeds the exchange the
response, which it reads whole, runs through the post-hooks and renders with
the final status, content type and body. Whatever goes wrong becomes Refused:
one status and one message for the docker client.
"""

from dataclasses import dataclass

from twisted.logger import Logger
from twisted.python.failure import Failure

from powerstripflocker.powerstrip.bodies import (
    BodyTooLarge, CloseDelimited, Framing, WholeBody, request_framing,
)
from powerstripflocker.powerstrip.hooks import AdapterError
from powerstripflocker.powerstrip.http import ProtocolError, media_type, status_line
from powerstripflocker.protocol.hooks import ClientRequest

BODY_METHODS = (b"POST", b"PUT", b"PATCH")
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

log = Logger()


class Refused(Exception):
    """The client gets this status and a JSON message, and the connection closes."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Outgoing:
    """The request for the daemon once the pre-hooks ran."""

    method: bytes
    head: bytes                   # the whole request head
    stream: Framing | None        # the client's own body, relayed as it arrives
    replacement: bytes | None     # the body sent instead (the client's is read and dropped)


class HookedExchange:
    """One request matched by an endpoint with hooks (request: a ParsedRequest)."""

    def __init__(self, request, kind, length, hooks, caller, limit):
        self.request = request
        self.hooks = hooks
        self.caller = caller
        self.limit = limit
        self.kind, self.length = kind, length
        self.body = None              # the client's JSON body: bytes once read, or text
        self.stream = None            # the client's non-JSON body, relayed after the hooks
        self.request_reader = None    # WholeBody while the JSON request body is read
        self.response_reader = None   # WholeBody while the response is read
        self.client_request = None    # what the pre-hooks saw first, for the post-hooks
        self.response_head = None
        self.response_code = None
        self.close_delimited = False  # the daemon's response ends with its connection

    @property
    def wants_response(self):
        """Whether the daemon's response goes through post-hooks."""
        return bool(self.hooks.post)

    @property
    def reading_request(self):
        """Whether the request body is being read whole (feed it to feed_request)."""
        return self.request_reader is not None

    # -- the request --------------------------------------------------------------------

    def begin(self):
        """Bytes to send the client at once (a 100 Continue) or b""; raises Refused.

        A JSON body is then read whole (reading_request) before the pre-hooks run; no
        body, or one that is not JSON, gives adapters Body null ("" for an empty
        JSON body) and stays with the client until the request is sent.
        """
        head, kind, length = self.request.head, self.kind, self.length
        is_json = media_type(head.headers.get(b"content-type")) == b"application/json"
        has_body = kind == "chunked" or (kind == "length" and length > 0)
        if not (is_json and has_body):
            self.body = "" if is_json else None
            self.stream = request_framing(self.request, kind, length)
            return b""
        if kind == "length" and length > self.limit:
            raise self._request_too_large()
        self.request_reader = WholeBody(
            request_framing(self.request, kind, length, collect=True), self.limit)
        if b"100-continue" in head.headers.get(b"expect", b"").lower():
            # we read the body ourselves before Docker is asked anything
            head.lines = head.without(b"expect")
            return CONTINUE
        return b""

    def feed_request(self, data):
        """The rest of data after the JSON body once it is whole, else None; raises Refused."""
        try:
            done = self.request_reader.feed(data)
        except ProtocolError as e:
            self.request_reader = None
            raise Refused(400, f"powerstrip proxy: malformed request body: {e}") from None
        except BodyTooLarge:
            self.request_reader = None
            raise self._request_too_large() from None
        if done is None:
            return None
        self.request_reader = None
        self.body, rest = done
        return rest

    def _request_too_large(self):
        return Refused(413, f"powerstrip proxy: the request body is over the limit of "
                            f"{self.limit} bytes for requests that go through hooks")

    async def run_pre_hooks(self):
        """The Outgoing request from the pre-hooks' answer; raises Refused."""
        body = self.body
        if isinstance(body, bytes):
            try:
                body = body.decode("utf-8")
            except UnicodeDecodeError:
                raise Refused(
                    400, "powerstrip proxy: the JSON request body is not UTF-8") from None
        request = self.request
        self.client_request = ClientRequest(
            request.method.decode("latin-1"), request.target.decode("latin-1"), body)
        log.info("{method} {target}: pre-hooks {pre}, post-hooks {post}",
                 method=self.client_request.method, target=self.client_request.request,
                 pre=list(self.hooks.pre), post=list(self.hooks.post))
        try:
            result = await self.caller.run_pre(self.hooks.pre, self.client_request)
        except AdapterError as error:
            log.warn("hook failed, request not sent to Docker: {message}", message=error.message)
            raise Refused(error.code, error.message) from None
        except Exception:
            failure = Failure()
            log.failure("hook chain crashed", failure)
            raise Refused(502, f"powerstrip proxy: hook chain failed: "
                               f"{failure.getErrorMessage()}") from None
        return self._outgoing(result)

    def _outgoing(self, result):
        method = result.method.encode("latin-1")
        head = self.request.head
        first = b"%s %s %s" % (method, result.request.encode("latin-1"), self.request.version)
        replacement = None
        if result.body is None:
            # no JSON body: keep the client's framing; relay any body as it comes
            lines = head.lines
            if self.stream is None and method in BODY_METHODS and (
                    b"content-length" not in head.headers):
                lines = [*lines, b"Content-Length: 0"]
        else:
            # a non-JSON body replaced by the hook's Body is read and dropped
            replacement = result.body.encode("utf-8")
            lines = head.without(b"content-length", b"transfer-encoding")
            lines.append(b"Content-Length: %d" % len(replacement))
        raw_head = b"\r\n".join([first, *lines]) + b"\r\n\r\n"
        return Outgoing(method, raw_head, self.stream, replacement)

    # -- the response -------------------------------------------------------------------

    def begin_response(self, head, code, kind, length, close_delimited):
        """Read the daemon's response (head: a Head) whole from now on; raises Refused."""
        if kind == "length" and length > self.limit:
            raise Refused(502, f"the Docker daemon's response of {length} bytes is over the "
                               f"limit of {self.limit} bytes for post-hooks")
        self.response_head, self.response_code = head, code
        self.close_delimited = close_delimited
        framing = CloseDelimited() if close_delimited else Framing(kind, length, collect=True)
        self.response_reader = WholeBody(framing, self.limit)

    def feed_response(self, data):
        """(body, rest of data) once the response is whole, else None.

        Raises Refused past the limit, ProtocolError on bad framing.
        """
        try:
            done = self.response_reader.feed(data)
        except BodyTooLarge:
            self.response_reader = None
            raise Refused(502, f"the Docker daemon's response is over the limit of "
                               f"{self.limit} bytes for post-hooks") from None
        if done is not None:
            self.response_reader = None
        return done

    def response_closed(self):
        """The body of a close-delimited response, now that the daemon closed."""
        body = self.response_reader.content()
        self.response_reader = None
        return body

    async def run_post_hooks(self, body):
        """The whole response for the client after the post-hooks; raises Refused."""
        ctype_header = self.response_head.headers.get(b"content-type")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            log.warn("response is not UTF-8 text; post-hooks skipped")
            return self._render(self.response_code, ctype_header, body)
        ctype = ctype_header.decode("latin-1") if ctype_header is not None else None
        try:
            code, ctype, text = await self.caller.run_post(
                self.hooks.post, self.client_request, self.response_code, ctype, text)
        except AdapterError as error:
            log.warn("post-hook failed: {message}", message=error.message)
            raise Refused(error.code, error.message) from None
        except Exception:
            failure = Failure()
            log.failure("post-hook chain crashed", failure)
            raise Refused(502, f"powerstrip proxy: post-hook chain failed: "
                               f"{failure.getErrorMessage()}") from None
        return self._render(code, None if ctype is None else ctype.encode("latin-1"),
                            text.encode("utf-8"))

    def _render(self, code, ctype, body):
        head = self.response_head
        lines = head.without(b"content-length", b"transfer-encoding", b"content-type")
        if ctype is not None:
            lines.append(b"Content-Type: " + ctype)
        lines.append(b"Content-Length: %d" % len(body))
        version = head.first.split(b" ", 1)[0]
        return b"\r\n".join([status_line(code, version), *lines]) + b"\r\n\r\n" + body
