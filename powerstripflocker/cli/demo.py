"""powerstrip-flocker demo: the killer demo on a cluster on this machine, and the
faults a real cluster meets (a partition, a node that dies, a slow link) on demand."""

import argparse
import json
import os
import shlex
import sys

from powerstripflocker.localcluster.cluster import LocalCluster
from powerstripflocker.localcluster.layout import HOSTS, ClusterError, make_layout
from powerstripflocker.localcluster.netns import NetworkError, free_slot, parse_rate, sweep

HELP = ("start a cluster on this machine and move a volume between its nodes; cut, kill, "
        "restart or slow down its nodes, control replicas and etcd members")
DEFAULT_STATE_DIR = "/var/lib/powerstrip-flocker/demo"
DEFAULT_RUN_DIR = "/run/powerstrip-flocker/demo"
NODE_ACTIONS = ("partition", "heal", "kill", "restart", "shape")
ACTIONS = ("up", "down", *NODE_ACTIONS)


def demo_commands(layout):
    """Write on the first node, read on the last."""
    first, last = layout.nodes[0].name, layout.nodes[-1].name
    return (
        (first, ["run", "--rm", "-v", "/flocker/demo:/data", "busybox",
                 "sh", "-c", "echo fish > /data/file"]),
        (last, ["run", "--rm", "-v", "/flocker/demo:/data", "busybox",
                "sh", "-c", "cat /data/file"]),
    )


def configure(parser):
    parser.add_argument("action", nargs="?", choices=ACTIONS, default="up",
                        help="up (default): (re)start the cluster and run the demo; down: stop "
                             "everything and remove its files; partition/heal NODE: cut/restore "
                             "its link (netns); kill NODE: kill -9 all its processes; restart "
                             "NODE: start them again on their data; shape NODE --rate R: "
                             "rate-limit its link (netns)")
    parser.add_argument("node", nargs="?", default=None,
                        help="the node a fault action acts on (node1, node2, ...), or with "
                             "--control-replicas a control replica (control1, ...) or an etcd "
                             "member (etcd1, etcd2, etcd3)")
    parser.add_argument("--hosts", choices=HOSTS, default="loopback",
                        help="loopback (default): node N is 127.0.0.N; netns: every node is a "
                             "network namespace of its own on a bridge, 198.18.0.0/24")
    parser.add_argument("--nodes", type=int, default=2,
                        help="how many nodes (default %(default)s)")
    parser.add_argument("--control-replicas", type=int, default=None, metavar="N",
                        help="up: N replicas of the control service (default 1: one control "
                             "service on SQLite); 2 or more run on a three-member etcd cluster "
                             "(Debian's etcd-server). Other actions: as the cluster was started")
    parser.add_argument("--etcd-port", type=int, default=2379,
                        help="etcd members' client port, each on its own address (default "
                             "%(default)s)")
    parser.add_argument("--etcd-peer-port", type=int, default=2380,
                        help="etcd members' peer port (default %(default)s)")
    parser.add_argument("--rate", default=None,
                        help="for shape: a tc rate such as 100mbit, or off")
    parser.add_argument("--state-dir", default=DEFAULT_STATE_DIR,
                        help="data of the cluster (default %(default)s)")
    parser.add_argument("--run-dir", default=DEFAULT_RUN_DIR,
                        help="sockets and pid files (default %(default)s)")
    parser.add_argument("--backend", choices=("directory", "btrfs"), default="directory",
                        help="agents' storage backend; btrfs needs --state-dir on btrfs")
    parser.add_argument("--control-port", type=int, default=4523,
                        help="control service port (default %(default)s)")
    parser.add_argument("--agent-port", type=int, default=4524,
                        help="agents' port, on each node's address (default %(default)s)")
    parser.add_argument("--adapter-port", type=int, default=9999,
                        help="adapters' port, on each node's address (default %(default)s)")


def _command():
    """How the user ran us, to print commands they can paste."""
    if os.path.basename(sys.argv[0]) == "powerstrip-flocker":
        return os.path.abspath(sys.argv[0])
    return f"{sys.executable} -m powerstripflocker"


def _say(message):
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def _started_with(options):
    """The options that shape a cluster, as `demo up` records them."""
    return {"hosts": options.hosts, "nodes": options.nodes, "backend": options.backend,
            "control_port": options.control_port, "agent_port": options.agent_port,
            "adapter_port": options.adapter_port,
            "control_replicas": options.control_replicas or 1,
            "etcd_port": options.etcd_port, "etcd_peer_port": options.etcd_peer_port}


