"""One contract suite for IFlockerAPI, run against the in-memory fake and the real service.

make_flocker_api_tests(start_cluster) builds a trial TestCase. start_cluster(testcase)
is awaited in each test and returns an object with:
  api          an IFlockerAPI provider
  nodes        two flocker.Node of the cluster, both with running agents
  async settled(predicate, what)
               waits until predicate(list of DatasetState) is true (the fake converges
               at once; the real cluster is polled with a deadline) and returns the state
  async era_of(node)
               the era of node's agent run, as its reports carry it
and, where the cluster can pretend to be its agents (the fake, the simulated cluster):
  async report_users(node, dataset_id, users)
               node's report says users (container names) use the dataset
  async report_transfer(sender, receiver, dataset_id, bytes_done, bytes_total, stalled,
                        error)
               sender reports pushing the dataset to receiver (and keeps its copy)
"""

import uuid

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface.verify import verifyObject

from powerstripflocker.clients.flocker import (
    AlreadyExists, BadRequest, ClaimedElsewhere, ConfigurationChanged, DatasetDeleted, HeldElsewhere,
    IFlockerAPI, NotFound,
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

        async def test_a_node_is_found_by_its_agent_s_era_and_an_unknown_era_is_not(self):
            cluster = await start_cluster(self)
            for node in cluster.nodes:
                era = await cluster.era_of(node)
                self.assertEqual(await cluster.api.node_by_era(era), node.uuid)
                self.assertEqual(await cluster.api.node_by_era(era.upper()), node.uuid)
            for unknown in (str(uuid.uuid4()), "not-an-era"):
                with self.assertRaises(NotFound) as raised:
                    await cluster.api.node_by_era(unknown)
                self.assertEqual(raised.exception.description, "No node found with given era.")

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

        # -- claims and the per-name reads (beyond Flocker) ---------------------

        async def claim_until_ready(self, cluster, name, node, **arguments):
            """Claim name for node until it is ready; the claims seen before that."""
            seen = []
            while True:
                claim = await cluster.api.claim(name, node.uuid, **arguments)
                if claim.status == "ready":
                    return claim, seen
                seen.append(claim)
                await cluster.settled(
                    lambda s: _on(s, claim.dataset_id, node.uuid), f"{name} on {node.host}")

        async def test_claim_of_a_new_name_creates_it_there_then_leases_it_ready(self):
            cluster = await start_cluster(self)
            node = cluster.nodes[0]
            name = f"claimed-{uuid.uuid4().hex[:8]}"
            first = await cluster.api.claim(name, node.uuid, expires=20, maximum_size=GiB)
            self.assertEqual((first.status, first.generation, first.path, first.lease),
                             ("creating", 1, None, None))
            [dataset] = (await cluster.api.datasets_named(name)).datasets
            self.assertEqual((dataset.dataset_id, dataset.primary, dataset.maximum_size),
                             (first.dataset_id, node.uuid, GiB))
            ready, _ = await self.claim_until_ready(cluster, name, node, expires=20)
            self.assertEqual((ready.dataset_id, ready.generation), (first.dataset_id, 1))
            self.assertTrue(ready.path.startswith("/"))
            self.assertEqual((ready.lease.dataset_id, ready.lease.node_uuid),
                             (first.dataset_id, node.uuid))
            self.assertTrue(0 < ready.lease.expires <= 20)
            [lease] = [l for l in await cluster.api.list_leases()
                       if l.dataset_id == first.dataset_id]
            self.assertEqual(lease.node_uuid, node.uuid)
            again = await cluster.api.claim(name, node.uuid, expires=60)
            self.assertEqual((again.status, again.path), ("ready", ready.path))
            self.assertTrue(20 < again.lease.expires <= 60, "the same node renews its claim")
            same = await cluster.api.claim(name, node.uuid, expires=60)
            self.assertTrue(30 <= same.lease.expires <= 60,
                            "asked again, a claim holds at least half of what it asks")

        async def test_claim_of_a_name_on_another_node_moves_it_and_raises_its_generation(self):
            cluster = await start_cluster(self)
            first, second = cluster.nodes
            name = f"moved-{uuid.uuid4().hex[:8]}"
            created, _ = await self.claim_until_ready(cluster, name, first)
            await cluster.api.release_lease(created.dataset_id)
            moving = await cluster.api.claim(name, second.uuid)
            self.assertEqual((moving.status, moving.dataset_id, moving.generation),
                             ("moving", created.dataset_id, 2))
            self.assertEqual(moving.source.uuid, first.uuid)
            [dataset] = (await cluster.api.datasets_named(name)).datasets
            self.assertEqual(dataset.primary, second.uuid)
            ready, _ = await self.claim_until_ready(cluster, name, second)
            self.assertEqual((ready.dataset_id, ready.generation), (created.dataset_id, 2))

        async def test_a_pending_claim_makes_another_node_wait(self):
            cluster = await start_cluster(self)
            first, second = cluster.nodes
            name = f"contested-{uuid.uuid4().hex[:8]}"
            mine = await cluster.api.claim(name, first.uuid)
            self.addCleanup(cluster.api.release_lease, mine.dataset_id)
            with self.assertRaises(HeldElsewhere) as waiting:
                await cluster.api.claim(name, second.uuid)
            self.assertEqual((waiting.exception.holder.node_uuid, waiting.exception.holder.users),
                             (first.uuid, ()), "no user yet: the other node waits")
            [dataset] = (await cluster.api.datasets_named(name)).datasets
            self.assertEqual(dataset.primary, first.uuid)

        async def test_a_claim_asked_again_never_takes_back_what_another_node_claimed(self):
            cluster = await start_cluster(self)
            first, second = cluster.nodes
            name = f"contested-{uuid.uuid4().hex[:8]}"
            mine = await cluster.api.claim(name, first.uuid)
            await cluster.api.release_lease(mine.dataset_id)  # an operator breaks the claim
            theirs = await cluster.api.claim(name, second.uuid)
            self.addCleanup(cluster.api.release_lease, theirs.dataset_id)
            self.assertEqual((theirs.dataset_id, theirs.generation),
                             (mine.dataset_id, mine.generation + 1))
            with self.assertRaises(ClaimedElsewhere) as raised:
                await cluster.api.claim(name, first.uuid, generation=mine.generation)
            self.assertEqual((raised.exception.code, raised.exception.claimant.uuid),
                             (409, second.uuid))
            self.assertIn(f"volume {name!r} was claimed by", raised.exception.description)
            [dataset] = (await cluster.api.datasets_named(name)).datasets
            self.assertEqual(dataset.primary, second.uuid)
            again = await cluster.api.claim(name, second.uuid, generation=theirs.generation)
            self.assertEqual(again.generation, theirs.generation)

        async def test_a_replica_count_goes_into_the_new_datasets_metadata(self):
            cluster = await start_cluster(self)
            node = cluster.nodes[0]
            name = f"copied-{uuid.uuid4().hex[:8]}"
            claimed = await cluster.api.claim(name, node.uuid, replicas=2)
            self.addCleanup(cluster.api.release_lease, claimed.dataset_id)
            created = await cluster.api.create_dataset(
                node.uuid, metadata={"name": f"{name}-made", "replicas": "1"})
            [dataset] = (await cluster.api.datasets_named(name)).datasets
            self.assertEqual((dataset.metadata, created.metadata),
                             ({"name": name, "replicas": "2"},
                              {"name": f"{name}-made", "replicas": "1"}))

        async def test_a_bad_replica_count_is_refused_and_creates_nothing(self):
            cluster = await start_cluster(self)
            node = cluster.nodes[0]
            name = f"uncopied-{uuid.uuid4().hex[:8]}"
            for replicas in (-1, 17, "2", True):
                with self.assertRaises(BadRequest, msg=repr(replicas)):
                    await cluster.api.claim(name, node.uuid, replicas=replicas)
            for count in ("-1", "x", "17"):
                with self.assertRaises(BadRequest) as raised:
                    await cluster.api.create_dataset(
                        node.uuid, metadata={"name": name, "replicas": count})
                self.assertIn("invalid replica count", raised.exception.description)
            self.assertEqual((await cluster.api.datasets_named(name)).datasets, [])

        async def test_claim_without_create_of_an_unknown_name_is_not_found(self):
            cluster = await start_cluster(self)
            name = f"nothing-{uuid.uuid4().hex[:8]}"
            with self.assertRaises(NotFound) as raised:
                await cluster.api.claim(name, cluster.nodes[0].uuid, create=False)
            self.assertEqual(raised.exception.code, 404)
            self.assertEqual((await cluster.api.datasets_named(name)).datasets, [])

        async def test_claim_is_refused_while_another_node_holds_the_lease(self):
            cluster = await start_cluster(self)
            first, second = cluster.nodes
            name = f"held-{uuid.uuid4().hex[:8]}"
            held, _ = await self.claim_until_ready(cluster, name, first)
            self.addCleanup(cluster.api.release_lease, held.dataset_id)
            with self.assertRaises(HeldElsewhere) as raised:
                await cluster.api.claim(name, second.uuid)
            refusal = raised.exception
            self.assertEqual(refusal.code, 409)
            self.assertEqual((refusal.holder.node_uuid, refusal.holder.host),
                             (first.uuid, first.host))
            self.assertIn(f"volume {name!r} is in use on {first.host} (node {first.uuid}",
                          refusal.description)
            [dataset] = (await cluster.api.datasets_named(name)).datasets
            self.assertEqual(dataset.primary, first.uuid, "a refused claim moves nothing")

        async def test_a_refusal_names_the_containers_the_holder_reports(self):
            cluster = await start_cluster(self)
            if not hasattr(cluster, "report_users"):
                raise SkipTest("this cluster's agents report no containers")
            first, second = cluster.nodes
            held, _ = await self.claim_until_ready(cluster, "used", first)
            await cluster.report_users(first, held.dataset_id, ["web", "db"])
            with self.assertRaises(HeldElsewhere) as raised:
                await cluster.api.claim("used", second.uuid)
            self.assertEqual(raised.exception.holder.users, ("web", "db"))
            self.assertEqual(
                raised.exception.description,
                f"volume 'used' is in use on {first.host} (node {first.uuid}, container web, "
                f"container db); stop it there first")

        async def test_a_stalled_move_is_shown_in_the_claim_with_its_cause(self):
            cluster = await start_cluster(self)
            if not hasattr(cluster, "report_transfer"):
                raise SkipTest("this cluster's agents cannot be told to stall")
            first, second = cluster.nodes
            created = await cluster.api.create_dataset(primary=first.uuid,
                                                       metadata={"name": "full"})
            await cluster.settled(lambda s: _on(s, created.dataset_id, first.uuid), "on node 0")
            moving = await cluster.api.claim("full", second.uuid)
            self.assertEqual((moving.status, moving.stalled), ("moving", False))
            await cluster.report_transfer(first, second, created.dataset_id, 1024, 4096)
            progress = await cluster.api.claim("full", second.uuid)
            self.assertEqual((progress.bytes_done, progress.bytes_total, progress.stalled),
                             (1024, 4096, False))
            await cluster.report_transfer(first, second, created.dataset_id, 2048, 4096,
                                          stalled=True,
                                          error="No space left on device on 10.0.0.2")
            stalled = await cluster.api.claim("full", second.uuid)
            self.assertEqual(
                (stalled.status, stalled.stalled, stalled.error, stalled.source,
                 stalled.bytes_done),
                ("moving", True, "No space left on device on 10.0.0.2", first, 2048))

        async def test_a_claim_picks_the_smallest_id_among_duplicate_names(self):
            cluster = await start_cluster(self)
            node = cluster.nodes[0]
            name = f"dup-{uuid.uuid4().hex[:8]}"
            ids = sorted(str(uuid.uuid4()) for _ in range(3))
            for dataset_id in reversed(ids):
                await cluster.api.create_dataset(primary=node.uuid, metadata={"name": name},
                                                 dataset_id=dataset_id)
            claim = await cluster.api.claim(name, node.uuid)
            self.assertEqual(claim.dataset_id, ids[0])
            self.assertEqual(len((await cluster.api.datasets_named(name)).datasets), 3)

        async def test_bad_claims_are_bad_requests_that_change_nothing(self):
            cluster = await start_cluster(self)
            node = cluster.nodes[0].uuid
            before = await cluster.api.list_datasets_configuration()
            for name, node_uuid, arguments in [
                ("", node, {}), ("a/b", node, {}), ("..", node, {}), ("-x", node, {}),
                ("n" * 256, node, {}), ("ok", "not-a-uuid", {}), ("ok", str(uuid.uuid1()), {}),
                ("ok", node, {"expires": 0}), ("ok", node, {"expires": -1}),
                ("ok", node, {"maximum_size": 1024}),
                ("ok", node, {"maximum_size": 64 * 1024 * 1024 + 1}),
            ]:
                with self.assertRaises(BadRequest, msg=repr((name, node_uuid, arguments))):
                    await cluster.api.claim(name, node_uuid, **arguments)
            self.assertEqual(await cluster.api.list_datasets_configuration(), before)

        async def test_datasets_named_reads_one_name_with_the_configuration_tag(self):
            cluster = await start_cluster(self)
            node = cluster.nodes[0].uuid
            name = f"one-{uuid.uuid4().hex[:8]}"
            wanted = await cluster.api.create_dataset(primary=node, metadata={"name": name})
            await cluster.api.create_dataset(primary=node, metadata={"name": name + "x"})
            gone = await cluster.api.create_dataset(primary=node, metadata={"name": name})
            gone = await cluster.api.delete_dataset(gone.dataset_id)
            named = await cluster.api.datasets_named(name)
            self.assertEqual(sorted(named.datasets, key=lambda d: d.deleted), [wanted, gone])
            self.assertEqual(named.tag, (await cluster.api.list_datasets_configuration()).tag)
            self.assertEqual((await cluster.api.datasets_named("no-such-name")).datasets, [])

        async def test_state_of_one_dataset(self):
            cluster = await start_cluster(self)
            node = cluster.nodes[0]
            wanted = await cluster.api.create_dataset(primary=node.uuid)
            other = await cluster.api.create_dataset(primary=node.uuid)
            await cluster.settled(lambda s: _on(s, wanted.dataset_id, node.uuid)
                                  and _on(s, other.dataset_id, node.uuid), "both on node 0")
            [entry] = await cluster.api.list_datasets_state(wanted.dataset_id)
            self.assertEqual((entry.dataset_id, entry.primary), (wanted.dataset_id, node.uuid))

        async def test_a_lease_is_refused_to_a_node_that_is_not_the_primary(self):
            cluster = await start_cluster(self)
            first, second = cluster.nodes
            created = await cluster.api.create_dataset(primary=first.uuid)
            with self.assertRaises(AlreadyExists) as raised:
                await cluster.api.acquire_lease(created.dataset_id, second.uuid, 60)
            self.assertEqual(raised.exception.code, 409)
            self.assertIn(f"primary is node {first.uuid}", raised.exception.description)
            self.assertNotIn(created.dataset_id,
                             [l.dataset_id for l in await cluster.api.list_leases()])

        async def test_moves_and_deletes_are_refused_while_leased_to_another_node(self):
            cluster = await start_cluster(self)
            first, second = cluster.nodes
            created = await cluster.api.create_dataset(primary=first.uuid)
            await cluster.api.acquire_lease(created.dataset_id, first.uuid, 60)
            self.addCleanup(cluster.api.release_lease, created.dataset_id)
            with self.assertRaises(HeldElsewhere) as moved:
                await cluster.api.move_dataset(created.dataset_id, second.uuid)
            with self.assertRaises(HeldElsewhere) as deleted:
                await cluster.api.delete_dataset(created.dataset_id)
            for refusal in (moved.exception, deleted.exception):
                self.assertEqual((refusal.code, refusal.holder.node_uuid), (409, first.uuid))
                self.assertIn(f"dataset {created.dataset_id} is in use on", refusal.description)
            configuration = await cluster.api.list_datasets_configuration()
            self.assertIn(created, configuration.datasets)

        async def _leased_by_claim(self, cluster, node):
            name = f"claimed-{uuid.uuid4().hex[:8]}"
            ready, _ = await self.claim_until_ready(cluster, name, node, expires=60)

            async def release_if_held():
                try:
                    await cluster.api.release_lease(ready.dataset_id)
                except NotFound:
                    pass
            self.addCleanup(lambda: Deferred.fromCoroutine(release_if_held()))
            return name, ready.dataset_id

        async def test_a_claim_made_after_the_users_started_outlives_their_release(self):
            cluster = await start_cluster(self)
            first, second = cluster.nodes
            name, dataset_id = await self._leased_by_claim(cluster, first)
            await cluster.api.acquire_lease(dataset_id, first.uuid, 60, new_user=True)
            await cluster.api.claim(name, first.uuid, expires=60)  # a second hook, not started
            kept = await cluster.api.release_lease(dataset_id, node_uuid=first.uuid)
            self.assertEqual(kept.node_uuid, first.uuid)
            self.assertGreater(kept.expires, 30)
            with self.assertRaises(HeldElsewhere) as refused:
                await cluster.api.claim(name, second.uuid)
            self.assertEqual(refused.exception.holder.node_uuid, first.uuid)
            [lease] = [l for l in await cluster.api.list_leases() if l.dataset_id == dataset_id]
            self.assertEqual(lease.node_uuid, first.uuid)

        async def test_a_new_users_start_uses_up_the_claims_so_its_release_frees_the_volume(
                self):
            cluster = await start_cluster(self)
            first, second = cluster.nodes
            name, dataset_id = await self._leased_by_claim(cluster, first)
            renewed = await cluster.api.acquire_lease(dataset_id, first.uuid, 10, new_user=True)
            self.assertLessEqual(renewed.expires, 10)
            await cluster.api.release_lease(dataset_id, node_uuid=first.uuid)
            self.assertNotIn(dataset_id, [l.dataset_id for l in await cluster.api.list_leases()])
            moving = await cluster.api.claim(name, second.uuid)
            self.assertEqual(moving.status, "moving")

        async def test_a_renewal_without_a_new_user_keeps_the_claim(self):
            cluster = await start_cluster(self)
            first = cluster.nodes[0]
            _, dataset_id = await self._leased_by_claim(cluster, first)
            renewed = await cluster.api.acquire_lease(dataset_id, first.uuid, 5)
            self.assertGreater(renewed.expires, 30, "a renewal must not cut a claim short")

        async def test_only_the_holder_can_end_its_use_and_an_operator_breaks_even_a_claim(
                self):
            cluster = await start_cluster(self)
            first, second = cluster.nodes
            _, dataset_id = await self._leased_by_claim(cluster, first)
            with self.assertRaises(HeldElsewhere):
                await cluster.api.release_lease(dataset_id, node_uuid=second.uuid)
            broken = await cluster.api.release_lease(dataset_id)
            self.assertEqual(broken.node_uuid, first.uuid)
            self.assertNotIn(dataset_id, [l.dataset_id for l in await cluster.api.list_leases()])

    return FlockerAPIContract
