"""EtcdClient without etcd: endpoint lists, failover, timeouts and what is retried, on
a Clock with scripted members."""

import base64
import json

from twisted.internet import error as neterror
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseNeverReceived
from twisted.python.failure import Failure

from powerstripflocker.clients.etcd import (
    BadEndpoint, Compacted, Compare, EtcdRequestError, EtcdUnavailable, OutcomeUnknown, Put, Range,
)
from powerstripflocker.clients.etcd_client import EtcdClient, TLSFiles
from powerstripflocker.clients.etcd_endpoints import EtcdEndpoints, parse_endpoints
from powerstripflocker.clients import etcd_watch
from powerstripflocker.clients.etcd_watch import SILENCE_BEFORE_PROBE


class EndpointTests(SynchronousTestCase):
    def test_members_ports_and_prefix(self):
        parsed = parse_endpoints("etcd://10.0.0.1:2379,etcd-2.example:32379,[::1]:4001/psf/prod/")
        self.assertEqual(parsed, EtcdEndpoints(
            (("10.0.0.1", 2379), ("etcd-2.example", 32379), ("::1", 4001)), "psf/prod", False))
        self.assertEqual(parsed.urls, ("http://10.0.0.1:2379", "http://etcd-2.example:32379",
                                       "http://[::1]:4001"))
        self.assertEqual(parsed.namespace, b"/psf/prod/")
        self.assertEqual(str(parsed),
                         "etcd://10.0.0.1:2379,etcd-2.example:32379,[::1]:4001/psf/prod")

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


class StreamTransport:
    def __init__(self):
        self.stopped = False

    def stopProducing(self):
        self.stopped = True


class WatchStream:
    """One watch request's answer, fed by the test a line at a time."""

    code = 200

    def __init__(self, member, body):
        self.member = member
        self.body = body
        self.protocol = None
        self.transport = StreamTransport()

    def deliverBody(self, protocol):
        self.protocol = protocol
        protocol.makeConnection(self.transport)

    def send(self, result):
        self.protocol.dataReceived(json.dumps({"result": result}).encode() + b"\n")

    def created(self, revision):
        self.send(dict(header(revision), created=True))

    def events(self, *events):
        revision = max(revision for _, revision, _ in events)
        self.send(dict(header(revision), events=[
            {"type": kind, "kv": {"key": b64(key), "value": b64(b"v"),
                                  "mod_revision": str(revision)}}
            for kind, revision, key in events]))

    def die(self):
        self.protocol.connectionLost(Failure(ResponseNeverReceived(
            [Failure(neterror.ConnectionLost("member killed"))])))


class WatchMembers:
    """Watch requests to members "refuse" or get a WatchStream the test drives; a status
    request gets what status says for its member: "hang" (never answered), or an Answer
    (by default, member 1 is the leader)."""

    def __init__(self, refusing=()):
        self.refusing = set(refusing)
        self.streams = []
        self.status = {}
        self.status_asked = []

    def request(self, method, url, data=None, headers=None, unbuffered=False):
        member = url.partition("://")[2].split(":")[0]
        if member in self.refusing:
            return fail(neterror.ConnectionRefusedError("Connection refused"))
        if url.endswith("/v3/maintenance/status"):
            self.status_asked.append(member)
            answer = self.status.get(member, Answer(200, dict(header(), leader="1")))
            return Deferred() if answer == "hang" else succeed(answer)
        stream = WatchStream(member, json.loads(data)["create_request"])
        self.streams.append(stream)
        return succeed(stream)


