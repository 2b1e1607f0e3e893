"""IFlockerAPI in memory: a control service with agents that converge on a clock, for
tests. Trusted because the contract tests (tests/flocker_contract.py) pass against it
and against the real control service."""

import hashlib
import json
import re
import uuid
from dataclasses import replace

from twisted.internet.defer import fail, succeed
from twisted.internet.task import deferLater
from zope.interface import implementer

from powerstripflocker.clients.flocker import (
    MAX_REPLICAS, MINIMUM_SIZE, REPLICAS_KEY, AlreadyExists, BadReplicaCount, BadRequest,
    Claim, ClaimedElsewhere, Configuration,
    ConfigurationChanged, ControlServiceUnreachable, DatasetConfig, DatasetDeleted,
    DatasetState, HeldElsewhere, Holder, IFlockerAPI, Lease, Node, NotFound,
    parse_replica_count,
)
from powerstripflocker.protocol.ids import is_uuid4
from powerstripflocker.protocol.leases import after_use_ended, granted, still_claimed

_VOLUME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}\Z")
LONGEST_CLAIM = 365 * 24 * 3600
SCHEMA_MISMATCH = "The provided JSON doesn't match the required schema."


def _check_dataset_id(dataset_id):
    if not is_uuid4(dataset_id):
        raise BadRequest(400, SCHEMA_MISMATCH)
    return dataset_id.lower()


def _check_maximum_size(maximum_size):
    if maximum_size is None:
        return
    if (isinstance(maximum_size, bool) or not isinstance(maximum_size, int)
            or maximum_size < MINIMUM_SIZE or maximum_size % 1024):
        raise BadRequest(400, SCHEMA_MISMATCH)


def _check_replicas(metadata):
    """The control service's check of a replica count in a new dataset's metadata."""
    if metadata and REPLICAS_KEY in metadata:
        try:
            parse_replica_count(metadata[REPLICAS_KEY])
        except BadReplicaCount as error:
            raise BadRequest(400, f"metadata {REPLICAS_KEY!r}: {error}") from None


def _check_claim(name, node_uuid, expires, create, replicas=None):
    """The control service's claim schema, for the fake."""
    if not isinstance(name, str) or not _VOLUME_NAME.match(name):
        raise BadRequest(400, SCHEMA_MISMATCH)
    _check_dataset_id(node_uuid)
    if (isinstance(expires, bool) or not isinstance(expires, (int, float))
            or not 0 < expires <= LONGEST_CLAIM):
        raise BadRequest(400, SCHEMA_MISMATCH)
    if not isinstance(create, bool):
        raise BadRequest(400, SCHEMA_MISMATCH)
    if replicas is not None and (isinstance(replicas, bool) or not isinstance(replicas, int)
                                 or not 0 <= replicas <= MAX_REPLICAS):
        raise BadRequest(400, SCHEMA_MISMATCH)


