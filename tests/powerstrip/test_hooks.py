"""Pre- and post-hooks through the proxy, against real adapter and daemon servers.

The ten cases the 2015 Powerstrip left skipped, and where they are now:
test_chunked_endpoint -> test_passthrough (chunked request and response
tests, test_chunked_json_body_is_read_whole_for_hooks);
test_stream_endpoint_reject_post_hook, test_chunked_endpoint_reject_post_hook
-> test_streaming (post-hooks accepted, skipped on streaming and hijacked requests);
test_prehook_error_does_not_call_docker, test_prehook_error_stops_chain ->
AdapterFailureTests; test_posthook_error_stops_chain,
test_docker_error_does_not_stop_posthooks,
test_second_post_hook_gets_new_request_and_code -> PostHookTests;
test_second_pre_hook_gets_new_request_and_method -> PreHookTests;
test_endpoint_globbing -> test_config matching tests and
test_hooks_of_all_matching_endpoints_run_in_file_order.
"""

import json
from urllib.parse import quote

from twisted.trial.unittest import TestCase

from .helpers import ProxyHarness, eventually, split_response

CREATE = "/v1.41/towel"
BODY = b'{"Number": 1}'


class HookTestCase(TestCase):

    def setUp(self):
        self.harness = ProxyHarness(self)
        self.daemon = self.harness.start_daemon()

    def proxy(self, pre=(), post=(), pattern="POST /*/towel", adapters=None, **kwargs):
        names = {}
        for url in (*pre, *post):
            names.setdefault(url, f"a{len(names)}")
        adapters = adapters or {name: url for url, name in names.items()}
        hooks = {}
        if pre:
            hooks["pre"] = [names[u] for u in pre]
        if post:
            hooks["post"] = [names[u] for u in post]
        self.harness.start_proxy(endpoints={pattern: hooks}, adapters=adapters, **kwargs)

    async def create(self, body=BODY, path=CREATE, content_type="application/json", **kwargs):
        code, headers, response, _ = await self.harness.request(
            "POST", path, body, content_type=content_type, **kwargs)
        return code, headers, response

    def hook_calls(self, kind):
        return [(path, payload) for path, payload in self.harness.adapter.calls
                if payload["Type"] == kind]


