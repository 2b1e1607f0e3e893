"""1000 hooks at concurrency 50 against a real adapter, control service and agents."""

import re
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from .support import MiB, pre_hook, volume_mounts

pytestmark = pytest.mark.integration

HOOKS = 1000
CONCURRENCY = 50
NAMES = [f"load{i:02d}" for i in range(50)]
MOVED = NAMES[:10]
# The adapter's VmHWM after one hook is about 62 MiB here (Python, Twisted, treq, Klein,
# prometheus_client); 1000 hooks added about 5 MiB in our runs.
# One hook in flight holds a few KiB (its body, one configuration and one state document of
# <= 50 datasets); 50 in flight, well under 1 MiB. A leak of one state document per hook
# (~10 KiB) would add ~10 MiB over 1000 hooks. So: idle + 40 MiB catches a per-hook leak or
# unbounded buffering, and is generous enough for allocator noise.
GROWTH_BOUND = 40 * MiB


def names_of(i):
    """Hook i names one or two volumes of the bounded set, in a varying order."""
    first = NAMES[i % len(NAMES)]
    if i % 3:
        return [first]
    return [first, NAMES[(i * 7 + 3) % len(NAMES)]]


def fire(adapter, hooks, concurrency):
    """[(index, status, answer)] of every hook, fired concurrency at a time."""
    def one(index_and_names):
        index, names = index_and_names
        status, answer = adapter.hook(pre_hook(names, f"/v1.41/containers/create?name=c{index}"),
                                      timeout=120)
        return index, names, status, answer
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(one, hooks))


def hook_counts(adapter):
    with urllib.request.urlopen(adapter.url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return {m.group(1): float(m.group(2)) for m in re.finditer(
        r'^powerstrip_flocker_hooks_total\{outcome="(\w+)",type="pre-hook"\} (\S+)$', text,
        re.M)}


def check_answers(cluster, results, agent):
    """Every hook answered 200, its own, each bind pointing at the state path on agent."""
    states = {s["dataset_id"]: s for s in cluster.api("GET", "/state/datasets")}
    by_name = {d["metadata"]["name"]: d for d in cluster.api("GET", "/configuration/datasets")
               if not d.get("deleted")}
    failures = [(i, status, answer) for i, _, status, answer in results if status != 200]
    assert not failures, failures[:5]
    assert sorted(i for i, *_ in results) == list(range(len(results)))
    for index, names, _, answer in results:
        assert answer["ModifiedClientRequest"]["Request"].endswith(f"?name=c{index}")
        plain, mounts = volume_mounts(answer)
        assert plain == ["/srv/plain:/plain:ro"]
        assert len(mounts) == len(names)
        for position, name in enumerate(names):
            state = states[by_name[name]["dataset_id"]]
            assert state["primary"] == agent.uuid, (name, state)
            assert mounts[position] == f"{state['path']}:/data{position}"
    return by_name


def test_a_thousand_hooks_at_concurrency_fifty_are_all_answered_once(make_cluster):
    cluster = make_cluster()
    node1, node2 = cluster.agents["node1"], cluster.agents["node2"]
    adapter = cluster.add_adapter("adapter1", node1, timeout=60)
    status, _ = adapter.hook(pre_hook(["warmup"]))
    assert status == 200
    idle = adapter.peak_rss()

    started = time.monotonic()
    results = fire(adapter, [(i, names_of(i)) for i in range(HOOKS)], CONCURRENCY)
    seconds = time.monotonic() - started
    by_name = check_answers(cluster, results, node1)
    # exactly one dataset per name: none lost, none duplicated
    configured = [d for d in cluster.api("GET", "/configuration/datasets")
                  if not d.get("deleted")]
    assert sorted(d["metadata"]["name"] for d in configured) == sorted(NAMES + ["warmup"])
    assert len(cluster.api("GET", "/state/datasets")) == len(NAMES) + 1
    assert hook_counts(adapter) == {"ok": HOOKS + 1}
    peak = adapter.peak_rss()

    # then 200 hooks from node2 for 10 of them, at once: each moves exactly once
    adapter2 = cluster.add_adapter("adapter2", node2, timeout=60)
    moved = fire(adapter2, [(i, [MOVED[i % len(MOVED)]]) for i in range(200)], CONCURRENCY)
    check_answers(cluster, moved, node2)
    after = {d["metadata"]["name"]: d for d in cluster.api("GET", "/configuration/datasets")
             if not d.get("deleted")}
    assert {name: d["dataset_id"] for name, d in after.items()} == \
        {name: d["dataset_id"] for name, d in by_name.items()}
    assert sum(1 for h in node2.metrics()["history"] if h["result"] == "received") == \
        len(MOVED)
    print(f"\n[figures] load: {HOOKS} hooks at concurrency {CONCURRENCY} in {seconds:.1f}s "
          f"({HOOKS / seconds:.0f}/s); adapter VmHWM idle {idle / MiB:.1f} MiB, after "
          f"{peak / MiB:.1f} MiB; 200 hooks on node2 moved {len(MOVED)} volumes")
    assert peak - idle < GROWTH_BOUND, f"adapter VmHWM {idle / MiB:.1f} -> {peak / MiB:.1f} MiB"
