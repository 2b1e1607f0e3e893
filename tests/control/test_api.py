"""The v1 API's answers: Flocker's shapes, validated against the published schema."""

from twisted.trial.unittest import TestCase

from .helpers import NODE1, NODE2, flocker_schema, harness, header, new_id

SCHEMA = flocker_schema()


class SchemaChecks:
    def assertValid(self, definition, document):
        if SCHEMA is None:
            return
        errors = [e.message for e in SCHEMA(definition).iter_errors(document)]
        self.assertEqual(errors, [], f"{definition}: {document}")


class PublishedSchemaTests(TestCase, SchemaChecks):
    """Every endpoint's successful answer validates against Flocker's published schema."""

    def setUp(self):
        if SCHEMA is None:
            self.skipTest("../shared/reference/flocker-schema/ is absent")
        self.h = harness(self)

    async def test_every_endpoint_answers_schema_valid_bodies(self):
        h = self.h
        response, body = await h.request("GET", "/v1/version")
        self.assertEqual(response.code, 200)
        self.assertValid("versions", body)

        sized = await h.create(metadata={"name": "demo"}, maximum_size=64 * 1024 * 1024)
        self.assertValid("configuration_datasets", sized)
        plain = await h.create(primary=NODE2)
        self.assertValid("configuration_datasets", plain)
        self.assertNotIn("maximum_size", plain)

        response, body = await h.request(
            "POST", f"/v1/configuration/datasets/{plain['dataset_id']}", {"primary": NODE1}
        )
        self.assertEqual(response.code, 200)
        self.assertValid("configuration_datasets", body)
        response, body = await h.request(
            "DELETE", f"/v1/configuration/datasets/{plain['dataset_id']}"
        )
        self.assertEqual(response.code, 200)
        self.assertValid("configuration_datasets", body)

        response, body = await h.request("GET", "/v1/configuration/datasets")
        self.assertEqual(response.code, 200)
        self.assertValid("configuration_datasets_list", body)
        self.assertEqual(len(body), 2)

        await h.report(NODE1, [
            {"dataset_id": sized["dataset_id"], "path": "/data/a", "maximum_size": 67108864},
            {"dataset_id": plain["dataset_id"], "path": "/data/b", "maximum_size": None},
        ], host="10.0.0.1")
        await h.report(NODE2, [], host="10.0.0.2")
        response, body = await h.request("GET", "/v1/state/datasets")
        self.assertEqual(response.code, 200)
        self.assertValid("state_datasets_array", body)
        self.assertEqual(len(body), 2)
        response, body = await h.request("GET", "/v1/state/nodes")
        self.assertEqual(response.code, 200)
        self.assertValid("nodes_array", body)
        self.assertEqual(len(body), 2)

        response, body = await h.request("POST", "/v1/configuration/leases", {
            "dataset_id": sized["dataset_id"], "node_uuid": NODE1, "expires": 10.5})
        self.assertEqual(response.code, 201)
        self.assertValid("lease", body)
        response, body = await h.request("POST", "/v1/configuration/leases", {
            "dataset_id": new_id(), "node_uuid": NODE2, "expires": None})
        self.assertValid("lease", body)
        response, body = await h.request("GET", "/v1/configuration/leases")
        self.assertEqual(response.code, 200)
        self.assertValid("list_leases", body)
        self.assertEqual(len(body), 2)
        response, body = await h.request(
            "DELETE", f"/v1/configuration/leases/{sized['dataset_id']}")
        self.assertEqual(response.code, 200)
        self.assertValid("lease", body)

    async def test_a_node_is_found_by_the_era_its_agent_reports(self):
        h = self.h
        era, later = new_id(), new_id()

        async def report(node, host, era):
            response, _ = await h.request("PUT", f"/agent/v1/nodes/{node}", {
                "host": host, "agent_url": f"http://{host}:4524", "datasets": [], "era": era})
            self.assertEqual(response.code, 200)

        await report(NODE1, "10.0.0.1", era)
        await report(NODE2, "10.0.0.2", later)
        for asked, node in [(era, NODE1), (era.upper(), NODE1), (later, NODE2)]:
            response, body = await h.request("GET", f"/v1/state/nodes/by_era/{asked}")
            self.assertEqual((response.code, body), (200, {"uuid": node}))
            self.assertValid("node", body)
        unknown = (404, {"description": "No node found with given era."})
        await report(NODE1, "10.0.0.1", new_id())  # its agent started again
        for asked in (era, new_id(), "not-an-era"):
            response, body = await h.request("GET", f"/v1/state/nodes/by_era/{asked}")
            self.assertEqual((response.code, body), unknown)
        h.clock.advance(h.state_expiry + 1)
        response, body = await h.request("GET", f"/v1/state/nodes/by_era/{later}")
        self.assertEqual((response.code, body), unknown, "an expired report is no node")

    async def test_a_restarted_service_finds_the_node_by_its_current_era(self):
        h = self.h
        first, second = new_id(), new_id()
        for era in (first, second):  # the agent started again: only its era changed
            response, _ = await h.request("PUT", f"/agent/v1/nodes/{NODE1}", {
                "host": "10.0.0.1", "agent_url": "http://10.0.0.1:4524", "datasets": [],
                "era": era})
            self.assertEqual(response.code, 200)
        h.restart()
        response, body = await h.request("GET", f"/v1/state/nodes/by_era/{second}")
        self.assertEqual((response.code, body), (200, {"uuid": NODE1}))
        response, body = await h.request("GET", f"/v1/state/nodes/by_era/{first}")
        self.assertEqual(response.code, 404)

    async def test_the_container_api_is_not_served(self):
        for method, path in [("GET", "/v1/configuration/containers"),
                             ("POST", "/v1/configuration/containers"),
                             ("GET", "/v1/state/containers")]:
            response, body = await self.h.request(method, path, {})
            self.assertEqual((response.code, body), (404, {"description": "Not found."}))

    def test_the_schema_check_can_fail(self):
        """The validator really checks: a state entry with metadata is refused."""
        errors = list(SCHEMA("state_datasets_array").iter_errors(
            [{"dataset_id": new_id(), "metadata": {}}]))
        self.assertTrue(errors)


