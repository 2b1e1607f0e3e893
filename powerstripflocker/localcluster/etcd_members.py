"""The etcd cluster under a local cluster's control replicas: three members of Debian's
`etcd` (package etcd-server), each on its own address (127.0.2.N on loopback, a network
namespace of its own in "netns" mode) with the same client and peer ports, and its data
under the state directory. Their command lines, and whether they answer and agree on a
leader (through each member's HTTP gateway: /health and /v3/maintenance/status).

Plain HTTP: the members listen on loopback or on the bridge this machine made, never on
a real network (as the control service does with --insecure-http there).
"""

import json
import os
import shutil
import urllib.error
import urllib.request

from powerstripflocker.localcluster.netns import cluster_prefix

ETCD = "etcd"
# Debian's defaults (100 ms heartbeat, 1 s election timeout), given so the demo does not
# depend on them: shorter ones make a member of a busy two-core machine, which also runs
# two dockerds, call elections nobody asked for.
HEARTBEAT_MS = 100
ELECTION_MS = 1000


def etcd_missing():
    """Why the control replicas' etcd cannot run here, or None."""
    if shutil.which(ETCD) is None:
        return "etcd is not installed (Debian package etcd-server)"
    return None


def client_url(layout, member):
    return f"http://{member.address}:{layout.etcd_port}"


def peer_url(layout, member):
    return f"http://{member.address}:{layout.etcd_peer_port}"


def data_dir(layout, member):
    return os.path.join(layout.etcd_dir, member.name)


def initial_cluster_token(layout):
    """Unique to the cluster (its run directory names it), so members of two local
    clusters never take each other for peers."""
    return f"powerstrip-flocker-{cluster_prefix(layout.run_dir)}"


def etcd_command(layout, member):
    """member's etcd. On a restart its data directory already holds the cluster, and
    etcd ignores the --initial-* flags: the member rejoins as itself."""
    initial_cluster = ",".join(f"{other.name}={peer_url(layout, other)}"
                               for other in layout.etcd_members)
    return [
        ETCD, "--name", member.name, "--data-dir", data_dir(layout, member),
        "--listen-client-urls", client_url(layout, member),
        "--advertise-client-urls", client_url(layout, member),
        "--listen-peer-urls", peer_url(layout, member),
        "--initial-advertise-peer-urls", peer_url(layout, member),
        "--initial-cluster", initial_cluster, "--initial-cluster-state", "new",
        "--initial-cluster-token", initial_cluster_token(layout),
        "--heartbeat-interval", str(HEARTBEAT_MS), "--election-timeout", str(ELECTION_MS),
        "--logger", "zap", "--log-level", "warn",
    ]


def healthy(layout, member):
    """Whether member answers /health with health "true" (it has a leader and can
    commit: a lone member of three that lost its peers is not healthy)."""
    try:
        with urllib.request.urlopen(client_url(layout, member) + "/health",
                                    timeout=2) as response:
            return json.loads(response.read()).get("health") == "true"
    except (OSError, ValueError, urllib.error.URLError):
        return False


def status(layout, member):
    """member's /v3/maintenance/status (ids as strings, as the gateway writes them)."""
    request = urllib.request.Request(client_url(layout, member) + "/v3/maintenance/status",
                                     data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=2) as response:
        return json.loads(response.read())


def leader(layout, members=None):
    """The name of the member that every one of members (default: all) says leads, or
    None while they do not agree or one does not answer."""
    members = layout.etcd_members if members is None else members
    try:
        answers = {member.name: status(layout, member) for member in members}
    except (OSError, ValueError, urllib.error.URLError):
        return None
    leaders = {answer.get("leader") for answer in answers.values()}
    if len(leaders) != 1:
        return None
    [leader_id] = leaders
    return next((name for name, answer in answers.items()
                 if answer.get("header", {}).get("member_id") == leader_id), None)