class PreHookTests(HookTestCase):

    async def test_pre_hook_rewrites_the_body_docker_sees(self):
        self.proxy(pre=["/add/1"])
        code, headers, body = await self.create()
        self.assertEqual(200, code)
        self.assertEqual({"Number": 2, "SeenByFakeDocker": 42}, json.loads(body))
        method, uri, seen_headers, seen = self.daemon.requests[0]
        self.assertEqual(2, json.loads(seen)["Number"])
        self.assertEqual(str(len(seen)), seen_headers["content-length"])
        self.assertEqual("application/json", seen_headers["content-type"])

    async def test_pre_hook_gets_the_protocol_envelope(self):
        self.proxy(pre=["/echo"])
        await self.create(path="/v1.41/towel?name=web")
        [(_, payload)] = self.hook_calls("pre-hook")
        self.assertEqual({
            "PowerstripProtocolVersion": 1, "Type": "pre-hook",
            "ClientRequest": {"Method": "POST", "Request": "/v1.41/towel?name=web",
                              "Body": BODY.decode()},
        }, payload)

    async def test_pre_hooks_chain_in_list_order(self):
        self.proxy(pre=["/add/1", "/add/2"])
        code, _, body = await self.create()
        self.assertEqual(4, json.loads(body)["Number"])
        bodies = [json.loads(p["ClientRequest"]["Body"])["Number"]
                  for _, p in self.hook_calls("pre-hook")]
        self.assertEqual([1, 2], bodies)

    async def test_same_adapter_twice_in_one_list(self):
        self.harness.start_proxy(
            endpoints={"POST /*/towel": {"pre": ["adder", "adder"]}},
            adapters={"adder": "/add/1"})
        code, _, body = await self.create()
        self.assertEqual(3, json.loads(body)["Number"])

    async def test_second_pre_hook_gets_new_request_and_method_and_both_are_used(self):
        self.proxy(pre=["/set?Method=PUT&Request=/v1.41/other%3Fx%3D1", "/add/5"])
        code, _, body = await self.create()
        self.assertEqual(200, code)
        [_, (_, second)] = self.hook_calls("pre-hook")
        self.assertEqual("PUT", second["ClientRequest"]["Method"])
        self.assertEqual("/v1.41/other?x=1", second["ClientRequest"]["Request"])
        method, uri, _, seen = self.daemon.requests[0]
        self.assertEqual(("PUT", "/v1.41/other?x=1", 6), (method, uri, json.loads(seen)["Number"]))

    async def test_hooks_of_all_matching_endpoints_run_in_file_order(self):
        self.harness.start_proxy(
            endpoints={"POST /*/towel": {"pre": ["one"]}, "* *": {"pre": ["ten"]},
                       "GET /*": {"pre": ["hundred"]}},
            adapters={"one": "/add/1", "ten": "/add/10", "hundred": "/add/100"})
        code, _, body = await self.create()
        self.assertEqual(12, json.loads(body)["Number"])
        self.assertEqual(["/add/1", "/add/10"], [p for p, _ in self.hook_calls("pre-hook")])

    async def test_unmatched_paths_skip_hooks(self):
        self.proxy(pre=["/add/1"], pattern="POST /*/towel")
        # unversioned: "/*/towel" needs a version segment
        code, _, body = await self.create(path="/towel")
        self.assertEqual(1, json.loads(body)["Number"])
        self.assertEqual([], self.harness.adapter.calls)

    async def test_query_string_is_not_part_of_matching(self):
        self.proxy(pre=["/add/1"], pattern="POST /v1.41/towel")
        code, _, body = await self.create(path="/v1.41/towel?x=/y")
        self.assertEqual(2, json.loads(body)["Number"])

    async def test_json_with_charset_is_json(self):
        self.proxy(pre=["/add/1"])
        code, _, body = await self.create(content_type="application/json; charset=utf-8")
        self.assertEqual(2, json.loads(body)["Number"])

    async def test_non_json_body_gives_null_and_is_relayed_unchanged(self):
        self.proxy(pre=["/echo"], pattern="POST /*/build")
        tar = bytes(range(256)) * 10
        code, _, body = await self.create(tar, path="/v1.41/build", content_type="application/x-tar")
        self.assertEqual(200, code)
        [(_, payload)] = self.hook_calls("pre-hook")
        self.assertIsNone(payload["ClientRequest"]["Body"])
        self.assertEqual(tar, self.daemon.requests[0][3])

    async def test_body_from_a_hook_replaces_a_non_json_body(self):
        self.proxy(pre=["/set?Body=replaced"], pattern="POST /*/build")
        code, _, body = await self.create(b"x" * 5000, path="/v1.41/build",
                                          content_type="application/x-tar")
        self.assertEqual(b"replaced", self.daemon.requests[0][3])
        self.assertEqual("8", self.daemon.requests[0][2]["content-length"])

    async def test_bodyless_post_through_hooks_gets_content_length_zero(self):
        self.proxy(pre=["/echo"], pattern="POST /*/containers/*/start")
        code, _, body = await self.create(None, path="/v1.41/containers/x/start",
                                          content_type=None)
        [(_, payload)] = self.hook_calls("pre-hook")
        self.assertIsNone(payload["ClientRequest"]["Body"])
        self.assertEqual("0", self.daemon.requests[0][2]["content-length"])

    async def test_chunked_json_body_is_read_whole_for_hooks(self):
        self.proxy(pre=["/add/1"])
        peer = await self.harness.connect()
        peer.write(b"POST /v1.41/towel HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n5\r\n{\"Num\r\n")
        peer.write(b"8\r\nber\": 1}\r\n0\r\n\r\n")
        await eventually(lambda: b"SeenByFakeDocker" in peer.received)
        code, _, body = split_response(peer.received)
        self.assertEqual(2, json.loads(body)["Number"])
        self.assertNotIn("transfer-encoding", self.daemon.requests[0][2])

    async def test_oversized_body_gets_413_and_reaches_nobody(self):
        self.proxy(pre=["/echo"], max_body=100)
        code, headers, body = await self.create(b'{"Number": 1, "pad": "%s"}' % (b"x" * 200))
        self.assertEqual(413, code)
        self.assertEqual("application/json", headers["content-type"])
        self.assertIn("limit of 100 bytes", json.loads(body)["message"])
        self.assertEqual([], self.harness.adapter.calls)
        self.assertEqual([], self.daemon.requests)

    async def test_oversized_chunked_body_gets_413(self):
        self.proxy(pre=["/echo"], max_body=100)
        peer = await self.harness.connect()
        peer.write(b"POST /v1.41/towel HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n")
        for _ in range(5):
            peer.write(b"40\r\n" + b" " * 64 + b"\r\n")
        await eventually(lambda: peer.eof)
        self.assertEqual(413, split_response(peer.received)[0])
        self.assertEqual([], self.daemon.requests)


