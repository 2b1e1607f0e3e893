"""Hook latency for a volume already on this node: the real adapter vs a trivial Klein app.

    python bench/hook_latency.py [--requests 2000]

Starts a two-node local cluster (control service, agents, adapters, proxies), makes
volume `hooklat` local to node1, then POSTs the same Powerstrip create pre-hook (a
create body binding /flocker/hooklat) to node1's adapter process, and the same bytes
to bench/trivial_klein.py (a Klein endpoint returning a fixed JSON, run as its own
process on the same machine), each over one keep-alive connection, in alternating
blocks of 50 after 200 warm-up requests.

Target: adapter p50 <= 3x the baseline's p50.
"""

import argparse
import http.client
import json
import os
import subprocess
import sys
import time

from common import (ROOT, cannot_run, free_port, interleaved_latencies, print_rows, row,
                    running_cluster, write_result)

TARGET = 3.0
NAME = "hooklat"


def envelope(name):
    body = {"Image": "busybox", "Cmd": ["true"],
            "HostConfig": {"Binds": [f"/flocker/{name}:/data"]}}
    return json.dumps({"PowerstripProtocolVersion": 1, "Type": "pre-hook",
                       "ClientRequest": {"Method": "POST",
                                         "Request": "/v1.41/containers/create",
                                         "Body": json.dumps(body)}}).encode()


class Client:
    def __init__(self, host, port):
        self.connection = http.client.HTTPConnection(host, port, timeout=60)

    def post(self, body):
        self.connection.request("POST", "/flocker-adapter", body,
                                {"Content-Type": "application/json"})
        response = self.connection.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"{response.status}: {data[:300]!r}")
        return data


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--output")
    options = parser.parse_args(argv)
    if cannot_run():
        return 2
    body = envelope(NAME)
    with running_cluster() as cluster:
        node = cluster.node("node1")
        port = free_port()
        log = open(os.path.join(cluster.layout.log_dir, "trivial-klein.log"), "ab")
        baseline = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "bench", "trivial_klein.py"),
             "--listen", f"tcp:{port}:interface=127.0.0.1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            adapter = Client(node.address, node.adapter_port)
            reply = json.loads(adapter.post(body))  # first hook: creates the volume here
            rewritten = json.loads(reply["ModifiedClientRequest"]["Body"])
            [mount] = rewritten["HostConfig"]["Mounts"]
            print(f"volume {NAME} local on node1: {mount['Source']}:{mount['Target']}")
            [dataset] = cluster.datasets_named(NAME)
            assert dataset["primary"] == cluster.node_uuid("node1")
            deadline = time.monotonic() + 30
            while True:
                try:
                    trivial = Client("127.0.0.1", port)
                    trivial.post(body)
                    break
                except OSError:
                    if time.monotonic() > deadline or baseline.poll() is not None:
                        raise
                    time.sleep(0.1)
            print(f"{options.requests} hooks each, adapter vs trivial Klein ...", flush=True)
            figures = interleaved_latencies({"adapter": adapter, "baseline": trivial},
                                            body, options.requests, warmup=200)
        finally:
            baseline.terminate()
            baseline.wait(timeout=10)
            log.close()
    a, b = figures["adapter"], figures["baseline"]
    ratio = a["p50_us"] / b["p50_us"]
    rows = [row("hook p50 (volume local)", a["p50_us"], b["p50_us"], ratio,
                f"<= {TARGET:g}", ratio <= TARGET, "us"),
            row("hook p99 (volume local)", a["p99_us"], b["p99_us"],
                a["p99_us"] / b["p99_us"], None, None, "us")]
    print_rows(rows)
    write_result("hook_latency", {"benchmark": "hook_latency", "figures": figures,
                                  "rows": rows}, options.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