def _record_path(run_dir):
    return os.path.join(run_dir, "demo.json")


def _recorded(run_dir):
    try:
        with open(_record_path(run_dir)) as record:
            return json.load(record)
    except (OSError, ValueError):
        return None


def _layout(options, slot):
    return make_layout(os.path.abspath(options.state_dir), os.path.abspath(options.run_dir),
                       control_port=options.control_port, agent_port=options.agent_port,
                       adapter_port=options.adapter_port, backend=options.backend,
                       node_count=options.nodes, hosts=options.hosts, slot=slot,
                       control_replicas=options.control_replicas or 1,
                       etcd_port=options.etcd_port, etcd_peer_port=options.etcd_peer_port)


def _again(options):
    """The options that reach this cluster again, for the commands printed."""
    words = []
    if options.hosts != "loopback":
        words += ["--hosts", options.hosts]
    if options.nodes != 2:
        words += ["--nodes", str(options.nodes)]
    if options.state_dir != DEFAULT_STATE_DIR or options.run_dir != DEFAULT_RUN_DIR:
        words += ["--state-dir", options.state_dir, "--run-dir", options.run_dir]
    for name, default in (("control_port", 4523), ("agent_port", 4524),
                          ("adapter_port", 9999), ("etcd_port", 2379),
                          ("etcd_peer_port", 2380)):
        if getattr(options, name) != default:
            words += [f"--{name.replace('_', '-')}", str(getattr(options, name))]
    return "".join(f" {shlex.quote(word)}" for word in words)


def run(options):
    if options.action in NODE_ACTIONS and options.node is None:
        _say(f"demo {options.action}: name the node, e.g. demo {options.action} node2")
        return 2
    if options.action not in NODE_ACTIONS and options.node is not None:
        _say(f"demo {options.action} takes no node (got {options.node!r})")
        return 2
    if options.action == "shape":
        try:
            rate = parse_rate(options.rate or "")
        except ValueError as error:
            _say(f"demo shape: --rate: {error}")
            return 2
    try:
        if options.action == "up":
            return _up(options)
        if options.action == "down":
            return _down(options)
        return _fault(options, rate if options.action == "shape" else None)
    except (ClusterError, NetworkError) as error:
        _say(f"demo {options.action}: {error}")
        return 1


def _existing_cluster(options):
    """The LocalCluster recorded in the run directory, refusing other options."""
    recorded = _recorded(os.path.abspath(options.run_dir))
    if recorded is None:
        raise ClusterError(f"no demo cluster is up with --run-dir {options.run_dir}")
    started = recorded["options"]
    # The replicas are the cluster's shape: a fault action reads them from the record.
    options = _with_recorded_replicas(options, started)
    if started != _started_with(options):
        given = " ".join(f"{key}={value}" for key, value in sorted(_started_with(options).items())
                         if started.get(key) != value)
        wanted = " ".join(f"{key}={started[key]}" for key in sorted(started)
                          if started[key] != _started_with(options)[key])
        raise ClusterError(f"the cluster in {options.run_dir} was started with {wanted}, "
                           f"not {given}; give the same options as to demo up")
    return LocalCluster(_layout(options, recorded["slot"]))


def _with_recorded_replicas(options, started):
    if options.control_replicas is not None:
        return options
    options = argparse.Namespace(**vars(options))
    options.control_replicas = started.get("control_replicas", 1)
    return options


def _fault(options, rate):
    cluster = _existing_cluster(options)
    node = cluster.layout.host(options.node)
    if node in cluster.layout.service_hosts:
        return _control_plane_fault(options, cluster, node, rate)
    if options.action == "partition":
        cluster.partition(node.name)
        _say(f"{node.name} ({node.address}) is cut off: its link is down, its processes run on")
    elif options.action == "heal":
        cluster.heal(node.name)
        _say(f"{node.name} ({node.address}) is reachable again")
    elif options.action == "kill":
        cluster.kill(node.name)
        _say(f"{node.name}: every process killed (dockerd, its containers, agent, adapter, "
             f"plugin, proxy)")
    elif options.action == "restart":
        cluster.restart(node.name)
        _say(f"{node.name}: started again on its data")
    else:
        cluster.shape(node.name, rate)
        _say(f"{node.name}: link limited to {rate} each way" if rate else
             f"{node.name}: link no longer limited")
    return 0


