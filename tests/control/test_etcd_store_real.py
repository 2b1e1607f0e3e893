"""The IAsyncStore contract on EtcdStore against a real three-member etcd cluster on
loopback, each test in a key prefix of its own, its second store on a client of its own."""

import uuid

import pytest
from twisted.internet import reactor

from powerstripflocker.control.etcdstore import EtcdStore
from powerstripflocker.clients.etcd_client import EtcdClient

from ..support.etcd import SharedCluster
from .async_store_contract import make_async_store_tests


class RealEtcdStores:
    def __init__(self, testcase, cluster):
        self.testcase = testcase
        self.url = f"{cluster.endpoint}/test-{uuid.uuid4().hex[:12]}"
        self.store = self.another()

    def another(self):
        store = EtcdStore(EtcdClient(reactor, self.url))
        self.testcase.addCleanup(store.close)
        return store


async def open_real_etcd_store(testcase):
    return RealEtcdStores(testcase, SharedCluster.get())


@pytest.mark.etcd
class RealEtcdStoreContractTests(make_async_store_tests(open_real_etcd_store)):
    @classmethod
    def tearDownClass(cls):
        SharedCluster.stop()
