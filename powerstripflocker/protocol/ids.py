"""What a node's or a dataset's id looks like on every side: a UUID in its 36-character
textual form (either case), version 4 where Flocker's schema asks for one."""

import re

UUID_PATTERN = "[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
UUID4_PATTERN = ("[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-4[0-9A-Fa-f]{3}-[89abAB][0-9A-Fa-f]{3}-"
                 "[0-9A-Fa-f]{12}")

_UUID = re.compile(UUID_PATTERN)
_UUID4 = re.compile(UUID4_PATTERN)


def canonical_uuid(text):
    """The lower-case form of a UUID given in its textual form, or None if text is not
    one."""
    if isinstance(text, str) and _UUID.fullmatch(text):
        return text.lower()
    return None


def is_uuid(text):
    return canonical_uuid(text) is not None


def is_uuid4(text):
    """Whether text is a version 4 UUID in its textual form (Flocker's schema)."""
    return isinstance(text, str) and _UUID4.fullmatch(text) is not None
