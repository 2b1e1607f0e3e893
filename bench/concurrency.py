"""Concurrency: 200 creates over 50 names from both nodes at once.

    python bench/concurrency.py [--requests 200 --names 50 --workers 100]

Starts a two-node local cluster, then sends create pre-hooks (the Powerstrip envelope
the proxy sends for `docker run -v /flocker/NAME:/data`) straight to BOTH nodes'
adapter processes at once: request i names NAME i % names and goes to node
1 + (i // names) % 2, so every name is asked for by both nodes, twice each with the
defaults, from --workers threads each holding its own keep-alive connection.
With --mode split, even names go to node1 and odd ones to node2 (both nodes still
create at once, racing on the configuration tag, but never on the same name).

Checks: every request answered 200 with the bind rewritten to a real path, exactly
`names` datasets exist afterwards (one per name). Figures: p50/p99 latency, wall time,
and peak resident memory (VmHWM of /proc/PID/status) of both adapters and the control
service, with their VmHWM before the load for comparison.
The baseline is the single-request latency of the same hook for a local volume,
measured on the same cluster just before.
"""

import argparse
import http.client
import json
import os
import queue
import sys
import threading
import time

from common import (RESULTS, cannot_run, percentile, print_rows, row, running_cluster,
                    write_result)
from hook_latency import envelope

SERVICES = ("node1-adapter", "node2-adapter", "control")


def post(connection, body):
    connection.request("POST", "/flocker-adapter", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    return response.status, response.read()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--names", type=int, default=50)
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--mode", choices=("shared", "split"), default="shared",
                        help="shared: each name from both nodes (races); split: even names "
                             "from node1, odd ones from node2")
    parser.add_argument("--output")
    options = parser.parse_args(argv)
    if cannot_run():
        return 2
    with running_cluster(keep_logs=os.path.join(
            RESULTS, "logs", os.path.splitext(os.path.basename(options.output or
                                                               "concurrency"))[0])) as cluster:
        nodes = [cluster.node("node1"), cluster.node("node2")]
        # baseline: sequential hooks for an already local volume on node1
        single = http.client.HTTPConnection(nodes[0].address, nodes[0].adapter_port,
                                            timeout=60)
        post(single, envelope("conc-baseline"))
        serial = []
        for _ in range(100):
            start = time.perf_counter()
            status, _ = post(single, envelope("conc-baseline"))
            serial.append(time.perf_counter() - start)
            assert status == 200
        single.close()
        before = {s: cluster.peak_memory_kib(s) for s in SERVICES}

        jobs = queue.Queue()
        for i in range(options.requests):
            if options.mode == "shared":   # every name asked for by both nodes
                node = nodes[(i // options.names) % 2]
            else:                            # each name by one node only
                node = nodes[(i % options.names) % 2]
            jobs.put((i, f"conc{i % options.names}", node))
        results = []
        lock = threading.Lock()
        go = threading.Event()

        def worker():
            connections = {}
            go.wait()
            while True:
                try:
                    i, name, node = jobs.get_nowait()
                except queue.Empty:
                    break
                connection = connections.get(node.name)
                if connection is None:
                    connection = connections[node.name] = http.client.HTTPConnection(
                        node.address, node.adapter_port, timeout=300)
                start = time.perf_counter()
                try:
                    status, data = post(connection, envelope(name))
                except Exception as error:  # noqa: BLE001 - counted as an error
                    status, data = None, repr(error).encode()
                    connections.pop(node.name).close()
                elapsed = time.perf_counter() - start
                with lock:
                    results.append((i, name, node.name, status, data, elapsed))
            for connection in connections.values():
                connection.close()

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(options.workers)]
        for thread in threads:
            thread.start()
        print(f"{options.requests} create hooks over {options.names} names, both adapters, "
              f"{options.workers} workers ...", flush=True)
        wall = time.perf_counter()
        go.set()
        for thread in threads:
            thread.join(timeout=900)
        wall = time.perf_counter() - wall
        if any(thread.is_alive() for thread in threads):
            raise RuntimeError("workers still running after 900 s")
        peak = {s: cluster.peak_memory_kib(s) for s in SERVICES}

        errors = []
        for i, name, node, status, data, _ in results:
            if status != 200:
                errors.append(f"{node} {name}: {status} {data[:200]!r}")
                continue
            binds = json.loads(json.loads(data)["ModifiedClientRequest"]["Body"])[
                "HostConfig"]["Binds"]
            if binds[0].startswith("/flocker/"):
                errors.append(f"{node} {name}: not rewritten: {binds}")
        names = {f"conc{n}" for n in range(options.names)}
        datasets = [d for d in cluster.datasets() if d["metadata"].get("name") in names]
        per_name = {}
        for d in datasets:
            per_name.setdefault(d["metadata"]["name"], []).append(d["dataset_id"])
    latencies = [r[5] for r in results]
    refused = sum(1 for r in results if r[3] == 409)
    stalled = sum(1 for r in results if r[3] in (503, 504))
    exact = len(datasets) == options.names and all(len(v) == 1 for v in per_name.values())
    base_p50 = percentile(serial, 0.5)
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    print(f"answered {len(results)}/{options.requests}, errors {len(errors)}, "
          f"datasets {len(datasets)} for {options.names} names, wall {wall:.2f}s")
    for line in errors[:10]:
        print(f"  error: {line}")
    rows = [
        row(f"{options.requests} creates / {options.names} names ({options.mode}): datasets",
            len(datasets), options.names, None, f"== {options.names}", exact),
        row("  errors", len(errors), 0, None, "== 0", not errors and len(results)
            == options.requests),
        row("    of which 409 (claimed by the other node)", refused, None, None, None, None),
        row("    of which 504/503 (deadline)", stalled, None, None, None, None),
        row("  hook p50 under load (baseline: serial p50)", p50 * 1000,
            base_p50 * 1000, p50 / base_p50,
            None, None, "ms"),
        row("  hook p99 under load (baseline: serial p50)", p99 * 1000,
            base_p50 * 1000, p99 / base_p50,
            None, None, "ms"),
    ]
    rows.append(row("  hook max under load", max(latencies) * 1000, None, None, None, None,
                    "ms"))
    for service in SERVICES:
        rows.append(row(f"  {service} peak RSS (VmHWM)", peak[service] / 1024,
                        before[service] / 1024, peak[service] / before[service], None, None,
                        "MiB"))
    print_rows(rows)
    write_result("concurrency" if options.mode == "shared" else "concurrency_split", {
        "benchmark": "concurrency", "requests": options.requests, "names": options.names,
        "workers": options.workers, "mode": options.mode,
        "client": "hook requests straight to both adapters",
        "answered": len(results), "errors": errors, "datasets": len(datasets),
        "wall_s": wall, "p50_ms": p50 * 1000, "p99_ms": p99 * 1000,
        "max_ms": max(latencies) * 1000, "serial_p50_ms": base_p50 * 1000,
        "vmhwm_kib_before": before, "vmhwm_kib_after": peak, "rows": rows,
        "requests_log": [{"i": i, "name": name, "node": node, "status": status,
                          "ms": round(elapsed * 1000, 1),
                          "error": None if status == 200 else data[:300].decode("utf-8",
                                                                                 "replace")}
                         for i, name, node, status, data, elapsed in sorted(results)]},
        options.output)
    return 0  # measured; whether the targets were met is in the rows


if __name__ == "__main__":
    sys.exit(main())
