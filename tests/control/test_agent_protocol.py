"""The agent protocol: node reports, the cluster long-poll, generations, expiry, tokens."""

import json

from twisted.trial.unittest import TestCase

from .helpers import BASE, NODE1, NODE2, harness, new_id

DATASETS = "/v1/configuration/datasets"


class Poll:
    """A long-poll in flight on a StubTreq."""

    def __init__(self, h, query="", headers=None):
        self.h = h
        self.response = h.treq.request(
            "GET", BASE + "/agent/v1/cluster" + query, headers=headers or h.agent_headers())
        self.got_response = False

        def got(result):
            self.got_response = True
            return result

        self.response.addBoth(got)
        self.h.treq.flush()

    @property
    def answered(self):
        self.h.treq.flush()
        return self.got_response

    async def result(self):
        self.assert_answered()
        response = await self.response
        content = response.content()
        self.h.treq.flush()
        return response.code, json.loads(await content)

    def assert_answered(self):
        if not self.answered:
            raise AssertionError("long-poll not answered")


class ReportTests(TestCase):

    def setUp(self):
        self.h = harness(self)

    async def test_report_returns_generation_and_appears_in_state(self):
        dataset = await self.h.create()
        answer = await self.h.report(NODE1, [
            {"dataset_id": dataset["dataset_id"], "path": "/srv/x", "maximum_size": None}])
        self.assertEqual(answer, {"generation": self.h.service.generation})
        response, state = await self.h.request("GET", "/v1/state/datasets")
        self.assertEqual(state, [
            {"dataset_id": dataset["dataset_id"], "primary": NODE1, "path": "/srv/x"}])

    async def test_users_reported_for_a_dataset_reach_the_cluster_view_not_v1_state(self):
        dataset = await self.h.create()
        users = ["web, since 12:03:04"]
        await self.h.report(NODE1, [{"dataset_id": dataset["dataset_id"], "path": "/srv/x",
                                     "users": users}])
        code, view = await Poll(self.h).result()
        [node] = view["nodes"]
        self.assertEqual(node["datasets"][0]["users"], users)
        response, state = await self.h.request("GET", "/v1/state/datasets")
        self.assertNotIn("users", state[0])

    async def test_identical_report_does_not_bump_the_generation(self):
        datasets = [{"dataset_id": new_id(), "path": "/srv/x", "maximum_size": None}]
        first = await self.h.report(NODE1, datasets, transfers=[])
        self.h.clock.advance(5)
        second = await self.h.report(NODE1, datasets)
        self.assertEqual(first, second)
        third = await self.h.report(NODE1, datasets + [{"dataset_id": new_id(), "path": "/y"}])
        self.assertEqual(third["generation"], first["generation"] + 1)

    async def test_report_that_changes_transfer_progress_bumps(self):
        dataset_id = new_id()
        transfer = {"dataset_id": dataset_id, "direction": "push", "peer": NODE2,
                    "bytes_done": 10, "bytes_total": 100}
        first = await self.h.report(NODE1, [], transfers=[transfer])
        second = await self.h.report(NODE1, [], transfers=[dict(transfer, bytes_done=20)])
        self.assertEqual(second["generation"], first["generation"] + 1)
        code, view = await Poll(self.h).result()
        self.assertEqual(view["nodes"][0]["transfers"], [dict(transfer, bytes_done=20)])

    async def test_report_replaces_the_previous_one(self):
        a, b = new_id(), new_id()
        await self.h.report(NODE1, [{"dataset_id": a, "path": "/a"}])
        await self.h.report(NODE1, [{"dataset_id": b, "path": "/b"}], host="10.1.1.1")
        response, state = await self.h.request("GET", "/v1/state/datasets")
        self.assertEqual([s["dataset_id"] for s in state], [b])
        response, nodes = await self.h.request("GET", "/v1/state/nodes")
        self.assertEqual(nodes, [{"host": "10.1.1.1", "uuid": NODE1}])

    async def test_stale_reports_expire(self):
        await self.h.report(NODE1, [{"dataset_id": new_id(), "path": "/a"}])
        self.h.clock.advance(60)
        await self.h.report(NODE2, [])
        generation = self.h.service.generation
        self.h.clock.pump([1] * 60)
        response, nodes = await self.h.request("GET", "/v1/state/nodes")
        self.assertEqual(len(nodes), 2)
        self.h.clock.pump([1] * 2)
        response, nodes = await self.h.request("GET", "/v1/state/nodes")
        self.assertEqual(nodes, [{"host": "127.0.0.1", "uuid": NODE2}])
        response, state = await self.h.request("GET", "/v1/state/datasets")
        self.assertEqual(state, [])
        self.assertEqual(self.h.service.generation, generation + 1)

    async def test_state_survives_a_restart_until_it_expires(self):
        dataset_id = new_id()
        datasets = [{"dataset_id": dataset_id, "path": "/a", "maximum_size": None}]
        await self.h.report(NODE1, datasets, host="10.0.0.1")
        self.h.clock.advance(10)
        await self.h.report(NODE2, [], host="10.0.0.2")
        self.h.clock.advance(25)
        await self.h.report(NODE1, datasets, host="10.0.0.1")  # identical: 35 s later
        self.h.restart()
        response, state = await self.h.request("GET", "/v1/state/datasets")
        self.assertEqual(state, [{"dataset_id": dataset_id, "primary": NODE1, "path": "/a"}])
        response, nodes = await self.h.request("GET", "/v1/state/nodes")
        self.assertEqual(len(nodes), 2)
        # NODE2 last reported 25 s before the restart: it goes 95 s after it.
        self.h.clock.pump([1] * 96)
        response, nodes = await self.h.request("GET", "/v1/state/nodes")
        self.assertEqual(nodes, [{"host": "10.0.0.1", "uuid": NODE1}])
        # NODE1's identical re-report refreshed its stored time: it lasts 120 s from then,
        # not from its first report.
        self.h.clock.pump([1] * 20)
        response, nodes = await self.h.request("GET", "/v1/state/nodes")
        self.assertEqual(nodes, [{"host": "10.0.0.1", "uuid": NODE1}])
        self.h.clock.pump([1] * 5)
        self.h.restart()
        response, nodes = await self.h.request("GET", "/v1/state/nodes")
        self.assertEqual(nodes, [])

    async def test_state_expiry_is_configurable(self):
        h = harness(self, state_expiry=5)
        await h.report(NODE1, [])
        h.clock.pump([1] * 7)
        response, nodes = await h.request("GET", "/v1/state/nodes")
        self.assertEqual(nodes, [])

    async def test_reported_dataset_is_marked_manifested_forever(self):
        dataset = await self.h.create()
        other = await self.h.create()
        await self.h.report(NODE1, [{"dataset_id": dataset["dataset_id"].upper(), "path": "/a"}])
        await self.h.report(NODE1, [])
        self.h.clock.pump([10] * 20)  # the report expires too
        self.h.restart()
        code, view = await Poll(self.h).result()
        flags = {d["dataset_id"]: d["manifested"] for d in view["datasets"]}
        self.assertEqual(flags, {dataset["dataset_id"]: True, other["dataset_id"]: False})
        self.assertEqual(view["nodes"], [])

    async def test_bad_reports_are_refused_and_change_nothing(self):
        good = {"host": "127.0.0.1", "agent_url": "http://127.0.0.1:4524", "datasets": []}
        cases = [
            (f"/agent/v1/nodes/{NODE1}", dict(good, host="localhost")),
            (f"/agent/v1/nodes/{NODE1}", dict(good, datasets=[{"dataset_id": "x", "path": "/"}])),
            (f"/agent/v1/nodes/{NODE1}", dict(good, datasets=[{"dataset_id": new_id(),
                                                                "path": "relative"}])),
            (f"/agent/v1/nodes/{NODE1}", dict(good, transfers=[{"dataset_id": new_id()}])),
            (f"/agent/v1/nodes/{NODE1}", {k: v for k, v in good.items() if k != "agent_url"}),
            (f"/agent/v1/nodes/{NODE1}", dict(good, extra=1)),
            ("/agent/v1/nodes/node-1", good),
            ("/agent/v1/nodes/a8098c1a-f86e-11da-bd1a-00112444be1e", good),
        ]
        before = self.h.snapshot()
        for path, body in cases:
            response, answer = await self.h.request("PUT", path, body)
            self.assertEqual(response.code, 400, (path, body, answer))
            self.assertIn("description", answer)
        response, answer = await self.h.request("PUT", f"/agent/v1/nodes/{NODE1}", raw=b"{")
        self.assertEqual(response.code, 400)
        self.assertEqual(self.h.snapshot(), before)


