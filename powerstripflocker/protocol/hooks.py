"""The Powerstrip hook envelope (protocol version 1), for both of its ends.

The proxy builds the pre-hook and post-hook requests it POSTs to adapters and
reads their replies; an adapter parses those requests and builds the replies.
Both ends use this module, so the field names, types and checks are written
once. Failures raise EnvelopeError with a message for the other end; each end
chooses the status (the adapter answers 400, the proxy 502).
"""

import json
import re
from dataclasses import dataclass

PROTOCOL_VERSION = 1
PRE_HOOK = "pre-hook"
POST_HOOK = "post-hook"

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TARGET = re.compile(r"/[\x21-\x7e]*")
_HEADER_TEXT = re.compile(r"[\x20-\x7e]*")
_TEXT_OR_NULL = (str, type(None))


class EnvelopeError(Exception):
    """A hook request or reply that does not follow the protocol; .message says how."""

    def __init__(self, message):
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class ClientRequest:
    """The docker client's request as hooks see it: Body is its JSON text, or None."""

    method: str
    request: str
    body: str | None

    def to_json(self):
        return {"Method": self.method, "Request": self.request, "Body": self.body}


@dataclass(frozen=True)
class Hook:
    """A parsed hook request: its Type, the ClientRequest and (post-hooks) ServerResponse."""

    type: str
    client_request: ClientRequest
    server_response: dict | None


# -- requests: built by the proxy, parsed by an adapter -----------------------------------

def pre_hook_request(client_request):
    """The JSON document of a pre-hook request."""
    return {
        "PowerstripProtocolVersion": PROTOCOL_VERSION,
        "Type": PRE_HOOK,
        "ClientRequest": client_request.to_json(),
    }


def post_hook_request(client_request, code, content_type, body):
    """The JSON document of a post-hook request; client_request as the client sent it."""
    return {
        "PowerstripProtocolVersion": PROTOCOL_VERSION,
        "Type": POST_HOOK,
        "ClientRequest": client_request.to_json(),
        "ServerResponse": server_response(code, content_type, body),
    }


def server_response(code, content_type, body):
    return {"ContentType": content_type, "Body": body, "Code": code}


def parse_hook_request(raw):
    """The Hook in a request's bytes (checked field by field), or EnvelopeError."""
    try:
        envelope = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise EnvelopeError("the hook request is not valid JSON") from None
    if not isinstance(envelope, dict):
        raise EnvelopeError("the hook request must be a JSON object")
    version = envelope.get("PowerstripProtocolVersion")
    if version != PROTOCOL_VERSION or isinstance(version, bool):
        raise EnvelopeError(
            f"unsupported PowerstripProtocolVersion {version!r}: this adapter speaks 1")
    hook_type = envelope.get("Type")
    if hook_type not in (PRE_HOOK, POST_HOOK):
        raise EnvelopeError(
            f"unknown hook Type {hook_type!r}: expected 'pre-hook' or 'post-hook'")
    client = _request_field(envelope, "ClientRequest", dict, "the hook request")
    client_request = ClientRequest(
        method=_request_field(client, "Method", str, "ClientRequest"),
        request=_request_field(client, "Request", str, "ClientRequest"),
        body=_request_field(client, "Body", _TEXT_OR_NULL, "ClientRequest"),
    )
    response = None
    if hook_type == POST_HOOK:
        response = _request_field(envelope, "ServerResponse", dict, "the post-hook")
        _request_field(response, "Code", int, "ServerResponse")
        _request_field(response, "Body", _TEXT_OR_NULL, "ServerResponse")
        _request_field(response, "ContentType", _TEXT_OR_NULL, "ServerResponse")
    return Hook(hook_type, client_request, response)


def _request_field(container, key, kinds, where):
    if key not in container:
        raise EnvelopeError(f"{where} has no {key!r}")
    value = container[key]
    if not isinstance(value, kinds) or (isinstance(value, bool) and kinds is int):
        raise EnvelopeError(f"{where}.{key} has the wrong type ({type(value).__name__})")
    return value


# -- replies: built by an adapter, parsed by the proxy ------------------------------------

def pre_hook_reply(client_request):
    """The reply to a pre-hook: the (modified) ClientRequest."""
    return {
        "PowerstripProtocolVersion": PROTOCOL_VERSION,
        "ModifiedClientRequest": client_request.to_json(),
    }


def post_hook_reply(response):
    """The reply to a post-hook: the (modified) ServerResponse document."""
    return {"PowerstripProtocolVersion": PROTOCOL_VERSION, "ModifiedServerResponse": response}


def parse_pre_hook_reply(answer, who):
    """(Method, Request, Body) of a pre-hook reply (a decoded JSON object) from who."""
    modified = _reply_field(who, answer, "ModifiedClientRequest", dict)
    where = "ModifiedClientRequest."
    method = _reply_field(who, modified, "Method", str, where)
    target = _reply_field(who, modified, "Request", str, where)
    body = _reply_field(who, modified, "Body", _TEXT_OR_NULL, where)
    if not _TOKEN.fullmatch(method):
        raise EnvelopeError(f"{who} returned a bad Method {method[:40]!r}")
    if not _TARGET.fullmatch(target):
        raise EnvelopeError(f"{who} returned a bad Request {target[:80]!r} "
                            f"(must be a path starting with '/', no spaces)")
    _check_text(who, body)
    return method, target, body


def parse_post_hook_reply(answer, who):
    """(Code, ContentType, Body) of a post-hook reply (a decoded JSON object) from who."""
    modified = _reply_field(who, answer, "ModifiedServerResponse", dict)
    where = "ModifiedServerResponse."
    code = _reply_field(who, modified, "Code", int, where)
    content_type = _reply_field(who, modified, "ContentType", _TEXT_OR_NULL, where)
    body = _reply_field(who, modified, "Body", str, where)
    if isinstance(code, bool) or not 200 <= code <= 599:
        raise EnvelopeError(f"{who} returned a bad Code {code!r}")
    if content_type is not None and not _HEADER_TEXT.fullmatch(content_type):
        raise EnvelopeError(f"{who} returned a bad ContentType")
    _check_text(who, body)
    return code, content_type, body


def _check_text(who, body):
    # JSON may escape a lone surrogate ("\\ud800"): it has no UTF-8 bytes to send
    if body is None:
        return
    try:
        body.encode("utf-8")
    except UnicodeEncodeError:
        raise EnvelopeError(f"{who} returned a bad Body (a lone surrogate is not "
                            f"Unicode text)") from None


def _reply_field(who, mapping, key, kind, prefix=""):
    if key not in mapping:
        raise EnvelopeError(f"{who}'s answer lacks {prefix}{key}")
    value = mapping[key]
    if not isinstance(value, kind):
        raise EnvelopeError(f"{who}'s answer has a bad {prefix}{key}: {value!r:.80}")
    return value
