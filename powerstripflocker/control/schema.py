"""Request schemas for the control service, equivalent to Flocker's published
v1 schema (types.yml / endpoints.yml), plus the agent protocol's schemas.

Written as Python dicts so the package never reads ../shared at run time.
Where Flocker answered bad input with a 500, the schema here is stricter so that
we answer 400 instead: a lease's dataset_id must be a UUID, a create body may
not carry ``deleted``, sizes are bounded so they fit in SQLite.
"""

from jsonschema import Draft4Validator

from powerstripflocker.control.replicas import MAX_REPLICAS
from powerstripflocker.protocol import ids

UUID4_PATTERN = f"^{ids.UUID4_PATTERN}$"
ANY_UUID_PATTERN = f"^{ids.UUID_PATTERN}$"

# Beyond Flocker: keep sizes within SQLite's 64-bit integers (no 500 on a huge number).
MAX_SIZE_LIMIT = 2 ** 62

UUID4 = {"type": "string", "minLength": 36, "maxLength": 36, "pattern": UUID4_PATTERN}

METADATA = {
    "type": "object",
    "patternProperties": {"^.{1,256}$": {"type": "string", "maxLength": 256}},
    "maxProperties": 16,
    "additionalProperties": False,
}

MAXIMUM_SIZE = {
    "type": ["integer", "null"],
    "minimum": 67108864,
    "maximum": MAX_SIZE_LIMIT,
    "multipleOf": 1024,
}

DATASET_CREATE = {
    "type": "object",
    "properties": {
        "primary": UUID4,
        "dataset_id": UUID4,
        "metadata": METADATA,
        "maximum_size": MAXIMUM_SIZE,
    },
    "required": ["primary"],
    "additionalProperties": False,
}

DATASET_UPDATE = {
    "type": "object",
    "properties": {"primary": UUID4},
    "additionalProperties": False,
}

LEASE = {
    "type": "object",
    "properties": {
        # Flocker's schema only checks the length and then crashes on a non-UUID.
        "dataset_id": {
            "type": "string", "minLength": 36, "maxLength": 36, "pattern": ANY_UUID_PATTERN,
        },
        "node_uuid": UUID4,
        "expires": {"type": ["number", "null"]},
    },
    "required": ["dataset_id", "node_uuid", "expires"],
    "additionalProperties": False,
}

# Volume names as the frontends accept them (powerstripflocker.core.volumes.validate_name).
VOLUME_NAME = {
    "type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]*$",
}

# Beyond Flocker: POST /v1/configuration/claims.
CLAIM = {
    "type": "object",
    "properties": {
        "name": VOLUME_NAME,
        "node_uuid": UUID4,
        # A claim always lapses by itself: no null, no zero, at most a year.
        "expires": {"type": "number", "minimum": 0, "exclusiveMinimum": True,
                    "maximum": 365 * 24 * 3600},
        "maximum_size": MAXIMUM_SIZE,
        "create": {"type": "boolean"},
        # Asking again about the claim answered with this generation (see service.claim).
        "generation": {"type": "integer", "minimum": 1, "maximum": 2 ** 62},
        # The copies besides the primary of a volume the claim creates (issue 15).
        "replicas": {"type": "integer", "minimum": 0, "maximum": MAX_REPLICAS},
    },
    "required": ["name", "node_uuid"],
    "additionalProperties": False,
}

NODE_REPORT = {
    "type": "object",
    "properties": {
        "host": {"type": "string", "format": "ipv4"},
        "agent_url": {"type": "string", "minLength": 1, "maxLength": 2048},
        # Beyond Flocker: the agent run the report comes from (new at each agent start).
        "era": UUID4,
        "datasets": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "dataset_id": UUID4,
                    "path": {"type": "string", "pattern": "^/", "maxLength": 4096},
                    "maximum_size": MAXIMUM_SIZE,
                    "users": {
                        "type": "array", "maxItems": 16,
                        "items": {"type": "string", "minLength": 1, "maxLength": 256},
                    },
                    "generation": {"type": "integer", "minimum": 1},
                },
                "required": ["dataset_id", "path"],
                "additionalProperties": False,
            },
        },
        "transfers": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "dataset_id": UUID4,
                    "direction": {"enum": ["push", "receive"]},
                    "peer": UUID4,
                    "bytes_done": {"type": "integer", "minimum": 0},
                    "bytes_total": {"type": ["integer", "null"], "minimum": 0},
                    "attempts": {"type": "integer", "minimum": 0},
                    "error": {"type": "string", "maxLength": 1024},
                    "stalled": {"type": "boolean"},
                },
                "required": ["dataset_id", "direction", "peer", "bytes_done"],
                "additionalProperties": False,
            },
        },
        # Beyond Flocker: deleted datasets whose data the node keeps for a while.
        "trash": {
            "type": "array",
            "maxItems": 2048,       # the agent reports its newest 2048
            "items": {
                "type": "object",
                "properties": {
                    "dataset_id": UUID4,
                    "deleted_at": {"type": "number", "minimum": 0},
                    "expires_at": {"type": "number", "minimum": 0},
                    "bytes": {"type": "integer", "minimum": 0},
                    "generation": {"type": "integer", "minimum": 1, "maximum": 2 ** 62},
                },
                "required": ["dataset_id", "deleted_at", "expires_at", "bytes"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["host", "agent_url", "datasets"],
    "additionalProperties": False,
}


def _validator(schema):
    Draft4Validator.check_schema(schema)
    return Draft4Validator(schema, format_checker=Draft4Validator.FORMAT_CHECKER)


VALIDATORS = {
    "dataset_create": _validator(DATASET_CREATE),
    "dataset_update": _validator(DATASET_UPDATE),
    "lease": _validator(LEASE),
    "claim": _validator(CLAIM),
    "node_report": _validator(NODE_REPORT),
}


def schema_errors(name, document):
    """The list of jsonschema messages for document against schema name (empty if valid)."""
    validator = VALIDATORS[name]
    return sorted(
        (error.message for error in validator.iter_errors(document)),
    )