class LongPollTests(TestCase):

    def setUp(self):
        self.h = harness(self)

    async def test_without_generation_answers_at_once(self):
        dataset = await self.h.create(metadata={"name": "n"}, maximum_size=67108864)
        await self.h.request("POST", "/v1/configuration/leases", {
            "dataset_id": dataset["dataset_id"], "node_uuid": NODE1, "expires": 30})
        await self.h.report(NODE1, [{"dataset_id": dataset["dataset_id"], "path": "/a"}],
                            host="10.0.0.1", agent_url="http://10.0.0.1:4524")
        code, view = await Poll(self.h).result()
        self.assertEqual(code, 200)
        self.assertEqual(view, {
            "generation": self.h.service.generation,
            "datasets": [{
                "dataset_id": dataset["dataset_id"], "primary": NODE1,
                "metadata": {"name": "n"}, "deleted": False, "maximum_size": 67108864,
                "manifested": True, "origin": NODE1, "generation": 1,
                "replicas": 0, "replica_nodes": [],
            }],
            "leases": [{"dataset_id": dataset["dataset_id"], "node_uuid": NODE1,
                        "expires": 30.0}],
            "nodes": [{
                "uuid": NODE1, "host": "10.0.0.1", "agent_url": "http://10.0.0.1:4524",
                "datasets": [{"dataset_id": dataset["dataset_id"], "path": "/a",
                              "maximum_size": None}],
                "transfers": [],
            }],
        })

    async def test_the_origin_stays_the_node_a_dataset_was_created_on(self):
        dataset = await self.h.create()
        await self.h.request("POST", f"/v1/configuration/datasets/{dataset['dataset_id']}",
                             {"primary": NODE2})
        code, view = await Poll(self.h).result()
        [configured] = view["datasets"]
        self.assertEqual((configured["primary"], configured["origin"]), (NODE2, NODE1))

    async def test_other_generation_answers_at_once(self):
        generation = self.h.service.generation
        code, view = await Poll(self.h, f"?generation={generation - 1}").result()
        self.assertEqual(view["generation"], generation)

    async def test_current_generation_waits_until_a_create_and_wakes_at_once(self):
        generation = self.h.service.generation
        poll = Poll(self.h, f"?generation={generation}&timeout=30")
        self.h.clock.advance(29)
        self.assertFalse(poll.answered)
        dataset = await self.h.create()
        code, view = await poll.result()
        self.assertEqual(view["generation"], generation + 1)
        self.assertEqual([d["dataset_id"] for d in view["datasets"]], [dataset["dataset_id"]])

    async def test_wakes_on_move_delete_lease_and_report(self):
        dataset = await self.h.create()
        changes = [
            lambda: self.h.request("POST", f"{DATASETS}/{dataset['dataset_id']}",
                                   {"primary": NODE2}),
            lambda: self.h.request("POST", "/v1/configuration/leases", {
                "dataset_id": dataset["dataset_id"], "node_uuid": NODE2, "expires": 1}),
            lambda: self.h.report(NODE2, []),
        ]
        for change in changes:
            poll = Poll(self.h, f"?generation={self.h.service.generation}")
            self.assertFalse(poll.answered)
            await change()
            poll.assert_answered()
        poll = Poll(self.h, f"?generation={self.h.service.generation}")
        self.h.clock.advance(1)  # the lease expires on the sweep
        poll.assert_answered()
        # Only now may the dataset be deleted: a lease refuses a delete.
        poll = Poll(self.h, f"?generation={self.h.service.generation}")
        await self.h.request("DELETE", f"{DATASETS}/{dataset['dataset_id']}")
        poll.assert_answered()

    async def test_times_out_with_the_unchanged_view(self):
        generation = self.h.service.generation
        poll = Poll(self.h, f"?generation={generation}&timeout=5")
        self.h.clock.advance(4.9)
        self.assertFalse(poll.answered)
        self.h.clock.advance(0.2)
        code, view = await poll.result()
        self.assertEqual((code, view["generation"]), (200, generation))

    async def test_default_timeout_is_30s_and_maximum_60s(self):
        generation = self.h.service.generation
        default = Poll(self.h, f"?generation={generation}")
        capped = Poll(self.h, f"?generation={generation}&timeout=3600")
        self.h.clock.advance(29.5)
        self.assertFalse(default.answered)
        self.h.clock.advance(1)
        default.assert_answered()
        self.h.clock.advance(29)
        self.assertFalse(capped.answered)
        self.h.clock.advance(1)
        capped.assert_answered()

    async def test_identical_report_does_not_wake_a_poll(self):
        await self.h.report(NODE1, [])
        poll = Poll(self.h, f"?generation={self.h.service.generation}")
        await self.h.report(NODE1, [])
        self.assertFalse(poll.answered)
        self.h.clock.advance(30)
        poll.assert_answered()

    async def test_bad_query_arguments(self):
        for query in ["?generation=abc", "?timeout=soon", "?timeout=-1", "?timeout=nan"]:
            code, body = await Poll(self.h, query).result()
            self.assertEqual(code, 400, query)
            self.assertIn("description", body)

    def test_generation_starts_anywhere(self):
        """A restarted service does not reuse the previous process's generations."""
        self.assertNotEqual(harness(self).service.generation, harness(self).service.generation)

    async def test_a_cancelled_poll_is_forgotten(self):
        generation = self.h.service.generation
        waiter = self.h.service.wait_for_change(generation, 30)
        waiter.addErrback(lambda failure: None)
        waiter.cancel()
        self.assertEqual(self.h.service._waiters, [])
        self.assertEqual(self.h.clock.getDelayedCalls().__len__(), 1)  # only the sweep


