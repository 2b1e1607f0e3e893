"""One contract suite for IDockerEngine: the in-memory fake and a real dockerd.

make_docker_engine_tests(start) builds a trial TestCase; start(testcase) is awaited
and returns an object with:
  engine                  the IDockerEngine
  async run(name, source) starts a container binding host path source at /data
                          and returns its id
  async stop(id)          stops it
"""

import time

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from powerstripflocker.clients.docker import IDockerEngine


async def eventually(condition, what, clock=reactor, timeout=30.0):
    waited = 0.0
    while not condition():
        if waited >= timeout:
            raise AssertionError(f"not {what} after {timeout}s")
        await deferLater(clock, 0.05, lambda: None)
        waited += 0.05


def make_docker_engine_tests(start):
    class DockerEngineContract(TestCase):
        async def test_provides_the_interface(self):
            harness = await start(self)
            self.assertTrue(verifyObject(IDockerEngine, harness.engine))

        async def test_a_running_container_is_listed_with_its_bind(self):
            harness = await start(self)
            source = self.mktemp()
            container_id = await harness.run("contract-web", source)
            running = await harness.engine.running_containers()
            [container] = [c for c in running if c.id == container_id]
            self.assertEqual(container.name, "contract-web")
            [mount] = container.mounts
            self.assertEqual((mount.type, mount.destination), ("bind", "/data"))
            self.assertTrue(source.endswith(mount.source.split("/")[-1]))
            await harness.stop(container_id)
            running = await harness.engine.running_containers()
            self.assertNotIn(container_id, [c.id for c in running])

        async def test_start_and_die_events_arrive_in_order(self):
            harness = await start(self)
            events = []
            ended = harness.engine.watch_events(events.append, since=time.time())
            container_id = await harness.run("contract-events", self.mktemp())
            await harness.stop(container_id)
            ours = lambda: [e.action for e in events if e.container_id == container_id]  # noqa
            await eventually(lambda: "die" in ours(), "a die event")
            actions = ours()
            self.assertLess(actions.index("start"), actions.index("die"))
            harness.engine.stop_watching()
            await ended

        async def test_kill_stops_a_running_container_and_ignores_a_gone_one(self):
            harness = await start(self)
            container_id = await harness.run("contract-kill", self.mktemp())
            await harness.engine.kill(container_id)
            running = []

            async def listed():
                running[:] = [c.id for c in await harness.engine.running_containers()]
            await listed()
            for _ in range(100):
                if container_id not in running:
                    break
                await deferLater(reactor, 0.05, lambda: None)
                await listed()
            self.assertNotIn(container_id, running)
            await harness.engine.kill(container_id)
            await harness.stop(container_id)
            await harness.engine.kill(container_id)

    return DockerEngineContract
