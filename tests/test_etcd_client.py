"""EtcdClient without etcd: endpoint lists, failover, timeouts and what is retried, on
a Clock with scripted members."""

import base64
import json

from twisted.internet import error as neterror
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseNeverReceived
from twisted.python.failure import Failure

from powerstripflocker.etcd import (
    BadEndpoint, Compare, EtcdClient, EtcdEndpoints, EtcdRequestError, EtcdUnavailable,
    OutcomeUnknown, Put, Range, TLSFiles, parse_endpoints,
)


class EndpointTests(SynchronousTestCase):
    def test_members_ports_and_prefix(self):
        parsed = parse_endpoints("etcd://10.0.0.1:2379,etcd-2.example:32379,[::1]:4001/psf/prod/")
        self.assertEqual(parsed, EtcdEndpoints(
            (("10.0.0.1", 2379), ("etcd-2.example", 32379), ("::1", 4001)), "psf/prod", False))
        self.assertEqual(parsed.urls, ("http://10.0.0.1:2379", "http://etcd-2.example:32379",
                                       "http://[::1]:4001"))
        self.assertEqual(parsed.namespace, b"/psf/prod/")
        self.assertEqual(str(parsed), "etcd://10.0.0.1:2379,etcd-2.example:32379,[::1]:4001/psf/prod")

    def test_the_port_defaults_to_2379_and_etcds_means_https(self):
        parsed = parse_endpoints("etcds://a,b:1234")
        self.assertEqual(parsed.members, (("a", 2379), ("b", 1234)))
        self.assertEqual(parsed.urls, ("https://a:2379", "https://b:1234"))
        self.assertEqual((parsed.prefix, parsed.namespace), ("", b""))
        self.assertEqual(parse_endpoints("etcd://[fe80::1]").members, (("fe80::1", 2379),))

    def test_bad_endpoint_lists_say_what_is_wrong(self):
        cases = {
            "": "empty",
            "   ": "empty",
            "127.0.0.1:2379": "must start with etcd://",
            "http://127.0.0.1:2379": "unknown scheme 'http'",
            "sqlite:///var/lib/x.db": "unknown scheme 'sqlite'",
            "etcd://": "names no etcd member",
            "etcd:///prefix": "names no etcd member",
            "etcd://a:1,,b:2": "empty member",
            "etcd://a:1,": "empty member",
            "etcd://a:1,a:1": "names a:1 twice",
            "etcd://a:0": "bad port '0'",
            "etcd://a:65536": "bad port '65536'",
            "etcd://a:http": "bad port 'http'",
            "etcd://a:": "bad port ''",
            "etcd://:2379": "has no host",
            "etcd://bad_host:1": "bad host 'bad_host'",
            "etcd://-a:1": "bad host '-a'",
            "etcd://fe80::1:2379": "IPv6 address in brackets",
            "etcd://[fe80::1:2379": "bad IPv6 member",
            "etcd://[]:1": "bad IPv6 member",
            "etcd://[::1]2379": "expected ':PORT'",
            "etcd://user:pw@a:1": "credentials",
            "etcd://a:1?x=1": "no query",
            "etcd://a:1#f": "no query",
            "etcd://a:1/../x": "bad prefix",
            "etcd://a:1/x//y": "bad prefix",
            "etcd://a:1/x y": "bad prefix",
            "etcd://a:1/./x": "bad prefix",
        }
        for text, expected in cases.items():
            with self.assertRaises(BadEndpoint, msg=text) as raised:
                parse_endpoints(text)
            self.assertIn(expected, str(raised.exception), text)
            self.assertIsInstance(raised.exception, ValueError)

    def test_a_client_certificate_needs_its_key(self):
        with self.assertRaises(ValueError):
            TLSFiles(ca="ca.pem", cert="client.pem")


class Answer:
    def __init__(self, code, body):
        self.code = code
        self._body = json.dumps(body).encode()

    def content(self):
        return succeed(self._body)


def header(revision=5):
    return {"header": {"revision": str(revision), "member_id": "1", "raft_term": "2"}}


