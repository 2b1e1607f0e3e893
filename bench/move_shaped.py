"""Move of a volume to a node whose link is rate-limited, against the link itself.

    python bench/move_shaped.py [--megabytes 256] [--rate 100mbit] [--runs 2]

Starts a two-node cluster with hosts of their own (--hosts netns), creates a dataset on
node1 through the Flocker v1 API, fills it with random data through its path, and
shapes node2's link to --rate (tc tbf, both directions). Then, alternately, --runs times:

  baseline: `tar -c` of the dataset's directory in node1's namespace piped into socat,
            over TCP across the shaped link to socat | `tar -x` in node2's namespace:
            what the link itself carries, as measured, not its nominal rate
  move:     POST /v1/configuration/datasets/ID {"primary": <the other node>} until
            /v1/state/datasets shows it there with a path (node2 and node1 in turn,
            so every move crosses the shaped link)

Throughput is the data's size over the time. Target: the move reaches at least 0.9 of
the baseline's throughput (median of the runs).
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

from common import cannot_run, median, print_rows, row, running_cluster, write_result
from move_large import fill, sync, tree_digest

from powerstripflocker.localcluster.netns import in_namespace

TARGET = 0.9
BASELINE_PORT = 5599


def tree_bytes(path):
    return sum(os.path.getsize(os.path.join(path, name)) for name in os.listdir(path))


def tar_over_link(cluster, source, scratch):
    """Seconds for tar | socat from node1's namespace to socat | tar in node2's."""
    network = cluster.layout.network
    target = tempfile.mkdtemp(prefix="socat-", dir=scratch)
    node2 = cluster.node("node2")
    receiver = subprocess.Popen(in_namespace(network, 2, [
        "sh", "-c", f"socat -u TCP-LISTEN:{BASELINE_PORT},bind={node2.address},reuseaddr - "
                    f"| tar -C '{target}' -xf -"]))
    try:
        time.sleep(0.5)
        sync()
        start = time.perf_counter()
        subprocess.run(in_namespace(network, 1, [
            "sh", "-c", f"tar -C '{source}' -cf - . | "
                        f"socat -u - TCP:{node2.address}:{BASELINE_PORT}"]), check=True)
        receiver.wait(timeout=3600)
        elapsed = time.perf_counter() - start
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    if receiver.returncode != 0:
        raise RuntimeError(f"the receiving socat | tar exited {receiver.returncode}")
    if tree_digest(target) != tree_digest(source):
        raise RuntimeError("the baseline's copy differs")
    shutil.rmtree(target)
    return elapsed


def timed_move(cluster, dataset_id, target):
    sync()
    start = time.perf_counter()
    cluster.move(dataset_id, target)
    path = cluster.wait_path(dataset_id, target)
    return time.perf_counter() - start, path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=256)
    parser.add_argument("--rate", default="100mbit")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--output")
    options = parser.parse_args(argv)
    if cannot_run("netns"):
        return 2
    if shutil.which("socat") is None:
        print("cannot run: socat is not installed (Debian package socat)", file=sys.stderr)
        return 2
    baseline_s, move_s = [], []
    with tempfile.TemporaryDirectory(prefix="psf-bench-shaped-") as base, \
            running_cluster(state_dir=os.path.join(base, "state"), hosts="netns") as cluster:
        scratch = os.path.join(base, "scratch")
        os.makedirs(scratch)
        dataset_id, path = cluster.create_dataset("node1", "shaped")
        print(f"filling {options.megabytes} MiB of random data in {path} ...", flush=True)
        fill(path, options.megabytes)
        digest, size = tree_digest(path), tree_bytes(path)
        cluster.local.shape("node2", options.rate)
        print(f"node2's link limited to {options.rate}", flush=True)
        where = "node1"
        for run in range(1, options.runs + 1):
            if where != "node1":
                elapsed, path = timed_move(cluster, dataset_id, "node1")
                where = "node1"
            baseline_s.append(tar_over_link(cluster, path, scratch))
            print(f"run {run}: tar | socat {baseline_s[-1]:.2f}s", flush=True)
            elapsed, path = timed_move(cluster, dataset_id, "node2")
            where = "node2"
            if tree_digest(path) != digest:
                raise RuntimeError("data differs after the move")
            move_s.append(elapsed)
            print(f"run {run}: move node1 -> node2 {elapsed:.2f}s", flush=True)
    baseline_rate = size / median(baseline_s) / 1e6
    move_rate = size / median(move_s) / 1e6
    ratio = move_rate / baseline_rate
    rows = [row(f"move {options.megabytes} MiB over a {options.rate} link (MB/s)", move_rate,
                baseline_rate, ratio, f">= {TARGET:g}", ratio >= TARGET, "MB/s")]
    print_rows(rows)
    write_result("move_shaped", {
        "benchmark": "move_shaped", "megabytes": options.megabytes, "rate": options.rate,
        "bytes": size, "baseline_s": baseline_s, "move_s": move_s,
        "baseline_MBps": baseline_rate, "move_MBps": move_rate, "rows": rows},
        options.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
