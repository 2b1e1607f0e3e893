"""Pass-through cost of the powerstrip proxy: the proxy vs dockerd directly, same run.

    python bench/proxy_passthrough.py [--requests 2000] [--commands 30] [--megabytes 300]
                                      [--no-fast-path]

Starts its own dockerd (root needed) and the real `powerstrip-flocker proxy`
process with a create pre-hook configured (so the matcher is live), then:

  (a) p50/p99 latency of a keep-alive loop of GET /containers/json   target p50 ratio <= 1.5
  (b) wall time of whole `docker ps` and `docker inspect` commands    target ratio <= 1.1
  (c) throughput of a large output streamed through `docker exec`     target ratio >= 0.8

Measurements alternate between direct and proxy in blocks so drift hits both.
Prints the figures and writes bench/results/proxy_passthrough.json.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.support.dockerd import DockerDaemon, ensure_busybox_image, missing_requirements  # noqa
from tests.support.processes import ManagedProcess  # noqa

CONFIG = """\
version: 1
endpoints:
  "POST /*/containers/create":
    pre: [flocker]
  "POST /containers/create":
    pre: [flocker]
adapters:
  flocker: http://127.0.0.1:9/flocker-adapter
"""

TARGETS = {"keepalive_p50_ratio": 1.5, "command_ratio": 1.1, "throughput_ratio": 0.8}


class KeepAliveClient:
    """HTTP/1.1 over one unix socket connection, reading Content-Length bodies."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.buf = b""

    def get(self, target):
        self.sock.sendall(b"GET %s HTTP/1.1\r\nHost: docker\r\n\r\n" % target)
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.sock.recv(65536)
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        length = None
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is None:
            raise RuntimeError(f"response without Content-Length: {head!r}")
        while len(rest) < length:
            rest += self.sock.recv(65536)
        self.buf = rest[length:]
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head)
        return rest[:length]

    def close(self):
        self.sock.close()


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def keepalive(paths, requests, block=50, warmup=200):
    clients = {label: KeepAliveClient(path) for label, path in paths.items()}
    samples = {label: [] for label in paths}
    try:
        for label, client in clients.items():
            for _ in range(warmup):
                client.get(b"/v1.41/containers/json")
        while min(map(len, samples.values())) < requests:
            for label, client in clients.items():
                timings = samples[label]
                for _ in range(block):
                    start = time.perf_counter_ns()
                    client.get(b"/v1.41/containers/json")
                    timings.append(time.perf_counter_ns() - start)
    finally:
        for client in clients.values():
            client.close()
    return {
        label: {"requests": len(t), "p50_us": percentile(t, 0.5) / 1000,
                "p99_us": percentile(t, 0.99) / 1000, "mean_us": statistics.fmean(t) / 1000}
        for label, t in samples.items()
    }


def _alternate(hosts, run):
    """Direct first on even rounds, proxy first on odd ones: order effects cancel."""
    items = list(hosts.items())
    return items if run % 2 == 0 else items[::-1]


def command_times(hosts, argv, runs):
    times = {label: [] for label in hosts}
    for host in hosts.values():
        subprocess.run(["docker", "-H", host, *argv], capture_output=True, timeout=60)
    for run in range(runs):
        for label, host in _alternate(hosts, run):
            start = time.perf_counter()
            result = subprocess.run(["docker", "-H", host, *argv], capture_output=True,
                                    timeout=60)
            times[label].append(time.perf_counter() - start)
            if result.returncode != 0:
                raise RuntimeError(f"{argv} via {label}: {result.stderr.decode()}")
    return {label: {"runs": runs, "median_ms": statistics.median(t) * 1000,
                    "min_ms": min(t) * 1000} for label, t in times.items()}


