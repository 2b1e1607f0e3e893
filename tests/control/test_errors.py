"""Unexpected errors and odd requests: always a JSON object, never a traceback."""

from twisted.trial.unittest import TestCase

from .helpers import BASE, NODE1, harness, header


class UnexpectedErrorTests(TestCase):

    def setUp(self):
        self.h = harness(self)

    async def test_internal_error_is_a_json_object_and_logged(self):
        def broken():
            raise RuntimeError("disk on fire")

        self.h.service.state_datasets = broken
        response, body = await self.h.request("GET", "/v1/state/datasets")
        self.assertEqual(response.code, 500)
        self.assertEqual(body, {"description": "internal error, see the control service log"})
        self.assertEqual(header(response, "Content-Type"), "application/json")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    async def test_internal_errors_and_refusals_are_counted_under_their_route(self):
        def broken(era):
            raise RuntimeError("disk on fire")

        self.h.service.node_by_era = broken
        await self.h.request("GET", "/v1/state/nodes/by_era/x")
        await self.h.request("DELETE", "/v1/configuration/leases/nothing")
        self.flushLoggedErrors(RuntimeError)
        response = await self.h.treq.get(BASE + "/metrics")
        text = (await response.content()).decode()
        self.assertIn('powerstrip_flocker_control_requests_total{code="500",'
                      'route="state_node_by_era"} 1.0', text)
        self.assertIn('powerstrip_flocker_control_requests_total{code="404",'
                      'route="release_lease"} 1.0', text)

    async def test_internal_error_while_changing_configuration(self):
        def broken(*args, **kwargs):
            raise RuntimeError("sqlite said no")

        self.h.store.add_dataset = broken
        response, body = await self.h.request(
            "POST", "/v1/configuration/datasets", {"primary": NODE1})
        self.assertEqual(response.code, 500)
        self.assertEqual(body, {"description": "internal error, see the control service log"})
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual(self.h.store.datasets(), [])

    async def test_double_slashes_redirect_with_a_location(self):
        response, body = await self.h.request("GET", "/v1//version")
        # StubTreq follows the redirect: it came with a Location header.
        self.assertEqual((response.code, body["flocker"] is not None), (200, True))


class MetricsTests(TestCase):

    async def test_metrics_count_requests_and_describe_the_cluster(self):
        from .helpers import BASE, NODE2
        h = harness(self)
        created = await h.create()
        await h.request("POST", "/v1/configuration/datasets", {"primary": "bad"})
        await h.report(NODE2, [{"dataset_id": created["dataset_id"], "path": "/a"}])
        response = await h.treq.get(BASE + "/metrics")
        text = (await response.content()).decode()
        self.assertEqual(response.code, 200)
        self.assertIn('powerstrip_flocker_control_requests_total{code="201",route="create_dataset"} 1.0', text)
        self.assertIn('powerstrip_flocker_control_requests_total{code="400",route="create_dataset"} 1.0', text)
        self.assertIn('powerstrip_flocker_control_datasets{deleted="false",manifested="true"} 1.0', text)
        self.assertIn("powerstrip_flocker_control_nodes 1.0", text)
