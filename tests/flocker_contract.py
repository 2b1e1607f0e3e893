"""One contract suite for IFlockerAPI, run against the in-memory fake and the real service.

make_flocker_api_tests(start_cluster) builds a trial TestCase. start_cluster(testcase)
is awaited in each test and returns an object with:
  api          an IFlockerAPI provider
  nodes        two flocker.Node of the cluster, both with running agents
  async settled(predicate, what)
               waits until predicate(list of DatasetState) is true (the fake converges
               at once; the real cluster is polled with a deadline) and returns the state
"""

import uuid

from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from powerstripflocker.flocker import (
    AlreadyExists, BadRequest, ConfigurationChanged, DatasetDeleted, IFlockerAPI, NotFound,
)

GiB = 1024 ** 3


def _on(states, dataset_id, node_uuid):
    entries = [s for s in states if s.dataset_id == dataset_id]
    return len(entries) == 1 and entries[0].primary == node_uuid and bool(entries[0].path)


def make_flocker_api_tests(start_cluster):
    class FlockerAPIContract(TestCase):
        async def test_provides_the_interface_and_a_version(self):
            cluster = await start_cluster(self)
            self.assertTrue(verifyObject(IFlockerAPI, cluster.api))
            version = await cluster.api.version()
            self.assertIsInstance(version, str)

        async def test_created_dataset_is_configured_as_asked(self):
            cluster = await start_cluster(self)
            node = cluster.nodes[0]
            created = await cluster.api.create_dataset(
                primary=node.uuid, metadata={"name": "contract"}, maximum_size=GiB)
            self.assertEqual(
                (created.primary, created.metadata, created.deleted, created.maximum_size),
                (node.uuid, {"name": "contract"}, False, GiB))
            uuid.UUID(created.dataset_id, version=4)
            configuration = await cluster.api.list_datasets_configuration()
            self.assertIn(created, configuration.datasets)
            self.assertEqual(created.name, "contract")

        async def test_created_dataset_shows_in_state_on_its_primary_with_a_path(self):
            cluster = await start_cluster(self)
            node = cluster.nodes[0]
            created = await cluster.api.create_dataset(primary=node.uuid)
            states = await cluster.settled(
                lambda s: _on(s, created.dataset_id, node.uuid), "dataset on node 0")
            entry = [s for s in states if s.dataset_id == created.dataset_id][0]
            self.assertTrue(entry.path.startswith("/"))

        async def test_dataset_id_is_stored_lower_case(self):
            cluster = await start_cluster(self)
            wanted = str(uuid.uuid4())
            created = await cluster.api.create_dataset(
                primary=cluster.nodes[0].uuid, dataset_id=wanted.upper())
            self.assertEqual(created.dataset_id, wanted)

        async def test_a_used_dataset_id_is_refused_even_once_deleted(self):
            cluster = await start_cluster(self)
            dataset_id = str(uuid.uuid4())
            await cluster.api.create_dataset(primary=cluster.nodes[0].uuid,
                                             dataset_id=dataset_id)
            with self.assertRaises(AlreadyExists) as raised:
                await cluster.api.create_dataset(primary=cluster.nodes[1].uuid,
                                                 dataset_id=dataset_id.upper())
            self.assertEqual(raised.exception.code, 409)
            await cluster.api.delete_dataset(dataset_id)
            with self.assertRaises(AlreadyExists):
                await cluster.api.create_dataset(primary=cluster.nodes[0].uuid,
                                                 dataset_id=dataset_id)

        async def test_stale_tag_refuses_a_create_and_changes_nothing(self):
            cluster = await start_cluster(self)
            stale = (await cluster.api.list_datasets_configuration()).tag
            await cluster.api.create_dataset(primary=cluster.nodes[0].uuid,
                                             metadata={"name": "first"})
            before = await cluster.api.list_datasets_configuration()
            self.assertNotEqual(before.tag, stale)
            with self.assertRaises(ConfigurationChanged) as raised:
                await cluster.api.create_dataset(
                    primary=cluster.nodes[0].uuid, metadata={"name": "second"},
                    if_configuration_matches=stale)
            self.assertEqual(raised.exception.code, 412)
            after = await cluster.api.list_datasets_configuration()
            self.assertEqual(after, before)

        async def test_current_tag_allows_a_create(self):
            cluster = await start_cluster(self)
            current = (await cluster.api.list_datasets_configuration()).tag
            self.assertIsNotNone(current)
            created = await cluster.api.create_dataset(
                primary=cluster.nodes[0].uuid, if_configuration_matches=current)
            configuration = await cluster.api.list_datasets_configuration()
            self.assertIn(created, configuration.datasets)

        async def test_move_sets_the_primary_and_state_follows(self):
            cluster = await start_cluster(self)
            first, second = cluster.nodes
            created = await cluster.api.create_dataset(primary=first.uuid)
            await cluster.settled(lambda s: _on(s, created.dataset_id, first.uuid),
                                  "dataset on node 0")
            moved = await cluster.api.move_dataset(created.dataset_id, second.uuid)
            self.assertEqual(moved.primary, second.uuid)
            await cluster.settled(lambda s: _on(s, created.dataset_id, second.uuid),
                                  "dataset moved to node 1")

        async def test_move_to_the_current_primary_changes_nothing(self):
            cluster = await start_cluster(self)
            created = await cluster.api.create_dataset(primary=cluster.nodes[0].uuid)
            tag = (await cluster.api.list_datasets_configuration()).tag
            moved = await cluster.api.move_dataset(created.dataset_id, created.primary)
            self.assertEqual(moved, created)
            self.assertEqual((await cluster.api.list_datasets_configuration()).tag, tag)

        async def test_moving_an_unknown_dataset_is_not_found(self):
            cluster = await start_cluster(self)
            with self.assertRaises(NotFound) as raised:
                await cluster.api.move_dataset(str(uuid.uuid4()), cluster.nodes[0].uuid)
            self.assertEqual(raised.exception.code, 404)

        async def test_moving_a_deleted_dataset_is_refused(self):
            cluster = await start_cluster(self)
            created = await cluster.api.create_dataset(primary=cluster.nodes[0].uuid)
            await cluster.api.delete_dataset(created.dataset_id)
            with self.assertRaises(DatasetDeleted) as raised:
                await cluster.api.move_dataset(created.dataset_id, cluster.nodes[1].uuid)
            self.assertEqual(raised.exception.code, 405)

        async def test_delete_is_idempotent_and_state_drops_the_dataset(self):
            cluster = await start_cluster(self)
            node = cluster.nodes[0]
            created = await cluster.api.create_dataset(primary=node.uuid)
            await cluster.settled(lambda s: _on(s, created.dataset_id, node.uuid),
                                  "dataset on node 0")
            deleted = await cluster.api.delete_dataset(created.dataset_id)
            self.assertTrue(deleted.deleted)
            self.assertEqual(await cluster.api.delete_dataset(created.dataset_id), deleted)
            configuration = await cluster.api.list_datasets_configuration()
            self.assertIn(deleted, configuration.datasets)
            await cluster.settled(
                lambda s: all(e.dataset_id != created.dataset_id for e in s),
                "deleted dataset gone from state")

        async def test_deleting_an_unknown_dataset_is_not_found(self):
            cluster = await start_cluster(self)
            with self.assertRaises(NotFound):
                await cluster.api.delete_dataset(str(uuid.uuid4()))

        async def test_nodes_are_listed_with_their_hosts(self):
            cluster = await start_cluster(self)
            nodes = await cluster.api.list_nodes()
            for node in cluster.nodes:
                self.assertIn(node, nodes)

        async def test_lease_acquire_renew_conflict_and_release(self):
            cluster = await start_cluster(self)
            first, second = cluster.nodes
            created = await cluster.api.create_dataset(primary=first.uuid)
            lease = await cluster.api.acquire_lease(created.dataset_id, first.uuid, 60)
            self.assertEqual((lease.dataset_id, lease.node_uuid), (created.dataset_id, first.uuid))
            self.assertTrue(0 < lease.expires <= 60)
            renewed = await cluster.api.acquire_lease(created.dataset_id, first.uuid, None)
            self.assertIsNone(renewed.expires)
            with self.assertRaises(AlreadyExists) as raised:
                await cluster.api.acquire_lease(created.dataset_id, second.uuid, 60)
            self.assertEqual(raised.exception.code, 409)
            ours = lambda leases: [l for l in leases if l.dataset_id == created.dataset_id]  # noqa
            self.assertEqual(ours(await cluster.api.list_leases()), [renewed])
            released = await cluster.api.release_lease(created.dataset_id)
            self.assertEqual(released.node_uuid, first.uuid)
            self.assertEqual(ours(await cluster.api.list_leases()), [])

        async def test_releasing_an_unknown_lease_is_not_found(self):
            cluster = await start_cluster(self)
            with self.assertRaises(NotFound) as raised:
                await cluster.api.release_lease(str(uuid.uuid4()))
            self.assertEqual(raised.exception.code, 404)

        async def test_a_lease_changes_the_configuration_tag(self):
            cluster = await start_cluster(self)
            created = await cluster.api.create_dataset(primary=cluster.nodes[0].uuid)
            before = (await cluster.api.list_datasets_configuration()).tag
            await cluster.api.acquire_lease(created.dataset_id, cluster.nodes[0].uuid, None)
            after = (await cluster.api.list_datasets_configuration()).tag
            self.assertNotEqual(before, after)

        async def test_bad_sizes_and_ids_are_bad_requests_that_create_nothing(self):
            cluster = await start_cluster(self)
            before = await cluster.api.list_datasets_configuration()
            node = cluster.nodes[0].uuid
            for arguments in [
                {"maximum_size": 1024 * 1024},
                {"maximum_size": 64 * 1024 * 1024 + 1},
                {"dataset_id": "not-a-uuid"},
                {"dataset_id": str(uuid.uuid1())},
            ]:
                with self.assertRaises(BadRequest, msg=repr(arguments)) as raised:
                    await cluster.api.create_dataset(primary=node, **arguments)
                self.assertEqual(raised.exception.code, 400)
            self.assertEqual(await cluster.api.list_datasets_configuration(), before)

    return FlockerAPIContract
