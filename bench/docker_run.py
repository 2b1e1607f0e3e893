"""`docker run` of a local /flocker volume through proxy and adapter vs a plain bind
straight to dockerd.

    python bench/docker_run.py [--runs 20]

Starts a two-node local cluster, makes volume `runlocal` local to node1 (one docker
run through node1's proxy), then times, interleaved and alternating which goes first:

  flocker:  docker -H <node1 proxy>   run --rm -v /flocker/runlocal:/data busybox true
  baseline: docker -H <node1 dockerd> run --rm -v <a local dir>:/data busybox true

Target: median ratio <= 1.3.
"""

import argparse
import sys
import tempfile

from common import cannot_run, report_median_ratio, running_cluster, timed_docker_run

TARGET = 1.3


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--output")
    options = parser.parse_args(argv)
    if cannot_run():
        return 2
    with running_cluster() as cluster, tempfile.TemporaryDirectory(
            prefix="psf-bench-bind-") as local_dir:
        commands = {
            "flocker": lambda: cluster.docker("node1", "run", "--rm", "-v",
                                              "/flocker/runlocal:/data", "busybox", "true"),
            "baseline": lambda: cluster.direct("node1", "run", "--rm", "-v",
                                               f"{local_dir}:/data", "busybox", "true"),
        }
        for command in commands.values():  # creates the volume; warms both paths
            timed_docker_run(command)
            timed_docker_run(command)
        [dataset] = cluster.datasets_named("runlocal")
        assert dataset["primary"] == cluster.node_uuid("node1")
        print(f"{options.runs} docker runs each, interleaved ...", flush=True)
        times = {label: [] for label in commands}
        for run in range(options.runs):
            items = list(commands.items())
            for label, command in (items if run % 2 == 0 else items[::-1]):
                times[label].append(timed_docker_run(command))
    report_median_ratio("docker_run", "docker run, local /flocker volume (median)", times,
                        "flocker", "baseline", TARGET, options.runs, options.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
