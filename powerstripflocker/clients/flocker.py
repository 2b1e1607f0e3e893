"""The Flocker v1 control-service API as powerstrip-flocker uses it: one interface,
IFlockerAPI, and the data types and errors its implementations share: the treq
client (clients/flocker_client.py) and the in-memory fake (clients/flocker_memory.py).

The fake is trusted only because the same contract tests (tests/flocker_contract.py)
pass against it and against our real control service.
"""

import re
from dataclasses import dataclass, field

from zope.interface import Interface

MINIMUM_SIZE = 64 * 1024 * 1024

# Beyond Flocker (issue 15): the dataset metadata key holding the number of copies kept
# besides the primary, as text ("2"); the control service chooses their nodes.
REPLICAS_KEY = "replicas"
# More copies than this is surely a mistake (and each costs a transfer per interval).
MAX_REPLICAS = 16
_REPLICA_COUNT = re.compile(r"\A[0-9]{1,3}\Z")


class BadReplicaCount(ValueError):
    """A replica count that is not a whole number from 0 to MAX_REPLICAS."""


def parse_replica_count(text):
    """The int of a replica count given as text ("2"); BadReplicaCount otherwise."""
    text = str(text).strip()
    if not _REPLICA_COUNT.match(text) or int(text) > MAX_REPLICAS:
        raise BadReplicaCount(
            f"invalid replica count {text!r}: give a whole number from 0 to {MAX_REPLICAS} "
            f"(the copies kept besides the primary)")
    return int(text)


@dataclass(frozen=True)
class DatasetConfig:
    """A dataset as the configuration (desired state) describes it."""

    dataset_id: str
    primary: str
    metadata: dict = field(default_factory=dict)
    deleted: bool = False
    maximum_size: int | None = None

    @property
    def name(self):
        return self.metadata.get("name")


@dataclass(frozen=True)
class DatasetState:
    """One node's report of a dataset; primary and path appear once it is usable there."""

    dataset_id: str
    primary: str | None = None
    path: str | None = None
    maximum_size: int | None = None


@dataclass(frozen=True)
class Node:
    uuid: str
    host: str


@dataclass(frozen=True)
class Lease:
    dataset_id: str
    node_uuid: str
    expires: float | None  # seconds from now; None = never


@dataclass(frozen=True)
class Holder:
    """The node holding a dataset's lease, and what its latest report says uses it."""

    node_uuid: str
    host: str | None
    users: tuple = ()


@dataclass(frozen=True)
class Claim:
    """The control service's answer to a claim on a name (POST /v1/configuration/claims).

    status is "ready" (path and lease set: usable here, leased to the claimant),
    "creating" or "moving" (ask again); a move names its source and progress, and
    stalled/error say that its sender gave up."""

    status: str
    dataset_id: str
    generation: int
    path: str | None = None
    lease: Lease | None = None
    source: Node | None = None
    bytes_done: int = 0
    bytes_total: int | None = None
    stalled: bool = False
    error: str | None = None


@dataclass(frozen=True)
class Trashed:
    """A deleted dataset's data a node keeps in its trash (GET /v1/state/trash, beyond
    Flocker). Times are the node's clock, in seconds since the epoch."""

    dataset_id: str
    node_uuid: str
    host: str | None
    name: str | None
    deleted: bool | None      # the dataset's configuration says so (None: not configured)
    deleted_at: float
    expires_at: float
    bytes: int


@dataclass(frozen=True)
class Configuration:
    tag: str | None  # X-Configuration-Tag; None when the service does not send one
    datasets: list


class FlockerAPIError(Exception):
    """The control service answered a request with an error status."""

    def __init__(self, code, description):
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description


class BadRequest(FlockerAPIError):
    pass


class NotFound(FlockerAPIError):
    pass


class AlreadyExists(FlockerAPIError):
    """409: a dataset with that id exists, another node holds the lease, or a lease was
    asked for by a node that is not the dataset's primary."""


class HeldElsewhere(AlreadyExists):
    """409: another node holds the dataset's lease; holder says which and its users."""

    def __init__(self, code, description, holder):
        super().__init__(code, description)
        self.holder = holder


class ClaimedElsewhere(AlreadyExists):
    """409: a claim asked again with a generation found the dataset moved to another node
    (claimant, a Node) in the meantime."""

    def __init__(self, code, description, claimant):
        super().__init__(code, description)
        self.claimant = claimant


class DatasetDeleted(FlockerAPIError):
    pass


class ConfigurationChanged(FlockerAPIError):
    """412: X-If-Configuration-Matches named a tag that is no longer current."""


class ControlServiceUnreachable(Exception):
    """No answer from the control service: refused, timed out or cut off."""

    def __init__(self, url, reason):
        super().__init__(f"cannot reach the control service at {url}: {reason}")
        self.url = url
        self.reason = reason


class IFlockerAPI(Interface):
    """The part of Flocker's v1 REST API that powerstrip-flocker uses. Every call returns
    a Deferred; errors are FlockerAPIError subclasses or ControlServiceUnreachable."""

    def version():
        """Fires with the control service's version string."""

    def list_datasets_configuration():
        """Fires with a Configuration: its tag and every DatasetConfig, deleted included."""

    def create_dataset(primary, metadata=None, maximum_size=None, dataset_id=None,
                       if_configuration_matches=None):
        """Fires with the new DatasetConfig."""

    def move_dataset(dataset_id, primary, if_configuration_matches=None):
        """Sets the dataset's primary; fires with the updated DatasetConfig."""

    def delete_dataset(dataset_id, if_configuration_matches=None):
        """Marks the dataset deleted; fires with its DatasetConfig."""

    def datasets_named(name):
        """Fires with a Configuration: its tag and the DatasetConfigs named name (deleted
        ones too), without reading the rest of the cluster."""

    def claim(name, node_uuid, expires=30.0, maximum_size=None, create=True,
              generation=None, replicas=None):
        """Asks the control service to make the volume name usable on node_uuid, decided
        there in one transaction: create it there (when create, else NotFound), move it
        there, or, once it is there, lease it to node_uuid for expires seconds. Fires with
        a Claim; fails with HeldElsewhere while another node holds its lease. generation:
        asking again about the Claim of that generation; fails with ClaimedElsewhere if
        another node has moved the dataset away since. replicas: the copies besides the
        primary a volume the claim creates keeps (its metadata's "replicas"; None: the
        cluster's default); BadRequest unless 0 to MAX_REPLICAS."""

    def list_datasets_state(dataset_id=None):
        """Fires with the list of DatasetState the nodes report (of one dataset if
        dataset_id is given)."""

    def list_nodes():
        """Fires with the list of Node that have reported state."""

    def node_by_era(era):
        """Fires with the UUID of the node whose agent run is era (a UUID new at each
        agent start); NotFound until that agent has reported."""

    def list_leases():
        """Fires with the list of Lease."""

    def acquire_lease(dataset_id, node_uuid, expires, new_user=False):
        """Acquires or renews a lease; fires with the Lease. new_user: a container
        started using the dataset on node_uuid since the last renewal (so the claims
        made before now are used; see leases.py)."""

    def release_lease(dataset_id, node_uuid=None):
        """Releases the lease; fires with the released Lease. With node_uuid, the
        holder says its use ended: a later claim may keep the lease a while (the Lease
        fired with then has its remaining expiry)."""
