"""The baseline of bench/hook_latency.py: a Klein app answering POST /flocker-adapter
with a fixed JSON document, served like the adapter (Site on a serverFromString
endpoint, default reactor).

    python bench/trivial_klein.py --listen tcp:PORT:interface=127.0.0.1
"""

import argparse
import json

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import react
from twisted.web.server import Site

REPLY = json.dumps({"PowerstripProtocolVersion": 1, "ModifiedClientRequest": {
    "Method": "POST", "Request": "/v1.41/containers/create", "Body": "{}"}}).encode()

app = Klein()


@app.route("/flocker-adapter", methods=["POST"])
def hook(request):
    request.content.read()
    request.setHeader(b"Content-Type", b"application/json")
    return REPLY


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True)
    options = parser.parse_args()

    def serve(reactor):
        d = serverFromString(reactor, options.listen).listen(Site(app.resource()))
        d.addCallback(lambda port: print(f"listening on {port.getHost()}", flush=True))
        return d.addCallback(lambda _: Deferred())  # serve until killed

    react(serve)


if __name__ == "__main__":
    main()