class ScriptedMembers:
    """An HTTP client whose members behave as each test says: "refuse" (connection
    refused), "hang" (take the request and never answer), "lose" (take it and drop the
    connection), or a function of the request body giving an Answer."""

    def __init__(self, **behaviours):
        self.behaviours = behaviours
        self.requests = []  # (member, path, body)

    def request(self, method, url, data=None, headers=None, unbuffered=False):
        netloc, _, path = url.partition("://")[2].partition("/")
        member = netloc.split(":")[0]
        body = json.loads(data)
        self.requests.append((member, "/" + path, body))
        behaviour = self.behaviours[member]
        if behaviour == "refuse":
            return fail(neterror.ConnectionRefusedError("Connection refused"))
        if behaviour == "hang":
            return Deferred()
        if behaviour == "lose":
            return fail(ResponseNeverReceived([Failure(neterror.ConnectionLost("reset"))]))
        return succeed(behaviour(body))

    def members_asked(self):
        return [member for member, _, _ in self.requests]


def ok(answer=None):
    return lambda body: Answer(200, dict(header(), **(answer or {})))


def client(members, endpoint="etcd://a:1,b:1,c:1", **options):
    clock = Clock()
    return clock, EtcdClient(clock, endpoint, http_client=members, watch_http_client=members,
                             **options)


def b64(data):
    return base64.b64encode(data).decode()


