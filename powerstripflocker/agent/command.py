"""powerstrip-flocker agent: converge this node to the cluster configuration."""

import argparse
import os
import re
import uuid

from twisted.logger import Logger

from twisted.internet.error import CannotListenError

from powerstripflocker.clients.http import (
    DEFAULT_CONTROL_URL, TOKEN_ENV, command_token, control_url_argument, http_client,
    tls_policy,
)
from powerstripflocker.clients.docker import DockerEngineClient
from powerstripflocker.clients.flocker_client import FlockerClient
from powerstripflocker.core.fencing import Fencer
from powerstripflocker.core.inuse import DEFAULT_POLL_SECONDS, UseTracker
from powerstripflocker.core.kernel_mounts import KernelMounts
from powerstripflocker.core.lease_keeper import DEFAULT_LEASE_SECONDS, LeaseKeeper
from powerstripflocker.serving.lifecycle import PartService, run_until_stopped
from powerstripflocker.serving.listening import server_endpoint
from powerstripflocker.agent.backends import BACKENDS, BackendError, make_backend
from powerstripflocker.clients.control_agent import ControlClient
from powerstripflocker.agent.faults import Faults
from powerstripflocker.agent.model import REPLICA
from powerstripflocker.clients.peer import PeerClient
from powerstripflocker.agent.service import DEFAULT_KEEP_DELETED, AgentService
from powerstripflocker.protocol.ids import canonical_uuid

HELP = "run the node agent: create, move and delete this node's datasets"

log = Logger()


def configure(parser):
    parser.add_argument("--control-url", default=DEFAULT_CONTROL_URL,
                        type=control_url_argument,
                        help="the control service, with or without /v1, or a comma-separated "
                             "list of its replicas (default %(default)s)")
    parser.add_argument("--data-root", default="/var/lib/powerstrip-flocker/agent",
                        help="where datasets and the node UUID live (default %(default)s)")
    parser.add_argument("--backend", choices=BACKENDS, default="directory",
                        help="storage backend (default %(default)s); btrfs needs --data-root "
                             "on a btrfs file system")
    parser.add_argument("--btrfs-quota", action="store_true",
                        help="btrfs: enable quotas and limit each dataset to its "
                             "maximum_size (qgroup limit); without it sizes are not enforced")
    parser.add_argument("--address", default="127.0.0.1",
                        help="this node's IPv4 address, reported as its host "
                             "(default %(default)s)")
    parser.add_argument("--listen", default="tcp:4524:interface=127.0.0.1",
                        help="Twisted endpoint for the agent <-> agent protocol "
                             "(default %(default)s; ssl:... for TLS)")
    parser.add_argument("--advertise-url", default=None,
                        help="how other agents reach this one (default: from --listen, "
                             "with --address when it listens on all interfaces)")
    parser.add_argument("--cluster-token-file", default=None,
                        help=f"file holding the shared cluster token (or set {TOKEN_ENV}; "
                             "with neither and a control service on this machine, the token "
                             "it made in /var/lib/powerstrip-flocker/cluster.token); the "
                             "agent does not start without one")
    parser.add_argument("--docker", default=None, metavar="ENDPOINT",
                        help="this node's dockerd (unix:///path or tcp://host:port): names "
                             "the containers using each dataset, counts their starts and "
                             "stops at once and kills them when fencing (default: in-use "
                             "tracking from the kernel's mount table only)")
    parser.add_argument("--lease-seconds", type=float, default=DEFAULT_LEASE_SECONDS,
                        help="expiry of the leases held on datasets in use here, renewed "
                             "every third of it; a node that cannot renew stops their users "
                             "a quarter of it before the control service could let another "
                             "node take them (default %(default)g)")
    parser.add_argument("--mount-poll-seconds", type=float, default=DEFAULT_POLL_SECONDS,
                        help="how often the mount table of every mount namespace is read for "
                             "datasets in use (default %(default)g)")
    parser.add_argument("--move-attempts", type=int, default=5,
                        help="attempts of a move before it is reported stalled "
                             "(default %(default)d)")
    parser.add_argument("--stall-retry-seconds", type=float, default=300.0,
                        help="a stalled move is tried again when its configuration changes "
                             "or after this long (default %(default)g)")
    parser.add_argument("--tls-ca", default=None,
                        help="PEM CA certificate(s) that https:// control and agent URLs "
                             "must be signed by (default: the system's trust store)")
    parser.add_argument("--keep-deleted", type=duration, default=DEFAULT_KEEP_DELETED,
                        metavar="DURATION",
                        help="how long a deleted dataset's data is kept in this node's "
                             "trash, restorable with 'powerstrip-flocker restore NAME': "
                             "seconds, or with a unit (90s, 30m, 1h, 7d); 0 deletes at "
                             "once (default 1h)")


DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text):
    """Seconds from '3600', '90s', '30m', '1h' or '7d' (argparse type)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: seconds, or a number with s, m, h or d")
    return float(match.group(1)) * DURATION_UNITS[match.group(2)]


def node_uuid(data_root):
    """This node's UUID, created once and kept in <data-root>/node-uuid."""
    path = os.path.join(data_root, "node-uuid")
    try:
        with open(path, encoding="utf-8") as f:
            recorded = canonical_uuid(f.read().strip())
        if recorded is None:
            raise SystemExit(f"{path} holds no UUID: remove it to make a new one")
        return recorded
    except FileNotFoundError:
        pass
    value = str(uuid.uuid4())
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(value + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return value


def _endpoint_fields(description):
    parts = re.split(r"(?<!\\):", description)
    kind, positional, named = parts[0], [], {}
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if sep:
            named[key] = value
        else:
            positional.append(part)
    return kind, positional, named


def advertise_url(listen, address):
    """http(s)://host:port that peers use, derived from a Twisted endpoint string."""
    kind, positional, named = _endpoint_fields(listen)
    port = named.get("port") or (positional[0] if positional else None)
    if kind not in ("tcp", "ssl", "tcp6") or not port:
        raise SystemExit(f"cannot derive --advertise-url from --listen {listen}; give it")
    interface = named.get("interface", "").replace("\\:", ":")
    host = interface if interface not in ("", "0.0.0.0", "::") else address
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if kind == "ssl" else "http"
    return f"{scheme}://{host}:{port}"


class AgentServer(PartService):
    """The agent from start to stop: converging, its peer listener and in-use tracking."""

    name = "agent"

    def __init__(self, reactor, options):
        self.reactor = reactor
        self.options = options
        self._agent = self._port = self._tracker = None

    async def start(self):
        reactor, options = self.reactor, self.options
        data_root = os.path.abspath(options.data_root)
        # Nobody but root reaches a dataset: the directories inside keep the modes their
        # containers need, and Docker binds them as root.
        os.makedirs(data_root, mode=0o700, exist_ok=True)
        os.chmod(data_root, 0o700)
        token = command_token(options)
        me = node_uuid(data_root)
        url = options.advertise_url or advertise_url(options.listen, options.address)
        faults = Faults.from_environment()
        if faults.active():
            log.warn("fault injection active: {faults}", faults=faults)
        if token is None:
            # The control service answers nothing without it, and peers would be open.
            log.critical("agent not started: no cluster token; give --cluster-token-file "
                         "(the control service makes cluster.token next to its database) "
                         "or set {env}", env=TOKEN_ENV)
            raise SystemExit(2)
        http = http_client(reactor, tls_policy(options.tls_ca))
        backend = make_backend(options.backend, reactor, data_root,
                               btrfs_quota=options.btrfs_quota)
        datasets = os.path.join(data_root, "datasets")
        if os.path.isdir(datasets):
            os.chmod(datasets, 0o700)
        control = ControlClient(options.control_url, token=token, http=http, reactor=reactor)
        peers = PeerClient(reactor, me, token=token, http=http)
        agent = AgentService(reactor, backend, control, peers, me, options.address, url,
                             token=token, faults=faults, move_attempts=options.move_attempts,
                             stall_retry=options.stall_retry_seconds,
                             keep_deleted=options.keep_deleted)
        try:
            await agent.start()
            self._port = await server_endpoint(reactor, options.listen).listen(
                agent.peer_site())
        except (BackendError, CannotListenError, OSError, ValueError) as e:
            log.critical("agent cannot start: {error}", error=e)
            agent.stop()
            raise SystemExit(1)
        log.info("agent {node_uuid} listening on {listen} as {url}", node_uuid=me,
                 listen=options.listen, url=url)
        self._agent = agent
        self._tracker = track_use(reactor, options, agent, backend, me, token)

    async def stop(self):
        self._tracker.stop()
        self._agent.stop()
        await self._port.stopListening()


def track_use(reactor, options, agent, backend, me, token=None):
    """Hold leases on the datasets in use on this node (mounted in any mount namespace,
    or used by a container of --docker) and fence those whose lease lapses. Started
    before the agent's first convergence, so a restarted agent knows at once."""
    policy = tls_policy(options.tls_ca)
    # A renewal that hangs must not hold up the next one for long.
    api = FlockerClient(reactor, options.control_url, tls_policy=policy, token=token,
                        timeout=min(10.0, options.lease_seconds / 3))
    engine = DockerEngineClient(reactor, options.docker) if options.docker else None
    mounts = KernelMounts()
    tracker = None

    def fence(dataset_id, reason):
        tracker.fence(dataset_id, reason)

    keeper = LeaseKeeper(api, me, reactor, options.lease_seconds, on_lapse=fence)
    fencer = Fencer(reactor, mounts, engine,
                    docker_timeout=min(2.0, keeper.fence_margin / 3))

    def local_paths():
        # Handed-off copies too: one still mounted is written in vain, and is fenced.
        return {d.path: d.dataset_id for d in backend.local_datasets().values()
                if d.role != REPLICA}

    def changed():
        agent.request_report()
        agent.converge()

    tracker = UseTracker(engine, keeper, local_paths, reactor, on_change=changed,
                         mounts=mounts, fencer=fencer, poll_seconds=options.mount_poll_seconds)
    agent.users_of = tracker.users_of
    agent.in_use = tracker.in_use
    agent.fencing_events = lambda: fencer.fenced
    tracker.start()
    log.info("in-use tracking: the mount table every {poll:g}s{docker}; leases of "
             "{seconds:g}s on datasets in use, fencing {margin:g}s before they could lapse",
             poll=options.mount_poll_seconds, seconds=options.lease_seconds,
             margin=keeper.fence_margin,
             docker=f" and the containers of {options.docker}" if options.docker else "")
    return tracker


def run(options):
    check_options(options)
    return run_until_stopped(lambda reactor: AgentServer(reactor, options), "agent")


def check_options(options):
    if options.lease_seconds <= 0:
        raise SystemExit("powerstrip-flocker agent: --lease-seconds must be positive")
    if options.mount_poll_seconds <= 0 or options.move_attempts < 1 \
            or options.stall_retry_seconds <= 0:
        raise SystemExit("powerstrip-flocker agent: --mount-poll-seconds, --move-attempts "
                         "and --stall-retry-seconds must be positive")
    if options.docker and not options.docker.startswith(("unix://", "tcp://")):
        raise SystemExit("powerstrip-flocker agent: --docker must be unix:///path or "
                         "tcp://host:port")
