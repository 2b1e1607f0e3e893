"""The Powerstrip hook endpoint, in memory: Klein app + StubTreq + the verified fake."""

import json

from hypothesis import HealthCheck, given, settings, strategies as st
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from powerstripflocker.frontends.adapter import FlockerAdapter
from powerstripflocker.clients.flocker_memory import MemoryFlockerAPI
from powerstripflocker.frontends.metrics import Metrics
from powerstripflocker.core.placement import Placement

HOOK_URL = "http://adapter/flocker-adapter"


def pre_hook(body, request="/v1.41/containers/create?name=web", method="POST"):
    return {
        "PowerstripProtocolVersion": 1, "Type": "pre-hook",
        "ClientRequest": {"Method": method, "Request": request,
                          "Body": body if body is None or isinstance(body, str)
                          else json.dumps(body)},
    }


class AdapterNode:
    """One node's adapter over a shared fake control service."""

    def __init__(self, api, clock, node, deadline=120.0):
        self.metrics = Metrics()
        placement = Placement(api, clock, node_uuid=node.uuid, deadline=deadline,
                              metrics=self.metrics)
        self.adapter = FlockerAdapter(placement, api, self.metrics, clock)
        self.client = StubTreq(self.adapter.resource())


class AdapterTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.api = MemoryFlockerAPI(self.clock, convergence_delay=0.2)
        self.node1 = self.api.add_node("10.0.0.1")
        self.node2 = self.api.add_node("10.0.0.2")
        self.here = AdapterNode(self.api, self.clock, self.node1)

    def post(self, document, node=None, raw=None):
        """POST a hook, run the clock until it is answered; (status, decoded JSON)."""
        node = node or self.here
        data = raw if raw is not None else json.dumps(document).encode()
        response = self.answer(node, node.client.post(HOOK_URL, data=data))
        return response.code, json.loads(self.successResultOf(node.client.content(response)))

    def answer(self, node, deferred, seconds=300.0):
        outcome = []
        deferred.addBoth(lambda result: outcome.append(result) or result)
        node.client.flush()
        elapsed = 0.0
        while not outcome and elapsed < seconds:
            self.clock.advance(0.05)
            elapsed += 0.05
            node.client.flush()
        return self.successResultOf(deferred)

    def configured(self, name):
        datasets = self.successResultOf(self.api.list_datasets_configuration()).datasets
        return [d for d in datasets if d.name == name and not d.deleted]

    def state_path(self, dataset):
        [entry] = [s for s in self.successResultOf(self.api.list_datasets_state())
                   if s.dataset_id == dataset.dataset_id]
        return entry.path

    def test_create_with_flocker_binds_and_mounts_gets_real_paths_and_nothing_else_changes(self):
        docker_body = {
            "Image": "busybox", "Cmd": ["cat", "/data/file"], "Env": None, "Volumes": {},
            "HostConfig": {
                "Binds": ["/srv/www:/www", "/flocker/demo:/data:ro", "/etc/localtime:/lt:ro"],
                "Mounts": [{"Type": "bind", "Source": "/flocker/logs", "Target": "/logs"}],
                "NetworkMode": "default", "AutoRemove": False,
            },
        }
        status, reply = self.post(pre_hook(docker_body))
        self.assertEqual(status, 200)
        modified = reply["ModifiedClientRequest"]
        self.assertEqual((reply["PowerstripProtocolVersion"], modified["Method"],
                          modified["Request"]), (1, "POST", "/v1.41/containers/create?name=web"))
        demo, logs = self.state_path(*self.configured("demo")), self.state_path(
            *self.configured("logs"))
        expected = json.loads(json.dumps(docker_body))
        expected["HostConfig"]["Binds"] = ["/srv/www:/www", "/etc/localtime:/lt:ro"]
        expected["HostConfig"]["Mounts"] = [
            {"Type": "bind", "Source": logs, "Target": "/logs"},
            {"Type": "bind", "Source": demo, "Target": "/data", "ReadOnly": True}]
        self.assertEqual(json.loads(modified["Body"]), expected)
        self.assertEqual([d.primary for d in self.configured("demo") + self.configured("logs")],
                         [self.node1.uuid] * 2)

    @settings(max_examples=40, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.lists(
        st.one_of(
            st.sampled_from(["/srv/a:/a", "/etc/hosts:/h:ro", "named:/n:z", "/var/x:/x:rw"]),
            st.builds(lambda n, o: f"/flocker/{n}:/mnt/{n}{o}",
                      st.sampled_from(["alpha", "beta", "gamma.1", "d-4"]),
                      st.sampled_from(["", ":ro", ":rw", ":ro,rshared"])),
        ), max_size=6))
    def test_any_bind_list_keeps_every_bind_but_flocker_ones_which_become_mounts(self, binds):
        status, reply = self.post(pre_hook({"Image": "i", "HostConfig": {"Binds": binds}}))
        self.assertEqual(status, 200)
        host_config = json.loads(reply["ModifiedClientRequest"]["Body"])["HostConfig"]
        flocker = [bind.split(":") for bind in binds if bind.startswith("/flocker/")]
        self.assertEqual(host_config["Binds"],
                         [bind for bind in binds if not bind.startswith("/flocker/")])
        expected_mounts = []
        for source, target, *mode in flocker:
            [dataset] = self.configured(source[len("/flocker/"):])
            options = mode[0].split(",") if mode else []
            mount = {"Type": "bind", "Source": self.state_path(dataset), "Target": target,
                     "ReadOnly": "ro" in options}
            if "rshared" in options:
                mount["BindOptions"] = {"Propagation": "rshared"}
            expected_mounts.append(mount)
        self.assertEqual(host_config.get("Mounts", []), expected_mounts)

    def test_requests_without_flocker_volumes_are_echoed_with_their_own_method_and_path(self):
        for document in [
            pre_hook({"Image": "busybox", "HostConfig": {"Binds": ["/srv:/srv"]}}),
            pre_hook(None, "/v1.41/containers/abc/attach?stream=1", "POST"),
            pre_hook(None, "/v1.41/containers/json?all=1", "GET"),
            pre_hook('{"Image": "x"}', "/containers/create"),
        ]:
            status, reply = self.post(document)
            self.assertEqual(status, 200)
            self.assertEqual(reply["ModifiedClientRequest"], document["ClientRequest"])
        self.assertEqual(self.api.calls, [])

    def test_post_hooks_are_echoed(self):
        server_response = {"ContentType": "application/json", "Body": '{"Id": "1"}', "Code": 201}
        document = dict(pre_hook({}), Type="post-hook", ServerResponse=server_response)
        status, reply = self.post(document)
        self.assertEqual((status, reply["ModifiedServerResponse"]), (200, server_response))

    def test_legacy_start_with_flocker_binds_is_rewritten(self):
        document = pre_hook({"Binds": ["/flocker/old:/data"]}, "/v1.18/containers/abc/start")
        status, reply = self.post(document)
        self.assertEqual(status, 200)
        [dataset] = self.configured("old")
        self.assertEqual(json.loads(reply["ModifiedClientRequest"]["Body"]),
                         {"Binds": [f"{self.state_path(dataset)}:/data"]})

    def test_a_name_used_twice_in_one_request_is_one_dataset(self):
        body = {"HostConfig": {"Binds": ["/flocker/twice:/a", "/flocker/twice:/b:ro"],
                               "Mounts": [{"Type": "bind", "Source": "/flocker/twice",
                                           "Target": "/c"}]}}
        status, reply = self.post(pre_hook(body))
        self.assertEqual(status, 200)
        [dataset] = self.configured("twice")
        path = self.state_path(dataset)
        host_config = json.loads(reply["ModifiedClientRequest"]["Body"])["HostConfig"]
        self.assertEqual(host_config, {"Binds": [], "Mounts": [
            {"Type": "bind", "Source": path, "Target": "/c"},
            {"Type": "bind", "Source": path, "Target": "/a", "ReadOnly": False},
            {"Type": "bind", "Source": path, "Target": "/b", "ReadOnly": True}]})

    def test_concurrent_hooks_for_one_new_name_make_one_create(self):
        body = pre_hook({"HostConfig": {"Binds": ["/flocker/once:/data"]}})
        first = self.here.client.post(HOOK_URL, data=json.dumps(body).encode())
        second = self.here.client.post(HOOK_URL, data=json.dumps(body).encode())
        responses = [self.answer(self.here, first), self.answer(self.here, second)]
        self.assertEqual([r.code for r in responses], [200, 200])
        self.assertEqual(len(self.configured("once")), 1)
        self.assertEqual(self.here.metrics.creates._value.get(), 1)

    def test_two_nodes_asking_for_one_new_name_at_once_leave_one_dataset(self):
        self.api.latency = 0.01
        there = AdapterNode(self.api, self.clock, self.node2)
        body = json.dumps(pre_hook({"HostConfig": {"Binds": ["/flocker/race:/data"]}})).encode()
        from_here = self.here.client.post(HOOK_URL, data=body)
        from_there = there.client.post(HOOK_URL, data=body)
        codes = sorted([self.answer(self.here, from_here).code,
                        self.answer(there, from_there).code])
        self.api.latency = 0
        self.assertEqual(len(self.configured("race")), 1)
        self.assertIn(codes, ([200, 200], [200, 409]))

    def test_a_volume_on_another_node_is_moved_here(self):
        elsewhere = self.successResultOf(self.api.create_dataset(
            primary=self.node2.uuid, metadata={"name": "moving"}))
        self.api.converge()
        status, reply = self.post(pre_hook({"HostConfig": {"Binds": ["/flocker/moving:/d"]}}))
        self.assertEqual(status, 200)
        [dataset] = self.configured("moving")
        self.assertEqual((dataset.dataset_id, dataset.primary),
                         (elsewhere.dataset_id, self.node1.uuid))
        self.assertEqual(json.loads(reply["ModifiedClientRequest"]["Body"])["HostConfig"],
                         {"Binds": [], "Mounts": [{"Type": "bind", "Target": "/d",
                                                   "Source": self.state_path(dataset),
                                                   "ReadOnly": False}]})

    def test_a_volume_used_on_another_node_is_refused_within_half_a_second(self):
        elsewhere = self.successResultOf(self.api.create_dataset(
            primary=self.node2.uuid, metadata={"name": "busy"}))
        self.api.converge()
        self.successResultOf(self.api.acquire_lease(elsewhere.dataset_id, self.node2.uuid, None))
        self.api.set_users(elsewhere.dataset_id, ["web"])
        started = self.clock.seconds()
        status, reply = self.post(pre_hook({"HostConfig": {"Binds": ["/flocker/busy:/d"]}}))
        self.assertEqual(status, 409)
        self.assertEqual(reply["message"], f"volume 'busy' is in use on 10.0.0.2 (node "
                                           f"{self.node2.uuid}, container web); stop it there first")
        self.assertLess(self.clock.seconds() - started, 0.5)
        self.assertEqual(self.configured("busy")[0].primary, self.node2.uuid)

    def test_docker_stop_there_then_run_here_succeeds_without_a_fixed_delay(self):
        elsewhere = self.successResultOf(self.api.create_dataset(
            primary=self.node2.uuid, metadata={"name": "handover"}))
        self.api.converge()
        self.successResultOf(self.api.acquire_lease(elsewhere.dataset_id, self.node2.uuid, 30))
        # The container there has stopped (no users); its agent releases the lease soon.
        self.clock.callLater(0.3, self.api.release_lease, elsewhere.dataset_id)
        started = self.clock.seconds()
        status, reply = self.post(pre_hook({"HostConfig": {"Binds": ["/flocker/handover:/d"]}}))
        self.assertEqual(status, 200, reply)
        self.assertLess(self.clock.seconds() - started, 2.0)
        self.assertEqual(self.configured("handover")[0].primary, self.node1.uuid)

    def test_a_stalled_move_is_refused_at_once_with_its_cause(self):
        elsewhere = self.successResultOf(self.api.create_dataset(
            primary=self.node2.uuid, metadata={"name": "db"}))
        self.api.converge()
        self.api.set_transfer(elsewhere.dataset_id, 0, None, stalled=True,
                              error="No space left on device on 10.0.0.1")
        status, reply = self.post(pre_hook({"HostConfig": {"Binds": ["/flocker/db:/d"]}}))
        self.assertEqual(reply["message"], "volume 'db': the move from 10.0.0.2 stalled: "
                                           "No space left on device on 10.0.0.1")
        self.assertGreaterEqual(status, 500)

    def test_a_legacy_start_renews_the_claims_of_its_volumes(self):
        document = pre_hook({"Binds": ["/flocker/kept:/data"]}, "/v1.18/containers/abc/start")
        self.assertEqual(self.post(document)[0], 200)
        [dataset] = self.configured("kept")
        self.clock.advance(20)
        self.assertEqual(self.post(document)[0], 200)
        [lease] = self.successResultOf(self.api.list_leases())
        self.assertEqual(lease.node_uuid, self.node1.uuid)
        self.assertGreater(lease.expires, 25, "the start claimed the volume again")

    def test_a_hook_in_a_cluster_of_1000_volumes_makes_only_per_name_calls(self):
        for index in range(1000):
            self.successResultOf(self.api.create_dataset(
                primary=self.node2.uuid, metadata={"name": f"other-{index}"}))
        self.api.converge()
        self.api.calls.clear()
        status, _ = self.post(pre_hook({"HostConfig": {"Binds": ["/flocker/mine:/d"]}}))
        self.assertEqual(status, 200)
        self.assertEqual({call[0] for call in self.api.calls}, {"list_nodes", "claim"})
        self.assertEqual({call[1] for call in self.api.calls if call[0] == "claim"}, {"mine"})

    def test_state_that_never_converges_fails_at_the_deadline(self):
        self.api.convergence_delay = None
        short = AdapterNode(self.api, self.clock, self.node1, deadline=10.0)
        started = self.clock.seconds()
        status, reply = self.post(pre_hook({"HostConfig": {"Binds": ["/flocker/stuck:/d"]}}),
                                  node=short)
        self.assertEqual(status, 504)
        self.assertAlmostEqual(self.clock.seconds() - started, 10.0, delta=1.0)
        message = reply["message"]
        for part in ("'stuck'", "10.0.0.1", self.node1.uuid, "after 10s",
                     "it is still being created"):
            self.assertIn(part, message)

    def test_an_unreachable_control_service_is_a_503_with_a_clear_message(self):
        self.api.unreachable = "Connection was refused by other side: 111"
        status, reply = self.post(pre_hook({"HostConfig": {"Binds": ["/flocker/x:/d"]}}))
        self.assertEqual(status, 503)
        self.assertIn("cannot reach the control service", reply["message"])

    def assert_refused_without_calls(self, status, document=None, raw=None, message=None):
        got_status, reply = self.post(document, raw=raw)
        self.assertEqual(got_status, status, reply)
        if message is not None:
            self.assertIn(message, reply["message"])
        self.assertEqual(self.api.calls, [], "bad input reaches no control service")

    def test_bad_input_is_a_4xx_that_reaches_no_control_service(self):
        binds = lambda source: pre_hook({"HostConfig": {"Binds": [f"{source}:/data"]}})  # noqa
        cases = [
            (400, None, b"{not json", "not valid JSON"),
            (400, None, b"\xff\xfe", "not valid JSON"),
            (400, [], None, "must be a JSON object"),
            (400, dict(pre_hook({}), PowerstripProtocolVersion=2), None, "unsupported"),
            (400, dict(pre_hook({}), PowerstripProtocolVersion=True), None, "unsupported"),
            (400, dict(pre_hook({}), Type="mid-hook"), None, "unknown hook Type 'mid-hook'"),
            (400, {"PowerstripProtocolVersion": 1, "Type": "pre-hook"}, None, "ClientRequest"),
            (400, dict(pre_hook({}), ClientRequest={"Method": "POST", "Request": "/x"}), None,
             "no 'Body'"),
            (400, dict(pre_hook({}), Type="post-hook"), None, "ServerResponse"),
            (400, pre_hook("{broken"), None, "create body is not valid JSON"),
            (400, pre_hook({"HostConfig": {"Binds": "/flocker/a:/a"}}), None, "must be a list"),
            (400, binds("/flocker/"), None, "the name is empty"),
            (400, binds("/flocker/."), None, "never the /flocker root itself"),
            (400, binds("/flocker/.."), None, "is not a name"),
            (400, binds("/flocker/a/b"), None, "no nested volumes"),
            (400, binds("/flocker/a/.."), None, "must not climb out of /flocker"),
            (400, binds("/flocker/" + "n" * 256), None, "at most 255"),
            (400, binds("/flocker/-x"), None, "starting with a letter or digit"),
            (413, None, b"x" * (4 * 1024 * 1024 + 1), "larger than"),
        ]
        for status, document, raw, message in cases:
            self.assert_refused_without_calls(status, document, raw, message)
        bad = self.here.metrics.hooks.labels(type="unknown", outcome="bad_request")._value.get()
        self.assertGreater(bad, 5)

    def test_an_unexpected_failure_is_a_500_counted_under_its_hook_type(self):
        def broken(names):
            raise KeyError(names[0])
        self.here.adapter._placement.ensure_local = broken
        status, reply = self.post(pre_hook({"HostConfig": {"Binds": ["/flocker/x:/d"]}}))
        self.assertEqual((status, reply), (500, {
            "message": "internal error in the powerstrip-flocker adapter; see its log"}))
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
        internal = self.here.metrics.hooks.labels(type="pre-hook", outcome="internal")
        self.assertEqual(internal._value.get(), 1)

    def test_an_unknown_route_is_klein_s_own_404(self):
        response = self.answer(self.here, self.here.client.post("http://adapter/nothing"))
        self.assertEqual(response.code, 404)

    def test_healthz_says_whether_the_control_service_answers(self):
        response = self.answer(self.here, self.here.client.get("http://adapter/healthz"))
        self.assertEqual(response.code, 200)
        self.api.unreachable = "Connection refused"
        response = self.answer(self.here, self.here.client.get("http://adapter/healthz"))
        self.assertEqual(response.code, 503)
        body = json.loads(self.successResultOf(self.here.client.content(response)))
        self.assertIn("cannot reach the control service", body["reason"])

    def test_metrics_count_hooks_creates_and_placement_latency(self):
        self.post(pre_hook({"HostConfig": {"Binds": ["/flocker/m:/d"]}}))
        self.post(pre_hook({}, "/v1.41/containers/json", "GET"))
        response = self.answer(self.here, self.here.client.get("http://adapter/metrics"))
        text = self.successResultOf(self.here.client.content(response)).decode()
        self.assertIn('powerstrip_flocker_hooks_total{outcome="ok",type="pre-hook"} 2.0', text)
        self.assertIn("powerstrip_flocker_datasets_created_total 1.0", text)
        self.assertIn("powerstrip_flocker_placement_seconds_count 1.0", text)
