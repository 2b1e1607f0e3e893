"""powerstrip-flocker release NAME: break a volume's lease, for an operator who knows
the node holding it is gone. Logged loudly: the next move may take the volume away
from a container that is in fact still running."""

import sys

from twisted.logger import Logger

from powerstripflocker.clients.flocker import ControlServiceUnreachable, FlockerAPIError, NotFound
from powerstripflocker.frontends.options import add_operator_options, build_api
from powerstripflocker.core.placement import choose_dataset, live_datasets_named
from powerstripflocker.core.volumes import InvalidVolumeName, validate_name
from powerstripflocker.serving.lifecycle import run_reactor

HELP = "release the lease that pins volume NAME to a node (when that node is gone)"

log = Logger()


def configure(parser):
    parser.add_argument("name", help="the volume name, as in -v /flocker/NAME:/data")
    add_operator_options(parser)


async def release(api, name):
    """(exit status, one line for the operator)."""
    configuration = await api.list_datasets_configuration()
    candidates = live_datasets_named(configuration.datasets, name)
    if not candidates:
        return 1, f"no volume named {name!r}"
    dataset_id = choose_dataset(candidates).dataset_id
    hosts = {node.uuid: node.host for node in await api.list_nodes()}
    try:
        lease = await api.release_lease(dataset_id)
    except NotFound:
        return 0, f"volume {name!r} (dataset {dataset_id}) holds no lease; nothing to release"
    holder = hosts.get(lease.node_uuid, "a node that is not reporting")
    log.warn("operator released the lease of node {node_uuid} ({holder}) on volume {volume} "
             "(dataset {dataset_id})", node_uuid=lease.node_uuid, holder=holder, volume=name,
             dataset_id=dataset_id)
    return 0, (f"released the lease of {holder} (node {lease.node_uuid}) on volume {name!r} "
               f"(dataset {dataset_id}); it may now move")


def run(options):
    try:
        name = validate_name(options.name)
    except InvalidVolumeName as reason:
        raise SystemExit(f"powerstrip-flocker release: {reason}") from None

    async def main(reactor):
        api = build_api(reactor, options)
        try:
            status, line = await release(api, name)
        except (ControlServiceUnreachable, FlockerAPIError) as reason:
            status, line = 1, f"cannot release {name!r}: {reason}"
        (sys.stdout if status == 0 else sys.stderr).write(line + "\n")
        if status:
            raise SystemExit(status)

    return run_reactor(main)