class AdapterFailureTests(HookTestCase):
    """Any adapter failure: a JSON error naming the adapter; Docker never sees the request."""

    async def assert_refused(self, url, code, *message_parts, **kwargs):
        self.proxy(pre=[url, "/echo"], **kwargs)
        status, headers, body = await self.create()
        self.assertEqual(code, status)
        self.assertEqual("application/json", headers["content-type"])
        message = json.loads(body)["message"]
        self.assertIn("adapter a0", message)
        for part in message_parts:
            self.assertIn(part, message)
        self.assertEqual([], self.daemon.requests, "Docker saw the request")
        self.assertEqual(1, len(self.hook_calls("pre-hook")),
                         "the chain went on after the failure")
        return message

    async def test_adapter_status_and_message_are_passed_on(self):
        message = await self.assert_refused("/status/500?message=nope", 500, "nope")
        self.assertEqual("adapter a0: nope", message)

    async def test_adapter_4xx_with_message_keeps_its_status(self):
        await self.assert_refused("/status/409?message=in%20use%20on%20node2", 409, "node2")

    async def test_adapter_404_becomes_502_so_the_cli_does_not_pull(self):
        await self.assert_refused("/status/404?message=gone", 502, "gone")

    async def test_adapter_error_without_message_gives_502(self):
        await self.assert_refused("/status/403", 502, "HTTP 403", "empty body")

    async def test_adapter_error_with_text_body_gives_502_with_the_text(self):
        await self.assert_refused("/raw/500?body=sadness%20for%20you", 502, "sadness for you")

    async def test_adapter_answer_not_json_gives_502(self):
        await self.assert_refused("/notjson", 502, "not a JSON object")

    async def test_adapter_answer_missing_body_gives_502(self):
        await self.assert_refused("/missing/Body", 502, "lacks ModifiedClientRequest.Body")

    async def test_adapter_answer_missing_method_gives_502(self):
        await self.assert_refused("/missing/Method", 502, "lacks ModifiedClientRequest.Method")

    async def test_adapter_answer_with_bad_request_target_gives_502(self):
        await self.assert_refused("/set?Request=/a%20b%0D%0AX:%20y", 502, "bad Request")

    async def test_adapter_body_that_is_not_unicode_text_gives_502(self):
        await self.assert_refused("/raw/200?body=" + quote(json.dumps({
            "PowerstripProtocolVersion": 1, "ModifiedClientRequest": {
                "Method": "POST", "Request": CREATE, "Body": "\ud800"}})), 502, "bad Body")

    async def test_adapter_timeout_gives_502(self):
        await self.assert_refused("/hang", 502, "did not answer within 0.3 s", timeout=0.3)

    async def test_failed_hook_on_head_sends_no_body(self):
        self.proxy(pre=["/status/500?message=nope"], pattern="HEAD /_ping")
        peer = await self.harness.connect()
        peer.write(b"HEAD /_ping HTTP/1.1\r\nHost: d\r\n\r\n")
        await eventually(lambda: peer.eof)
        head, _, body = peer.received.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 500 "))
        self.assertEqual(b"", body)

    async def test_adapter_unreachable_gives_502(self):
        from tests.support.processes import free_port
        url = f"http://127.0.0.1:{free_port()}/adapter"
        self.harness.start_proxy(
            endpoints={"POST /*/towel": {"pre": ["a0"]}}, adapters={"a0": url})
        status, headers, body = await self.create()
        message = json.loads(body)["message"]
        self.assertEqual(502, status, message)
        self.assertIn(f"adapter a0 ({url}) is unreachable", message)
        self.assertEqual([], self.daemon.requests)


