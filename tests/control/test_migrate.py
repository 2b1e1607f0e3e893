"""control migrate into EtcdStore over MemoryEtcd: a populated SQLite store copied and
verified, a non-empty target refused with nothing written, the first difference named,
and the command's options checked."""

import argparse
import os

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from powerstripflocker.clients.etcd_memory import MemoryEtcd
from powerstripflocker.control import migrate as migrate_module
from powerstripflocker.control.etcdstore import EtcdStore
from powerstripflocker.control.migrate import (
    Contents, MigrationError, check_options, first_difference, migrate, open_source,
    read_source, read_target,
)
from powerstripflocker.control.command import lock_database
from powerstripflocker.control.store import Dataset, Lease, SQLiteStore
from powerstripflocker.control.store_url import BadStoreURL, EtcdURL, SQLiteURL
from powerstripflocker.cli.main import build_parser

from .helpers import NODE1, NODE2, harness
from .populated import populate


class MigrateIntoMemoryEtcdTests(TestCase):

    def setUp(self):
        self.h = harness(self)
        self.etcd = MemoryEtcd(Clock())
        self.target = EtcdStore(self.etcd)

    async def test_everything_the_store_holds_is_copied_and_reads_back_equal(self):
        await populate(self.h)
        source = read_source(self.h.store)
        # The populated store holds every kind of thing there is to copy.
        self.assertTrue(any(d.deleted for d in source.datasets))
        self.assertTrue(any(d.manifested for d in source.datasets))
        self.assertTrue(any(d.generation == 2 for d in source.datasets))
        self.assertTrue(any(d.replica_nodes for d in source.datasets))
        self.assertTrue(any(l.claimed_until for l in source.leases))
        self.assertIn(None, [l.expiration for l in source.leases])
        self.assertEqual(len(source.node_reports), 2)
        lines = []
        copied = await migrate(self.h.store, self.target, lines.append)
        self.assertEqual(copied, source)
        self.assertEqual(await read_target(self.target), source)
        self.assertEqual(await self.target.configuration_tag(), self.h.store.configuration_tag())
        for dataset in source.datasets:
            self.assertEqual(await self.target.get_dataset(dataset.dataset_id), dataset)
        self.assertEqual(lines[0], "source: 7 datasets, 3 leases, 2 node reports")
        self.assertIn("datasets: 7/7 copied", lines)
        self.assertIn("leases: 3/3 copied", lines)
        self.assertIn("node reports: 2/2 copied", lines)
        self.assertTrue(lines[-1].startswith("verified: 7 datasets, 3 leases, 2 node reports"))

    async def test_many_datasets_keep_their_order_and_leases_go_in_batches(self):
        for number in range(migrate_module.BATCH + 30):
            dataset_id = f"{(1000 - number):08d}-0000-4000-8000-000000000000"
            self.h.store.add_dataset(Dataset(dataset_id, NODE1, {"name": f"v{number}"}))
            self.h.store.put_lease(Lease(dataset_id, NODE1, None))
        lines = []
        await migrate(self.h.store, self.target, lines.append)
        self.assertEqual(await read_target(self.target), read_source(self.h.store))
        self.assertIn("datasets: 100/130 copied", lines)
        self.assertEqual([line for line in lines if line.startswith("leases")],
                         ["leases: 100/130 copied", "leases: 130/130 copied"])

    async def test_an_empty_store_copies_to_nothing(self):
        await migrate(self.h.store, self.target)
        self.assertTrue(await self.target.is_empty())

    async def test_a_target_holding_anything_is_refused_and_nothing_is_written(self):
        await populate(self.h)
        await self.etcd.put(b"someone/else", b"x")
        before = await self.etcd.range(b"", prefix=True)
        with self.assertRaises(MigrationError) as raised:
            await migrate(self.h.store, self.target)
        self.assertIn("the target is not empty", str(raised.exception))
        self.assertIn("nothing was written", str(raised.exception))
        after = await self.etcd.range(b"", prefix=True)
        self.assertEqual((after.kvs, after.revision), (before.kvs, before.revision))

    async def test_a_copy_that_reads_back_differently_is_an_error_naming_it(self):
        await populate(self.h)

        class Forgetful(EtcdStore):
            async def _leases(self):
                return (await EtcdStore.leases(self))[1:]

            def leases(self):
                return Deferred.fromCoroutine(self._leases())

        with self.assertRaises(MigrationError) as raised:
            await migrate(self.h.store, Forgetful(self.etcd))
        self.assertIn("the copy differs from the source: lease 1 differs", str(raised.exception))


