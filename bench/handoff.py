"""How fast a volume in use elsewhere is refused, and how fast it is handed over
once its container stops.

    python bench/handoff.py [--runs 15]

Starts a two-node local cluster. Then:

  refusal:  a container on node1 keeps volume V (sleep); `docker run --rm -v
            /flocker/V:/d busybox true` on node2 until it exits 125 with the in-use
            line; --runs times. Baseline: `docker run --rm busybox true` straight to
            node2's dockerd, interleaved (what a docker run costs anyway).
            Target: p50 <= 0.5 s.
  handoff:  --runs times: a container on node1 has used W for a while; `docker stop`
            it on node1, then at once `docker run -d -v /flocker/W:/d busybox sleep`
            on node2 (W moves), timed from the stop's return to that container
            running. Baseline: the same `docker run -d` with a local bind straight to
            node2's dockerd. Then the volume is handed back to node1 the same way, so
            every round moves it. The figure is the median; no fixed wait is allowed
            anywhere in between.
"""

import argparse
import sys
import tempfile
import time

from common import cannot_run, median, percentile, print_rows, row, running_cluster, \
    write_result

REFUSAL_TARGET = 0.5


def timed(run, expect_code):
    start = time.perf_counter()
    result = run()
    elapsed = time.perf_counter() - start
    if result.returncode != expect_code:
        raise RuntimeError(f"expected exit {expect_code}, got {result.returncode}: "
                           f"{result.stderr.strip()}")
    return elapsed, result


def running(cluster, node, container):
    result = cluster.direct(node, "inspect", "--format", "{{.State.Running}}", container)
    return result.stdout.strip() == "true"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--output")
    options = parser.parse_args(argv)
    if cannot_run():
        return 2
    refusal, plain, handoff, plain_start = [], [], [], []
    with running_cluster() as cluster, tempfile.TemporaryDirectory(
            prefix="psf-bench-bind-") as local_dir:
        held = cluster.docker("node1", "run", "-d", "--name", "holder", "-v",
                              "/flocker/held:/d", "busybox", "sleep", "3600")
        if held.returncode != 0:
            raise RuntimeError(held.stderr)
        time.sleep(2)  # the agent has seen the container: the refusal is what is timed
        print(f"{options.runs} refusals of a volume in use on node1 ...", flush=True)
        for _ in range(options.runs):
            elapsed, result = timed(lambda: cluster.docker(
                "node2", "run", "--rm", "-v", "/flocker/held:/d", "busybox", "true"), 125)
            if "in use on" not in result.stderr:
                raise RuntimeError(f"not an in-use refusal: {result.stderr.strip()}")
            refusal.append(elapsed)
            plain.append(timed(lambda: cluster.direct("node2", "run", "--rm", "busybox",
                                                      "true"), 0)[0])
        print(f"{options.runs} stop-then-run handoffs ...", flush=True)
        where = "node1"
        first = cluster.docker(where, "run", "-d", "--name", "user0", "-v",
                               "/flocker/handed:/d", "busybox", "sleep", "3600")
        if first.returncode != 0:
            raise RuntimeError(first.stderr)
        for run in range(1, options.runs + 1):
            time.sleep(1)  # the container has been in use a while, as a real one has
            other = "node2" if where == "node1" else "node1"
            stopped = cluster.direct(where, "stop", "-t", "0", f"user{run - 1}")
            if stopped.returncode != 0:
                raise RuntimeError(stopped.stderr)
            start = time.perf_counter()
            started = cluster.docker(other, "run", "-d", "--name", f"user{run}", "-v",
                                     "/flocker/handed:/d", "busybox", "sleep", "3600",
                                     timeout=300)
            if started.returncode != 0:
                raise RuntimeError(f"handoff {run}: {started.stderr.strip()}")
            while not running(cluster, other, f"user{run}"):
                time.sleep(0.01)
            handoff.append(time.perf_counter() - start)
            print(f"  handoff {run} {where} -> {other}: {handoff[-1]:.2f}s", flush=True)
            cluster.direct(where, "rm", f"user{run - 1}")
            plain_start.append(timed(lambda: cluster.direct(
                other, "run", "--rm", "-v", f"{local_dir}:/d", "busybox", "true"), 0)[0])
            where = other
    rows = [
        row("refusal of a volume in use elsewhere, p50", median(refusal), median(plain),
            median(refusal) / median(plain), f"<= {REFUSAL_TARGET:g}s",
            median(refusal) <= REFUSAL_TARGET, "s"),
        row("  refusal p90", percentile(refusal, 0.9), percentile(plain, 0.9), None, None,
            None, "s"),
        row("docker stop, then docker run elsewhere: median", median(handoff),
            median(plain_start), median(handoff) / median(plain_start), None, None, "s"),
        row("  handoff max", max(handoff), max(plain_start), None, None, None, "s"),
    ]
    print_rows(rows)
    write_result("handoff", {"benchmark": "handoff", "runs": options.runs,
                             "refusal_s": refusal, "plain_run_s": plain,
                             "handoff_s": handoff, "plain_start_s": plain_start,
                             "rows": rows}, options.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
