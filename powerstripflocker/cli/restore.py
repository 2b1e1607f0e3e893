"""powerstrip-flocker restore NAME: bring back a deleted volume whose data a node still
keeps in its trash (for the agents' --keep-deleted after the delete), on that node, data
as it was when deleted."""

import sys
import time

from twisted.internet.task import deferLater
from twisted.logger import Logger

from powerstripflocker.cli.status import human_seconds
from powerstripflocker.clients.flocker import AlreadyExists, ControlServiceUnreachable, FlockerAPIError, NotFound
from powerstripflocker.frontends.options import add_operator_options, build_api
from powerstripflocker.core.placement import choose_dataset, live_datasets_named
from powerstripflocker.core.volumes import InvalidVolumeName, validate_name
from powerstripflocker.serving.lifecycle import run_reactor

HELP = "bring back deleted volume NAME from the trash of the node that keeps its data"

DEFAULT_TIMEOUT = 60.0
STATE_POLL_SECONDS = 0.2

log = Logger()


def configure(parser):
    parser.add_argument("name", help="the volume name, as in -v /flocker/NAME:/data")
    add_operator_options(parser)
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help="seconds to wait for the node to report the restored volume "
                             "(default %(default)g)")


async def restore(api, reactor, name, timeout=DEFAULT_TIMEOUT):
    """(exit status, one line for the operator)."""
    try:
        kept = [entry for entry in await api.list_trash(name) if entry.deleted]
    except NotFound:
        return 1, (f"cannot restore {name!r}: the control service at {api.base_url} "
                   "keeps no trash (an older version)")
    if not kept:
        live = live_datasets_named((await api.datasets_named(name)).datasets, name)
        if live:
            return 1, (f"volume {name!r} is not deleted (dataset "
                       f"{choose_dataset(live).dataset_id}); nothing to restore")
        return 1, (f"no deleted volume named {name!r} is kept in any node's trash: a "
                   "deleted volume's data is kept for the agents' --keep-deleted (1h by "
                   "default), and only while its node reports")
    latest = max(kept, key=lambda entry: entry.deleted_at)
    try:
        restored = await api.restore_dataset(latest.dataset_id)
    except (AlreadyExists, NotFound) as refusal:
        return 1, f"cannot restore {name!r}: {refusal.description}"
    log.debug("restored volume {volume} (dataset {dataset_id}) in the configuration; "
             "waiting for node {node_uuid} to report it", volume=name,
             dataset_id=restored.dataset_id, node_uuid=restored.primary)
    path = await _reported_path(api, reactor, restored, timeout)
    hosts = {node.uuid: node.host for node in await api.list_nodes()}
    where = hosts.get(restored.primary, f"node {restored.primary}")
    if path is None:
        return 1, (f"volume {name!r} (dataset {restored.dataset_id}) is restored in the "
                   f"configuration, but {where} has not reported it within {timeout:g}s; "
                   "'powerstrip-flocker status' shows when it does")
    deleted_ago = human_seconds(max(0.0, time.time() - latest.deleted_at))
    return 0, (f"restored volume {name!r} (dataset {restored.dataset_id}, deleted "
               f"{deleted_ago} ago) on {where} at {path}")


async def _reported_path(api, reactor, restored, timeout):
    """The path the restored dataset's primary reports it at, or None after timeout."""
    deadline = reactor.seconds() + timeout
    while True:
        for entry in await api.list_datasets_state(restored.dataset_id):
            if entry.primary == restored.primary and entry.path:
                return entry.path
        if reactor.seconds() >= deadline:
            return None
        await deferLater(reactor, STATE_POLL_SECONDS, lambda: None)


def run(options):
    try:
        name = validate_name(options.name)
    except InvalidVolumeName as reason:
        raise SystemExit(f"powerstrip-flocker restore: {reason}") from None
    if options.timeout <= 0 or options.request_timeout <= 0:
        raise SystemExit("powerstrip-flocker restore: timeouts must be positive")

    async def main(reactor):
        api = build_api(reactor, options)
        try:
            status, line = await restore(api, reactor, name, options.timeout)
        except (ControlServiceUnreachable, FlockerAPIError) as reason:
            status, line = 1, f"cannot restore {name!r}: {reason}"
        (sys.stdout if status == 0 else sys.stderr).write(line + "\n")
        if status:
            raise SystemExit(status)

    return run_reactor(main)
