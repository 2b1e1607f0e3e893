"""The command line of each part of a local cluster: the ones `powerstrip-flocker demo`
and the end-to-end tests start, and the ones the systemd units (cli/units.py) run."""

import os
import sys

POWERSTRIP_FLOCKER = (sys.executable, "-m", "powerstripflocker")


def control_command(layout, host=None):
    """The control service on host (one of layout.control_hosts; the first if None): on
    SQLite in the state directory, or, for a replica, on the layout's etcd cluster."""
    host = host or layout.control_hosts[0]
    store = (["--store", layout.store_url] if layout.etcd_members else
             ["--db", os.path.join(layout.state_dir, "control.db")])
    return [*POWERSTRIP_FLOCKER, "control", "--listen",
            f"tcp:{layout.control_port}:interface={host.address}", *store,
            "--cluster-token-file", layout.token_file, *layout.control_tls(),
            *(["--insecure-http"] if layout.insecure_http else [])]


DOCKER_PLUGIN_DIRECTORY = "/run/docker/plugins"


def dockerd_command(node):
    """dockerd in a mount namespace of its own where the node's plugin directory is
    Docker's /run/docker/plugins: each node of the local cluster finds its own volume
    plugin, as separate hosts would."""
    dockerd = ["dockerd", "--data-root", os.path.join(node.data_dir, "docker"),
               "--exec-root", os.path.join(node.run_dir, "exec"),
               "--pidfile", os.path.join(node.run_dir, "dockerd.pid"),
               "-H", node.real_docker_host, "--bridge=none", "--iptables=false",
               "--ip6tables=false", "--ip-masq=false", "--userland-proxy=false"]
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
            f'mount --bind "$0" {DOCKER_PLUGIN_DIRECTORY} && exec "$@"',
            node.plugin_dir, *dockerd]


def agent_command(layout, node):
    lease = [] if layout.lease_seconds is None else ["--lease-seconds",
                                                     f"{layout.lease_seconds:g}"]
    return [*POWERSTRIP_FLOCKER, "agent", "--control-url", layout.control_url,
            "--data-root", node.agent_data_root, "--backend", layout.backend,
            "--address", node.address,
            "--listen", f"tcp:{node.agent_port}:interface={node.address}",
            "--cluster-token-file", layout.token_file, "--docker", node.real_docker_host,
            *layout.client_tls(), *lease]


def _frontend_timeout(layout):
    if layout.frontend_timeout is None:
        return []
    return ["--timeout", f"{layout.frontend_timeout:g}"]


def adapter_command(layout, node):
    return [*POWERSTRIP_FLOCKER, "adapter", "--control-url", layout.control_url,
            "--node-address", node.address, "--cluster-token-file", layout.token_file,
            *layout.client_tls(), "--listen",
            f"tcp:{node.adapter_port}:interface={node.adapter_address or node.address}",
            *_frontend_timeout(layout)]


def adapter_container_command(layout, node, image):
    """The same adapter command line, run as a container of image on the node's dockerd
    (host network: it listens on the node's address and reaches the control service)."""
    arguments = adapter_command(layout, node)[len(POWERSTRIP_FLOCKER):]
    # The token file is root's and the image runs unprivileged: the docker CLI (root)
    # reads the token from a root-only env file and hands it to the container's
    # environment, out of every process list.
    token_at = arguments.index("--cluster-token-file")
    del arguments[token_at:token_at + 2]
    return ["docker", "-H", node.real_docker_host, "run", "--rm", "--network", "host",
            "--env-file", layout.token_env_file,
            "--name", f"powerstrip-flocker-adapter-{node.name}", image, *arguments]


def plugin_command(layout, node):
    return [*POWERSTRIP_FLOCKER, "plugin", "--control-url", layout.control_url,
            "--node-address", node.address, "--cluster-token-file", layout.token_file,
            *layout.client_tls(), "--socket", plugin_socket(node), *_frontend_timeout(layout)]


def plugin_socket(node):
    return os.path.join(node.plugin_dir, "flocker.sock")


def proxy_command(node):
    return [*POWERSTRIP_FLOCKER, "proxy", "--config", node.adapters_yml,
            "--listen", node.docker_host, "--docker", node.real_docker_host]
