"""Leases: acquire, renew, release, expiry on the service's clock, persistence."""

from twisted.trial.unittest import TestCase

from .helpers import NODE1, NODE2, at_once, harness, new_id

LEASES = "/v1/configuration/leases"
DATASETS = "/v1/configuration/datasets"


class LeaseTests(TestCase):

    def setUp(self):
        self.h = harness(self)

    async def acquire(self, dataset_id, node, expires):
        return await self.h.request(
            "POST", LEASES, {"dataset_id": dataset_id, "node_uuid": node, "expires": expires})

    async def test_acquire_then_renew_then_other_node_conflicts(self):
        dataset_id = new_id()
        response, body = await self.acquire(dataset_id, NODE1, 60)
        self.assertEqual(response.code, 201)
        self.assertEqual(body, {"dataset_id": dataset_id, "node_uuid": NODE1, "expires": 60.0})
        response, body = await self.acquire(dataset_id.upper(), NODE1, None)
        self.assertEqual(response.code, 200)
        self.assertEqual(body["expires"], None)
        await self.h.report(NODE1, [{"dataset_id": dataset_id, "path": "/a",
                                     "users": ["web"]}], host="10.0.0.1")
        response, body = await self.acquire(dataset_id, NODE2, None)
        self.assertEqual((response.code, body), (409, {
            "description": f"dataset {dataset_id} is in use on 10.0.0.1 (node {NODE1}, "
                           f"container web); stop it there first",
            "holder": {"node_uuid": NODE1, "host": "10.0.0.1", "users": ["web"]},
        }))

    async def test_lease_needs_no_dataset_or_node(self):
        response, _ = await self.acquire(new_id(), new_id(), 1)
        self.assertEqual(response.code, 201)

    async def test_expires_counts_down_and_the_lease_expires_on_the_sweep(self):
        dataset_id = new_id()
        await self.acquire(dataset_id, NODE1, 10)
        tag = self.h.store.configuration_tag()
        generation = self.h.service.generation
        self.h.clock.advance(4)
        response, body = await self.h.request("GET", LEASES)
        self.assertEqual(body, [{"dataset_id": dataset_id, "node_uuid": NODE1, "expires": 6.0}])
        self.h.clock.advance(5)
        self.assertEqual(len(self.h.store.leases()), 1)
        self.assertEqual(self.h.service.generation, generation)
        self.h.clock.advance(1)
        response, body = await self.h.request("GET", LEASES)
        self.assertEqual(body, [])
        self.assertNotEqual(self.h.store.configuration_tag(), tag)
        self.assertEqual(self.h.service.generation, generation + 1)
        # Another node may now take it.
        response, _ = await self.acquire(dataset_id, NODE2, None)
        self.assertEqual(response.code, 201)

    async def test_permanent_lease_never_expires(self):
        await self.acquire(new_id(), NODE1, None)
        self.h.clock.pump([3600] * 48)
        self.assertEqual(len(self.h.store.leases()), 1)

    async def test_renewal_replaces_the_expiry(self):
        dataset_id = new_id()
        await self.acquire(dataset_id, NODE1, 5)
        self.h.clock.advance(4)
        await self.acquire(dataset_id, NODE1, 5)
        self.h.clock.pump([1] * 4)
        self.assertEqual(len(self.h.store.leases()), 1)
        self.h.clock.pump([1] * 2)
        self.assertEqual(self.h.store.leases(), [])

    async def test_release_returns_the_lease_and_anyone_may_release(self):
        dataset_id = new_id()
        await self.acquire(dataset_id, NODE1, 100)
        self.h.clock.advance(30)
        response, body = await self.h.request("DELETE", f"{LEASES}/{dataset_id.upper()}")
        self.assertEqual(response.code, 200)
        self.assertEqual(body, {"dataset_id": dataset_id, "node_uuid": NODE1, "expires": 70.0})
        response, body = await self.h.request("DELETE", f"{LEASES}/{dataset_id}")
        self.assertEqual((response.code, body), (404, {"description": "Lease not found."}))

    async def test_leases_and_their_expiry_survive_a_restart(self):
        forever, soon = new_id(), new_id()
        await self.acquire(forever, NODE1, None)
        await self.acquire(soon, NODE2, 20)
        self.h.clock.advance(5)
        self.h.restart()
        response, body = await self.h.request("GET", LEASES)
        self.assertEqual(sorted(body, key=lambda l: l["node_uuid"] == NODE2), [
            {"dataset_id": forever, "node_uuid": NODE1, "expires": None},
            {"dataset_id": soon, "node_uuid": NODE2, "expires": 15.0},
        ])
        self.h.clock.pump([1] * 16)
        response, body = await self.h.request("GET", LEASES)
        self.assertEqual([l["dataset_id"] for l in body], [forever])

    async def test_a_lease_is_refused_to_a_node_that_is_not_the_primary(self):
        dataset = await self.h.create(primary=NODE1)
        await self.h.report(NODE1, [], host="10.0.0.1")
        before = self.h.snapshot()
        response, body = await self.acquire(dataset["dataset_id"], NODE2, 30)
        self.assertEqual((response.code, body), (409, {
            "description": f"dataset {dataset['dataset_id']}'s primary is node "
                           f"{NODE1} (10.0.0.1), not {NODE2}"}))
        self.assertEqual(self.h.snapshot(), before)
        response, _ = await self.acquire(dataset["dataset_id"], NODE1, 30)
        self.assertEqual(response.code, 201)

    async def test_a_lease_on_a_dataset_moved_away_is_refused_to_the_old_primary(self):
        dataset = await self.h.create(primary=NODE1)
        await self.h.request("POST", f"{DATASETS}/{dataset['dataset_id']}", {"primary": NODE2})
        response, body = await self.acquire(dataset["dataset_id"], NODE1, 30)
        self.assertEqual(response.code, 409)
        self.assertIn("primary is node " + NODE2, body["description"])

    async def test_a_move_of_a_dataset_leased_elsewhere_is_refused_and_changes_nothing(self):
        """Departs from Flocker, which accepted the move and let agents wait."""
        dataset = await self.h.create(primary=NODE1)
        await self.acquire(dataset["dataset_id"], NODE1, None)
        await self.h.report(NODE1, [{"dataset_id": dataset["dataset_id"], "path": "/a",
                                     "users": ["web", "db"]}], host="10.0.0.1")
        before = self.h.snapshot()
        response, body = await self.h.request(
            "POST", f"{DATASETS}/{dataset['dataset_id']}", {"primary": NODE2})
        self.assertEqual((response.code, body), (409, {
            "description": f"dataset {dataset['dataset_id']} is in use on 10.0.0.1 "
                           f"(node {NODE1}, container web, container db); stop it there first",
            "holder": {"node_uuid": NODE1, "host": "10.0.0.1", "users": ["web", "db"]},
        }))
        self.assertEqual(self.h.snapshot(), before)

    async def test_a_move_to_the_lease_holder_is_accepted(self):
        dataset_id = new_id()
        await self.acquire(dataset_id, NODE2, None)
        await self.h.create(primary=NODE1, dataset_id=dataset_id)
        response, body = await self.h.request(
            "POST", f"{DATASETS}/{dataset_id}", {"primary": NODE2})
        self.assertEqual((response.code, body["primary"]), (200, NODE2))

    async def test_a_delete_of_a_leased_dataset_is_refused_even_by_its_holder(self):
        dataset = await self.h.create(primary=NODE1)
        await self.acquire(dataset["dataset_id"], NODE1, 10)
        before = self.h.snapshot()
        response, body = await self.h.request("DELETE", f"{DATASETS}/{dataset['dataset_id']}")
        self.assertEqual(response.code, 409)
        self.assertEqual(body["holder"], {"node_uuid": NODE1, "host": None, "users": []})
        self.assertIn("is in use on a node that is not reporting", body["description"])
        self.assertEqual(self.h.snapshot(), before)
        self.h.clock.advance(10)
        response, body = await self.h.request("DELETE", f"{DATASETS}/{dataset['dataset_id']}")
        self.assertEqual((response.code, body["deleted"]), (200, True))

    async def test_an_expired_lease_refuses_nothing_even_before_the_sweep(self):
        dataset = await self.h.create(primary=NODE1)
        await self.acquire(dataset["dataset_id"], NODE1, 0.5)
        at_once(self.h.service.stop())  # no sweep: the expiry alone must count
        self.h.clock.advance(0.6)
        response, body = await self.h.request(
            "POST", f"{DATASETS}/{dataset['dataset_id']}", {"primary": NODE2})
        self.assertEqual((response.code, body["primary"]), (200, NODE2))

    async def test_each_change_of_primary_raises_the_generation(self):
        dataset = await self.h.create(primary=NODE1)
        path = f"{DATASETS}/{dataset['dataset_id']}"
        generations = [self.h.store.get_dataset(dataset["dataset_id"]).generation]
        for primary in (NODE2, NODE2, NODE1):
            await self.h.request("POST", path, {"primary": primary})
            generations.append(self.h.store.get_dataset(dataset["dataset_id"]).generation)
        self.assertEqual(generations, [1, 2, 2, 3])
