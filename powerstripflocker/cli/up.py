"""powerstrip-flocker up: the whole system on one machine, in one process.

The control service, the agent, the adapter, the volume plugin and the proxy in front
of this machine's dockerd, as one service: started in that order, each once the one
before it is up, and stopped in the reverse order (the proxy and the frontends first,
then the agent, the control service last), once, on SIGTERM or SIGINT. Each part runs
with the options the systemd units and the local cluster give it (the same functions
build them), for a one-node cluster on loopback.
"""

import os

import yaml

from powerstripflocker.agent import command as agent_command_module
from powerstripflocker.agent.backends import BACKENDS
from powerstripflocker.cli.main import build_parser
from powerstripflocker.clients.http import TOKEN_ENV
from powerstripflocker.control import command as control_command_module
from powerstripflocker.frontends import adapter_command as adapter_command_module
from powerstripflocker.frontends import plugin_command as plugin_command_module
from powerstripflocker.localcluster.commands import (
    DOCKER_PLUGIN_DIRECTORY, POWERSTRIP_FLOCKER, adapter_command, agent_command, control_command,
    plugin_command, proxy_command,
)
from powerstripflocker.localcluster.layout import (
    ADAPTER_PATH, ClusterLayout, NodeLayout, adapters_config,
)
from powerstripflocker.powerstrip import command as proxy_command_module
from powerstripflocker.serving.lifecycle import InOrder, run_until_stopped

HELP = ("run the whole system on this one machine in one process: control service, "
        "agent, adapter, volume plugin and the Docker API proxy")

DEFAULT_STATE_DIR = "/var/lib/powerstrip-flocker"
DEFAULT_DOCKER = "unix:///var/run/docker.sock"
DEFAULT_PROXY_SOCKET = "/run/powerstrip-flocker/docker.sock"
ADDRESS = "127.0.0.1"

# Start order; the stop order is its reverse.
PARTS = ("control", "agent", "adapter", "plugin", "proxy")


def configure(parser):
    parser.add_argument("--state-dir", default=DEFAULT_STATE_DIR,
                        help="the control database, the cluster token (made on first start), "
                             "adapters.yml and the agent's datasets (default %(default)s)")
    parser.add_argument("--docker", default=DEFAULT_DOCKER, metavar="ENDPOINT",
                        help="this machine's dockerd, which the proxy fronts: unix:///path "
                             "or tcp://host:port (default %(default)s)")
    parser.add_argument("--proxy-socket", default=DEFAULT_PROXY_SOCKET, metavar="PATH",
                        help="the unix socket docker clients use, e.g. DOCKER_HOST="
                             "unix://PATH (default %(default)s)")
    parser.add_argument("--plugin-dir", default=DOCKER_PLUGIN_DIRECTORY, metavar="PATH",
                        help="where the volume plugin's socket flocker.sock goes (default "
                             "%(default)s, where dockerd finds it)")
    parser.add_argument("--backend", choices=BACKENDS, default="directory",
                        help="the agent's storage backend (default %(default)s); btrfs needs "
                             "--state-dir on a btrfs file system")
    parser.add_argument("--control-port", type=int, default=4523,
                        help="the control service's port on 127.0.0.1 (default %(default)s)")
    parser.add_argument("--agent-port", type=int, default=4524,
                        help="the agent's port on 127.0.0.1 (default %(default)s)")
    parser.add_argument("--adapter-port", type=int, default=9999,
                        help="the adapter's port on 127.0.0.1 (default %(default)s)")


def layout(options):
    """This machine as a one-node cluster on loopback."""
    state_dir = os.path.abspath(options.state_dir)
    node = NodeLayout(
        name="up", address=ADDRESS, agent_port=options.agent_port,
        adapter_port=options.adapter_port, data_dir=state_dir,
        run_dir=os.path.dirname(os.path.abspath(options.proxy_socket)),
        adapter_address=ADDRESS, config_dir=state_dir, plugins_dir=options.plugin_dir,
    )
    cluster = ClusterLayout(state_dir=state_dir, run_dir=node.run_dir,
                            control_port=options.control_port, backend=options.backend,
                            nodes=(node,), control_address=ADDRESS)
    return cluster, node


def part_options(options, environ=os.environ):
    """{part: the options its own command would parse}, from the command lines the
    units run, with up's own choices of dockerd and proxy socket."""
    cluster, node = layout(options)
    command_lines = {
        "control": control_command(cluster), "agent": agent_command(cluster, node),
        "adapter": adapter_command(cluster, node), "plugin": plugin_command(cluster, node),
        "proxy": proxy_command(node),
    }
    parser = build_parser()
    parts = {name: parser.parse_args(argv[len(POWERSTRIP_FLOCKER):])
             for name, argv in command_lines.items()}
    # The control service makes the token next to its database on first start (the
    # cluster's token file); the others read it there once it has started, or, like
    # it, take the one in the environment.
    parts["control"].cluster_token_file = None
    if environ.get(TOKEN_ENV, "").strip():
        for name in ("agent", "adapter", "plugin"):
            parts[name].cluster_token_file = None
    parts["agent"].docker = parts["proxy"].docker = options.docker
    parts["proxy"].listen = f"unix://{os.path.abspath(options.proxy_socket)}"
    return parts


def write_adapters_yml(node):
    os.makedirs(os.path.dirname(node.adapters_yml), mode=0o700, exist_ok=True)
    with open(node.adapters_yml, "w", encoding="utf-8") as config:
        yaml.safe_dump(adapters_config(node.adapter_url + ADAPTER_PATH), config,
                       sort_keys=False)


def build(reactor, options):
    """The parts as one service, in start order; writes adapters.yml for the proxy and
    exits (SystemExit) on options that cannot work."""
    parts = part_options(options)
    write_adapters_yml(layout(options)[1])
    os.makedirs(os.path.dirname(os.path.abspath(options.proxy_socket)), exist_ok=True)
    agent_command_module.check_options(parts["agent"])
    adapter_command_module.check_options(parts["adapter"])
    plugin_command_module.check_options(parts["plugin"])
    configuration = proxy_command_module.check_options(parts["proxy"])
    services = {
        "control": control_command_module.ControlServer(reactor, parts["control"]),
        "agent": agent_command_module.AgentServer(reactor, parts["agent"]),
        "adapter": adapter_command_module.AdapterService(reactor, parts["adapter"]),
        "plugin": plugin_command_module.PluginService(reactor, parts["plugin"]),
        "proxy": proxy_command_module.ProxyService(reactor, parts["proxy"], configuration),
    }
    whole = InOrder()
    for name in PARTS:
        services[name].setServiceParent(whole)
    return whole


def run(options):
    return run_until_stopped(lambda reactor: build(reactor, options), "up")
