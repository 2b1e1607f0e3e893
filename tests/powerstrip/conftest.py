"""A real dockerd, a test adapter and proxies in front of it, shared by the e2e tests."""

import dataclasses
import json
import os
import sys

import pytest

from tests.support.dockerd import DockerDaemon, ensure_busybox_image, missing_requirements
from tests.support.processes import ManagedProcess

PASS_THROUGH = """\
version: 1
endpoints:
  "POST /*/containers/create":
    pre: [echo]
    post: [echo]
  "POST /containers/create":
    pre: [echo]
adapters:
  echo: http://127.0.0.1:{port}/echo
"""

CATCH_ALL = """\
version: 1
endpoints:
  "* *":
    pre: [echo, echo]
adapters:
  echo: http://127.0.0.1:{port}/echo
"""

# Powerstrip's own pass-through configuration: null adapters before and after everything
EVERYTHING_PRE_AND_POST = """\
version: 1
endpoints:
  "* *":
    pre: [echo]
    post: [echo]
adapters:
  echo: http://127.0.0.1:{port}/echo
"""

REFUSING = """\
version: 1
endpoints:
  "POST /*/containers/create":
    pre: [refuse]
adapters:
  refuse: http://127.0.0.1:{port}/status/500?message=nope
"""


@dataclasses.dataclass(frozen=True)
class DockerEnvironment:
    """dockerd, and proxies in front of it; plain: the same proxies with --no-fast-path."""

    daemon: DockerDaemon
    proxy: str
    refusing: str
    call_log: str
    catch_all: str = None
    pre_and_post: str = None
    plain: dict = dataclasses.field(default_factory=dict)

    @property
    def direct(self):
        return self.daemon.host

    def plain_relay(self):
        """This environment with the proxy and catch_all that relay without the fast path."""
        return dataclasses.replace(self, **self.plain)

    def hook_calls(self):
        with open(self.call_log) as log:
            return [json.loads(line) for line in log]


def _start_proxy(run_dir, name, config_text, docker_host, *options):
    config = os.path.join(run_dir, f"{name}.yml")
    with open(config, "w") as out:
        out.write(config_text)
    sock = os.path.join(run_dir, f"{name}.sock")
    proxy = ManagedProcess.command(
        ["proxy", "--config", config, "--listen", f"unix://{sock}", "--docker", docker_host,
         "--log-level", "warn", *options],
        os.path.join(run_dir, f"{name}.log")).start()
    proxy.wait_until(lambda: os.path.exists(sock), what=f"listening on {sock}")
    return proxy, f"unix://{sock}"


@pytest.fixture
def docker_env(docker_environment):
    """The shared environment (test_e2e.py also runs each test through its plain proxies)."""
    return docker_environment


@pytest.fixture(scope="session")
def docker_environment(tmp_path_factory):
    reason = missing_requirements()
    if reason:
        pytest.skip(f"end-to-end test: {reason}")
    base = tmp_path_factory.mktemp("e2e")
    daemon = DockerDaemon(base).start()
    started = []
    try:
        ensure_busybox_image(daemon)
        port_file = os.path.join(daemon.run_dir, "adapter.port")
        call_log = os.path.join(daemon.run_dir, "adapter-calls.jsonl")
        open(call_log, "w").close()
        adapter = ManagedProcess(
            [sys.executable, "-m", "tests.powerstrip.adapters", port_file, call_log],
            os.path.join(base, "adapter.log")).start()
        started.append(adapter)
        adapter.wait_until(lambda: os.path.exists(port_file) and open(port_file).read())
        port = int(open(port_file).read())
        proxy, proxy_host = _start_proxy(
            daemon.run_dir, "proxy", PASS_THROUGH.format(port=port), daemon.host)
        started.append(proxy)
        refusing, refusing_host = _start_proxy(
            daemon.run_dir, "refusing", REFUSING.format(port=port), daemon.host)
        started.append(refusing)
        catch_all, catch_all_host = _start_proxy(
            daemon.run_dir, "catchall", CATCH_ALL.format(port=port), daemon.host)
        started.append(catch_all)
        pre_and_post, pre_and_post_host = _start_proxy(
            daemon.run_dir, "preandpost", EVERYTHING_PRE_AND_POST.format(port=port), daemon.host)
        started.append(pre_and_post)
        plain = {}
        for attribute, config_text in (("proxy", PASS_THROUGH), ("catch_all", CATCH_ALL)):
            process, plain[attribute] = _start_proxy(
                daemon.run_dir, f"{attribute}-plain", config_text.format(port=port),
                daemon.host, "--no-fast-path")
            started.append(process)
        yield DockerEnvironment(daemon, proxy_host, refusing_host, call_log, catch_all_host,
                                pre_and_post_host, plain)
    finally:
        for process in reversed(started):
            process.stop()
        # leave no containers running into the daemon's shutdown
        if daemon.process is not None and daemon.process.poll() is None:
            leftovers = daemon.run("ps", "-aq", check=False).stdout.decode().split()
            if leftovers:
                daemon.run("rm", "-f", *leftovers, check=False)
        daemon.stop()
