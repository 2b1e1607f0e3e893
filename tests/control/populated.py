"""A control service's store with a bit of everything in it, made through its v1 API and
agent protocol, for the migrate tests."""

from .helpers import NODE1, NODE2, new_id

DATASETS = "/v1/configuration/datasets"


async def populate(h, count=6):
    """Fill Harness h's store: datasets with metadata and sizes, one moved (generation
    2), one deleted (in the trash), one with a replica node, manifested ones, leases with and without an expiry,
    a claim's lease, and both nodes' reports. Returns the ids made, oldest first."""
    ids = []
    for number in range(count):
        fields = {"metadata": {"name": f"volume{number}", "owner": "migrate"}}
        if number % 2:
            fields["maximum_size"] = 67108864 * number
        ids.append((await h.create(primary=NODE1, dataset_id=new_id(), **fields))["dataset_id"])
    # A claim of a new name creates its dataset; once the node reports it, the next
    # claim holds it with a lease and a claim.
    claimed = await _ok(h, "POST", "/v1/configuration/claims",
                        {"name": "claimed", "node_uuid": NODE1})
    ids.append(claimed["dataset_id"])
    await h.report(NODE1, [{"dataset_id": ids[0], "path": "/srv/a"},
                           {"dataset_id": ids[1], "path": "/srv/b"},
                           {"dataset_id": claimed["dataset_id"], "path": "/srv/c"}],
                   host="10.0.0.1")
    await h.report(NODE2, [], host="10.0.0.2")
    await _ok(h, "POST", f"{DATASETS}/{ids[2]}", {"primary": NODE2})
    await _ok(h, "DELETE", f"{DATASETS}/{ids[3]}")
    await _ok(h, "POST", "/v1/configuration/leases",
              {"dataset_id": ids[0], "node_uuid": NODE1, "expires": 300})
    await _ok(h, "POST", "/v1/configuration/leases",
              {"dataset_id": ids[1], "node_uuid": NODE1, "expires": None})
    await _ok(h, "POST", "/v1/configuration/claims", {"name": "claimed", "node_uuid": NODE1})
    # The nodes chosen for replicas, as the sweep would choose them.
    h.store.set_replica_nodes(ids[0], [NODE2])
    return ids


async def _ok(h, method, path, body=None):
    response, answer = await h.request(method, path, body)
    assert response.code in (200, 201, 202), (method, path, response.code, answer)
    return answer