class FirstDifferenceTests(TestCase):
    A = Dataset("a", NODE1, {"name": "a"})
    B = Dataset("b", NODE2)

    def test_equal_contents_have_none(self):
        contents = Contents([self.A, self.B], [Lease("a", NODE1, 5.0)], [(NODE1, {}, 1.0)])
        self.assertIsNone(first_difference(contents, contents))

    def test_a_changed_field_names_the_dataset_and_both_values(self):
        changed = Dataset("a", NODE1, {"name": "a"}, generation=2)
        difference = first_difference(Contents([self.A, self.B], [], []),
                                      Contents([changed, self.B], [], []))
        self.assertIn("dataset 1 differs", difference)
        self.assertIn("generation=1", difference)
        self.assertIn("generation=2", difference)

    def test_the_order_counts(self):
        self.assertIn("dataset 1 differs", first_difference(
            Contents([self.A, self.B], [], []), Contents([self.B, self.A], [], [])))

    def test_a_missing_or_extra_item_is_named_with_where_it_is(self):
        self.assertEqual(
            first_difference(Contents([self.A, self.B], [], []), Contents([self.A], [], [])),
            "2 datasets in the source, 1 in the target: the first extra one, b, is in the source")
        self.assertEqual(
            first_difference(Contents([], [], []), Contents([], [], [(NODE2, {}, 1.0)])),
            f"0 node reports in the source, 1 in the target: the first extra one, {NODE2}, "
            "is in the target")


class OptionsTests(TestCase):

    def options(self, *argv):
        return build_parser().parse_args(["control", "migrate", *argv])

    def test_control_alone_still_runs_the_service(self):
        from powerstripflocker.control import command
        options = build_parser().parse_args(["control", "--db", "/tmp/x.db"])
        self.assertEqual((options.run, options.db, options.control_action),
                         (command.run, "/tmp/x.db", None))

    def test_control_migrate_runs_migrate_with_its_urls(self):
        options = self.options("--from", "sqlite:///srv/control.db",
                               "--to", "etcd://10.0.0.1:2379,10.0.0.2:2379/psf")
        self.assertIs(options.run, migrate_module.run)
        source, target, tls = check_options(options)
        self.assertEqual(source, SQLiteURL("/srv/control.db"))
        self.assertIsInstance(target, EtcdURL)
        self.assertEqual(str(target), "etcd://10.0.0.1:2379,10.0.0.2:2379/psf")
        self.assertIsNone(tls)

    def test_etcds_takes_its_tls_files(self):
        options = self.options("--from", "sqlite:///c.db", "--to", "etcds://e1:2379/psf",
                               "--to-ca", "ca.pem", "--to-cert", "c.pem", "--to-key", "k.pem")
        tls = check_options(options)[2]
        self.assertEqual((tls.ca, tls.cert, tls.key), ("ca.pem", "c.pem", "k.pem"))

    def test_bad_urls_and_wrong_directions_are_refused_naming_the_option(self):
        cases = [
            (("--from", "/srv/control.db", "--to", "etcd://e:2379"), "--from: '/srv/control.db'"),
            (("--from", "sqlite:///c.db", "--to", "etcd://e:99999"), "--to: 'etcd://e:99999'"),
            (("--from", "etcd://e:2379", "--to", "etcd://f:2379"), "--from etcd://e:2379"),
            (("--from", "sqlite:///c.db", "--to", "sqlite:///d.db"), "--to sqlite:///d.db"),
            (("--from", "sqlite:///c.db", "--to", "etcd://e:2379", "--to-ca", "ca.pem"),
             "--to-ca given, but etcd://e:2379 is not etcds://"),
        ]
        for argv, message in cases:
            with self.assertRaises(BadStoreURL) as raised:
                check_options(self.options(*argv))
            self.assertIn(message, str(raised.exception))

    def test_a_bad_url_exits_2_without_touching_anything(self):
        options = argparse.Namespace(source="sqlite://host/c.db", target="etcd://e:2379",
                                     to_ca=None, to_cert=None, to_key=None)
        self.assertEqual(migrate_module.run(options), 2)


class OpenSourceTests(TestCase):

    def path(self, content=None):
        path = os.path.abspath(os.path.join(self.mktemp(), "control.db"))
        os.makedirs(os.path.dirname(path))
        if content is not None:
            with open(path, "wb") as database:
                database.write(content)
        return path

    def test_a_missing_a_corrupt_or_a_locked_database_is_refused_naming_it(self):
        missing, corrupt, locked = self.path(), self.path(b"not a database " * 20), self.path()
        SQLiteStore(locked).close()
        holder = lock_database(locked)
        self.addCleanup(holder.close)
        for path, message in ((missing, "there is no database at"),
                              (corrupt, "cannot open"),
                              (locked, "another control service is using")):
            with self.assertRaises(MigrationError) as raised:
                open_source(SQLiteURL(path))
            self.assertIn(message, str(raised.exception))
            self.assertIn(path, str(raised.exception))
        # Refused while it was held, not after.
        holder.close()
        lock, store = open_source(SQLiteURL(locked))
        store.close()
        lock.close()
