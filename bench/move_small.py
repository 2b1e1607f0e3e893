"""Move latency of a small dataset: `docker run` on node2 of a volume living on node1,
to the container's exit, vs the same `docker run` with a local bind.

    python bench/move_small.py [--runs 10]

Starts a two-node local cluster; before timing, creates one small volume per run on
node1 (a docker run through node1's proxy writing a 4 KiB file). Then, interleaved and
alternating which goes first:

  move:     docker -H <node2 proxy>   run --rm -v /flocker/NAME:/data busybox cat /data/f
            (the adapter moves NAME from node1 to node2 before the create goes on)
  baseline: docker -H <node2 dockerd> run --rm -v <local dir>:/data busybox cat /data/f

Target: median ratio <= 4.
"""

import argparse
import os
import sys
import tempfile

from common import cannot_run, report_median_ratio, running_cluster, timed_docker_run

TARGET = 4.0
CONTENT = "x" * 4096


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--output")
    options = parser.parse_args(argv)
    if cannot_run():
        return 2
    with running_cluster() as cluster, tempfile.TemporaryDirectory(
            prefix="psf-bench-bind-") as local_dir:
        with open(os.path.join(local_dir, "f"), "w") as f:
            f.write(CONTENT)
        names = [f"small{n}" for n in range(options.runs + 1)]
        print(f"creating {len(names)} small volumes on node1 ...", flush=True)
        for name in names:
            result = cluster.docker("node1", "run", "--rm", "-v", f"/flocker/{name}:/data",
                                    "busybox", "sh", "-c", f"printf {CONTENT} > /data/f")
            if result.returncode != 0:
                raise RuntimeError(result.stderr)

        def move(name):
            return lambda: cluster.docker("node2", "run", "--rm", "-v",
                                          f"/flocker/{name}:/data", "busybox", "cat", "/data/f")

        def baseline():
            return cluster.direct("node2", "run", "--rm", "-v", f"{local_dir}:/data",
                                  "busybox", "cat", "/data/f")

        timed_docker_run(move(names[0]), CONTENT)  # warm-up of both paths
        timed_docker_run(baseline, CONTENT)
        print(f"{options.runs} moves vs {options.runs} local runs, interleaved ...",
              flush=True)
        times = {"move": [], "baseline": []}
        for run, name in enumerate(names[1:]):
            items = [("move", move(name)), ("baseline", baseline)]
            for label, command in (items if run % 2 == 0 else items[::-1]):
                times[label].append(timed_docker_run(command, CONTENT))
        node2 = cluster.node_uuid("node2")
        assert all(cluster.datasets_named(name)[0]["primary"] == node2 for name in names)
    report_median_ratio("move_small", "docker run moving a small volume (median)", times,
                        "move", "baseline", TARGET, options.runs, options.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
