"""Read a Docker request body exactly as dockerd will (Go's encoding/json filling
Docker's structs), refusing a body that dockerd could read differently from us.

- Keys match struct fields case-insensitively, by Go's folding: ASCII case, and also
  U+212A (Kelvin sign) as ``k``, U+017F (long s) as ``s``, U+0131 (dotless i) as ``i``.
  So ``hostconfig``, ``binds`` and a Mounts entry's ``source``/``type`` count.
- A repeated key is decoded again into the same field: a scalar is replaced (the last
  wins), but an object is merged into the first one and an array's elements are decoded
  into the earlier elements, field by field. "The last one wins" is therefore not what Go
  does, and imitating the merge exactly is a trap. So an object holding one key twice,
  anywhere in the body, is refused (no Docker client sends one), and so is an object in
  which two spellings of a field we read (``Binds`` and ``binds``) both appear. With
  repeats refused, a parsed body re-serialises to a body dockerd reads the same way, and
  a rewritten body names each field we own once, under its canonical spelling.
- Depth is bounded (MAX_JSON_DEPTH) before parsing, so a deeply nested body is a clear
  refusal rather than a RecursionError.
"""

import json
import re
from collections import Counter
from itertools import accumulate

MAX_JSON_DEPTH = 400
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_A_BRACKET = re.compile(r"[^\[\]{}]+")
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
# Go's encoding/json (1.21 on) folds a key rune by rune to the smallest rune of its
# case-fold chain; these three are the only non-ASCII runes that fold onto an ASCII letter.
_GO_KEY_FOLD = str.maketrans({
    **{chr(code): chr(code + 32) for code in range(ord("A"), ord("Z") + 1)},
    "\u212a": "k", "\u017f": "s", "\u0131": "i",
})


class InvalidRequest(ValueError):
    """The request cannot be understood; the message says why, for the docker user."""


class NotJSON(InvalidRequest):
    """The body is not JSON at all (as opposed to JSON we refuse)."""


def check_json_depth(text):
    """Refuse JSON text (str or UTF-8 bytes) nested deeper than MAX_JSON_DEPTH.

    Linear and without recursion, so it can run before a recursive parser does.
    """
    if isinstance(text, bytes):
        # Quotes, backslashes and brackets are ASCII: undecodable bytes cannot hide one.
        text = text.decode("utf-8", "replace")
    brackets = _NOT_A_BRACKET.sub("", _JSON_STRING.sub("", text))
    if brackets and max(accumulate(map(_DEPTH_STEP.__getitem__, brackets))) > MAX_JSON_DEPTH:
        raise InvalidRequest(
            f"the request body is nested deeper than {MAX_JSON_DEPTH} levels"
        )


def _object_with_unique_keys(pairs):
    document = dict(pairs)
    if len(document) != len(pairs):
        [(repeated, _)] = Counter(key for key, _ in pairs).most_common(1)
        raise InvalidRequest(
            f"the key {repeated!r} appears twice in one object of the Docker request "
            "body: dockerd would decode both into one field (objects merged, the last "
            "scalar kept), so the body is ambiguous; send it once"
        )
    return document


def _refuse_constant(name):
    raise NotJSON(f"{name} is not JSON")


def decode_body(text):
    """Parse a Docker request body, refusing what dockerd could read differently.

    Raises NotJSON if text is not JSON, InvalidRequest if it is JSON we refuse (too
    deep, a key repeated in one object, content after the value).
    """
    check_json_depth(text)
    try:
        return json.loads(text, object_pairs_hook=_object_with_unique_keys,
                          parse_constant=_refuse_constant)
    except json.JSONDecodeError as reason:
        if reason.msg == "Extra data":
            # Not "not JSON": a Go json.Decoder reads the first value and older dockerds
            # never look at the rest, so they would act on this body.
            raise InvalidRequest(
                "the Docker request body has content after its JSON value"
            ) from None
        raise NotJSON(f"the Docker request body is not JSON: {reason}") from None


def _go_key(key):
    return key.translate(_GO_KEY_FOLD)


def key_of(document, field, where):
    """The one key of document that dockerd decodes into field, or None if none does."""
    wanted = _go_key(field)
    keys = [key for key in document if _go_key(key) == wanted]
    if len(keys) > 1:
        raise InvalidRequest(
            f"{where} has {' and '.join(map(repr, keys))}: dockerd reads each as "
            f"{field!r}, so the body is ambiguous; send one {field!r}"
        )
    return keys[0] if keys else None


def list_field(document, field, where=None):
    """The list dockerd decodes into field of document (where names it; None: the body)."""
    shown = f"{where}.{field}" if where else field
    key = key_of(document, field, where or "the Docker request body")
    value = None if key is None else document[key]
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidRequest(f"{shown} must be a list, not {type(value).__name__}")
    return value
