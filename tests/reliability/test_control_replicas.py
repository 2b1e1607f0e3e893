"""Issue 14, must show: two control replicas on a three-member etcd cluster, 200
create/move hooks from the adapters of both nodes while one replica is killed -9 and
later the etcd leader. Every hook answers 200 or a clear refusal (the adapters' one
bounded failover is the only retry: the test sends each hook once); exactly one dataset
per name; the configuration read before the kills is all there after."""

import random
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

import pytest

from .replicas import ReplicatedCluster
from .support import pre_hook, volume_mounts, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.etcd]

HOOKS = 200
CONCURRENCY = 8
NAMES = [f"ha{i:02d}" for i in range(12)]
# The replica is killed after a third of the hooks answered, the etcd leader after two.
KILL_REPLICA_AFTER = HOOKS // 3
KILL_LEADER_AFTER = 2 * HOOKS // 3
# A hook's claim holds the volume for its node this long after the hook's last poll: a
# hook from the other node waits for it to lapse, then moves the volume (first come,
# first served). Short, so that the 200 hooks move volumes back and forth many times.
CLAIM_SECONDS = "2"
# Generous: a hook waits for claims of the other node to lapse, for a move and for an
# etcd election; only a hook that takes longer than this is answered 504.
HOOK_DEADLINE = 60
# The refusals the adapter gives a docker user when another node has the volume: 409
# with a message saying where (Powerstrip's error body, {"message": ...}).
CLEAR_REFUSALS = ("is in use on", "was claimed by")


def plan(seed=14):
    """[(index, node name, volume name)]: from either node at random, names from a
    bounded set, so a hook creates a volume, finds it here, or moves it here."""
    rng = random.Random(seed)
    return [(index, rng.choice(("node1", "node2")), rng.choice(NAMES))
            for index in range(HOOKS)]


class Outcome:
    """One hook's answer, and when it came (for the order of answers per name)."""

    def __init__(self, index, node, name, status, answer, sent, answered):
        self.index, self.node, self.name = index, node, name
        self.status, self.answer = status, answer
        self.sent, self.answered = sent, answered

    def clear_refusal(self):
        message = self.answer.get("message", "") if isinstance(self.answer, dict) else ""
        return self.status == 409 and any(words in message for words in CLEAR_REFUSALS)

    def __repr__(self):
        return f"<hook {self.index} {self.node} {self.name}: {self.status} {self.answer}>"


def send(cluster, index, node, name):
    adapter = cluster.adapters[f"adapter-{node}"]
    sent = time.monotonic()
    try:
        status, answer = adapter.hook(
            pre_hook([name], f"/v1.41/containers/create?name=c{index}"),
            timeout=HOOK_DEADLINE + 30)
    except Exception as error:  # the hook's own connection failed: a failure to report
        status, answer = None, repr(error)
    return Outcome(index, node, name, status, answer, sent, time.monotonic())


def moves_by_phase(outcomes):
    """[moves before the replica's kill, before the leader's, after]: 200s, in the order
    they were answered, for a name whose previous 200 was on the other node."""
    phases = [0, 0, 0]
    where = {}
    for position, outcome in enumerate(outcomes):
        if outcome.status != 200:
            continue
        if where.get(outcome.name, outcome.node) != outcome.node:
            phases[(position >= KILL_REPLICA_AFTER) + (position >= KILL_LEADER_AFTER)] += 1
        where[outcome.name] = outcome.node
    return phases


def live_by_id(datasets):
    return {d["dataset_id"]: d for d in datasets if not d.get("deleted")}


def without_primary(dataset):
    return {key: value for key, value in dataset.items() if key != "primary"}


@pytest.fixture
def replicated(tmp_path):
    cluster = ReplicatedCluster(str(tmp_path), replicas=2)
    try:
        cluster.start_control()
        for node in ("node1", "node2"):
            agent = cluster.add_agent(node, str(tmp_path / node))
            cluster.add_adapter(f"adapter-{node}", agent, timeout=HOOK_DEADLINE,
                                options=["--claim-seconds", CLAIM_SECONDS])
        yield cluster
    finally:
        cluster.stop()