class TokenTests(TestCase):

    def setUp(self):
        self.h = harness(self, token="s3cret-token")

    async def test_agent_protocol_needs_the_token(self):
        for headers, code in [({}, 401), ({"Authorization": "Bearer wrong"}, 403),
                              ({"Authorization": "s3cret-token"}, 403),
                              ({"Authorization": "Bearer s3cret-token-and-more"}, 403)]:
            response, body = await self.h.request(
                "PUT", f"/agent/v1/nodes/{NODE1}",
                {"host": "127.0.0.1", "agent_url": "http://x", "datasets": []}, headers=headers)
            self.assertEqual(response.code, code, headers)
            self.assertEqual(list(body), ["description"])
            response, body = await self.h.request("GET", "/agent/v1/cluster", headers=headers)
            self.assertEqual(response.code, code, headers)
        self.assertEqual(self.h.service.nodes, {})

    async def test_right_token_is_accepted(self):
        await self.h.report(NODE1, [])
        code, view = await Poll(self.h).result()
        self.assertEqual(code, 200)
        self.assertEqual([n["uuid"] for n in view["nodes"]], [NODE1])

    async def test_v1_api_needs_the_token_but_its_version(self):
        for method, path in [("GET", "/v1/state/nodes"), ("GET", "/v1/configuration/datasets"),
                             ("POST", "/v1/configuration/datasets")]:
            response, body = await self.h.request(method, path, {"primary": NODE1}, headers={})
            self.assertEqual(response.code, 401, path)
            self.assertIn("cluster token", body["description"])
        self.assertEqual(self.h.store.datasets(), [])
        response, _ = await self.h.request("GET", "/v1/version", headers={})
        self.assertEqual(response.code, 200)
