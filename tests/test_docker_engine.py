import os
import uuid

import pytest
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from powerstripflocker.clients.docker import (
    DockerEngineClient, DockerUnavailable, MemoryDockerEngine, Mount,
)
from powerstripflocker.localcluster.machine import import_busybox_image, missing_requirements

from .docker_contract import make_docker_engine_tests
from .support.dockerd import DockerDaemon


class MemoryHarness:
    def __init__(self):
        self.engine = MemoryDockerEngine(Clock())

    async def run(self, name, source):
        return self.engine.run(name, [Mount("bind", os.path.abspath(source), "/data")]).id

    async def stop(self, container_id):
        for container in await self.engine.running_containers():
            if container.id == container_id:
                self.engine.stop(container)


async def start_memory(testcase):
    return MemoryHarness()


class MemoryDockerEngineContractTests(make_docker_engine_tests(start_memory)):
    pass


class RealHarness:
    daemon = None

    @classmethod
    def shared(cls):
        if cls.daemon is None:
            cls.daemon = DockerDaemon().start()
            import_busybox_image(cls.daemon.host)
        return cls.daemon

    def __init__(self, testcase):
        self.daemon = self.shared()
        self.engine = DockerEngineClient(reactor, self.daemon.host)
        testcase.addCleanup(self.engine.close)

    async def run(self, name, source):
        os.makedirs(source, exist_ok=True)
        self.daemon.run("rm", "-f", name, check=False)
        result = self.daemon.run("run", "-d", "--name", name, "-v",
                                 f"{os.path.abspath(source)}:/data", "busybox", "sleep", "300")
        return result.stdout.decode().strip()

    async def stop(self, container_id):
        self.daemon.run("rm", "-f", container_id)


async def start_real(testcase):
    problem = missing_requirements()
    if problem:
        testcase.skipTest(f"needs a real dockerd: {problem}")
    return RealHarness(testcase)


@pytest.mark.e2e
class RealDockerEngineContractTests(make_docker_engine_tests(start_real)):
    @classmethod
    def tearDownClass(cls):
        if RealHarness.daemon is not None:
            RealHarness.daemon.stop()
            RealHarness.daemon = None


class DockerEngineClientTests(TestCase):
    async def test_a_missing_daemon_is_reported_as_unavailable(self):
        engine = DockerEngineClient(reactor, f"unix:///tmp/psf-missing-{uuid.uuid4().hex}.sock")
        with self.assertRaises(DockerUnavailable) as raised:
            await engine.running_containers()
        self.assertIn("Docker at unix://", str(raised.exception))

    def test_an_address_without_a_scheme_or_too_long_is_refused(self):
        for address in ("/var/run/docker.sock", "unix:///" + "x" * 120):
            with self.assertRaises(ValueError):
                DockerEngineClient(reactor, address)