def throughput(hosts, container, megabytes, runs):
    size = megabytes * 1024 * 1024
    rates = {label: [] for label in hosts}
    for host in hosts.values():  # warm up exec and the page cache on both paths
        subprocess.run(["docker", "-H", host, "exec", container, "dd", "if=/dev/zero",
                        "bs=1048576", "count=20"], capture_output=True, timeout=120, check=True)
    for run in range(runs):
        for label, host in _alternate(hosts, run):
            start = time.perf_counter()
            with subprocess.Popen(
                    ["docker", "-H", host, "exec", container, "dd", "if=/dev/zero", "bs=1048576",
                     f"count={megabytes}"],
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as proc:
                received = 0
                while chunk := proc.stdout.read1(1 << 20):
                    received += len(chunk)
                proc.wait(timeout=300)
            elapsed = time.perf_counter() - start
            if received != size:
                raise RuntimeError(f"{label}: got {received} bytes, expected {size}")
            rates[label].append(size / elapsed / 1e6)
    return {label: {"runs": runs, "megabytes": megabytes, "median_MBps": statistics.median(r),
                    "best_MBps": max(r)} for label, r in rates.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--commands", type=int, default=30)
    parser.add_argument("--megabytes", type=int, default=300)
    parser.add_argument("--streams", type=int, default=5)
    parser.add_argument("--no-fast-path", action="store_true",
                        help="run the proxy with --no-fast-path (the plain Twisted relay)")
    parser.add_argument("--output", default=os.path.join(ROOT, "bench", "results",
                                                         "proxy_passthrough.json"))
    options = parser.parse_args(argv)
    reason = missing_requirements()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2

    base = tempfile.mkdtemp(prefix="psf-bench-proxy-")
    daemon = DockerDaemon(base).start()
    proxy = None
    containers = []
    try:
        ensure_busybox_image(daemon)
        config = os.path.join(daemon.run_dir, "adapters.yml")
        with open(config, "w") as out:
            out.write(CONFIG)
        proxy_sock = os.path.join(daemon.run_dir, "proxy.sock")
        proxy = ManagedProcess.command(
            ["proxy", "--config", config, "--listen", f"unix://{proxy_sock}",
             "--docker", daemon.host, "--log-level", "warn",
             *(["--no-fast-path"] if options.no_fast_path else [])],
            os.path.join(base, "proxy.log")).start()
        proxy.wait_until(lambda: os.path.exists(proxy_sock))
        for n in range(3):
            result = daemon.run("run", "-d", "--name", f"bench-{n}", "busybox", "sleep", "3600")
            containers.append(result.stdout.decode().strip())
        hosts = {"direct": daemon.host, "proxy": f"unix://{proxy_sock}"}
        paths = {"direct": daemon.socket, "proxy": proxy_sock}

        results = {"targets": TARGETS, "fast_path": not options.no_fast_path}
        print("(a) keep-alive GET /containers/json ...", flush=True)
        results["keepalive"] = keepalive(paths, options.requests)
        print("(b) docker ps / docker inspect ...", flush=True)
        results["docker_ps"] = command_times(hosts, ["ps"], options.commands)
        results["docker_inspect"] = command_times(hosts, ["inspect", "bench-0"],
                                                  options.commands)
        print(f"(c) {options.megabytes} MiB through docker exec ...", flush=True)
        results["exec_stream"] = throughput(hosts, "bench-0", options.megabytes,
                                            options.streams)

        k = results["keepalive"]
        ratios = {
            "keepalive_p50_ratio": k["proxy"]["p50_us"] / k["direct"]["p50_us"],
            "keepalive_p99_ratio": k["proxy"]["p99_us"] / k["direct"]["p99_us"],
            "docker_ps_ratio": results["docker_ps"]["proxy"]["median_ms"]
            / results["docker_ps"]["direct"]["median_ms"],
            "docker_inspect_ratio": results["docker_inspect"]["proxy"]["median_ms"]
            / results["docker_inspect"]["direct"]["median_ms"],
            "throughput_ratio": results["exec_stream"]["proxy"]["median_MBps"]
            / results["exec_stream"]["direct"]["median_MBps"],
            "throughput_best_ratio": results["exec_stream"]["proxy"]["best_MBps"]
            / results["exec_stream"]["direct"]["best_MBps"],
        }
        results["ratios"] = ratios
        results["met"] = {
            "keepalive_p50": ratios["keepalive_p50_ratio"] <= TARGETS["keepalive_p50_ratio"],
            "docker_ps": ratios["docker_ps_ratio"] <= TARGETS["command_ratio"],
            "docker_inspect": ratios["docker_inspect_ratio"] <= TARGETS["command_ratio"],
            "throughput": ratios["throughput_ratio"] >= TARGETS["throughput_ratio"],
        }
        results["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}

        print()
        print(f"{'':28}{'direct':>12}{'proxy':>12}{'ratio':>8}  target")
        print(f"{'(a) p50 GET /containers/json':28}{k['direct']['p50_us']:>10.0f}us"
              f"{k['proxy']['p50_us']:>10.0f}us{ratios['keepalive_p50_ratio']:>8.2f}  <= 1.5")
        print(f"{'    p99':28}{k['direct']['p99_us']:>10.0f}us"
              f"{k['proxy']['p99_us']:>10.0f}us{ratios['keepalive_p99_ratio']:>8.2f}")
        for key, label in (("docker_ps", "(b) docker ps"), ("docker_inspect", "    docker inspect")):
            r = results[key]
            print(f"{label:28}{r['direct']['median_ms']:>10.1f}ms{r['proxy']['median_ms']:>10.1f}"
                  f"ms{ratios[key + '_ratio']:>8.2f}  <= 1.1")
        s = results["exec_stream"]
        print(f"{'(c) docker exec stream':28}{s['direct']['median_MBps']:>8.0f}MB/s"
              f"{s['proxy']['median_MBps']:>8.0f}MB/s{ratios['throughput_ratio']:>8.2f}  >= 0.8")
        print(f"{'    best of ' + str(options.streams):28}{s['direct']['best_MBps']:>8.0f}MB/s"
              f"{s['proxy']['best_MBps']:>8.0f}MB/s{ratios['throughput_best_ratio']:>8.2f}")
        print(f"targets met: {results['met']}")
        os.makedirs(os.path.dirname(options.output), exist_ok=True)
        with open(options.output, "w") as out:
            json.dump(results, out, indent=2)
        print(f"wrote {options.output}")
        return 0
    finally:
        if proxy is not None:
            proxy.stop()
        if containers:
            daemon.run("rm", "-f", *containers, check=False)
        daemon.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
