"""Claims against the real `powerstripflocker control` process, many clients at once."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from .helpers import NODE1, NODE2
from .test_command_integration import control  # noqa: F401 (the fixture)

pytestmark = pytest.mark.integration

CLIENTS = 40


def at_once(calls):
    """Run every call from its own thread, all released together; their results."""
    barrier = threading.Barrier(len(calls))

    def run(call):
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def claim(service, name, node, **fields):
    return lambda: service.request(
        "POST", "/v1/configuration/claims", dict(fields, name=name, node_uuid=node))[:2]


def test_two_nodes_claiming_one_new_name_at_once_make_exactly_one_dataset(control):  # noqa: F811
    service = control().start()
    answers = at_once([claim(service, "shared", NODE1 if i % 2 else NODE2)
                       for i in range(CLIENTS)])
    assert {code for code, _ in answers} <= {202, 409}, answers
    code, named, _ = service.request("GET", "/v1/configuration/datasets?name=shared")
    assert code == 200 and len(named) == 1, named
    assert {body["dataset_id"] for code, body in answers if code == 202} == {
        named[0]["dataset_id"]}
    # The first claim holds the lease: the other node waits rather than taking it.
    assert {body["holder"]["node_uuid"] for code, body in answers if code == 409} <= {
        named[0]["primary"]}


def test_a_claim_racing_moves_never_leaves_a_lease_away_from_the_primary(control):  # noqa: F811
    service = control().start()
    code, dataset, _ = service.request("POST", "/v1/configuration/datasets", {
        "primary": NODE1, "metadata": {"name": "raced"}})
    assert code == 201
    dataset_id = dataset["dataset_id"]
    code, _, _ = service.request("PUT", f"/agent/v1/nodes/{NODE1}", {
        "host": "127.0.0.1", "agent_url": "http://127.0.0.1:1",
        "datasets": [{"dataset_id": dataset_id, "path": "/srv/raced"}]})
    assert code == 200

    def move():
        return service.request("POST", f"/v1/configuration/datasets/{dataset_id}",
                               {"primary": NODE2})[:2]

    answers = at_once([claim(service, "raced", NODE1) if i % 2 else move
                       for i in range(CLIENTS)])
    assert {code for code, _ in answers} <= {200, 202, 409}, answers
    _, leases, _ = service.request("GET", "/v1/configuration/leases")
    _, [final], _ = service.request("GET", "/v1/configuration/datasets?name=raced")
    for lease in leases:
        assert lease["node_uuid"] == final["primary"], (leases, final)
    if any(body.get("status") == "ready" for _, body in answers):
        assert [lease["node_uuid"] for lease in leases] == [NODE1]
        code, body = move()
        assert code == 409 and body["holder"]["node_uuid"] == NODE1
