"""A control service and agents as real processes on loopback, driven over HTTP."""

import json
import os
import secrets
import ssl
import time
import urllib.error
import urllib.request

from tests.support.processes import ManagedProcess, free_port


class HTTPFailure(Exception):
    def __init__(self, code, body):
        super().__init__(f"HTTP {code}: {body}")
        self.code = code
        self.body = body


def http(method, url, body=None, token=None, timeout=30, ca=None):
    data = json.dumps(body).encode() if body is not None else None
    context = ssl.create_default_context(cafile=ca) if ca else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        raise HTTPFailure(e.code, e.read().decode("utf-8", "replace")) from None


def wait_for(predicate, timeout=60.0, what="condition", interval=0.02, on_timeout=None):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    extra = on_timeout() if on_timeout else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}\n{extra}")


class Agent:
    def __init__(self, cluster, name, data_root):
        self.cluster = cluster
        self.name = name
        self.data_root = data_root
        self.port = free_port()
        scheme = "https" if cluster.tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.log_path = os.path.join(cluster.base, f"{name}.log")
        self.process = None
        self.uuid = None
        self.options = []

    def start(self, faults=None, options=None):
        """Start (or restart) the agent; options are extra command line arguments, kept
        for later restarts."""
        if options is not None:
            self.options = list(options)
        env = {"POWERSTRIP_FLOCKER_FAULTS": faults or ""}
        listen = f"tcp:{self.port}:interface=127.0.0.1"
        tls = self.cluster.tls
        if tls:
            listen = (f"ssl:{self.port}:interface=127.0.0.1:privateKey={tls['key']}:"
                      f"certKey={tls['cert']}")
        args = ["agent", "--control-url", self.cluster.control_url, "--data-root",
                self.data_root, "--backend", self.cluster.backend,
                "--listen", listen, "--log-level", "debug", *self.options]
        if tls:
            args += ["--tls-ca", tls["ca"]]
        if self.cluster.token_file:
            args += ["--cluster-token-file", self.cluster.token_file]
        self.process = ManagedProcess.command(args, self.log_path, env=env).start()
        self.process.wait_until(lambda: http("GET", f"{self.url}/agent/v1/health",
                                             ca=tls["ca"] if tls else None),
                                what="answering /agent/v1/health")
        with open(os.path.join(self.data_root, "node-uuid"), encoding="utf-8") as f:
            self.uuid = f.read().strip()
        return self

    def kill(self):
        self.process.kill()

    def stop(self):
        if self.process is not None:
            self.process.stop()

    def _ca(self):
        return self.cluster.tls["ca"] if self.cluster.tls else None

    def metrics(self):
        return http("GET", f"{self.url}/agent/v1/metrics", token=self.cluster.token,
                    ca=self._ca())

    def resume_faults(self):
        return http("POST", f"{self.url}/agent/v1/faults/resume", token=self.cluster.token,
                    ca=self._ca())

    def path(self, dataset_id):
        return os.path.join(self.data_root, "datasets", dataset_id)

    def tail(self):
        return f"--- {self.name} ---\n{self.process.tail(60) if self.process else ''}"


class Cluster:
    def __init__(self, base, backend="directory", token=None, tls=None):
        self.base = base
        self.backend = backend
        # The control service needs one: a cluster always has a token.
        self.token = token or secrets.token_hex(32)
        self.tls = tls          # {"ca", "cert", "key"} PEM paths: agents talk https
        self.token_file = os.path.join(base, "cluster-token")
        with open(self.token_file, "w") as f:
            f.write(self.token + "\n")
        self.control_port = free_port()
        self.control_url = f"http://127.0.0.1:{self.control_port}"
        self.db = os.path.join(base, "control.sqlite")
        self.control = None
        self.agents = {}

    def start_control(self):
        args = ["control", "--listen", f"tcp:{self.control_port}:interface=127.0.0.1",
                "--db", self.db]
        if self.token_file:
            args += ["--cluster-token-file", self.token_file]
        self.control = ManagedProcess.command(
            args, os.path.join(self.base, "control.log")).start()
        self.control.wait_for_http(f"{self.control_url}/v1/version")
        return self

    def stop_control(self):
        if self.control is not None:
            self.control.stop()

    def add_agent(self, name, data_root, faults=None, options=None):
        agent = Agent(self, name, data_root)
        self.agents[name] = agent
        return agent.start(faults=faults, options=options)

    def stop(self):
        for agent in self.agents.values():
            agent.stop()
        self.stop_control()

    def logs(self):
        parts = [agent.tail() for agent in self.agents.values()]
        if self.control is not None:
            parts.append(f"--- control ---\n{self.control.tail(30)}")
        return "\n".join(parts)

    # the v1 API

    def api(self, method, path, body=None):
        return http(method, f"{self.control_url}/v1{path}", body, token=self.token)

    def create_dataset(self, primary, **extra):
        return self.api("POST", "/configuration/datasets", dict(primary=primary, **extra))

    def move(self, dataset_id, primary):
        return self.api("POST", f"/configuration/datasets/{dataset_id}", {"primary": primary})

    def state(self, dataset_id):
        return [d for d in self.api("GET", "/state/datasets") if d["dataset_id"] == dataset_id]

    def primary_in_state(self, dataset_id):
        entries = self.state(dataset_id)
        return entries[0] if len(entries) == 1 and entries[0].get("path") else None

    def wait_until_on(self, dataset_id, agent, timeout=120.0):
        def there():
            entry = self.primary_in_state(dataset_id)
            return entry if entry and entry["primary"] == agent.uuid else None
        return wait_for(there, timeout, f"{dataset_id} on {agent.name}",
                        on_timeout=self.logs)
