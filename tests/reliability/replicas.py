"""The reliability suite's process cluster with its control service as several replicas
on one real three-member etcd cluster (issue 14): agents and adapters are given the
replicas' URLs as their --control-url list and fail over between them."""

import json
import os
import urllib.request

from tests.agent.cluster import http
from tests.support.etcd import EtcdCluster
from tests.support.processes import ManagedProcess, free_port

from .support import ReliabilityCluster

STORE_PREFIX = "psf-replicas"


class ControlReplica:
    """One `powerstrip-flocker control` process on the cluster's etcd store."""

    def __init__(self, cluster, name):
        self.cluster = cluster
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(cluster.base, f"{name}.log")
        self.process = None

    def start(self):
        self.process = ManagedProcess.command(
            ["control", "--listen", f"tcp:{self.port}:interface=127.0.0.1",
             "--store", self.cluster.store, "--cluster-token-file", self.cluster.token_file],
            self.log_path).start()
        self.process.wait_for_http(f"{self.url}/v1/version")
        return self

    @property
    def running(self):
        return self.process is not None and self.process.process.poll() is None

    def kill(self):
        """kill -9, as when its machine dies."""
        self.process.kill()

    def stop(self):
        if self.process is not None:
            self.process.stop()

    def tail(self):
        return f"--- {self.name} ---\n{self.process.tail(30) if self.process else ''}"


class ReplicatedCluster(ReliabilityCluster):
    """ReliabilityCluster whose control service is `replicas` control processes on a
    three-member etcd cluster of its own (SkipTest without Debian's etcd-server).

    control_url is the replicas' comma-separated list, as the agents and adapters get
    it; api() and configuration() ask one running replica (the first, or the one given)."""

    def __init__(self, base, replicas=2):
        super().__init__(base)
        os.makedirs(os.path.join(base, "etcd"))
        self.etcd = EtcdCluster(os.path.join(base, "etcd"))
        self.store = f"{self.etcd.endpoint}/{STORE_PREFIX}"
        self.replicas = [ControlReplica(self, f"control{i}") for i in range(1, replicas + 1)]
        self.control_url = ",".join(replica.url for replica in self.replicas)

    def start_control(self):
        self.etcd.start()
        for replica in self.replicas:
            replica.start()
        return self

    def kill_control(self):
        raise AssertionError("kill one replica (kill_replica) or the etcd leader instead")

    def kill_replica(self, replica):
        replica.kill()
        return replica

    def restart_replica(self, replica):
        return replica.start()

    def stop_control(self):
        for replica in self.replicas:
            replica.stop()

    def stop(self):
        try:
            super().stop()
        finally:
            self.etcd.stop()

    def logs(self):
        members = [f"--- etcd {m.name} ---\n{m.tail(10)}" for m in self.etcd.members]
        return "\n".join([super().logs()] + [r.tail() for r in self.replicas] + members)

    def live_replica(self, replica=None):
        if replica is not None:
            return replica
        for candidate in self.replicas:
            if candidate.running:
                return candidate
        raise AssertionError("no control replica is running")

    def api(self, method, path, body=None, replica=None):
        return http(method, f"{self.live_replica(replica).url}/v1{path}", body,
                    token=self.token)

    def configuration(self, replica=None):
        """(tag, [datasets]) of /v1/configuration/datasets, through one replica."""
        request = urllib.request.Request(
            f"{self.live_replica(replica).url}/v1/configuration/datasets",
            headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.headers["X-Configuration-Tag"], json.loads(response.read())
