"""Each bad request gets Flocker's status and error shape and changes nothing."""

import json

from twisted.trial.unittest import TestCase

from powerstripflocker.control.httpapi import MAX_BODY

from .helpers import NODE1, NODE2, harness, header, new_id

SCHEMA_MISMATCH = "The provided JSON doesn't match the required schema."
NOT_JSON = (
    "The request body could not be decoded according to the value of the "
    "Content-Type header."
)
DATASETS = "/v1/configuration/datasets"
LEASES = "/v1/configuration/leases"


class BadRequestTests(TestCase):

    async def setUp(self):
        self.h = harness(self)
        self.existing = await self.h.create(metadata={"name": "existing"})
        self.gone = await self.h.create()
        await self.h.request("DELETE", f"{DATASETS}/{self.gone['dataset_id']}")
        await self.h.request("POST", LEASES, {
            "dataset_id": self.existing["dataset_id"], "node_uuid": NODE1, "expires": None})
        await self.h.report(NODE1, [{"dataset_id": self.existing["dataset_id"], "path": "/a"}])

    async def assertRefused(self, method, path, code, description, body=None, raw=None,
                            headers=None, errors=None):
        before = self.h.snapshot()
        response, answer = await self.h.request(method, path, body, raw=raw, headers=headers)
        self.assertEqual(response.code, code, answer)
        self.assertEqual(header(response, "Content-Type"), "application/json")
        self.assertIsInstance(answer, dict)
        self.assertEqual(answer["description"], description)
        if errors is not None:
            self.assertEqual(sorted(answer), ["description", "errors"])
            self.assertTrue(answer["errors"], answer)
            for expected in errors:
                self.assertTrue(
                    any(expected in message for message in answer["errors"]),
                    f"{expected!r} not in {answer['errors']}",
                )
        else:
            # A refusal because another node holds the lease names it in "holder".
            self.assertIn(sorted(answer), (["description"], ["description", "holder"]))
        # Reopen the database: nothing was persisted either.
        self.h.restart()
        after = self.h.snapshot()
        self.assertEqual(before[:3], after[:3])
        return answer

    async def assertSchemaError(self, method, path, body, *errors):
        return await self.assertRefused(method, path, 400, SCHEMA_MISMATCH, body, errors=errors)

    # -- not JSON --------------------------------------------------------

    async def test_create_body_not_json(self):
        await self.assertRefused("POST", DATASETS, 400, NOT_JSON, raw=b"{primary: x")

    async def test_create_body_not_utf8(self):
        await self.assertRefused("POST", DATASETS, 400, NOT_JSON, raw=b'{"primary": "\xff"}')

    async def test_empty_body(self):
        await self.assertRefused("POST", DATASETS, 400, NOT_JSON, raw=b"")

    async def test_nan_is_not_json(self):
        await self.assertRefused("POST", LEASES, 400, NOT_JSON, raw=json.dumps(
            {"dataset_id": new_id(), "node_uuid": NODE1, "expires": float("nan")}).encode())

    async def test_infinite_number_is_refused(self):
        await self.assertRefused("POST", LEASES, 400, NOT_JSON, raw=(
            '{"dataset_id": "%s", "node_uuid": "%s", "expires": 1e999}' % (new_id(), NODE1)
        ).encode())

    async def test_update_body_not_json(self):
        await self.assertRefused(
            "POST", f"{DATASETS}/{self.existing['dataset_id']}", 400, NOT_JSON, raw=b"nope")

    async def test_lease_body_not_json(self):
        await self.assertRefused("POST", LEASES, 400, NOT_JSON, raw=b"[")

    # -- schema ------------------------------------------------------------

    async def test_create_without_primary(self):
        await self.assertSchemaError("POST", DATASETS, {"metadata": {}}, "'primary' is a required")

    async def test_create_body_is_not_an_object(self):
        await self.assertSchemaError("POST", DATASETS, [NODE1], "is not of type 'object'")

    async def test_create_with_unknown_key(self):
        await self.assertSchemaError(
            "POST", DATASETS, {"primary": NODE1, "colour": "red"}, "'colour' was unexpected")

    async def test_create_with_deleted_is_a_400_not_a_500(self):
        await self.assertSchemaError(
            "POST", DATASETS, {"primary": NODE1, "deleted": False}, "'deleted' was unexpected")

    async def test_create_with_bad_primary(self):
        await self.assertSchemaError("POST", DATASETS, {"primary": "10.0.0.1"}, "does not match")

    async def test_create_with_version_1_uuid(self):
        await self.assertSchemaError(
            "POST", DATASETS,
            {"primary": NODE1, "dataset_id": "a8098c1a-f86e-11da-bd1a-00112444be1e"},
            "does not match")

    async def test_create_with_bad_dataset_id(self):
        await self.assertSchemaError(
            "POST", DATASETS, {"primary": NODE1, "dataset_id": "x" * 36}, "does not match")

    async def test_size_too_small(self):
        await self.assertSchemaError(
            "POST", DATASETS, {"primary": NODE1, "maximum_size": 67108864 - 1024},
            "less than the minimum")

    async def test_size_not_multiple_of_1024(self):
        await self.assertSchemaError(
            "POST", DATASETS, {"primary": NODE1, "maximum_size": 67108864 + 1},
            "is not a multiple of 1024")

    async def test_size_not_an_integer(self):
        await self.assertSchemaError(
            "POST", DATASETS, {"primary": NODE1, "maximum_size": 67108864.0},
            "is not of type 'integer', 'null'")

    async def test_size_as_string(self):
        await self.assertSchemaError(
            "POST", DATASETS, {"primary": NODE1, "maximum_size": "67108864"}, "is not of type")

    async def test_size_larger_than_sqlite_integers(self):
        await self.assertSchemaError(
            "POST", DATASETS, {"primary": NODE1, "maximum_size": 2 ** 70}, "is greater than")

    async def test_too_many_metadata_keys(self):
        await self.assertSchemaError(
            "POST", DATASETS,
            {"primary": NODE1, "metadata": {str(i): "v" for i in range(17)}},
            "has too many properties")

    async def test_metadata_value_not_a_string(self):
        await self.assertSchemaError(
            "POST", DATASETS, {"primary": NODE1, "metadata": {"name": 1}}, "is not of type 'string'")

    async def test_metadata_value_too_long(self):
        await self.assertSchemaError(
            "POST", DATASETS, {"primary": NODE1, "metadata": {"name": "v" * 257}}, "is too long")

    async def test_metadata_key_too_long(self):
        await self.assertSchemaError(
            "POST", DATASETS, {"primary": NODE1, "metadata": {"k" * 257: "v"}}, "does not match any of the regexes")

    async def test_metadata_key_empty(self):
        await self.assertSchemaError(
            "POST", DATASETS, {"primary": NODE1, "metadata": {"": "v"}}, "does not match any of the regexes")

    async def test_update_with_metadata(self):
        await self.assertSchemaError(
            "POST", f"{DATASETS}/{self.existing['dataset_id']}", {"metadata": {}},
            "'metadata' was unexpected")

    async def test_update_with_bad_primary(self):
        await self.assertSchemaError(
            "POST", f"{DATASETS}/{self.existing['dataset_id']}", {"primary": "node2"},
            "does not match")

    async def test_lease_with_non_uuid_dataset_is_a_400_not_a_500(self):
        await self.assertSchemaError(
            "POST", LEASES, {"dataset_id": "x" * 36, "node_uuid": NODE2, "expires": None},
            "does not match")

    async def test_lease_without_expires(self):
        await self.assertSchemaError(
            "POST", LEASES, {"dataset_id": new_id(), "node_uuid": NODE2},
            "'expires' is a required")

    async def test_lease_with_bad_node(self):
        await self.assertSchemaError(
            "POST", LEASES, {"dataset_id": new_id(), "node_uuid": "me", "expires": 1},
            "does not match")

    async def test_lease_expires_as_string(self):
        await self.assertSchemaError(
            "POST", LEASES, {"dataset_id": new_id(), "node_uuid": NODE2, "expires": "10"},
            "is not of type")

    # -- ids -----------------------------------------------------------------

    async def test_duplicate_id(self):
        await self.assertRefused(
            "POST", DATASETS, 409, "The provided dataset_id is already in use.",
            {"primary": NODE2, "dataset_id": self.existing["dataset_id"].upper()})

    async def test_duplicate_of_deleted_id(self):
        await self.assertRefused(
            "POST", DATASETS, 409, "The provided dataset_id is already in use.",
            {"primary": NODE1, "dataset_id": self.gone["dataset_id"]})

    async def test_update_unknown_dataset(self):
        await self.assertRefused(
            "POST", f"{DATASETS}/{new_id()}", 404, "Dataset not found.", {"primary": NODE2})

    async def test_update_malformed_id(self):
        await self.assertRefused(
            "POST", f"{DATASETS}/not-a-uuid", 404, "Dataset not found.", {"primary": NODE2})

    async def test_delete_unknown_dataset(self):
        await self.assertRefused("DELETE", f"{DATASETS}/{new_id()}", 404, "Dataset not found.")

    async def test_delete_malformed_id(self):
        await self.assertRefused("DELETE", f"{DATASETS}/zzz", 404, "Dataset not found.")

    async def test_update_deleted_dataset(self):
        await self.assertRefused(
            "POST", f"{DATASETS}/{self.gone['dataset_id']}", 405,
            "The dataset has been deleted.", {"primary": NODE2})

    async def test_release_unknown_lease(self):
        await self.assertRefused("DELETE", f"{LEASES}/{new_id()}", 404, "Lease not found.")

    async def test_release_malformed_lease(self):
        await self.assertRefused("DELETE", f"{LEASES}/%20", 404, "Lease not found.")

    async def test_lease_held_by_another_node(self):
        await self.assertRefused(
            "POST", LEASES, 409,
            f"dataset {self.existing['dataset_id']} is in use on 127.0.0.1 "
            f"(node {NODE1} holds the lease on dataset {self.existing['dataset_id']}); stop its "
            f"containers there first, or run 'powerstrip-flocker release "
            f"{self.existing['dataset_id']}' if that node is gone",
            {"dataset_id": self.existing["dataset_id"], "node_uuid": NODE2, "expires": 5})

    # -- conditional requests -------------------------------------------------

    def stale(self):
        return {"X-If-Configuration-Matches": "0" * 32}

    async def test_stale_tag_on_create(self):
        current = self.h.store.configuration_tag()
        answer = await self.assertRefused(
            "POST", DATASETS, 412,
            f"Tag doesn't match. Required: {'0' * 32}, current: {current}",
            {"primary": NODE1}, headers=self.stale())
        self.assertNotIn("errors", answer)

    async def test_a_412_carries_the_current_tag(self):
        response, _ = await self.h.request(
            "POST", DATASETS, {"primary": NODE1}, headers=self.stale())
        self.assertEqual(response.code, 412)
        self.assertEqual(header(response, "X-Configuration-Tag"),
                         self.h.store.configuration_tag())

    async def test_stale_tag_is_checked_before_the_body(self):
        current = self.h.store.configuration_tag()
        await self.assertRefused(
            "POST", DATASETS, 412,
            f"Tag doesn't match. Required: {'0' * 32}, current: {current}",
            raw=b"not json", headers=self.stale())

    async def test_stale_tag_on_update(self):
        current = self.h.store.configuration_tag()
        await self.assertRefused(
            "POST", f"{DATASETS}/{self.existing['dataset_id']}", 412,
            f"Tag doesn't match. Required: {'0' * 32}, current: {current}",
            {"primary": NODE2}, headers=self.stale())

    async def test_stale_tag_on_delete(self):
        current = self.h.store.configuration_tag()
        await self.assertRefused(
            "DELETE", f"{DATASETS}/{self.existing['dataset_id']}", 412,
            f"Tag doesn't match. Required: {'0' * 32}, current: {current}",
            headers=self.stale())

    async def test_tag_made_stale_by_a_lease(self):
        tag = self.h.store.configuration_tag()
        await self.h.request("POST", LEASES, {
            "dataset_id": new_id(), "node_uuid": NODE2, "expires": 100})
        current = self.h.store.configuration_tag()
        await self.assertRefused(
            "POST", DATASETS, 412, f"Tag doesn't match. Required: {tag}, current: {current}",
            {"primary": NODE1}, headers={"X-If-Configuration-Matches": tag})

    # -- size, routes ------------------------------------------------------------

    async def test_oversized_body(self):
        body = json.dumps({"primary": NODE1, "metadata": {"name": "x" * MAX_BODY}}).encode()
        answer = await self.assertRefused(
            "POST", DATASETS, 413, f"The request body is larger than {MAX_BODY} bytes.",
            raw=body)
        self.assertTrue(answer)

    async def test_unknown_route(self):
        await self.assertRefused("GET", "/v1/configuration/everything", 404, "Not found.")

    async def test_unknown_route_outside_v1(self):
        await self.assertRefused("POST", "/", 404, "Not found.", {"primary": NODE1})

    async def test_id_holding_an_encoded_slash_is_not_found_rather_than_redirected(self):
        # Found by the fuzz suite: "%2F" decodes to "/", and merged slashes answered 308.
        for method in ("POST", "DELETE"):
            await self.assertRefused(method, f"{DATASETS}/%2F0", 404, "Not found.",
                                     {"primary": NODE1})
        await self.assertRefused("PUT", "/agent/v1/nodes/%2Fx", 404, "Not found.", {})

    async def test_wrong_method(self):
        await self.assertRefused("PUT", DATASETS, 405, "Method not allowed on this resource.",
                                 {"primary": NODE1})

    async def test_wrong_method_on_version(self):
        await self.assertRefused("DELETE", "/v1/version", 405,
                                 "Method not allowed on this resource.")
