"""The IEtcd contract with EtcdClient against a real three-member etcd cluster on
loopback, each test in a key prefix of its own; and the client over etcds://."""

import uuid
from unittest import SkipTest

import pytest
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from powerstripflocker.clients.etcd import EtcdUnavailable
from powerstripflocker.clients.etcd_client import EtcdClient, TLSFiles

from .etcd_contract import make_etcd_tests
from .support import etcd as etcd_support
from .support.etcd import EtcdCluster, SharedCluster, make_certificates

WAIT_SECONDS = 10.0


class RealHarness:
    def __init__(self, etcd):
        self.etcd = etcd

    async def elapse(self, seconds):
        await deferLater(reactor, seconds, lambda: None)

    async def until(self, predicate, what):
        waited = 0.0
        while not predicate():
            if waited > WAIT_SECONDS:
                raise AssertionError(f"not {what} after {WAIT_SECONDS:g}s")
            await deferLater(reactor, 0.02, lambda: None)
            waited += 0.02


def client_for(testcase, cluster, prefix=None):
    prefix = prefix or f"test-{uuid.uuid4().hex[:12]}"
    etcd = EtcdClient(reactor, f"{cluster.endpoint}/{prefix}")
    testcase.addCleanup(etcd.close)
    return etcd


async def start_real_etcd(testcase):
    return RealHarness(client_for(testcase, SharedCluster.get()))


@pytest.mark.etcd
class RealEtcdContractTests(make_etcd_tests(start_real_etcd)):
    @classmethod
    def tearDownClass(cls):
        SharedCluster.stop()

    async def test_a_prefix_is_a_key_space_of_its_own(self):
        cluster = SharedCluster.get()
        mine, theirs = client_for(self, cluster), client_for(self, cluster)
        await mine.put("datasets/a", "mine")
        await theirs.put("datasets/a", "theirs")
        self.assertEqual([kv.value for kv in (await mine.range("", prefix=True)).kvs], [b"mine"])
        await theirs.delete("", prefix=True)
        self.assertEqual((await mine.range("datasets/a")).kvs[0].value, b"mine")


@pytest.mark.etcd
class TLSEtcdTests(TestCase):
    """etcds://: the members present certificates signed by the cluster's CA and ask for
    the client's."""

    @classmethod
    def setUpClass(cls):
        cls.cluster = EtcdCluster(size=1, tls=True).start()

    @classmethod
    def tearDownClass(cls):
        cls.cluster.stop()

    def client(self, tls, **options):
        etcd = EtcdClient(reactor, self.cluster.endpoint + "/tls", tls=tls, **options)
        self.addCleanup(etcd.close)
        return etcd

    async def test_a_client_with_the_ca_and_its_certificate_reads_writes_and_watches(self):
        etcd = self.client(self.cluster.tls_files)
        events = []
        watch = etcd.watch("k", events.extend)
        self.addCleanup(watch.stop)
        await watch.created
        await etcd.put("k", "over tls")
        self.assertEqual((await etcd.range("k")).kvs[0].value, b"over tls")
        await RealHarness(etcd).until(lambda: events, "the put's event")

    async def test_a_client_without_a_certificate_is_refused_clearly(self):
        files = self.cluster.tls_files
        etcd = self.client(TLSFiles(ca=files.ca), call_timeout=3.0, backoff=0.05)
        with self.assertRaises(EtcdUnavailable) as raised:
            await etcd.put("k", "v")
        self.assertIn("SSL", str(raised.exception))

    async def test_a_member_whose_certificate_another_ca_signed_is_not_trusted(self):
        other = make_certificates(self.cluster.base_dir + "/other")
        etcd = self.client(TLSFiles(other["ca"], other["client"], other["client-key"]),
                           call_timeout=3.0, backoff=0.05)
        with self.assertRaises(EtcdUnavailable) as raised:
            await etcd.range("k")
        self.assertIn("certificate verify failed", str(raised.exception))


class HarnessTests(TestCase):
    def test_a_missing_etcd_skips_saying_how_to_install_it(self):
        self.patch(etcd_support, "ETCD", "etcd-not-installed-here")
        with self.assertRaises(SkipTest) as raised:
            EtcdCluster(size=1)
        self.assertIn("apt-get install etcd-server", str(raised.exception))
