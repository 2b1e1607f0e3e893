"""What the cluster benchmarks share: a real two-node LocalCluster started on free
ports and always torn down, the Flocker v1 API over urllib, percentiles, and the
result file each benchmark writes (with the rows of bench/results/summary.md).
"""

import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from powerstripflocker.localcluster.cluster import LocalCluster  # noqa: E402
from powerstripflocker.localcluster.layout import make_layout  # noqa: E402
from powerstripflocker.localcluster.machine import docker, missing_requirements  # noqa: E402
from powerstripflocker.localcluster.netns import free_slot  # noqa: E402
from tests.support.processes import free_port  # noqa: E402

RESULTS = os.path.join(ROOT, "bench", "results")


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def median(values):
    return statistics.median(values)


def interleaved_latencies(clients, body, requests, block=50, warmup=50):
    """{label: {"requests", "p50_us", "p90_us", "p99_us"}} of body POSTed to each client
    (label -> an object with post(body)) requests times, after warmup posts each, in
    blocks of block that alternate the clients' order, so that a drift of the machine's
    load falls on all of them alike."""
    samples = {label: [] for label in clients}
    for client in clients.values():
        for _ in range(warmup):
            client.post(body)
    rounds = 0
    while min(map(len, samples.values())) < requests:
        items = list(clients.items())
        for label, client in (items if rounds % 2 == 0 else items[::-1]):
            for _ in range(block):
                start = time.perf_counter()
                client.post(body)
                samples[label].append(time.perf_counter() - start)
        rounds += 1
    return {label: {"requests": len(t), "p50_us": percentile(t, 0.5) * 1e6,
                    "p90_us": percentile(t, 0.9) * 1e6, "p99_us": percentile(t, 0.99) * 1e6}
            for label, t in samples.items()}


def machine():
    docker_version = subprocess.run(["dockerd", "--version"], capture_output=True,
                                    text=True).stdout.strip()
    try:
        with open("/proc/loadavg") as loadavg:
            load = float(loadavg.read().split()[0])
    except OSError:
        load = None
    return {"cpus": os.cpu_count(), "python": sys.version.split()[0],
            "kernel": platform.release(), "dockerd": docker_version, "load_1min": load,
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}


def row(figure, value, baseline, ratio, target, met, unit=""):
    """One line of the summary table. target is text like '<= 3.0'; met a bool or None."""
    return {"figure": figure, "value": value, "baseline": baseline, "ratio": ratio,
            "target": target, "met": met, "unit": unit}


def write_result(name, result, output=None):
    result.setdefault("machine", machine())
    output = output or os.path.join(RESULTS, f"{name}.json")
    os.makedirs(os.path.dirname(output), exist_ok=True)
    with open(output, "w") as out:
        json.dump(result, out, indent=2)
    print(f"wrote {output}")
    return output


def print_rows(rows):
    print()
    print(f"{'figure':52}{'value':>14}{'baseline':>14}{'ratio':>8}  target    met")
    for r in rows:
        def fmt(v):
            return "-" if v is None else f"{v:.4g}{r['unit']}"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        met = {True: "yes", False: "NO", None: "-"}[r["met"]]
        print(f"{r['figure']:52}{fmt(r['value']):>14}{fmt(r['baseline']):>14}{ratio:>8}"
              f"  {r['target'] or '-':9} {met}")


def timed_docker_run(run, expect=None):
    """Seconds that run() (a docker CLI call) took; it must succeed (and print expect)."""
    start = time.perf_counter()
    result = run()
    elapsed = time.perf_counter() - start
    if result.returncode != 0 or (expect is not None and result.stdout != expect):
        raise RuntimeError(f"docker run failed ({result.returncode}): {result.stderr.strip()}")
    return elapsed


def report_median_ratio(name, figure, times, measured, baseline, target, runs, output=None):
    """Print and write the median of times[measured] against times[baseline]."""
    m, b = median(times[measured]), median(times[baseline])
    ratio = m / b
    rows = [row(figure, m * 1000, b * 1000, ratio, f"<= {target:g}", ratio <= target, "ms")]
    print_rows(rows)
    write_result(name, {
        "benchmark": name, "runs": runs,
        "figures": {label: {"median_ms": median(t) * 1000, "min_ms": min(t) * 1000,
                            "max_ms": max(t) * 1000} for label, t in times.items()},
        "rows": rows}, output)


def cannot_run(hosts="loopback"):
    reason = missing_requirements(hosts)
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    return None


