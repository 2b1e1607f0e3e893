"""The Docker volume plugin in memory: Klein app + StubTreq + the verified fake."""

import json

import pytest
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from powerstripflocker.clients.flocker_memory import MemoryFlockerAPI
from powerstripflocker.core.lease_keeper import LeaseKeeper
from powerstripflocker.core.placement import Placement
from powerstripflocker.frontends.plugin import PluginError, VolumePlugin, parse_size

GiB = 1024 ** 3


class VolumePluginTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.api = MemoryFlockerAPI(self.clock, convergence_delay=0.2)
        self.here = self.api.add_node("10.0.0.1")
        self.there = self.api.add_node("10.0.0.2")
        placement = Placement(self.api, self.clock, node_uuid=self.here.uuid, deadline=100)
        self.plugin = VolumePlugin(
            placement, lambda node: LeaseKeeper(self.api, node, self.clock, lease_seconds=30))
        self.addCleanup(self.plugin.stop)
        self.client = StubTreq(self.plugin.resource())

    def call(self, endpoint, body=None, raw=None):
        data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        deferred = self.client.post(f"http://plugin/{endpoint}", data=data)
        outcome = []
        deferred.addBoth(lambda result: outcome.append(result) or result)
        for _ in range(4000):
            self.client.flush()
            if outcome:
                break
            self.clock.advance(0.05)
        response = self.successResultOf(deferred)
        self.assertEqual(response.code, 200)
        return json.loads(self.successResultOf(self.client.content(response)))

    def named(self, name):
        return [d for d in self.successResultOf(self.api.list_datasets_configuration()).datasets
                if d.name == name]

    def leases(self):
        return [(l.dataset_id, l.node_uuid) for l in self.successResultOf(self.api.list_leases())]

    def test_activate_and_capabilities(self):
        self.assertEqual(self.call("Plugin.Activate"), {"Implements": ["VolumeDriver"], "Err": ""})
        self.assertEqual(self.call("VolumeDriver.Capabilities", {}),
                         {"Capabilities": {"Scope": "global"}, "Err": ""})

    def test_create_with_a_size_creates_one_dataset_here_and_is_idempotent(self):
        for _ in range(2):
            self.assertEqual(self.call("VolumeDriver.Create",
                                       {"Name": "demo", "Opts": {"size": "1G"}}), {"Err": ""})
        [dataset] = self.named("demo")
        self.assertEqual((dataset.primary, dataset.maximum_size), (self.here.uuid, GiB))

    def test_create_with_replicas_keeps_the_count_in_the_metadata(self):
        for _ in range(2):
            self.assertEqual(self.call("VolumeDriver.Create", {
                "Name": "copied", "Opts": {"replicas": "2", "size": "1G"}}), {"Err": ""})
        [dataset] = self.named("copied")
        self.assertEqual((dataset.metadata, dataset.maximum_size),
                         ({"name": "copied", "replicas": "2"}, GiB))
        self.call("VolumeDriver.Create", {"Name": "plain"})
        self.assertEqual(self.named("plain")[0].metadata, {"name": "plain"},
                         "no count: the control service's default applies")
        volume = self.call("VolumeDriver.Get", {"Name": "copied"})["Volume"]
        self.assertEqual(volume["Status"]["replicas"], "2")

    def test_bad_sizes_unknown_options_and_bad_names_are_errors_that_create_nothing(self):
        for body, message in [
            ({"Name": "demo", "Opts": {"size": "banana"}}, "invalid size 'banana'"),
            ({"Name": "demo", "Opts": {"size": "1M"}}, "at least 64M"),
            ({"Name": "demo", "Opts": {"size": "1.5G"}}, "invalid size"),
            ({"Name": "demo", "Opts": {"profile": "gold"}}, "unknown option 'profile'"),
            ({"Name": "demo", "Opts": {"replicas": "-1"}}, "invalid replica count '-1'"),
            ({"Name": "demo", "Opts": {"replicas": "x"}}, "invalid replica count 'x'"),
            ({"Name": "demo", "Opts": {"replicas": "17"}}, "from 0 to 16"),
            ({"Name": "demo", "Opts": {"size": "1G", "replicas": ""}}, "invalid replica"),
            ({"Name": "a/b"}, "no nested volumes"),
            ({"Name": ".."}, "not a name"),
            ({}, "no volume Name"),
        ]:
            reply = self.call("VolumeDriver.Create", body)
            self.assertIn(message, reply["Err"])
        self.assertIn("not JSON", self.call("VolumeDriver.Create", raw=b"{nope")["Err"])
        self.assertEqual(self.api.calls, [])

    def test_mount_makes_the_volume_local_and_holds_its_lease_until_the_last_unmount(self):
        self.call("VolumeDriver.Create", {"Name": "demo"})
        first = self.call("VolumeDriver.Mount", {"Name": "demo", "ID": "a" * 64})
        [dataset] = self.named("demo")
        self.assertEqual(first, {"Mountpoint": f"/flocker/{dataset.dataset_id}", "Err": ""})
        self.assertEqual(self.leases(), [(dataset.dataset_id, self.here.uuid)])
        self.call("VolumeDriver.Mount", {"Name": "demo", "ID": "a" * 64})
        self.call("VolumeDriver.Mount", {"Name": "demo", "ID": "b" * 64})
        for mount_id in ("a", "a", "b"):
            self.assertEqual(len(self.leases()), 1)
            self.assertEqual(self.call("VolumeDriver.Unmount",
                                       {"Name": "demo", "ID": mount_id * 64}), {"Err": ""})
        self.assertEqual(self.leases(), [])
        self.assertEqual(self.call("VolumeDriver.Unmount", {"Name": "demo", "ID": "a" * 64}),
                         {"Err": ""}, "an extra Unmount is harmless")

    def test_mount_of_a_new_name_creates_it_and_of_a_remote_one_moves_it(self):
        reply = self.call("VolumeDriver.Mount", {"Name": "fresh"})
        self.assertTrue(reply["Mountpoint"].startswith("/flocker/"))
        remote = self.successResultOf(self.api.create_dataset(
            primary=self.there.uuid, metadata={"name": "remote"}))
        self.api.converge()
        reply = self.call("VolumeDriver.Mount", {"Name": "remote", "ID": "c" * 64})
        self.assertEqual(reply["Mountpoint"], f"/flocker/{remote.dataset_id}")
        self.assertEqual(self.named("remote")[0].primary, self.here.uuid)

    def test_mount_of_a_volume_in_use_elsewhere_fails_at_once_naming_the_node(self):
        remote = self.successResultOf(self.api.create_dataset(
            primary=self.there.uuid, metadata={"name": "busy"}))
        self.api.converge()
        self.successResultOf(self.api.acquire_lease(remote.dataset_id, self.there.uuid, None))
        reply = self.call("VolumeDriver.Mount", {"Name": "busy", "ID": "d" * 64})
        self.assertIn("'busy' is in use on 10.0.0.2", reply["Err"])
        self.assertEqual(self.named("busy")[0].primary, self.there.uuid)

    def test_path_get_and_list_answer_without_moving_anything(self):
        self.call("VolumeDriver.Mount", {"Name": "local"})
        self.successResultOf(self.api.create_dataset(
            primary=self.there.uuid, metadata={"name": "remote"}, maximum_size=GiB))
        self.api.converge()
        self.api.calls.clear()
        local_path = self.call("VolumeDriver.Path", {"Name": "local"})["Mountpoint"]
        self.assertTrue(local_path.startswith("/flocker/"))
        self.assertEqual(self.call("VolumeDriver.Path", {"Name": "remote"}),
                         {"Mountpoint": "", "Err": ""})
        volume = self.call("VolumeDriver.Get", {"Name": "remote"})["Volume"]
        self.assertEqual((volume["Name"], volume["Mountpoint"], volume["Status"]["state"],
                          volume["Status"]["maximum_size"]), ("remote", "", "on another node", GiB))
        self.assertEqual(self.call("VolumeDriver.Get", {"Name": "nothing"}),
                         {"Err": "no such volume: nothing"})
        self.assertEqual(self.call("VolumeDriver.List", {}), {"Volumes": [
            {"Name": "local", "Mountpoint": local_path}, {"Name": "remote", "Mountpoint": ""}],
            "Err": ""})
        self.assertEqual([c for c in self.api.calls if c[0] in ("move_dataset", "create_dataset")],
                         [])

    def test_get_and_path_read_only_their_own_volume(self):
        self.call("VolumeDriver.Mount", {"Name": "mine"})
        for index in range(50):
            self.successResultOf(self.api.create_dataset(
                primary=self.there.uuid, metadata={"name": f"other-{index}"}))
        self.api.converge()
        self.api.calls.clear()
        self.call("VolumeDriver.Get", {"Name": "mine"})
        self.call("VolumeDriver.Path", {"Name": "mine"})
        self.assertEqual({call[0] for call in self.api.calls},
                         {"datasets_named", "list_datasets_state"})
        self.assertTrue(all(len(call) == 2 for call in self.api.calls),
                        "each call names the volume or its dataset")

    def test_remove_changes_nothing(self):
        self.call("VolumeDriver.Create", {"Name": "keep"})
        self.assertEqual(self.call("VolumeDriver.Remove", {"Name": "keep"}), {"Err": ""})
        self.assertFalse(self.named("keep")[0].deleted)

    def test_an_unexpected_failure_is_an_err_that_points_at_the_log(self):
        def broken(name, maximum_size, replicas):
            raise KeyError(name)
        self.plugin._placement.create = broken
        reply = self.call("VolumeDriver.Create", {"Name": "demo"})
        self.assertEqual(reply, {"Err": "internal error in the flocker volume plugin "
                                        "(KeyError); see its log"})
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_refusals_are_plugin_json_and_unknown_calls_are_http_errors(self):
        response = self.successResultOf(self.client.post("http://plugin/VolumeDriver.Create",
                                                         data=b"[]"))
        self.assertEqual((response.code, response.headers.getRawHeaders("Content-Type")),
                         (200, ["application/vnd.docker.plugins.v1.1+json"]))
        self.assertEqual(json.loads(self.successResultOf(self.client.content(response))),
                         {"Err": "request body must be a JSON object"})
        for method, path, code in [("post", "VolumeDriver.Nothing", 404),
                                   ("get", "VolumeDriver.Create", 405)]:
            response = self.successResultOf(getattr(self.client, method)(f"http://plugin/{path}"))
            self.assertEqual(response.code, code)

    def test_an_unreachable_control_service_is_one_clear_line(self):
        self.api.unreachable = "Connection refused"
        reply = self.call("VolumeDriver.Get", {"Name": "x"})
        self.assertIn("cannot reach the control service", reply["Err"])
        self.assertNotIn("\n", reply["Err"])


@pytest.mark.parametrize("text, size", [
    ("64M", 64 * 1024 ** 2), ("1G", GiB), ("1g", GiB), ("1GiB", GiB), ("1GB", GiB),
    ("512MiB", 512 * 1024 ** 2), (str(GiB), GiB), ("2T", 2 * 1024 ** 4), (" 1 G ", GiB),
])
def test_sizes_parse_in_binary_units(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["banana", "", "1.5G", "-1G", "1P", "1Gx", "63M", "67108865"])
def test_bad_sizes_are_refused(text):
    with pytest.raises(PluginError):
        parse_size(text)
