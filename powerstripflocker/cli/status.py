"""powerstrip-flocker status: a table of the cluster's datasets, from the v1 API."""

import json
import os
import time
from dataclasses import asdict

from twisted.logger import Logger

from powerstripflocker.clients.control_agent import ControlClient
from powerstripflocker.clients.flocker import ControlServiceUnreachable, FlockerAPIError
from powerstripflocker.clients.flocker_client import FlockerClient
from powerstripflocker.clients.http import (
    CONTROL_URL_ENV, DEFAULT_CONTROL_URL, TOKEN_SOURCES, TokenError, client_token,
    connection_pool, control_url_argument, http_client, tls_policy,
)
from powerstripflocker.serving.lifecycle import run_reactor

HELP = "print the datasets of a Flocker(-compatible) cluster: where they are, moves, leases"

REQUEST_TIMEOUT = 15

COLUMNS = ("NAME", "DATASET", "PRIMARY", "STATE", "PATH", "SIZE", "LEASE", "REPLICAS")

log = Logger()


class StatusError(Exception):
    pass


def configure(parser):
    parser.add_argument(
        "--control-url", default=os.environ.get(CONTROL_URL_ENV, DEFAULT_CONTROL_URL),
        type=control_url_argument,
        help=f"control service base URL, with or without /v1, or a comma-separated list of "
             f"its replicas (default ${CONTROL_URL_ENV} or {DEFAULT_CONTROL_URL})",
    )
    parser.add_argument(
        "--cluster-token-file", metavar="PATH",
        help=f"cluster token ({TOKEN_SOURCES})",
    )
    parser.add_argument("--all", action="store_true",
                        help="also list deleted datasets, and until when a node's trash "
                             "keeps their data (needs the cluster token)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--tls-ca", metavar="PEM", help="CA certificate of an https control URL")
    parser.add_argument("--tls-cert", metavar="PEM", help="client certificate (mutual TLS)")
    parser.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert")


# -- pure: documents -> rows -> text -------------------------------------------


def human_size(size):
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)}{unit}" if value == int(value) else f"{value:.1f}{unit}"
        value /= 1024
    return str(size)  # pragma: no cover


