"""powerstrip-flocker units: systemd units for one node of a real cluster.

The units run the command lines that the local cluster (demo and end-to-end tests)
runs, built by the same functions in localcluster, only with a real node's layout.
A control service other nodes reach serves TLS (never plain HTTP on the network):
its certificate and the cluster CA are files in --config-dir.
"""

import ipaddress
import os
import shlex
import sys

import yaml

from powerstripflocker.localcluster.commands import (
    DOCKER_PLUGIN_DIRECTORY, adapter_command, agent_command, control_command, plugin_command,
    proxy_command,
)
from powerstripflocker.localcluster.layout import (
    ADAPTER_PATH, ClusterLayout, NodeLayout, adapters_config,
)

HELP = "write systemd units (control, agent, adapter, plugin, proxy) for a node of a cluster"

_UNIT = """\
[Unit]
Description={description}
After={after}
Wants={after}

[Service]
ExecStart={command}
Restart=on-failure
RestartSec=2

[Install]
WantedBy=multi-user.target
"""


def configure(parser):
    parser.add_argument("--node-name", required=True, help="a name for this node, e.g. node1")
    parser.add_argument("--address", required=True,
                        help="this node's IPv4 address on the cluster network")
    parser.add_argument("--control-address", required=True,
                        help="address of the node that runs the control service")
    parser.add_argument("--control", action="store_true",
                        help="this node also runs the control service")
    parser.add_argument("--backend", choices=("directory", "btrfs"), default="directory",
                        help="the agent's storage backend (default %(default)s)")
    parser.add_argument("--data-dir", default="/var/lib/powerstrip-flocker",
                        help="the agent's data and the control database go here (default "
                             "%(default)s)")
    parser.add_argument("--config-dir", default="/etc/powerstrip-flocker",
                        help="adapters.yml and cluster.token live here, and, unless the "
                             "control address is loopback, the control service's TLS files "
                             "control.crt, control.key and the cluster CA's cluster-ca.crt "
                             "(default %(default)s)")
    parser.add_argument("--output", default="/etc/systemd/system",
                        help="directory the .service files are written to (default %(default)s)")


def _is_loopback(address):
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def node_layout(options):
    node = NodeLayout(
        name=options.node_name, address=options.address, agent_port=4524, adapter_port=9999,
        data_dir=options.data_dir, run_dir="/var/run", adapter_address="127.0.0.1",
        config_dir=options.config_dir, plugins_dir=DOCKER_PLUGIN_DIRECTORY,
    )
    cluster = ClusterLayout(
        state_dir=options.data_dir, run_dir="/var/run", control_port=4523,
        backend=options.backend, nodes=(node,), control_address=options.control_address,
        token_path=os.path.join(options.config_dir, "cluster.token"),
        tls_dir="" if _is_loopback(options.control_address) else options.config_dir,
    )
    return cluster, node


def units(cluster, node, with_control):
    """{file name: unit text} for the node."""
    services = []
    if with_control:
        services.append(("control", "powerstrip-flocker control service (Flocker v1 API)",
                         "network-online.target", control_command(cluster)))
    services += [
        ("agent", "powerstrip-flocker node agent", "network-online.target",
         agent_command(cluster, node)),
        ("adapter", "powerstrip-flocker Powerstrip adapter", "network-online.target",
         adapter_command(cluster, node)),
        ("plugin", "powerstrip-flocker Docker volume plugin 'flocker'", "network-online.target",
         plugin_command(cluster, node)),
        ("proxy", "powerstrip-flocker Docker API proxy on /var/run/docker.sock",
         "docker.service powerstrip-flocker-adapter.service", proxy_command(node)),
    ]
    return {
        f"powerstrip-flocker-{name}.service": _UNIT.format(
            description=description, after=after, command=shlex.join(command))
        for name, description, after, command in services
    }


def run(options):
    cluster, node = node_layout(options)
    os.makedirs(options.config_dir, exist_ok=True)
    with open(node.adapters_yml, "w") as config:
        yaml.safe_dump(adapters_config(node.adapter_url + ADAPTER_PATH), config, sort_keys=False)
    os.makedirs(options.output, exist_ok=True)
    for name, text in units(cluster, node, options.control).items():
        with open(os.path.join(options.output, name), "w") as unit:
            unit.write(text)
        sys.stdout.write(f"wrote {os.path.join(options.output, name)}\n")
    return 0