class PostHookTests(HookTestCase):

    async def test_post_hook_rewrites_the_response(self):
        self.proxy(post=["/add/1"])
        code, headers, body = await self.create()
        self.assertEqual(200, code)
        self.assertEqual({"Number": 2, "SeenByFakeDocker": 42}, json.loads(body))
        self.assertEqual(str(len(body)), headers["content-length"])
        [(_, payload)] = self.hook_calls("post-hook")
        self.assertEqual({"Method": "POST", "Request": CREATE, "Body": BODY.decode()},
                         payload["ClientRequest"])
        self.assertEqual(200, payload["ServerResponse"]["Code"])
        self.assertEqual("application/json", payload["ServerResponse"]["ContentType"])

    async def test_post_hook_sees_the_original_client_body(self):
        self.proxy(pre=["/add/10"], post=["/echo"])
        await self.create()
        [(_, payload)] = self.hook_calls("post-hook")
        self.assertEqual(BODY.decode(), payload["ClientRequest"]["Body"])

    async def test_nine_growing_post_hooks_give_the_whole_body(self):
        self.harness.start_proxy(
            endpoints={"POST /*/towel": {"post": ["adder"] * 9}}, adapters={"adder": "/add/1"})
        code, headers, body = await self.create()
        self.assertEqual(10, json.loads(body)["Number"])
        self.assertEqual(str(len(body)), headers["content-length"])

    async def test_post_hooks_chain_code_content_type_and_body(self):
        self.proxy(post=["/set?Code=299&ContentType=text/x-first", "/add/1",
                         "/set?ContentType=application/x-last"])
        code, headers, body = await self.create()
        calls = self.hook_calls("post-hook")
        self.assertEqual(299, calls[1][1]["ServerResponse"]["Code"])
        self.assertEqual("text/x-first", calls[1][1]["ServerResponse"]["ContentType"])
        self.assertEqual(299, calls[2][1]["ServerResponse"]["Code"])
        self.assertEqual(2, json.loads(calls[2][1]["ServerResponse"]["Body"])["Number"])
        self.assertEqual((299, "application/x-last"), (code, headers["content-type"]))
        self.assertEqual(2, json.loads(body)["Number"])
        self.assertEqual("1.41", headers["api-version"])  # the daemon's other headers stay

    async def test_post_hook_can_turn_an_error_into_success(self):
        self.proxy(post=["/set?Code=201"], pattern="POST /*/fail")
        code, _, body = await self.create(path="/v1.41/fail")
        self.assertEqual(201, code)

    async def test_docker_error_does_not_stop_post_hooks(self):
        self.proxy(post=["/add/1", "/add/1"], pattern="POST /*/fail")
        code, _, body = await self.create(path="/v1.41/fail")
        self.assertEqual(500, code)
        self.assertEqual(3, json.loads(body)["Number"])
        self.assertEqual([500, 500], [p["ServerResponse"]["Code"]
                                      for _, p in self.hook_calls("post-hook")])

    async def test_post_hook_error_stops_the_chain(self):
        self.proxy(post=["/status/503?message=post%20broke", "/echo"])
        code, headers, body = await self.create()
        self.assertEqual(503, code)
        self.assertEqual("adapter a0: post broke", json.loads(body)["message"])
        self.assertEqual(1, len(self.hook_calls("post-hook")))
        self.assertEqual(1, len(self.daemon.requests))

    async def test_post_hook_with_bad_code_gives_502(self):
        self.proxy(post=["/set?Code=42"])
        code, _, body = await self.create()
        self.assertEqual(502, code)
        self.assertIn("bad Code", json.loads(body)["message"])

    async def test_post_hook_body_that_is_not_unicode_text_gives_502(self):
        self.proxy(post=["/raw/200?body=" + quote(json.dumps({
            "PowerstripProtocolVersion": 1, "ModifiedServerResponse": {
                "Code": 200, "ContentType": "application/json", "Body": "\ud800"}}))])
        code, _, body = await self.create()
        self.assertEqual(502, code)
        self.assertIn("adapter a0 returned a bad Body", json.loads(body)["message"])

    async def test_keep_alive_after_post_hooks(self):
        self.proxy(post=["/add/1"])
        peer = await self.harness.connect()
        request = (b"POST /v1.41/towel HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY))
        peer.write(request)
        await eventually(lambda: peer.received.count(b"SeenByFakeDocker") == 1)
        peer.write(request)
        await eventually(lambda: peer.received.count(b"SeenByFakeDocker") == 2)
        self.assertFalse(peer.eof)
        self.assertEqual(1, self.harness.daemon_factory.connections)


class ExpectContinueTests(HookTestCase):

    async def test_expect_100_continue_on_a_hooked_request(self):
        self.proxy(pre=["/add/1"])
        peer = await self.harness.connect()
        peer.write(b"POST /v1.41/towel HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\n"
                   b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(BODY))
        await peer.receive(b"HTTP/1.1 100 Continue\r\n\r\n")
        peer.write(BODY)
        await peer.receive(b"SeenByFakeDocker")
        self.assertNotIn("expect", self.daemon.requests[0][2])
        self.assertEqual(2, json.loads(self.daemon.requests[0][3])["Number"])
