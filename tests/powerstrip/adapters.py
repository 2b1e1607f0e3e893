"""Powerstrip test adapters on a real HTTP server (in-process, or `python -m` for e2e).

Paths (query arguments shown after ?):

- /echo                     answer the hook unchanged (a "null adapter")
- /add/N                    add N to "Number" in the JSON Body (pre or post)
- /set?Method=&Request=&Code=&ContentType=&Body=   replace those fields
- /status/CODE?message=M    answer CODE with {"message": M} (no message: empty body)
- /raw/CODE?body=TEXT       answer CODE with a text/plain body
- /notjson                  answer 200 with a body that is not JSON
- /missing/FIELD            answer 200 with the modified object lacking FIELD
- /hang                     never answer
"""

import json
import sys
from urllib.parse import parse_qs

from twisted.web import resource, server


class HookAdapter(resource.Resource):
    isLeaf = True

    def __init__(self, log_path=None):
        super().__init__()
        self.calls = []  # (path, payload) in arrival order
        self.log_path = log_path

    def render_POST(self, request):
        payload = json.loads(request.content.read())
        path = request.path.decode()
        self.calls.append((path, payload))
        if self.log_path:
            with open(self.log_path, "a") as log:
                log.write(json.dumps({"path": path, "payload": payload}) + "\n")
        query = {k: v[0] for k, v in parse_qs(request.uri.decode().partition("?")[2]).items()}
        parts = path.strip("/").split("/")
        kind = payload.get("Type")
        key = "ModifiedClientRequest" if kind == "pre-hook" else "ModifiedServerResponse"
        modified = dict(payload["ClientRequest"] if kind == "pre-hook"
                        else payload["ServerResponse"])
        request.setHeader(b"Content-Type", b"application/json")
        if parts[0] == "hang":
            return server.NOT_DONE_YET
        if parts[0] == "status":
            request.setResponseCode(int(parts[1]))
            return json.dumps({"message": query["message"]}).encode() if "message" in query else b""
        if parts[0] == "raw":
            request.setResponseCode(int(parts[1]))
            request.setHeader(b"Content-Type", b"text/plain")
            return query.get("body", "").encode()
        if parts[0] == "notjson":
            return b"this is not json"
        if parts[0] == "missing":
            modified.pop(parts[1], None)
        elif parts[0] == "add":
            body = json.loads(modified["Body"])
            body["Number"] += int(parts[1])
            modified["Body"] = json.dumps(body)
        elif parts[0] == "set":
            for field, value in query.items():
                if field == "Code":
                    value = int(value)
                elif value == "null":
                    value = None
                modified[field] = value
        return json.dumps({"PowerstripProtocolVersion": 1, key: modified}).encode()


def site(log_path=None):
    adapter = HookAdapter(log_path)
    return adapter, server.Site(adapter)


def main(argv):
    """python -m tests.powerstrip.adapters PORTFILE [CALL-LOG]: serve on a free loopback port."""
    from twisted.internet import reactor

    adapter, factory = site(argv[2] if len(argv) > 2 else None)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    with open(argv[1], "w") as out:
        out.write(str(port.getHost().port))
    reactor.run()


if __name__ == "__main__":
    main(sys.argv)