class FailoverTests(SynchronousTestCase):
    def test_keys_and_values_travel_in_base64_under_the_prefix(self):
        answer = {"kvs": [{"key": b64(b"/psf/datasets/x"), "value": b64(b"\x00v"),
                           "create_revision": "3", "mod_revision": "4", "version": "2"}],
                  "count": "1"}
        members = ScriptedMembers(a=ok(answer))
        _, etcd = client(members, "etcd://a:1/psf")
        result = self.successResultOf(etcd.range("datasets/", prefix=True))
        [(_, path, body)] = members.requests
        self.assertEqual((path, body), ("/v3/kv/range", {"key": b64(b"/psf/datasets/"),
                                                         "range_end": b64(b"/psf/datasets0")}))
        [kv] = result.kvs
        self.assertEqual((kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version),
                         (b"datasets/x", b"\x00v", 3, 4, 2))

    def test_a_refused_connection_goes_on_to_the_next_member_which_is_then_kept(self):
        members = ScriptedMembers(a="refuse", b=ok(), c=ok())
        _, etcd = client(members)
        self.successResultOf(etcd.put("k", "v"))
        self.successResultOf(etcd.put("k", "w"))
        self.assertEqual(members.members_asked(), ["a", "b", "b"])

    def test_a_member_that_does_not_answer_is_left_after_the_request_timeout(self):
        members = ScriptedMembers(a="hang", b=ok(), c=ok())
        clock, etcd = client(members, request_timeout=2.0)
        put = etcd.put("k", "v")
        self.assertNoResult(put)
        clock.advance(1.9)
        self.assertNoResult(put)
        clock.advance(0.1)
        self.successResultOf(put)
        self.assertEqual(members.members_asked(), ["a", "b"])

    def test_when_no_member_answers_the_call_fails_at_its_deadline_naming_them(self):
        members = ScriptedMembers(a="hang", b="hang", c="hang")
        clock, etcd = client(members, request_timeout=2.0, call_timeout=5.0)
        got = etcd.range("k")
        clock.advance(4.9)
        self.assertNoResult(got)
        clock.advance(0.1)
        error = self.failureResultOf(got, EtcdUnavailable).value
        self.assertIn("range failed on every member", str(error))
        self.assertIn("http://a:1, http://b:1, http://c:1", str(error))
        self.assertIn("no answer within", str(error))

    def test_refusals_everywhere_give_up_after_the_rounds_with_backoff(self):
        members = ScriptedMembers(a="refuse", b="refuse", c="refuse")
        clock, etcd = client(members, rounds=3, backoff=0.1)
        got = etcd.put("k", "v")
        self.assertEqual(len(members.requests), 3)
        clock.advance(0.1)
        self.assertEqual(len(members.requests), 6)
        clock.advance(0.2)
        error = self.failureResultOf(got, EtcdUnavailable).value
        self.assertEqual(len(members.requests), 9)
        self.assertIn("Connection refused", str(error))

    def test_no_leader_answers_move_even_a_transaction_on(self):
        no_leader = lambda body: Answer(503, {"error": "etcdserver: no leader",  # noqa: E731
                                              "message": "etcdserver: no leader", "code": 14})
        members = ScriptedMembers(a=no_leader, b=ok({"succeeded": True}), c=ok())
        _, etcd = client(members)
        result = self.successResultOf(etcd.txn([Compare("k", "version", "==", 0)],
                                               [Put("k", "v")]))
        self.assertTrue(result.succeeded)
        self.assertEqual(members.members_asked(), ["a", "b"])

    def test_a_transaction_lost_after_sending_is_not_repeated(self):
        members = ScriptedMembers(a="lose", b=ok({"succeeded": True}), c=ok())
        _, etcd = client(members)
        error = self.failureResultOf(
            etcd.txn([Compare("k", "version", "==", 0)], [Put("k", "v")]), OutcomeUnknown).value
        self.assertIn("read before retrying", str(error))
        self.assertEqual(members.members_asked(), ["a"])

    def test_a_transaction_that_timed_out_is_not_repeated(self):
        members = ScriptedMembers(a="hang", b=ok({"succeeded": True}), c=ok())
        clock, etcd = client(members, request_timeout=1.0)
        got = etcd.txn([], [Put("k", "v")])
        clock.advance(1.0)
        self.failureResultOf(got, OutcomeUnknown)
        self.assertEqual(members.members_asked(), ["a"])

    def test_an_ambiguous_unavailable_answer_is_an_unknown_outcome_for_a_transaction(self):
        timed_out = lambda body: Answer(503, {  # noqa: E731
            "error": "etcdserver: request timed out", "code": 14,
            "message": "etcdserver: request timed out"})
        members = ScriptedMembers(a=timed_out, b=ok(), c=ok())
        _, etcd = client(members)
        self.failureResultOf(etcd.txn([], [Put("k", "v")]), OutcomeUnknown)
        self.successResultOf(etcd.put("k", "v"))
        self.assertEqual(members.members_asked(), ["a", "a", "b"])

    def test_a_read_only_transaction_and_a_put_are_repeated_after_a_loss(self):
        members = ScriptedMembers(a="lose", b=ok({"succeeded": True}), c=ok())
        _, etcd = client(members)
        self.successResultOf(etcd.txn([Compare("k", "version", "==", 0)], [Range("k")]))
        self.assertEqual(members.members_asked(), ["a", "b"])

    def test_a_refused_request_is_not_sent_elsewhere(self):
        duplicate = lambda body: Answer(400, {  # noqa: E731
            "error": "etcdserver: duplicate key given in txn request", "code": 3,
            "message": "etcdserver: duplicate key given in txn request"})
        members = ScriptedMembers(a=duplicate, b=ok(), c=ok())
        _, etcd = client(members)
        error = self.failureResultOf(etcd.txn([], [Put("k", "1"), Put("k", "2")]),
                                     EtcdRequestError).value
        self.assertEqual(error.code, 3)
        self.assertEqual(members.members_asked(), ["a"])

    def test_bad_operations_fail_before_anything_is_sent(self):
        members = ScriptedMembers(a=ok(), b=ok(), c=ok())
        _, etcd = client(members)
        self.failureResultOf(etcd.put("", "v"), EtcdRequestError)
        self.failureResultOf(etcd.txn([], ["not an operation"]), TypeError)
        self.assertEqual(members.requests, [])
        with self.assertRaises(ValueError):
            Compare("k", "colour", "==", 1)
        with self.assertRaises(ValueError):
            Compare("k", "version", "~", 1)
        with self.assertRaises(ValueError):
            Compare("k", "version", "==", "1")