def _control_plane_fault(options, cluster, host, rate):
    """A fault action on a control replica or an etcd member."""
    what = "etcd member" if host in cluster.layout.etcd_members else "control service"
    if options.action == "kill":
        cluster.kill(host.name)
        _say(f"{host.name}: {what} killed (kill -9); " + (
            "the other members keep a quorum" if what == "etcd member" else
            "clients fail over to the other replicas" if cluster.layout.etcd_members else
            "nothing can be created or moved until it is restarted"))
    elif options.action == "restart":
        cluster.restart(host.name)
        _say(f"{host.name}: {what} started again on its data")
    elif options.action == "partition":
        cluster.partition(host.name)
        _say(f"{host.name} ({host.address}) is cut off: its link is down, it runs on")
    elif options.action == "heal":
        cluster.heal(host.name)
        _say(f"{host.name} ({host.address}) is reachable again")
    else:
        cluster.shape(host.name, rate)
        _say(f"{host.name}: link limited to {rate} each way" if rate else
             f"{host.name}: link no longer limited")
    return 0


def _down(options):
    recorded = _recorded(os.path.abspath(options.run_dir))
    slot = recorded["slot"] if recorded else 0
    if recorded:
        options = argparse.Namespace(**vars(options))
        options.hosts = recorded["options"]["hosts"]
        options.nodes = recorded["options"]["nodes"]
        options.control_replicas = recorded["options"].get("control_replicas", 1)
        options.etcd_port = recorded["options"].get("etcd_port", options.etcd_port)
        options.etcd_peer_port = recorded["options"].get("etcd_peer_port",
                                                         options.etcd_peer_port)
    cluster = LocalCluster(_layout(options, slot))
    cluster.stop()
    _say(f"demo cluster stopped; removed {cluster.layout.run_dir} and {cluster.layout.state_dir}")
    return 0


def _up(options):
    recorded = _recorded(os.path.abspath(options.run_dir))
    if recorded is not None or LocalCluster(_layout(options, 0)).is_running():
        _say("stopping the demo cluster that is already running")
        _down(options)
    slot = 0
    if options.hosts == "netns":
        sweep(os.path.abspath(options.run_dir))
        slot = free_slot()
    layout = _layout(options, slot)
    cluster = LocalCluster(layout, progress=lambda message: _say(f"  starting {message}"))
    where = ("as network namespaces on a bridge" if options.hosts == "netns"
             else "on loopback addresses")
    replicas = (f", {len(layout.control_replicas)} control replicas on a "
                f"{len(layout.etcd_members)}-member etcd cluster" if layout.etcd_members else "")
    _say(f"starting a {len(layout.nodes)}-node cluster on this machine{replicas}, {where}:")
    try:
        # Recorded first, so that `demo down` knows the shape of a start that crashed.
        os.makedirs(layout.run_dir, exist_ok=True)
        with open(_record_path(layout.run_dir), "w") as record:
            json.dump({"options": _started_with(options), "slot": slot}, record)
        cluster.start()
        cluster.import_images()
    except ClusterError as error:
        cluster.stop(remove_state=False)
        _say(f"the demo cluster could not start: {error}\nEverything it started is stopped; "
             f"its logs are in {layout.log_dir} ('demo down' removes them)")
        return 1
    for node, arguments in demo_commands(layout):
        host = layout.node(node).docker_host
        _say(f"\n{node}$ docker {shlex.join(arguments)}")
        result = cluster.docker(node, *arguments, timeout=300)
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr)
        if result.returncode != 0:
            _say(f"the demo failed on {node} (DOCKER_HOST={host}, exit {result.returncode});"
                 f" logs are in {layout.log_dir}")
            return 1
    again = _again(options)
    _say("\nThe cluster is up. Use a node's docker from this shell:")
    for node in layout.nodes:
        _say(f"  export DOCKER_HOST={node.docker_host}   # {node.name}")
    _say(f"See its volumes:\n  {_command()} status --control-url {layout.control_url} "
         f"--cluster-token-file {layout.token_file}")
    if layout.etcd_members:
        _say(f"Kill a control replica and an etcd member (any one of each may be down):\n"
             f"  {_command()} demo kill control1{again}   # and: demo restart control1{again}\n"
             f"  {_command()} demo kill etcd2{again}      # and: demo restart etcd2{again}")
    if options.hosts == "netns":
        _say(f"Break it (then see what the cluster does):\n"
             f"  {_command()} demo partition node2{again}   # and: demo heal node2{again}\n"
             f"  {_command()} demo kill node1{again}        # and: demo restart node1{again}\n"
             f"  {_command()} demo shape node2 --rate 100mbit{again}")
    _say(f"Stop it and remove everything:\n  {_command()} demo down{again}")
    return 0