@implementer(IFlockerAPI)
class MemoryFlockerAPI:
    """An in-memory control service with agents that converge on a clock.

    A change schedules convergence convergence_delay seconds later on clock; with
    convergence_delay None state only changes when converge() is called. With a latency,
    calls are carried out in order on the clock, so concurrent callers interleave. State follows
    Flocker's agents: a dataset is placed on its configured primary unless it is leased
    to the node that holds it, and its path is stable across moves.
    """

    def __init__(self, clock, nodes=(), convergence_delay=0.0, latency=0.0):
        self._clock = clock
        self.nodes = list(nodes)
        self.convergence_delay = convergence_delay
        self.latency = latency  # > 0: each call is carried out and answered that much later
        self._pending_convergence = None
        self._datasets = {}
        self._leases = {}  # dataset_id -> (node_uuid, expiry time or None, claimed until)
        self._state = {}  # dataset_id -> node_uuid holding it
        self._generations = {}  # dataset_id -> generation (+1 on each change of primary)
        self._manifested = set()  # datasets state has ever shown
        self._users = {}  # dataset_id -> what its holder reports using it
        self._transfers = {}  # dataset_id -> Claim fields of the transfer to its primary
        self.eras = {}  # node_uuid -> the era of its agent run (add_node starts one)
        self.calls = []
        self.unreachable = None  # a reason string makes every call fail as unreachable

    def add_node(self, host):
        node = Node(str(uuid.uuid4()), host)
        self.nodes.append(node)
        self.eras[node.uuid] = str(uuid.uuid4())
        return node

    def set_users(self, dataset_id, users):
        """What the lease holder's report says uses the dataset (its containers)."""
        self._users[dataset_id] = list(users)

    def set_transfer(self, dataset_id, bytes_done, bytes_total=None, stalled=False,
                     error=None):
        """Progress of the move towards the dataset's primary, as its sender reports it;
        stalled and error: the sender gave up. State does not follow while it is set."""
        self._transfers[dataset_id] = {"bytes_done": bytes_done, "bytes_total": bytes_total,
                                       "stalled": stalled, "error": error}

    def _call(self, name, *args):
        self.calls.append((name, *args))
        if self.unreachable:
            return ControlServiceUnreachable("memory://control", self.unreachable)
        return None

    def _changed(self):
        if self.convergence_delay is not None and self._pending_convergence is None:
            self._pending_convergence = self._clock.callLater(
                self.convergence_delay, self.converge)

    def _expire_leases(self):
        now = self._clock.seconds()
        for dataset_id, (_, expiry, _) in list(self._leases.items()):
            if expiry is not None and expiry <= now:
                del self._leases[dataset_id]
                self._changed()

    def _tag(self):
        document = json.dumps(
            [[vars(d) for d in self._datasets.values()],
             sorted((k, v[0], v[1]) for k, v in self._leases.items())],
            sort_keys=True, default=str,
        )
        return hashlib.md5(document.encode()).hexdigest()

    def _check_tag(self, if_configuration_matches):
        current = self._tag()
        if if_configuration_matches is not None and if_configuration_matches != current:
            raise ConfigurationChanged(
                412, f"Tag doesn't match. Required: {if_configuration_matches}, "
                     f"current: {current}",
            )

    def converge(self):
        """Make state match configuration now, as agents would."""
        if self._pending_convergence is not None:
            if self._pending_convergence.active():
                self._pending_convergence.cancel()
            self._pending_convergence = None
        self._expire_leases()
        known_nodes = {node.uuid for node in self.nodes}
        for dataset in self._datasets.values():
            holder = self._state.get(dataset.dataset_id)
            leased_to = self._leases.get(dataset.dataset_id, (None,))[0]
            if holder is not None and leased_to == holder:
                continue
            if dataset.deleted:
                self._state.pop(dataset.dataset_id, None)
            elif dataset.primary in known_nodes and dataset.dataset_id not in self._transfers:
                self._state[dataset.dataset_id] = dataset.primary
                self._manifested.add(dataset.dataset_id)

    def _outcome(self, name, args, action):
        def carry_out():
            unreachable = self._call(name, *args)
            if unreachable is not None:
                return fail(unreachable)
            self._expire_leases()
            try:
                return succeed(action())
            except Exception as reason:
                return fail(reason)
        if not self.latency:
            return carry_out()
        return deferLater(self._clock, self.latency, carry_out)

    def version(self):
        return self._outcome("version", (), lambda: "1.15.0+powerstrip-flocker-memory")

    def list_datasets_configuration(self):
        return self._outcome(
            "list_datasets_configuration", (),
            lambda: Configuration(self._tag(), list(self._datasets.values())),
        )

    def create_dataset(self, primary, metadata=None, maximum_size=None, dataset_id=None,
                       if_configuration_matches=None):
        def create():
            self._check_tag(if_configuration_matches)
            new_id = str(uuid.uuid4()) if dataset_id is None else _check_dataset_id(dataset_id)
            _check_maximum_size(maximum_size)
            _check_replicas(metadata)
            if new_id in self._datasets:
                raise AlreadyExists(409, "The provided dataset_id is already in use.")
            return self._add(primary, metadata, maximum_size, new_id)
        return self._outcome("create_dataset", (primary, metadata), create)

    def _add(self, primary, metadata, maximum_size, dataset_id):
        dataset = DatasetConfig(dataset_id, primary, dict(metadata or {}), False, maximum_size)
        self._datasets[dataset_id] = dataset
        self._generations[dataset_id] = 1
        self._changed()
        return dataset

    def datasets_named(self, name):
        return self._outcome("datasets_named", (name,), lambda: Configuration(
            self._tag(), [d for d in self._datasets.values() if d.name == name]))

    def claim(self, name, node_uuid, expires=30.0, maximum_size=None, create=True,
              generation=None, replicas=None):
        def decide():
            _check_claim(name, node_uuid, expires, create, replicas)
            _check_maximum_size(maximum_size)
            self._expire_leases()
            candidates = [d for d in self._datasets.values() if d.name == name and not d.deleted]
            if not candidates:
                if not create:
                    raise NotFound(404, f"No dataset is named {name!r}.")
                metadata = {"name": name}
                if replicas is not None:
                    metadata[REPLICAS_KEY] = str(replicas)
                created = self._add(node_uuid, metadata, maximum_size, str(uuid.uuid4()))
                # From its first answer on, a claim holds the lease (the control service's
                # rule): another node asking meanwhile waits.
                self._grant(created.dataset_id, node_uuid, expires, claim=True)
                return Claim("creating", created.dataset_id, 1)
            dataset = min(candidates, key=lambda d: d.dataset_id)
            current = self._generations[dataset.dataset_id]
            if generation is not None and current != generation and (
                    dataset.primary != node_uuid):
                claimant = self._node(dataset.primary)
                raise ClaimedElsewhere(409, (
                    f"volume {name!r} was claimed by {claimant.host or 'node ' + claimant.uuid}"
                    f" (node {claimant.uuid}) while this node waited for it; run the "
                    f"container on one node at a time"), claimant)
            lease = self._leases.get(dataset.dataset_id)
            if lease is not None and lease[0] != node_uuid:
                raise self._held_elsewhere(f"volume {name!r}", dataset.dataset_id, name)
            if dataset.primary != node_uuid:
                self._set_primary(dataset, node_uuid)
                self._grant(dataset.dataset_id, node_uuid, expires, claim=True)
                return self._pending(dataset.dataset_id, dataset.primary)
            if lease is None or not still_claimed(self._clock.seconds(), expires, lease[1:]):
                self._grant(dataset.dataset_id, node_uuid, expires, claim=True)
            holder = self._state.get(dataset.dataset_id)
            if holder != node_uuid:
                return self._pending(dataset.dataset_id, holder)
            return Claim("ready", dataset.dataset_id, self._generations[dataset.dataset_id],
                         path=f"/flocker/{dataset.dataset_id}",
                         lease=self._lease_view(dataset.dataset_id))
        return self._outcome("claim", (name, node_uuid), decide)

    def _pending(self, dataset_id, source):
        generation = self._generations[dataset_id]
        if source is None and dataset_id not in self._manifested:
            return Claim("creating", dataset_id, generation)
        transfer = self._transfers.get(dataset_id, {"bytes_done": 0, "bytes_total": None})
        return Claim("moving", dataset_id, generation,
                     source=self._node(source) if source else None, **transfer)

    def _node(self, node_uuid):
        return next((n for n in self.nodes if n.uuid == node_uuid), Node(node_uuid, None))

    def _set_primary(self, dataset, primary):
        self._datasets[dataset.dataset_id] = replace(dataset, primary=primary)
        self._generations[dataset.dataset_id] += 1
        self._changed()
        return self._datasets[dataset.dataset_id]

    def _held_elsewhere(self, what, dataset_id, name=None):
        node_uuid = self._leases[dataset_id][0]
        holder = Holder(node_uuid, self._node(node_uuid).host,
                        tuple(self._users.get(dataset_id, ())))
        where = holder.host or "a node that is not reporting"
        if holder.users:
            using = ", ".join(f"container {user}" for user in holder.users)
            description = f"{what} is in use on {where} (node {node_uuid}, {using}); " \
                          f"stop it there first"
        else:
            description = (
                f"{what} is in use on {where} (node {node_uuid} holds the lease on dataset "
                f"{dataset_id}); stop its containers there first, or run 'powerstrip-flocker "
                f"release {name or dataset_id}' if that node is gone")
        return HeldElsewhere(409, description, holder)

    def _existing(self, dataset_id):
        dataset = self._datasets.get(str(dataset_id).lower())
        if dataset is None:
            raise NotFound(404, "Dataset not found.")
        return dataset

    def move_dataset(self, dataset_id, primary, if_configuration_matches=None):
        def move():
            self._check_tag(if_configuration_matches)
            dataset = self._existing(dataset_id)
            if dataset.deleted:
                raise DatasetDeleted(405, "The dataset has been deleted.")
            if primary == dataset.primary:
                return dataset
            lease = self._leases.get(dataset.dataset_id)
            if lease is not None and lease[0] != primary:
                raise self._held_elsewhere(f"dataset {dataset.dataset_id}", dataset.dataset_id)
            return self._set_primary(dataset, primary)
        return self._outcome("move_dataset", (dataset_id, primary), move)

    def delete_dataset(self, dataset_id, if_configuration_matches=None):
        def delete():
            self._check_tag(if_configuration_matches)
            dataset = self._existing(dataset_id)
            if dataset.deleted:
                return dataset
            if dataset.dataset_id in self._leases:
                raise self._held_elsewhere(f"dataset {dataset.dataset_id}", dataset.dataset_id)
            deleted = self._datasets[dataset.dataset_id] = replace(dataset, deleted=True)
            self._changed()
            return deleted
        return self._outcome("delete_dataset", (dataset_id,), delete)

    def list_datasets_state(self, dataset_id=None):
        def state():
            return [
                DatasetState(key, node_uuid, f"/flocker/{key}",
                             self._datasets[key].maximum_size)
                for key, node_uuid in self._state.items()
                if dataset_id is None or key == dataset_id.lower()
            ]
        arguments = () if dataset_id is None else (dataset_id,)
        return self._outcome("list_datasets_state", arguments, state)

    def list_nodes(self):
        return self._outcome("list_nodes", (), lambda: list(self.nodes))

    def node_by_era(self, era):
        def find():
            for node_uuid, node_era in self.eras.items():
                if node_era == era.lower():
                    return node_uuid
            raise NotFound(404, "No node found with given era.")
        return self._outcome("node_by_era", (era,), find)

    def _lease_view(self, dataset_id):
        node_uuid, expiry, _ = self._leases[dataset_id]
        remaining = None if expiry is None else expiry - self._clock.seconds()
        return Lease(dataset_id, node_uuid, remaining)

    def list_leases(self):
        return self._outcome(
            "list_leases", (), lambda: [self._lease_view(d) for d in self._leases]
        )

    def _grant(self, dataset_id, node_uuid, expires, claim=False, new_user=False):
        held = self._leases.get(dataset_id)
        existing = held[1:] if held is not None and held[0] == node_uuid else None
        self._leases[dataset_id] = (node_uuid, *granted(
            self._clock.seconds(), expires, existing, claim=claim, new_user=new_user))
        self._changed()

    def acquire_lease(self, dataset_id, node_uuid, expires, new_user=False):
        def acquire():
            key = _check_dataset_id(dataset_id)
            holder = self._leases.get(key)
            if holder is not None and holder[0] != node_uuid:
                raise self._held_elsewhere(f"dataset {key}", key)
            dataset = self._datasets.get(key)
            if dataset is not None and dataset.primary != node_uuid:
                primary = self._node(dataset.primary)
                named = f"{primary.uuid} ({primary.host})" if primary.host else primary.uuid
                raise AlreadyExists(
                    409, f"dataset {key}'s primary is node {named}, not {node_uuid}")
            self._grant(key, node_uuid, expires, new_user=new_user)
            return self._lease_view(key)
        return self._outcome("acquire_lease", (dataset_id, node_uuid, expires), acquire)

    def release_lease(self, dataset_id, node_uuid=None):
        def release():
            key = str(dataset_id).lower()
            self._expire_leases()
            if key not in self._leases:
                raise NotFound(404, "Lease not found.")
            holder, _, claimed_until = self._leases[key]
            if node_uuid is not None and holder != node_uuid:
                raise self._held_elsewhere(f"dataset {key}", key)
            kept = None if node_uuid is None else after_use_ended(self._clock.seconds(),
                                                                  claimed_until)
            if kept is not None:
                self._leases[key] = (holder, *kept)
                self._changed()
                return self._lease_view(key)
            released = self._lease_view(key)
            del self._leases[key]
            self._changed()
            return released
        return self._outcome("release_lease", (dataset_id,), release)
