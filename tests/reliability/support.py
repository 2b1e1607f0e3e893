"""Real processes for the reliability suite: the control service and agents of
tests/agent/cluster.py, plus adapters, and the questions the fault tests ask of them."""

import json
import os
import urllib.error
import urllib.request

from tests.agent.cluster import Cluster, http, wait_for
from tests.agent.support import fill_sample_tree, manifest
from tests.support.processes import ManagedProcess, free_port

MiB = 1 << 20
HOOK_PATH = "/flocker-adapter"

__all__ = ["Adapter", "ReliabilityCluster", "MiB", "fill_sample_tree", "manifest", "http",
           "wait_for", "pre_hook", "post_raw", "volume_mounts"]


def pre_hook(names, request="/v1.41/containers/create?name=c"):
    body = {"Image": "busybox", "Cmd": ["true"],
            "HostConfig": {"Binds": [f"/flocker/{name}:/data{i}" for i, name in
                                     enumerate(names)] + ["/srv/plain:/plain:ro"]}}
    return {"PowerstripProtocolVersion": 1, "Type": "pre-hook",
            "ClientRequest": {"Method": "POST", "Request": request,
                              "Body": json.dumps(body)}}


def volume_mounts(answer):
    """(binds left as they were, ["SOURCE:TARGET" of each volume's bind mount]) of a
    pre-hook's answer: the adapter turns each /flocker bind into a Mounts entry."""
    host_config = json.loads(answer["ModifiedClientRequest"]["Body"])["HostConfig"]
    return host_config.get("Binds", []), [f"{mount['Source']}:{mount['Target']}"
                                          for mount in host_config.get("Mounts", [])]


def post_raw(url, data, timeout=60, content_type="application/json"):
    """POST bytes; (status, body bytes) whatever the status."""
    request = urllib.request.Request(url, data=data, method="POST")
    request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Adapter:
    """One node's `powerstrip-flocker adapter` process."""

    def __init__(self, cluster, name, node_uuid, timeout=10.0, options=()):
        self.cluster = cluster
        self.name = name
        self.node_uuid = node_uuid
        self.timeout = timeout
        self.options = list(options)  # more command line arguments
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(cluster.base, f"{name}.log")
        self.process = None

    def start(self):
        self.process = ManagedProcess.command(
            ["adapter", "--control-url", self.cluster.control_url,
             "--node-uuid", self.node_uuid, "--timeout", str(self.timeout),
             "--request-timeout", "5", "--cluster-token-file", self.cluster.token_file,
             "--listen", f"tcp:{self.port}:interface=127.0.0.1", *self.options],
            self.log_path).start()
        self.process.wait_until(lambda: http("GET", f"{self.url}/healthz", timeout=5),
                                what="answering /healthz")
        return self

    def hook(self, document, timeout=60):
        """(status, decoded answer) of one hook."""
        status, body = post_raw(self.url + HOOK_PATH, json.dumps(document).encode(), timeout)
        return status, json.loads(body)

    def peak_rss(self):
        with open(f"/proc/{self.process.process.pid}/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM")

    def kill(self):
        self.process.kill()

    def stop(self):
        if self.process is not None:
            self.process.stop()

    def tail(self):
        return f"--- {self.name} ---\n{self.process.tail(40) if self.process else ''}"


class ReliabilityCluster(Cluster):
    """A control service, agents and adapters on loopback, with kill -9 for each."""

    def __init__(self, base):
        super().__init__(base, "directory")
        self.adapters = {}

    def add_adapter(self, name, agent, timeout=10.0, options=()):
        adapter = Adapter(self, name, agent.uuid, timeout=timeout, options=options)
        self.adapters[name] = adapter
        return adapter.start()

    def kill_control(self):
        self.control.kill()

    def stop(self):
        for adapter in self.adapters.values():
            adapter.stop()
        super().stop()

    def logs(self):
        return "\n".join([super().logs()] + [a.tail() for a in self.adapters.values()])

    def configuration(self):
        """(tag, [datasets]) of /v1/configuration/datasets."""
        request = urllib.request.Request(f"{self.control_url}/v1/configuration/datasets",
                                         headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.headers["X-Configuration-Tag"], json.loads(response.read())

    def role(self, agent, dataset_id):
        """The role of agent's copy of dataset_id on disk ("primary", "handed-off"), or None."""
        try:
            with open(os.path.join(agent.data_root, "meta", f"{dataset_id}.json")) as f:
                return json.load(f).get("role")
        except FileNotFoundError:
            return None

    def intact_primaries(self, dataset_id, original):
        """Names of the agents holding an intact primary copy of dataset_id on disk."""
        found = []
        for agent in self.agents.values():
            path = agent.path(dataset_id)
            if self.role(agent, dataset_id) == "primary" and os.path.isdir(path) \
                    and manifest(path) == original:
                found.append(agent.name)
        return found

    def held(self, agent, point=None, timeout=60):
        """Wait until agent's fault injection holds a transfer (at point, if given)."""
        def paused():
            return [p for p in agent.metrics()["fault_paused"]
                    if point is None or p.get("point") == point]
        return wait_for(paused, timeout, f"{agent.name} to hold at {point or 'a byte count'}",
                        on_timeout=self.logs)[0]