def test_hooks_from_both_nodes_survive_a_killed_replica_and_etcd_leader(replicated):
    cluster = replicated
    uuids = {name: agent.uuid for name, agent in cluster.agents.items()}
    # Every client asks the replica first in its list and sticks to it: first is killed.
    first, second = cluster.replicas
    killed = {}
    snapshot = {}
    outcomes = []

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
        futures = [pool.submit(send, cluster, *hook) for hook in plan()]
        for future in as_completed(futures):
            outcomes.append(future.result())
            if len(outcomes) == KILL_REPLICA_AFTER:
                snapshot["tag"], snapshot["datasets"] = cluster.configuration(first)
                killed["replica"] = cluster.kill_replica(first)
                killed["replica_at"] = time.monotonic() - started
            elif len(outcomes) == KILL_LEADER_AFTER:
                killed["etcd"] = cluster.etcd.kill_leader()
                killed["etcd_at"] = time.monotonic() - started
    seconds = time.monotonic() - started

    ok = [o for o in outcomes if o.status == 200]
    refused = [o for o in outcomes if o.clear_refusal()]
    failed = [o for o in outcomes if o.status != 200 and not o.clear_refusal()]
    phases = moves_by_phase(outcomes)
    print(f"\n[figures] control replicas: {HOOKS} hooks at concurrency {CONCURRENCY} in "
          f"{seconds:.1f}s: {len(ok)} answered 200, {len(refused)} refused clearly, "
          f"{len(failed)} failed; {killed['replica'].name} killed -9 at "
          f"{killed['replica_at']:.1f}s, etcd leader {killed['etcd'].name} at "
          f"{killed['etcd_at']:.1f}s; moves answered 200 before, between and after the "
          f"kills: {phases}; slowest hook {max(o.answered - o.sent for o in outcomes):.1f}s")
    assert not failed, f"{len(failed)} hooks failed: {failed[:5]}\n{cluster.logs()}"
    assert len(outcomes) == HOOKS
    # The kills came while volumes were moving back and forth, not after the last move.
    assert all(phases), phases

    # Exactly one dataset per name, read through the replica that survived.
    _, datasets = cluster.configuration(second)
    live = live_by_id(datasets)
    names = sorted(d["metadata"].get("name") for d in live.values())
    assert names == sorted({o.name for o in outcomes}), names
    by_name = {d["metadata"]["name"]: d for d in live.values()}

    # Each 200 is this hook's own answer, with the volume bound from its node's copy.
    for outcome in ok:
        request = outcome.answer["ModifiedClientRequest"]["Request"]
        assert request.endswith(f"?name=c{outcome.index}"), outcome
        _, mounts = volume_mounts(outcome.answer)
        path = cluster.agents[outcome.node].path(by_name[outcome.name]["dataset_id"])
        assert mounts == [f"{path}:/data0"], outcome

    # Nothing configured before the kills was lost: each dataset is there with the same
    # id, name and everything else; its primary is the node whose hook for that name was
    # answered 200 last (only the test's own moves moved it).
    before = live_by_id(snapshot["datasets"])
    assert before, "nothing was configured before the kills"
    for dataset_id, dataset in before.items():
        assert dataset_id in live, (dataset, sorted(live))
        assert without_primary(live[dataset_id]) == without_primary(dataset)
    for name, dataset in by_name.items():
        last = max((o for o in ok if o.name == name), key=lambda o: o.answered, default=None)
        if last is not None:
            assert dataset["primary"] == uuids[last.node], (name, dataset, last)

    # The killed replica, started again, serves the same configuration as the survivor
    # (once the hooks' claims lapsed: a lease is part of the configuration's tag).
    cluster.restart_replica(first)
    wait_for(lambda: cluster.api("GET", "/configuration/leases", replica=second) == [],
             what="the hooks' claims to lapse", on_timeout=cluster.logs)
    assert cluster.configuration(first) == cluster.configuration(second)