class WatchResumptionTests(SynchronousTestCase):
    def setUp(self):
        self.members = WatchMembers()
        self.clock, self.etcd = client(self.members, "etcd://a:1,b:1,c:1/psf")
        self.delivered = []

    def watch(self, **options):
        return self.etcd.watch("datasets/", self.delivered.extend, prefix=True, **options)

    def test_a_watch_from_now_resumes_on_the_next_member_after_the_last_event(self):
        watch = self.watch()
        first = self.members.streams[0]
        self.assertEqual((first.member, "start_revision" in first.body), ("a", False))
        self.assertEqual(first.body["key"], b64(b"/psf/datasets/"))
        first.created(10)
        self.assertEqual(self.successResultOf(watch.created), 10)
        first.events(("PUT", 11, b"/psf/datasets/x"), ("DELETE", 11, b"/psf/datasets/y"))
        first.die()
        second = self.members.streams[1]
        self.assertEqual((second.member, second.body["start_revision"]), ("b", "12"))
        second.created(13)
        # what the dead member had delivered, repeated, is dropped
        second.events(("PUT", 11, b"/psf/datasets/x"))
        second.events(("PUT", 12, b"/psf/datasets/z"))
        self.assertEqual([(e.type, e.revision, e.key) for e in self.delivered],
                         [("PUT", 11, b"datasets/x"), ("DELETE", 11, b"datasets/y"),
                          ("PUT", 12, b"datasets/z")])
        self.assertEqual(watch.next_revision, 13)

    def test_a_watch_that_died_before_any_event_resumes_after_the_created_revision(self):
        self.watch()
        self.members.streams[0].created(10)
        self.members.streams[0].die()
        self.assertEqual(self.members.streams[1].body["start_revision"], "11")

    def test_refusing_members_are_passed_over_and_then_waited_for(self):
        self.members.refusing = {"a", "b", "c"}
        watch = self.watch(start_revision=5, reconnect_timeout=10.0)
        self.assertEqual(watch.next_revision, 5)
        self.members.refusing = set()
        self.clock.advance(0.1)
        [stream] = self.members.streams
        self.assertEqual(stream.body["start_revision"], "5")

    def test_no_member_within_the_reconnect_timeout_ends_the_watch(self):
        self.members.refusing = {"a", "b", "c"}
        watch = self.watch(reconnect_timeout=5.0)
        ended = watch.ended
        self.clock.pump([0.5] * 9)
        self.assertNoResult(ended)
        self.clock.pump([0.5] * 6)
        error = self.failureResultOf(ended, EtcdUnavailable).value
        self.assertIn("no member took the watch back within 5s", str(error))
        self.failureResultOf(watch.created)

    def test_a_compacted_start_ends_the_watch_with_the_oldest_revision_kept(self):
        watch = self.watch(start_revision=3)
        stream = self.members.streams[0]
        stream.created(20)
        stream.send(dict(header(20), canceled=True, compact_revision="9"))
        error = self.failureResultOf(watch.ended, Compacted).value
        self.assertEqual((error.revision, error.compact_revision), (3, 9))
        self.assertTrue(stream.transport.stopped)
        self.assertEqual(len(self.members.streams), 1)

    def test_stop_ends_the_stream_and_the_watch(self):
        watch = self.watch()
        stream = self.members.streams[0]
        stream.created(10)
        watch.stop()
        self.assertTrue(stream.transport.stopped)
        self.assertIsNone(self.successResultOf(watch.ended))
        self.assertEqual(len(self.members.streams), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_stream_that_never_says_created_is_left_after_the_request_timeout(self):
        self.watch()
        first = self.members.streams[0]
        self.clock.advance(3.0)
        self.assertTrue(first.transport.stopped)


class SilentMemberTests(SynchronousTestCase):
    """A member whose link is cut sends nothing on its stream, not even a reset: after
    SILENCE_BEFORE_PROBE without a message, the watch asks that member for its status."""

    def setUp(self):
        self.members = WatchMembers()
        self.clock, self.etcd = client(self.members, "etcd://a:1,b:1,c:1/psf",
                                       request_timeout=2.0)
        self.delivered = []
        self.watch = self.etcd.watch("datasets/", self.delivered.extend, prefix=True)
        self.first = self.members.streams[0]
        self.first.created(10)
        self.first.events(("PUT", 11, b"/psf/datasets/x"))

    def test_a_member_that_does_not_answer_its_status_is_left_and_the_watch_resumes(self):
        logged = []
        self.patch(etcd_watch, "log", Logger(observer=logged.append))
        self.members.status["a"] = "hang"
        self.clock.advance(SILENCE_BEFORE_PROBE - 0.1)
        self.assertEqual(self.members.status_asked, [])
        self.clock.advance(0.1)
        self.assertEqual(self.members.status_asked, ["a"])
        self.clock.advance(1.9)
        self.assertFalse(self.first.transport.stopped)
        self.assertEqual(len(self.members.streams), 1)
        self.clock.advance(0.1)
        self.assertTrue(self.first.transport.stopped)
        second = self.members.streams[1]
        self.assertEqual((second.member, second.body["start_revision"]), ("b", "12"))
        second.created(12)
        second.events(("PUT", 12, b"/psf/datasets/y"))
        self.assertEqual([e.revision for e in self.delivered], [11, 12])
        self.assertEqual(self.members.status_asked, ["a"])
        [resumed] = logged
        self.assertIn("etcd member http://a:1 did not answer a status check within 2s",
                      resumed["reason"])

    def test_a_silent_member_that_has_a_leader_keeps_its_stream(self):
        self.clock.advance(SILENCE_BEFORE_PROBE)
        self.assertEqual(self.members.status_asked, ["a"])
        # a message puts off the next probe by a whole silent period
        self.clock.advance(SILENCE_BEFORE_PROBE - 1.0)
        self.first.events(("PUT", 12, b"/psf/datasets/y"))
        self.clock.advance(SILENCE_BEFORE_PROBE - 0.1)
        self.assertEqual(self.members.status_asked, ["a"])
        self.clock.advance(0.1)
        self.assertEqual(self.members.status_asked, ["a", "a"])
        self.assertFalse(self.first.transport.stopped)
        self.assertEqual(len(self.members.streams), 1)
        self.assertEqual([e.revision for e in self.delivered], [11, 12])

    def test_a_member_without_a_leader_or_answering_an_error_is_left(self):
        for answer in (Answer(200, dict(header(), leader="0")), Answer(200, header()),
                       Answer(503, {"message": "etcdserver: no leader", "code": 14})):
            stream = self.members.streams[-1]
            if stream is not self.first:
                stream.created(11)
            self.members.status[stream.member] = answer
            self.clock.advance(SILENCE_BEFORE_PROBE - 0.1)
            self.assertFalse(stream.transport.stopped)
            self.clock.advance(0.1)
            self.assertTrue(stream.transport.stopped, answer.code)
        self.assertEqual(self.members.status_asked, ["a", "b", "c"])
        self.assertEqual([s.member for s in self.members.streams], ["a", "b", "c", "a"])
        self.assertEqual(self.members.streams[-1].body["start_revision"], "12")

    def test_a_message_while_the_status_is_asked_cancels_the_probe(self):
        self.members.status["a"] = "hang"
        self.clock.advance(SILENCE_BEFORE_PROBE)
        self.first.events(("PUT", 12, b"/psf/datasets/y"))
        self.clock.advance(SILENCE_BEFORE_PROBE - 0.1)
        self.assertFalse(self.first.transport.stopped)
        self.assertEqual(self.members.status_asked, ["a"])

    def test_stopping_the_watch_while_the_status_is_asked_leaves_no_delayed_call(self):
        self.members.status["a"] = "hang"
        self.clock.advance(SILENCE_BEFORE_PROBE)
        self.assertEqual(self.members.status_asked, ["a"])
        self.watch.stop()
        self.assertIsNone(self.successResultOf(self.watch.ended))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.members.streams), 1)

    def test_a_stream_that_ends_while_the_status_is_asked_takes_its_probe_with_it(self):
        self.members.status["a"] = "hang"
        self.clock.advance(SILENCE_BEFORE_PROBE)
        self.first.die()
        self.members.streams[1].created(11)
        # b's acceptance deadline and silence timer; a's probe left no timeout behind
        self.assertEqual(sorted(call.getTime() for call in self.clock.getDelayedCalls()),
                         [SILENCE_BEFORE_PROBE + 2.0, SILENCE_BEFORE_PROBE * 2])
