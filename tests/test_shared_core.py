"""The Powerstrip adapter and the volume plugin are two frontends over one Placement."""

import json

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from powerstripflocker.frontends.adapter import FlockerAdapter
from powerstripflocker.clients.flocker_memory import MemoryFlockerAPI
from powerstripflocker.core.lease_keeper import LeaseKeeper
from powerstripflocker.frontends.metrics import Metrics
from powerstripflocker.core.placement import Placement
from powerstripflocker.frontends.plugin import VolumePlugin


class SharedCoreTests(SynchronousTestCase):
    def test_a_hook_and_a_plugin_mount_at_once_share_one_operation(self):
        clock = Clock()
        api = MemoryFlockerAPI(clock, convergence_delay=0.5)
        node = api.add_node("10.0.0.1")
        metrics = Metrics()
        placement = Placement(api, clock, node_uuid=node.uuid, metrics=metrics)
        adapter = StubTreq(FlockerAdapter(placement, api, metrics, clock).resource())
        plugin = VolumePlugin(placement, lambda uuid: LeaseKeeper(api, uuid, clock))
        self.addCleanup(plugin.stop)
        plugin_client = StubTreq(plugin.resource())
        hook = {"PowerstripProtocolVersion": 1, "Type": "pre-hook", "ClientRequest": {
            "Method": "POST", "Request": "/v1.41/containers/create",
            "Body": json.dumps({"HostConfig": {"Binds": ["/flocker/shared:/data"]}})}}
        hooked = adapter.post("http://adapter/flocker-adapter", data=json.dumps(hook).encode())
        mounted = plugin_client.post("http://plugin/VolumeDriver.Mount",
                                     data=json.dumps({"Name": "shared", "ID": "x"}).encode())
        for _ in range(40):
            adapter.flush()
            plugin_client.flush()
            clock.advance(0.05)
        hook_reply = json.loads(self.successResultOf(adapter.content(
            self.successResultOf(hooked))))
        mount_reply = json.loads(self.successResultOf(plugin_client.content(
            self.successResultOf(mounted))))
        [mount] = json.loads(hook_reply["ModifiedClientRequest"]["Body"])["HostConfig"]["Mounts"]
        self.assertEqual((mount["Source"], mount["Target"]), (mount_reply["Mountpoint"], "/data"))
        self.assertEqual(len(self.successResultOf(api.datasets_named("shared")).datasets), 1)
        self.assertEqual(metrics.creates._value.get(), 1)
        placements = [sample.value for sample in metrics.placement_seconds.collect()[0].samples
                      if sample.name.endswith("_count")]
        self.assertEqual(placements, [1.0], "the second frontend joined the first's operation")
