"""One contract suite for IEtcd, run against MemoryEtcd and against EtcdClient on a real
three-member etcd cluster.

make_etcd_tests(start) builds a trial TestCase. start(testcase) is awaited in each test
and returns a harness with:
  etcd                 an IEtcd provider with a key space of its own (the real one: a
                       fresh prefix on the shared cluster), so revisions are compared
                       only relative to each other
  async elapse(seconds)
                       let that much time pass (the fake: its Clock; the real: sleep)
  async until(predicate, what)
                       wait until predicate() is true (the fake: at once)
"""

from twisted.internet.defer import gatherResults
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from powerstripflocker.clients.etcd import (
    Compacted, Compare, Delete, DeleteResult, EtcdRequestError, IEtcd, IEtcdWatch, LeaseNotFound,
    Put, PutResult, Range, RangeResult,
)


def make_etcd_tests(start):
    class EtcdContract(TestCase):
        async def test_provides_the_interface_and_a_leader(self):
            harness = await start(self)
            self.assertTrue(verifyObject(IEtcd, harness.etcd))
            status = await harness.etcd.status()
            self.assertTrue(status.leader)
            self.assertTrue(status.version)

        # keys and values

        async def test_a_put_value_reads_back_with_its_revisions(self):
            etcd = (await start(self)).etcd
            first = await etcd.put("datasets/a", b"one")
            second = await etcd.put("datasets/a", b"two")
            self.assertGreater(second.revision, first.revision)
            read = await etcd.range("datasets/a")
            [kv] = read.kvs
            self.assertEqual((kv.key, kv.value, kv.version), (b"datasets/a", b"two", 2))
            self.assertEqual((kv.create_revision, kv.mod_revision),
                             (first.revision, second.revision))
            self.assertEqual((read.count, read.revision), (1, second.revision))

        async def test_str_and_bytes_name_the_same_key_and_values_are_binary(self):
            etcd = (await start(self)).etcd
            await etcd.put(b"bin", b"\x00\xff\n{\"")
            [kv] = (await etcd.range("bin")).kvs
            self.assertEqual(kv.value, b"\x00\xff\n{\"")
            await etcd.put("text", "caf\u00e9")
            [kv] = (await etcd.range(b"text")).kvs
            self.assertEqual(kv.value, "caf\u00e9".encode())

        async def test_an_absent_key_reads_as_nothing(self):
            etcd = (await start(self)).etcd
            read = await etcd.range("nothing")
            self.assertEqual((read.kvs, read.count, read.more), ((), 0, False))

        async def test_a_prefix_reads_its_keys_in_order_and_a_limit_says_more(self):
            etcd = (await start(self)).etcd
            for key in ("nodes/b", "nodes/a", "nodes/c", "nodesX", "other"):
                await etcd.put(key, key)
            read = await etcd.range("nodes/", prefix=True)
            self.assertEqual([kv.key for kv in read.kvs], [b"nodes/a", b"nodes/b", b"nodes/c"])
            limited = await etcd.range("nodes/", prefix=True, limit=2)
            self.assertEqual(([kv.key for kv in limited.kvs], limited.count, limited.more),
                             ([b"nodes/a", b"nodes/b"], 3, True))
            everything = await etcd.range("", prefix=True)
            self.assertEqual(everything.count, 5)

        async def test_a_read_at_a_revision_sees_the_keys_as_they_were(self):
            etcd = (await start(self)).etcd
            first = await etcd.put("datasets/a", "1")
            await etcd.put("datasets/b", "1")
            await etcd.put("datasets/a", "2")
            deleted = await etcd.delete("datasets/b")
            then = await etcd.range("datasets/", prefix=True, revision=first.revision)
            self.assertEqual([(kv.key, kv.value) for kv in then.kvs], [(b"datasets/a", b"1")])
            self.assertEqual(then.revision, deleted.revision)
            before = await etcd.range("datasets/", prefix=True, revision=deleted.revision - 1)
            self.assertEqual([(kv.key, kv.value) for kv in before.kvs],
                             [(b"datasets/a", b"2"), (b"datasets/b", b"1")])
            page = await etcd.range("datasets/", prefix=True, limit=1,
                                    revision=deleted.revision - 1)
            self.assertEqual((len(page.kvs), page.count, page.more), (1, 2, True))
            with self.assertRaises(EtcdRequestError):
                await etcd.range("datasets/a", revision=deleted.revision + 1000)
            await etcd.compact(deleted.revision)
            with self.assertRaises(Compacted):
                await etcd.range("datasets/a", revision=first.revision)
            self.assertEqual((await etcd.range("datasets/a", revision=deleted.revision)).count, 1)

        async def test_a_put_can_return_the_previous_value(self):
            etcd = (await start(self)).etcd
            self.assertEqual((await etcd.put("k", "1", prev_kv=True)).prev_kv, None)
            put = await etcd.put("k", "2", prev_kv=True)
            self.assertEqual((put.prev_kv.value, put.prev_kv.version), (b"1", 1))

        async def test_a_delete_removes_and_counts_and_a_put_after_it_starts_again(self):
            etcd = (await start(self)).etcd
            created = await etcd.put("k", "1")
            deleted = await etcd.delete("k", prev_kv=True)
            self.assertEqual((deleted.deleted, [kv.value for kv in deleted.prev_kvs]), (1, [b"1"]))
            self.assertGreater(deleted.revision, created.revision)
            self.assertEqual((await etcd.range("k")).kvs, ())
            again = await etcd.put("k", "2")
            [kv] = (await etcd.range("k")).kvs
            self.assertEqual((kv.version, kv.create_revision), (1, again.revision))

        async def test_deleting_an_absent_key_changes_no_revision(self):
            etcd = (await start(self)).etcd
            put = await etcd.put("k", "1")
            deleted = await etcd.delete("absent")
            self.assertEqual((deleted.deleted, deleted.revision), (0, put.revision))

        async def test_a_prefix_delete_removes_only_the_prefix(self):
            etcd = (await start(self)).etcd
            for key in ("leases/a", "leases/b", "leasesX"):
                await etcd.put(key, "x")
            deleted = await etcd.delete("leases/", prefix=True)
            self.assertEqual(deleted.deleted, 2)
            self.assertEqual([kv.key for kv in (await etcd.range("", prefix=True)).kvs],
                             [b"leasesX"])

        async def test_an_empty_key_is_refused(self):
            etcd = (await start(self)).etcd
            with self.assertRaises(EtcdRequestError):
                await etcd.put("", "x")
            with self.assertRaises(EtcdRequestError):
                etcd.watch("", lambda events: None)

        # transactions

        async def test_create_if_absent_succeeds_once(self):
            etcd = (await start(self)).etcd
            absent = [Compare("names/demo", "version", "==", 0)]
            first = await etcd.txn(absent, [Put("names/demo", "dataset-1")],
                                   [Range("names/demo")])
            second = await etcd.txn(absent, [Put("names/demo", "dataset-2")],
                                    [Range("names/demo")])
            self.assertTrue(first.succeeded)
            self.assertIsInstance(first.responses[0], PutResult)
            self.assertFalse(second.succeeded)
            [holder] = second.responses
            self.assertIsInstance(holder, RangeResult)
            self.assertEqual(holder.kvs[0].value, b"dataset-1")
            self.assertEqual(second.revision, first.revision)

        async def test_of_many_racing_creates_of_one_name_exactly_one_wins(self):
            etcd = (await start(self)).etcd
            absent = [Compare("names/race", "version", "==", 0)]
            results = await gatherResults([
                etcd.txn(absent, [Put("names/race", f"dataset-{i}")], [Range("names/race")])
                for i in range(20)])
            winners = [i for i, result in enumerate(results) if result.succeeded]
            self.assertEqual(len(winners), 1)
            [kv] = (await etcd.range("names/race")).kvs
            self.assertEqual(kv.value, f"dataset-{winners[0]}".encode())
            for result in results:
                if not result.succeeded:
                    self.assertEqual(result.responses[0].kvs[0].value, kv.value)

        async def test_a_txn_writes_all_its_keys_at_one_revision(self):
            etcd = (await start(self)).etcd
            result = await etcd.txn([], [Put("a", "1"), Put("b", "2"), Delete("c")])
            self.assertTrue(result.succeeded)
            self.assertIsInstance(result.responses[2], DeleteResult)
            kvs = (await etcd.range("", prefix=True)).kvs
            self.assertEqual({kv.mod_revision for kv in kvs}, {result.revision})

        async def test_compares_on_value_version_and_revisions(self):
            etcd = (await start(self)).etcd
            put = await etcd.put("k", "v")
            holds = [
                Compare("k", "value", "==", "v"), Compare("k", "value", "!=", "w"),
                Compare("k", "version", "==", 1), Compare("k", "version", ">", 0),
                Compare("k", "create_revision", "==", put.revision),
                Compare("k", "mod_revision", "<", put.revision + 1),
                Compare("k", "lease", "==", 0),
                Compare("absent", "create_revision", "==", 0),
                Compare("absent", "mod_revision", "==", 0),
            ]
            for compare in holds:
                self.assertTrue((await etcd.txn([compare], [])).succeeded, compare)
            fails = [
                Compare("k", "value", "==", "w"), Compare("k", "version", "==", 2),
                Compare("k", "mod_revision", ">", put.revision),
                Compare("absent", "value", "==", ""),
                Compare("absent", "value", "!=", "x"),
            ]
            for compare in fails:
                self.assertFalse((await etcd.txn([compare], [])).succeeded, compare)
            mixed = await etcd.txn(holds[:2] + fails[:1], [Put("k", "changed")])
            self.assertFalse(mixed.succeeded)
            self.assertEqual((await etcd.range("k")).kvs[0].value, b"v")

        async def test_a_txn_that_only_reads_changes_no_revision(self):
            etcd = (await start(self)).etcd
            put = await etcd.put("k", "v")
            result = await etcd.txn([Compare("k", "version", "==", 1)], [Range("k")])
            self.assertEqual(result.revision, put.revision)
            self.assertEqual(result.responses[0].kvs[0].value, b"v")

        async def test_a_range_after_a_put_in_one_txn_sees_the_put(self):
            etcd = (await start(self)).etcd
            result = await etcd.txn([], [Put("k", "new"), Range("k")])
            self.assertEqual(result.responses[1].kvs[0].value, b"new")

        async def test_a_txn_putting_one_key_twice_is_refused(self):
            etcd = (await start(self)).etcd
            with self.assertRaises(EtcdRequestError) as raised:
                await etcd.txn([], [Put("k", "1"), Put("k", "2")])
            self.assertIn("duplicate key", str(raised.exception))
            with self.assertRaises(EtcdRequestError):
                await etcd.txn([], [Put("k", "1"), Delete("k")])
            with self.assertRaises(EtcdRequestError):
                await etcd.txn([], [Delete("", prefix=True), Put("k", "1")])
            self.assertEqual((await etcd.range("k")).kvs, ())

        async def test_a_txn_with_one_bad_operation_changes_nothing(self):
            etcd = (await start(self)).etcd
            with self.assertRaises(LeaseNotFound):
                await etcd.txn([], [Put("a", "1"), Put("b", "2", lease=1234567)])
            with self.assertRaises(EtcdRequestError):
                await etcd.txn([], [Put("a", "1"), Delete("")])
            self.assertEqual((await etcd.range("", prefix=True)).kvs, ())

        # leases

        async def test_a_lease_keeps_its_keys_until_revoked(self):
            etcd = (await start(self)).etcd
            lease = await etcd.grant(30)
            self.assertEqual(lease.ttl, 30)
            await etcd.put("reports/node1", "state", lease=lease.id)
            [kv] = (await etcd.range("reports/node1")).kvs
            self.assertEqual(kv.lease, lease.id)
            self.assertTrue((await etcd.txn([Compare("reports/node1", "lease", "==", lease.id)],
                                            [])).succeeded)
            self.assertEqual(await etcd.keepalive(lease.id), 30)
            await etcd.revoke(lease.id)
            self.assertEqual((await etcd.range("reports/node1")).kvs, ())
            with self.assertRaises(LeaseNotFound):
                await etcd.revoke(lease.id)
            with self.assertRaises(LeaseNotFound):
                await etcd.keepalive(lease.id)

        async def test_a_put_on_an_unknown_lease_is_refused(self):
            etcd = (await start(self)).etcd
            with self.assertRaises(LeaseNotFound):
                await etcd.put("k", "v", lease=1234567)
            self.assertEqual((await etcd.range("k")).kvs, ())

        async def test_a_lease_not_kept_alive_expires_with_its_keys(self):
            harness = await start(self)
            etcd = harness.etcd
            lease = await etcd.grant(2)
            await etcd.put("reports/node1", "state", lease=lease.id)
            await etcd.put("reports/node2", "state", lease=lease.id)
            await etcd.put("stays", "x")
            events = []
            watch = etcd.watch("reports/", events.extend, prefix=True)
            self.addCleanup(watch.stop)
            await watch.created
            await harness.elapse(4.5)
            await harness.until(lambda: len(events) == 2, "both keys' deletions")
            self.assertEqual([(e.type, e.key) for e in events],
                             [("DELETE", b"reports/node1"), ("DELETE", b"reports/node2")])
            self.assertEqual(events[0].revision, events[1].revision)
            self.assertEqual([kv.key for kv in (await etcd.range("", prefix=True)).kvs],
                             [b"stays"])
            with self.assertRaises(LeaseNotFound):
                await etcd.keepalive(lease.id)

        async def test_keepalive_restarts_a_lease(self):
            harness = await start(self)
            etcd = harness.etcd
            lease = await etcd.grant(3)
            await etcd.put("k", "v", lease=lease.id)
            for _ in range(3):
                await harness.elapse(1.5)
                await etcd.keepalive(lease.id)
            self.assertEqual(len((await etcd.range("k")).kvs), 1)

        # watches

        async def test_a_watch_delivers_every_change_in_order_once(self):
            harness = await start(self)
            etcd = harness.etcd
            events = []
            watch = etcd.watch("k", events.extend)
            self.addCleanup(watch.stop)
            self.assertTrue(verifyObject(IEtcdWatch, watch))
            await watch.created
            first = await etcd.put("k", "1")
            await etcd.put("other", "x")
            second = await etcd.put("k", "2")
            deleted = await etcd.delete("k")
            await harness.until(lambda: len(events) >= 3, "three events")
            self.assertEqual([(e.type, e.kv.value, e.revision) for e in events],
                             [("PUT", b"1", first.revision), ("PUT", b"2", second.revision),
                              ("DELETE", b"", deleted.revision)])
            self.assertEqual(events[1].kv.version, 2)
            self.assertEqual(watch.next_revision, deleted.revision + 1)

        async def test_a_watcher_that_writes_still_sees_every_change_in_order(self):
            harness = await start(self)
            etcd = harness.etcd
            events = []
            writes = []

            def on_events(batch):
                events.extend(batch)
                if any(e.key == b"k" and e.kv.value == b"1" for e in batch):
                    writes.append(etcd.put("k", "echo"))

            watch = etcd.watch("k", on_events)
            self.addCleanup(watch.stop)
            await watch.created
            await etcd.put("k", "1")
            await etcd.put("k", "2")
            await harness.until(lambda: len(events) >= 3, "three events")
            await gatherResults(writes)
            revisions = [e.revision for e in events]
            self.assertEqual(revisions, sorted(set(revisions)))
            self.assertEqual(sorted(e.kv.value for e in events), [b"1", b"2", b"echo"])

        async def test_a_watch_from_a_past_revision_replays_history(self):
            harness = await start(self)
            etcd = harness.etcd
            first = await etcd.put("datasets/a", "1")
            await etcd.put("datasets/b", "2")
            await etcd.put("unwatched", "3")
            events = []
            watch = etcd.watch("datasets/", events.extend, prefix=True,
                               start_revision=first.revision)
            self.addCleanup(watch.stop)
            await harness.until(lambda: len(events) >= 2, "the two past puts")
            txn = await etcd.txn([], [Put("datasets/c", "4"), Delete("datasets/a")])
            await harness.until(lambda: len(events) >= 4, "the txn's two events")
            self.assertEqual([(e.type, e.key) for e in events],
                             [("PUT", b"datasets/a"), ("PUT", b"datasets/b"),
                              ("PUT", b"datasets/c"), ("DELETE", b"datasets/a")])
            self.assertEqual({e.revision for e in events[2:]}, {txn.revision})

        async def test_a_watch_can_carry_the_previous_value(self):
            harness = await start(self)
            etcd = harness.etcd
            await etcd.put("k", "old")
            events = []
            watch = etcd.watch("k", events.extend, prev_kv=True)
            self.addCleanup(watch.stop)
            await watch.created
            await etcd.put("k", "new")
            await harness.until(lambda: events, "one event")
            self.assertEqual((events[0].kv.value, events[0].prev_kv.value), (b"new", b"old"))

        async def test_a_stopped_watch_delivers_nothing_more(self):
            harness = await start(self)
            etcd = harness.etcd
            events = []
            watch = etcd.watch("k", events.extend)
            await watch.created
            await etcd.put("k", "1")
            await harness.until(lambda: events, "one event")
            watch.stop()
            self.assertIsNone(await watch.ended)
            await etcd.put("k", "2")
            await harness.elapse(0.3)
            self.assertEqual(len(events), 1)

        async def test_a_watch_from_a_compacted_revision_ends_saying_so(self):
            harness = await start(self)
            etcd = harness.etcd
            first = await etcd.put("k", "1")
            second = await etcd.put("k", "2")
            await etcd.compact(second.revision)
            watch = etcd.watch("k", lambda events: None, start_revision=first.revision)
            with self.assertRaises(Compacted) as raised:
                await watch.ended
            self.assertEqual(raised.exception.compact_revision, second.revision)
            self.assertIn("compacted", str(raised.exception))
            kept = etcd.watch("k", lambda events: None, start_revision=second.revision)
            self.addCleanup(kept.stop)
            await kept.created

    return EtcdContract
