"""powerstrip-flocker demo: the killer demo on a two-node cluster on this machine."""

import os
import shlex
import sys

from .localcluster import ClusterError, LocalCluster, make_layout

HELP = "start a two-node cluster on this machine and move a volume between its nodes"
DEMO_COMMANDS = (
    ("node1", ["run", "--rm", "-v", "/flocker/demo:/data", "busybox",
               "sh", "-c", "echo fish > /data/file"]),
    ("node2", ["run", "--rm", "-v", "/flocker/demo:/data", "busybox",
               "sh", "-c", "cat /data/file"]),
)


def configure(parser):
    parser.add_argument("action", nargs="?", choices=("up", "down"), default="up",
                        help="up (default): (re)start the cluster and run the demo; "
                             "down: stop everything and remove its files")
    parser.add_argument("--state-dir", default="/var/lib/powerstrip-flocker/demo",
                        help="data of the cluster (default %(default)s)")
    parser.add_argument("--run-dir", default="/run/powerstrip-flocker/demo",
                        help="sockets and pid files (default %(default)s)")
    parser.add_argument("--backend", choices=("directory", "btrfs"), default="directory",
                        help="agents' storage backend; btrfs needs --state-dir on btrfs")
    parser.add_argument("--control-port", type=int, default=4523,
                        help="control service port on 127.0.0.1 (default %(default)s)")
    parser.add_argument("--agent-port", type=int, default=4524,
                        help="agents' port, on 127.0.0.N for node N (default %(default)s)")
    parser.add_argument("--adapter-port", type=int, default=9999,
                        help="adapters' port, on 127.0.0.N for node N (default %(default)s)")


def _command():
    """How the user ran us, to print commands they can paste."""
    if os.path.basename(sys.argv[0]) == "powerstrip-flocker":
        return os.path.abspath(sys.argv[0])
    return f"{sys.executable} -m powerstripflocker"


def _say(message):
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def run(options):
    layout = make_layout(os.path.abspath(options.state_dir), os.path.abspath(options.run_dir),
                         control_port=options.control_port, agent_port=options.agent_port,
                         adapter_port=options.adapter_port, backend=options.backend)
    cluster = LocalCluster(layout, progress=lambda message: _say(f"  starting {message}"))
    if options.action == "down":
        cluster.stop()
        _say(f"demo cluster stopped; removed {layout.run_dir} and {layout.state_dir}")
        return 0
    if cluster.is_running():
        _say("stopping the demo cluster that is already running")
        cluster.stop()
    try:
        _say("starting a two-node cluster on this machine:")
        cluster.start()
        cluster.import_images()
        for node, arguments in DEMO_COMMANDS:
            host = layout.node(node).docker_host
            _say(f"\n{node}$ docker {shlex.join(arguments)}")
            result = cluster.docker(node, *arguments, timeout=300)
            sys.stdout.write(result.stdout)
            sys.stderr.write(result.stderr)
            if result.returncode != 0:
                _say(f"the demo failed on {node} (DOCKER_HOST={host}, exit {result.returncode});"
                     f" logs are in {layout.log_dir}")
                return 1
    except ClusterError as error:
        cluster.stop(remove_state=False)
        _say(f"the demo cluster could not start: {error}\nEverything it started is stopped; "
             f"its logs are in {layout.log_dir} ('demo down' removes them)")
        return 1
    _say("\nThe cluster is up. Use a node's docker from this shell:")
    for node in layout.nodes:
        _say(f"  export DOCKER_HOST={node.docker_host}   # {node.name}")
    _say(f"See its volumes:\n  {_command()} status --control-url {layout.control_url}")
    _say(f"Stop it and remove everything:\n  {_command()} demo down"
         + ("" if options.state_dir == "/var/lib/powerstrip-flocker/demo" else
            f" --state-dir {shlex.quote(options.state_dir)} --run-dir "
            f"{shlex.quote(options.run_dir)}"))
    return 0