class DatasetConfigurationTests(TestCase, SchemaChecks):

    def setUp(self):
        self.h = harness(self)

    async def test_create_generates_an_id_and_returns_201(self):
        body = await self.h.create(metadata={"name": "x"})
        self.assertEqual(body["primary"], NODE1)
        self.assertEqual(body["deleted"], False)
        self.assertEqual(body["metadata"], {"name": "x"})
        self.assertEqual(len(body["dataset_id"]), 36)
        self.assertEqual(body["dataset_id"][14], "4")

    async def test_ids_and_primaries_are_lower_cased(self):
        dataset_id = new_id()
        body = await self.h.create(primary=NODE2.upper(), dataset_id=dataset_id.upper())
        self.assertEqual(body["dataset_id"], dataset_id)
        self.assertEqual(body["primary"], NODE2)
        response, again = await self.h.request(
            "POST", "/v1/configuration/datasets", {"primary": NODE1, "dataset_id": dataset_id})
        self.assertEqual(response.code, 409)

    async def test_get_lists_deleted_datasets_too(self):
        a = await self.h.create()
        b = await self.h.create()
        await self.h.request("DELETE", f"/v1/configuration/datasets/{a['dataset_id']}")
        response, body = await self.h.request("GET", "/v1/configuration/datasets")
        self.assertEqual(
            [(d["dataset_id"], d["deleted"]) for d in body],
            [(a["dataset_id"], True), (b["dataset_id"], False)],
        )

    async def test_move_and_move_to_self(self):
        a = await self.h.create()
        tag = self.h.store.configuration_tag()
        response, body = await self.h.request(
            "POST", f"/v1/configuration/datasets/{a['dataset_id']}", {"primary": NODE1})
        self.assertEqual((response.code, body), (200, a))
        self.assertEqual(self.h.store.configuration_tag(), tag)
        response, body = await self.h.request(
            "POST", f"/v1/configuration/datasets/{a['dataset_id'].upper()}", {})
        self.assertEqual((response.code, body), (200, a))
        response, body = await self.h.request(
            "POST", f"/v1/configuration/datasets/{a['dataset_id']}", {"primary": NODE2})
        self.assertEqual(body, dict(a, primary=NODE2))
        self.assertNotEqual(self.h.store.configuration_tag(), tag)
        self.assertEqual(header(response, "X-Configuration-Tag"), self.h.store.configuration_tag())

    async def test_delete_is_idempotent(self):
        a = await self.h.create()
        first = await self.h.request("DELETE", f"/v1/configuration/datasets/{a['dataset_id']}")
        second = await self.h.request("DELETE", f"/v1/configuration/datasets/{a['dataset_id']}")
        self.assertEqual(first[0].code, 200)
        self.assertEqual(second[0].code, 200)
        self.assertEqual(first[1], dict(a, deleted=True))
        self.assertEqual(second[1], first[1])

    async def test_configuration_tag_on_get_post_delete_and_conditional_requests(self):
        response, _ = await self.h.request("GET", "/v1/configuration/datasets")
        tag = header(response, "X-Configuration-Tag")
        self.assertRegex(tag, "^[0-9a-f]{32}$")
        response, created = await self.h.request(
            "POST", "/v1/configuration/datasets", {"primary": NODE1},
            headers={"X-If-Configuration-Matches": tag})
        self.assertEqual(response.code, 201)
        new_tag = header(response, "X-Configuration-Tag")
        self.assertNotEqual(new_tag, tag)
        response, _ = await self.h.request("GET", "/v1/configuration/datasets")
        self.assertEqual(header(response, "X-Configuration-Tag"), new_tag)
        response, body = await self.h.request(
            "DELETE", f"/v1/configuration/datasets/{created['dataset_id']}",
            headers={"X-If-Configuration-Matches": new_tag})
        self.assertEqual(response.code, 200)
        self.assertTrue(body["deleted"])
        self.assertNotEqual(header(response, "X-Configuration-Tag"), new_tag)

    async def test_tag_changes_with_leases(self):
        a = await self.h.create()
        tag = self.h.store.configuration_tag()
        await self.h.request("POST", "/v1/configuration/leases", {
            "dataset_id": a["dataset_id"], "node_uuid": NODE1, "expires": None})
        leased = self.h.store.configuration_tag()
        self.assertNotEqual(leased, tag)
        await self.h.request("DELETE", f"/v1/configuration/leases/{a['dataset_id']}")
        self.assertEqual(self.h.store.configuration_tag(), tag)

    async def test_metadata_and_size_limits_accepted_at_the_edge(self):
        metadata = {("k%02d" % i).ljust(256, "k"): "v" * 256 for i in range(16)}
        body = await self.h.create(metadata=metadata, maximum_size=67108864 + 1024)
        self.assertEqual(body["metadata"], metadata)
        self.assertEqual(body["maximum_size"], 67108864 + 1024)
        body = await self.h.create(maximum_size=None)
        self.assertNotIn("maximum_size", body)

    async def test_primary_is_not_checked_against_known_nodes(self):
        """Flocker accepts any UUID as primary (FLOC-1278); so do we."""
        body = await self.h.create(primary=new_id())
        self.assertEqual(body["deleted"], False)

    async def test_state_lists_one_entry_per_node_and_dataset(self):
        a = await self.h.create()
        await self.h.report(NODE1, [{"dataset_id": a["dataset_id"], "path": "/a"}], host="10.0.0.1")
        await self.h.report(NODE2, [
            {"dataset_id": a["dataset_id"], "path": "/b", "maximum_size": 67108864},
            {"dataset_id": new_id(), "path": "/c"},
        ], host="10.0.0.2")
        response, body = await self.h.request("GET", "/v1/state/datasets")
        self.assertEqual(len(body), 3)
        self.assertIn({"dataset_id": a["dataset_id"], "primary": NODE1, "path": "/a"}, body)
        self.assertIn({"dataset_id": a["dataset_id"], "primary": NODE2, "path": "/b",
                       "maximum_size": 67108864}, body)
        response, nodes = await self.h.request("GET", "/v1/state/nodes")
        self.assertEqual(sorted(nodes, key=lambda n: n["host"]), [
            {"host": "10.0.0.1", "uuid": NODE1}, {"host": "10.0.0.2", "uuid": NODE2}])

    async def test_responses_are_json(self):
        for path in ["/v1/version", "/v1/configuration/datasets", "/v1/state/datasets",
                     "/v1/state/nodes", "/v1/configuration/leases", "/nowhere"]:
            response, _ = await self.h.request("GET", path)
            self.assertEqual(header(response, "Content-Type"), "application/json", path)