def _raise_on_term(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def _shielded():
    """Ignore SIGINT and SIGTERM while cleaning up: a second Ctrl-C or kill must not
    leave half the cluster, a mount or a loop device behind."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT,
                                                                      signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Cluster:
    """A started LocalCluster and the questions the benchmarks ask of it."""

    def __init__(self, local):
        self.local = local
        self.layout = local.layout
        with open(self.layout.token_file) as token:
            self.token = token.read().strip()

    def node(self, name):
        return self.layout.node(name)

    def docker(self, node, *args, **kwargs):
        """docker CLI through the node's proxy (and so its adapter)."""
        return self.local.docker(node, *args, **kwargs)

    def direct(self, node, *args, **kwargs):
        """docker CLI straight to the node's own dockerd."""
        return docker(self.node(node).real_docker_host, *args, **kwargs)

    def api(self, path, body=None, method=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.layout.control_url + "/v1" + path, data=data, method=method,
            headers={"Content-Type": "application/json",
                     "Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)

    def node_uuid(self, node):
        address = self.node(node).address
        [uuid] = [n["uuid"] for n in self.api("/state/nodes") if n["host"] == address]
        return uuid

    def datasets(self):
        return [d for d in self.api("/configuration/datasets") if not d.get("deleted")]

    def datasets_named(self, name):
        return [d for d in self.datasets() if d.get("metadata", {}).get("name") == name]

    def state_of(self, dataset_id):
        return [s for s in self.api("/state/datasets") if s["dataset_id"] == dataset_id]

    def create_dataset(self, node, name, timeout=60):
        """A dataset created through the v1 API, once state shows it on node with a path."""
        dataset = self.api("/configuration/datasets",
                           {"primary": self.node_uuid(node), "metadata": {"name": name}})
        return dataset["dataset_id"], self.wait_path(dataset["dataset_id"], node, timeout)

    def wait_path(self, dataset_id, node, timeout=600, interval=0.02):
        """Poll the state until it shows dataset_id on node with a path; return the path."""
        uuid = self.node_uuid(node)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for state in self.state_of(dataset_id):
                if state.get("primary") == uuid and state.get("path"):
                    return state["path"]
            time.sleep(interval)
        raise RuntimeError(f"dataset {dataset_id} not on {node} after {timeout}s: "
                           f"{self.state_of(dataset_id)}")

    def move(self, dataset_id, node):
        return self.api(f"/configuration/datasets/{dataset_id}",
                        {"primary": self.node_uuid(node)})

    def agent_metrics(self, node):
        n = self.node(node)
        request = urllib.request.Request(
            f"http://{n.address}:{n.agent_port}/agent/v1/metrics",
            headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)

    def pid(self, service):
        with open(os.path.join(self.layout.run_dir, "pids", f"{service}.pid")) as pid_file:
            return int(pid_file.read().strip())

    def peak_memory_kib(self, service):
        """VmHWM (peak resident set) of the service's process, in KiB."""
        with open(f"/proc/{self.pid(service)}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        raise RuntimeError(f"no VmHWM for {service}")


@contextlib.contextmanager
def running_cluster(backend="directory", state_dir=None, progress=print, keep_logs=None,
                    **layout_options):
    """A two-node cluster on free ports; stopped (processes, mounts, state) on the way
    out, also on an exception, Ctrl-C or SIGTERM. keep_logs: a directory the cluster's
    logs are copied to before they go. layout_options go to make_layout (hosts="netns"
    takes a free address slot)."""
    previous = signal.signal(signal.SIGTERM, _raise_on_term)
    base = state_dir or tempfile.mkdtemp(prefix="psf-bench-")
    run_dir = tempfile.mkdtemp(prefix="psfb-", dir="/run" if os.path.isdir("/run") else None)
    if layout_options.get("hosts") == "netns":
        layout_options.setdefault("slot", free_slot())
    layout = make_layout(os.path.join(base, "cluster"), run_dir, control_port=free_port(),
                         agent_port=free_port(), adapter_port=free_port(), backend=backend,
                         **layout_options)
    local = LocalCluster(layout, progress=lambda message: progress(f"  cluster: {message}"))
    try:
        local.start()
        local.import_images()
        yield Cluster(local)
    finally:
        with _shielded():
            progress("  cluster: stopping")
            try:
                if keep_logs:
                    shutil.rmtree(keep_logs, ignore_errors=True)
                    shutil.copytree(layout.log_dir, keep_logs)
            finally:
                local.stop()
                if state_dir is None:
                    subprocess.run(["rm", "-rf", base])
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def btrfs_loop(size_gib, progress=print):
    """A btrfs file system on a loop device backed by a sparse file; yields its mount
    point. Unmounted, detached and removed on the way out."""
    base = tempfile.mkdtemp(prefix="psf-bench-btrfs-")
    image = os.path.join(base, "btrfs.img")
    mountpoint = os.path.join(base, "mnt")
    os.makedirs(mountpoint)
    device = None
    mounted = False
    previous = signal.signal(signal.SIGTERM, _raise_on_term)
    try:
        subprocess.run(["truncate", "-s", f"{size_gib}G", image], check=True)
        device = subprocess.run(["losetup", "--find", "--show", image], check=True,
                                capture_output=True, text=True).stdout.strip()
        subprocess.run(["mkfs.btrfs", "-q", "-f", device], check=True, capture_output=True)
        subprocess.run(["mount", device, mountpoint], check=True)
        mounted = True
        progress(f"  btrfs: {size_gib} GiB on {device} at {mountpoint}")
        yield mountpoint
    finally:
        with _shielded():
            _remove_btrfs_loop(base, mountpoint, device, mounted)
        signal.signal(signal.SIGTERM, previous)


def _remove_btrfs_loop(base, mountpoint, device, mounted):
    if mounted:
        for _ in range(10):
            if subprocess.run(["umount", mountpoint], capture_output=True).returncode == 0:
                break
            time.sleep(1)
        else:
            subprocess.run(["umount", "-l", mountpoint], capture_output=True)
    if device:
        subprocess.run(["losetup", "-d", device], capture_output=True)
    subprocess.run(["rm", "-rf", base])
