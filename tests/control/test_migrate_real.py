"""control migrate into a real three-member etcd cluster on loopback: through migrate()
and as the command run in a process of its own, each test in a key prefix of its own."""

import os
import subprocess
import sys
import uuid

import pytest
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from powerstripflocker.clients.etcd_client import EtcdClient
from powerstripflocker.control.etcdstore import EtcdStore
from powerstripflocker.control.migrate import MigrationError, migrate, read_source, read_target
from powerstripflocker.control.store import SQLiteStore

from ..support.etcd import EtcdCluster, SharedCluster
from .helpers import NODE1, NODE2, REPO_ROOT, harness
from .populated import DATASETS, populate


def command(*argv):
    return subprocess.run(
        [sys.executable, "-m", "powerstripflocker", "control", "migrate", *argv],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)


@pytest.mark.etcd
class MigrateIntoRealEtcdTests(TestCase):

    @classmethod
    def tearDownClass(cls):
        SharedCluster.stop()

    def setUp(self):
        self.url = f"{SharedCluster.get().endpoint}/migrate-{uuid.uuid4().hex[:12]}"
        self.h = harness(self)

    def store(self):
        store = EtcdStore(EtcdClient(reactor, self.url))
        self.addCleanup(store.close)
        return store

    async def test_a_populated_store_is_copied_and_reads_back_equal(self):
        await populate(self.h)
        source = read_source(self.h.store)
        lines = []
        await migrate(self.h.store, self.store(), lines.append)
        # Read back by another client, as a replica would.
        reader = self.store()
        self.assertEqual(await read_target(reader), source)
        self.assertEqual(await reader.configuration_tag(), self.h.store.configuration_tag())
        self.assertTrue(lines[-1].startswith("verified: 7 datasets, 3 leases, 2 node reports"))

    async def test_the_cluster_carries_on_against_the_migrated_store(self):
        ids = await populate(self.h)
        _, before = await self.h.request("GET", "/v1/configuration/datasets")
        await migrate(self.h.store, self.store(), lambda line: None)
        # A control replica on etcd, on the same clock as the SQLite service was.
        replica = harness(self, etcd=EtcdClient(reactor, self.url), clock=self.h.clock,
                          listen=True)
        self.addCleanup(replica.etcd.close)
        response, after = await replica.request("GET", "/v1/configuration/datasets")
        self.assertEqual(after, before)
        self.assertEqual(response.headers.getRawHeaders("X-Configuration-Tag"),
                         [self.h.store.configuration_tag()])
        # The migrated lease still refuses a move away from its holder.
        response, body = await replica.request(
            "POST", f"{DATASETS}/{ids[0]}", {"primary": NODE2})
        self.assertEqual(response.code, 409, body)
        # A claim finds the migrated dataset of its name (no second one) on its node.
        response, body = await replica.request(
            "POST", "/v1/configuration/claims", {"name": "volume4", "node_uuid": NODE1})
        self.assertEqual((response.code, body["dataset_id"]), (202, ids[4]))
        # And new work goes on: a create, a move of an unleased dataset, a delete.
        created = await replica.create(primary=NODE2, metadata={"name": "after"})
        response, body = await replica.request(
            "POST", f"{DATASETS}/{ids[5]}", {"primary": NODE2})
        self.assertEqual((response.code, body["primary"]), (200, NODE2))
        response, body = await replica.request("DELETE", f"{DATASETS}/{created['dataset_id']}")
        self.assertEqual((response.code, body["deleted"]), (200, True))
        _, final = await replica.request("GET", "/v1/configuration/datasets")
        self.assertEqual(len(final), len(before) + 1)

    async def test_a_non_empty_target_is_refused_with_nothing_written(self):
        await populate(self.h)
        client = EtcdClient(reactor, self.url)
        self.addCleanup(client.close)
        await client.put(b"datasets/someone-elses", b"{}")
        before = await client.range(b"", prefix=True)
        with self.assertRaises(MigrationError):
            await migrate(self.h.store, self.store())
        after = await client.range(b"", prefix=True)
        self.assertEqual((after.kvs, after.revision), (before.kvs, before.revision))

    async def test_the_command_copies_then_refuses_a_second_time(self):
        await populate(self.h)
        source = read_source(self.h.store)
        self.h.close()  # the control service is stopped before a migration
        self.addCleanup(self.h.open, start=False)
        db = f"sqlite://{os.path.abspath(self.h.db_path)}"

        first = await deferToThread(command, "--from", db, "--to", self.url)
        self.assertEqual(first.returncode, 0, first.stderr)
        self.assertIn("source: 7 datasets, 3 leases, 2 node reports", first.stdout)
        self.assertIn("datasets: 7/7 copied", first.stdout)
        self.assertIn("verified: 7 datasets, 3 leases, 2 node reports", first.stdout)
        self.assertEqual(await read_target(self.store()), source)

        again = await deferToThread(command, "--from", db, "--to", self.url)
        self.assertEqual(again.returncode, 1)
        self.assertIn("the target is not empty", again.stderr)
        self.assertEqual(await read_target(self.store()), source)
        # The source is left as it was.
        left = SQLiteStore(self.h.db_path)
        self.addCleanup(left.close)
        self.assertEqual(read_source(left), source)

    async def test_the_command_refuses_a_bad_url_and_a_missing_database(self):
        bad = await deferToThread(command, "--from", "sqlite://host/c.db", "--to", self.url)
        self.assertEqual(bad.returncode, 2)
        self.assertIn("--from: 'sqlite://host/c.db': a sqlite URL names no host", bad.stderr)
        missing = await deferToThread(
            command, "--from", f"sqlite://{os.path.abspath(self.mktemp())}/none.db", "--to",
            self.url)
        self.assertEqual(missing.returncode, 1)
        self.assertIn("there is no database at", missing.stderr)
        self.assertTrue(await self.store().is_empty())


@pytest.mark.etcd
class MigrateIntoTLSEtcdTests(TestCase):
    """etcds:// with --to-ca, --to-cert and --to-key: members that ask for a client
    certificate signed by their CA."""

    @classmethod
    def setUpClass(cls):
        cls.cluster = EtcdCluster(size=1, tls=True).start()

    @classmethod
    def tearDownClass(cls):
        cls.cluster.stop()

    async def test_the_command_copies_over_tls_with_a_client_certificate(self):
        h = harness(self)
        await populate(h)
        source = read_source(h.store)
        h.close()
        self.addCleanup(h.open, start=False)
        url = f"{self.cluster.endpoint}/migrate-tls"
        files = self.cluster.tls_files
        db = f"sqlite://{os.path.abspath(h.db_path)}"
        done = await deferToThread(command, "--from", db, "--to", url, "--to-ca", files.ca,
                                   "--to-cert", files.cert, "--to-key", files.key)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("verified: 7 datasets, 3 leases, 2 node reports", done.stdout)
        store = EtcdStore(EtcdClient(reactor, url, tls=files))
        self.addCleanup(store.close)
        self.assertEqual(await read_target(store), source)
        # Without its client certificate, etcd refuses the connection: nothing is copied.
        refused = await deferToThread(command, "--from", db, "--to", f"{url}-other",
                                      "--to-ca", files.ca)
        self.assertEqual(refused.returncode, 1)
        self.assertIn("control migrate: ", refused.stderr)
