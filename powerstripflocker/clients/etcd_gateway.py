"""etcd's v3 JSON gateway, as EtcdClient reads and writes it: the JSON form of every
request and answer (keys and values base64, keys moved into and out of the client's
prefix), and a failure's one-line description."""

import base64

from twisted.web.client import (
    RequestTransmissionFailed, ResponseFailed, ResponseNeverReceived,
)

from powerstripflocker.clients.etcd import (
    COMPARE_OPS, COMPARE_TARGETS, Delete, DeleteResult, Event, KeyValue, Put, PutResult, Range,
    RangeResult, TxnResult, check_key,
)

def _b64(data):
    return base64.b64encode(data).decode("ascii")


def _unb64(text):
    return base64.b64decode(text) if text else b""


def _prefix_end(key):
    """The range_end that makes [key, range_end) every key starting with key."""
    stripped = key.rstrip(b"\xff")
    if not stripped:
        return b"\0"  # every key
    return stripped[:-1] + bytes([stripped[-1] + 1])


class GatewayCodec:
    """JSON bodies for the gateway, keys moved into and out of the namespace."""

    def __init__(self, namespace):
        self.namespace = namespace

    def key_range(self, key, prefix):
        full = self.namespace + key
        body = {"key": _b64(full or b"\0")}
        if prefix:
            body["range_end"] = _b64(_prefix_end(full))
        return body

    def range(self, op):
        if not op.prefix:
            check_key(op.key)
        body = self.key_range(op.key, op.prefix)
        if op.limit:
            body["limit"] = str(op.limit)
        if op.revision:
            body["revision"] = str(op.revision)
        return body

    def put(self, op):
        check_key(op.key)
        body = {"key": _b64(self.namespace + op.key), "value": _b64(op.value)}
        if op.lease:
            body["lease"] = str(op.lease)
        if op.prev_kv:
            body["prev_kv"] = True
        return body

    def delete(self, op):
        if not op.prefix:
            check_key(op.key)
        body = self.key_range(op.key, op.prefix)
        if op.prev_kv:
            body["prev_kv"] = True
        return body

    def compare(self, compare):
        check_key(compare.key)
        body = {"key": _b64(self.namespace + compare.key),
                "target": COMPARE_TARGETS[compare.target],
                "result": COMPARE_OPS[compare.op]}
        if compare.target == "value":
            body["value"] = _b64(compare.operand)
        else:
            body[compare.target] = str(compare.operand)
        return body

    def request_op(self, op):
        if isinstance(op, Range):
            return {"request_range": self.range(op)}
        if isinstance(op, Put):
            return {"request_put": self.put(op)}
        if isinstance(op, Delete):
            return {"request_delete_range": self.delete(op)}
        raise TypeError(f"a txn operation is a Range, Put or Delete, not {op!r}")

    def kv(self, data):
        if not data:
            return None
        key = _unb64(data.get("key"))
        if self.namespace and key.startswith(self.namespace):
            key = key[len(self.namespace):]
        return KeyValue(key, _unb64(data.get("value")), int(data.get("create_revision", 0)),
                        int(data.get("mod_revision", 0)), int(data.get("version", 0)),
                        int(data.get("lease", 0)))

    def range_result(self, data):
        kvs = tuple(self.kv(kv) for kv in data.get("kvs", ()))
        return RangeResult(kvs, int(data.get("count", 0)), revision_of(data),
                           bool(data.get("more", False)))

    def put_result(self, data):
        return PutResult(revision_of(data), self.kv(data.get("prev_kv")))

    def delete_result(self, data):
        return DeleteResult(revision_of(data), int(data.get("deleted", 0)),
                            tuple(self.kv(kv) for kv in data.get("prev_kvs", ())))

    def txn_result(self, data):
        responses = []
        for response in data.get("responses", ()):
            if "response_range" in response:
                responses.append(self.range_result(response["response_range"]))
            elif "response_put" in response:
                responses.append(self.put_result(response["response_put"]))
            else:
                responses.append(self.delete_result(response.get("response_delete_range", {})))
        return TxnResult(bool(data.get("succeeded", False)), revision_of(data), tuple(responses))

    def event(self, data):
        return Event(data.get("type", "PUT"), self.kv(data.get("kv")),
                     self.kv(data.get("prev_kv")))


def revision_of(data):
    return int(data.get("header", {}).get("revision", 0))


def describe_failure(reason):
    if isinstance(reason, (ResponseFailed, ResponseNeverReceived, RequestTransmissionFailed)):
        inner = "; ".join(describe_failure(r.value) for r in reason.reasons)
        return f"{type(reason).__name__} ({inner})"
    text = str(reason).strip()
    return f"{type(reason).__name__}: {text}" if text else type(reason).__name__