def human_seconds(seconds):
    seconds = int(round(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def build_rows(configuration, state, nodes, leases, cluster=None, include_deleted=False,
               now=None):
    """One row (dict of COLUMNS, lower-cased keys) per configured dataset; now (the
    time, default the clock's) says when the data of deleted ones leaves a trash."""
    hosts = {node["uuid"]: node["host"] for node in nodes}
    if cluster:
        for node in cluster.get("nodes", []):
            hosts.setdefault(node["uuid"], node["host"])

    def node_name(uuid):
        return hosts.get(uuid, uuid[:8] if uuid else "-")

    where = {}
    for entry in state:
        where.setdefault(entry["dataset_id"], []).append(entry)
    lease_of = {lease["dataset_id"]: lease for lease in leases}
    transfers = {}
    for node in (cluster or {}).get("nodes", []):
        for transfer in node.get("transfers", []):
            if transfer.get("direction") == "push":
                transfers[transfer["dataset_id"]] = transfer

    # Beyond Flocker (issue 15): the nodes chosen for copies, in the agents' view only.
    placed = {d["dataset_id"]: d for d in (cluster or {}).get("datasets", [])}

    trashed = {}
    for node in (cluster or {}).get("nodes", []):
        for entry in node.get("trash", []):
            latest = trashed.get(entry["dataset_id"])
            if latest is None or entry["deleted_at"] > latest[1]["deleted_at"]:
                trashed[entry["dataset_id"]] = (node["uuid"], entry)

    rows = []
    for dataset in configuration:
        if dataset.get("deleted") and not include_deleted:
            continue
        dataset_id = dataset["dataset_id"]
        entries = where.get(dataset_id, [])
        here = [e for e in entries if e.get("primary") == dataset["primary"] and e.get("path")]
        elsewhere = [e for e in entries
                     if e.get("primary") and e.get("primary") != dataset["primary"]]
        path = "-"
        if dataset.get("deleted"):
            state_text = "deleted" if not entries else "deleting"
            if not entries and dataset_id in trashed:
                keeper, kept = trashed[dataset_id]
                state_text = trash_text(node_name(keeper), kept, now)
        elif here:
            state_text = "manifest"
            path = here[0]["path"]
        elif elsewhere:
            source = elsewhere[0]["primary"]
            state_text = f"moving from {node_name(source)}"
            transfer = transfers.get(dataset_id)
            if transfer:
                done, total = transfer.get("bytes_done", 0), transfer.get("bytes_total")
                if total:
                    state_text += (f" {100 * done // total}% "
                                   f"({human_size(done)}/{human_size(total)})")
                else:
                    state_text += f" ({human_size(done)})"
                if transfer.get("stalled"):
                    # The sender gave up retrying: say why, or the move looks merely slow.
                    state_text += f" stalled: {transfer.get('error') or 'no cause reported'}"
        else:
            state_text = "pending"
        lease = lease_of.get(dataset_id)
        if lease is None:
            lease_text = "-"
        elif lease.get("expires") is None:
            lease_text = f"{node_name(lease['node_uuid'])} (no expiry)"
        else:
            lease_text = f"{node_name(lease['node_uuid'])} ({human_seconds(lease['expires'])})"
        size = dataset.get("maximum_size")
        rows.append({
            "name": dataset.get("metadata", {}).get("name", "-"),
            "dataset": dataset_id,
            "primary": node_name(dataset["primary"]),
            "state": state_text,
            "path": path,
            "size": human_size(size),
            "lease": lease_text,
            "replicas": replicas_text(placed.get(dataset_id), node_name),
        })
    rows.sort(key=lambda row: (row["name"], row["dataset"]))
    return rows


def replicas_text(placed, node_name):
    """'10.0.0.2, 10.0.0.3' for the nodes chosen to hold a dataset's copies, followed by
    '(1 of 2 chosen)' while fewer live nodes than its count are there; '-' for none or
    when the agents' view could not be read."""
    if not placed:
        return "-"
    nodes, wanted = placed.get("replica_nodes") or [], placed.get("replicas") or 0
    text = ", ".join(node_name(node) for node in nodes)
    if len(nodes) < wanted:
        text = f"{text} ({len(nodes)} of {wanted} chosen)".lstrip()
    return text or "-"


def trash_text(host, kept, now=None):
    """'in trash on HOST until 00:35:10 UTC (58m12s left)' for a deleted dataset."""
    now = time.time() if now is None else now
    until = time.strftime("%H:%M:%S UTC", time.gmtime(kept["expires_at"]))
    left = kept["expires_at"] - now
    when = f"{human_seconds(left)} left" if left > 0 else "due for removal"
    return f"in trash on {host} until {until} ({when})"


def render_table(rows):
    table = [COLUMNS] + [tuple(row[c.lower()] for c in COLUMNS) for row in rows]
    widths = [max(len(str(line[i])) for line in table) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip()
        for line in table
    ]
    return "\n".join(lines)


# -- fetching ---------------------------------------------------------------------


async def fetch(client, url, token=None, reactor=None):
    """(configuration, state, nodes, leases, cluster or None) from the control service
    at url (with or without /v1) over client, a treq HTTPClient: the v1 documents, and
    the agents' view of the cluster when the token lets it be read."""
    if reactor is None:
        from twisted.internet import reactor
    # One try each: a command reports what it found, it does not wait for a service.
    api = FlockerClient(reactor, url, timeout=REQUEST_TIMEOUT, connect_retries=0,
                        http_client=client, token=token)
    try:
        configuration = await api.list_datasets_configuration()
        state = await api.list_datasets_state()
        nodes = await api.list_nodes()
        leases = await api.list_leases()
    except ControlServiceUnreachable as error:
        raise StatusError(str(error))
    except FlockerAPIError as error:
        raise StatusError(f"the control service at {api.base_url} answered {error}")
    documents = [[asdict(entry) for entry in entries]
                 for entries in (configuration.datasets, state, nodes, leases)]
    # The replica that answered is asked first for the view too.
    return (*documents, await cluster_view(client, api.replicas.in_turn(), token))


async def cluster_view(client, url, token):
    """The agents' view of the cluster (moves' progress, trash), or None when it cannot
    be read: the table is shown without it."""
    try:
        return await ControlClient(url, token=token, http=client).cluster(timeout=0)
    except Exception:
        return None


def make_client(reactor, options):
    """The treq client of one status command: no connection kept after it, https URLs
    checked against --tls-ca, with --tls-cert/--tls-key as the client certificate."""
    if options.tls_cert and not options.tls_ca:
        raise StatusError("--tls-cert needs --tls-ca (the CA of the control service)")
    policy = tls_policy(options.tls_ca, options.tls_cert, options.tls_key)
    return http_client(reactor, policy, connection_pool(reactor, persistent=False))


def read_token(options, environ=os.environ):
    try:
        return client_token(options.cluster_token_file, options.control_url, environ)
    except TokenError as error:
        raise StatusError(str(error))


def run(options):
    async def main(reactor):
        try:
            token = read_token(options)
            client = make_client(reactor, options)
            documents = await fetch(client, options.control_url, token)
        except (StatusError, OSError) as error:
            log.error("status: {error}", error=str(error))
            raise SystemExit(1)
        rows = build_rows(*documents, include_deleted=options.all)
        if options.json:
            print(json.dumps(rows, indent=2))
        elif rows:
            print(render_table(rows))
        else:
            print("no datasets")

    return run_reactor(main)
