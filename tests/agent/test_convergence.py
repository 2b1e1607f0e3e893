"""The agent's decisions, as a pure function of the cluster view and local datasets."""

from powerstripflocker.agent.convergence import decide
from powerstripflocker.agent.model import (
    HANDED_OFF, PRIMARY, REPLICA, Cleanup, ClusterView, Create, Destroy, LocalDataset, Push,
    Restore, Wait,
)

ME = "11111111-1111-4111-8111-111111111111"
OTHER = "22222222-2222-4222-8222-222222222222"
THIRD = "33333333-3333-4333-8333-333333333333"
DS = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
OTHER_URL = "http://127.0.0.1:9002"


def view(datasets=(), leases=(), nodes=()):
    return ClusterView.from_json({"generation": 7, "datasets": list(datasets),
                                  "leases": list(leases), "nodes": list(nodes)})


def dataset(primary=ME, deleted=False, manifested=False, maximum_size=None, dataset_id=DS,
            origin=None):
    return {"dataset_id": dataset_id, "primary": primary, "metadata": {}, "deleted": deleted,
            "maximum_size": maximum_size, "manifested": manifested, "origin": origin}


def node(uuid, datasets=(), agent_url=OTHER_URL):
    return {"uuid": uuid, "host": "127.0.0.1", "agent_url": agent_url,
            "datasets": [{"dataset_id": d, "path": f"/x/{d}"} for d in datasets],
            "transfers": []}


def held(role=PRIMARY, origin="created"):
    return {DS: LocalDataset(DS, role, f"/data/datasets/{DS}", origin=origin)}


def lease(node_uuid, expires=None):
    return {"dataset_id": DS, "node_uuid": node_uuid, "expires": expires}


def test_new_dataset_configured_here_is_created_with_its_size():
    assert decide(ME, view([dataset(maximum_size=67108864)]), {}) == [Create(DS, 67108864)]


def test_dataset_configured_here_and_held_here_needs_nothing():
    assert decide(ME, view([dataset(manifested=True)]), held()) == []


def test_manifested_dataset_not_held_here_is_never_created_empty():
    actions = decide(ME, view([dataset(manifested=True)]), {})
    assert [type(a) for a in actions] == [Wait]


def test_dataset_reported_elsewhere_is_not_created_even_if_not_flagged_manifested():
    actions = decide(ME, view([dataset()], nodes=[node(OTHER, [DS])]), {})
    assert [type(a) for a in actions] == [Wait]


def test_only_the_node_a_dataset_was_created_on_creates_it_even_once_moved_away():
    # Created on ME, moved to OTHER before ME's agent made it: ME creates it (and then
    # pushes it), OTHER waits, so there are never two primaries.
    moved_at_once = view([dataset(primary=OTHER, origin=ME)])
    assert decide(ME, moved_at_once, {}) == [Create(DS, None)]
    [waiting] = decide(OTHER, moved_at_once, {})
    assert isinstance(waiting, Wait) and ME in waiting.reason


def test_without_an_origin_the_configured_primary_creates_it():
    assert decide(ME, view([dataset(origin=None)]), {}) == [Create(DS, None)]
    assert decide(OTHER, view([dataset(origin=None)]), {}) == []


def test_dataset_configured_elsewhere_and_not_held_is_ignored():
    assert decide(ME, view([dataset(primary=OTHER)]), {}) == []


def test_held_dataset_configured_on_a_known_node_is_pushed_there():
    actions = decide(ME, view([dataset(primary=OTHER, manifested=True)],
                              nodes=[node(OTHER)]), held())
    assert actions == [Push(DS, OTHER, OTHER_URL)]


def test_move_to_a_node_whose_agent_is_unknown_waits():
    actions = decide(ME, view([dataset(primary=OTHER, manifested=True)]), held())
    assert [type(a) for a in actions] == [Wait]
    actions = decide(ME, view([dataset(primary=OTHER, manifested=True)],
                              nodes=[node(OTHER, agent_url=None)]), held())
    assert [type(a) for a in actions] == [Wait]


def test_lease_held_by_this_node_blocks_the_move():
    actions = decide(ME, view([dataset(primary=OTHER, manifested=True)], leases=[lease(ME)],
                              nodes=[node(OTHER)]), held())
    assert [type(a) for a in actions] == [Wait]
    assert "leased" in actions[0].reason


def test_lease_held_by_another_node_does_not_block_the_move():
    actions = decide(ME, view([dataset(primary=OTHER, manifested=True)],
                              leases=[lease(OTHER)], nodes=[node(OTHER)]), held())
    assert actions == [Push(DS, OTHER, OTHER_URL)]


def test_expired_lease_does_not_block_the_move():
    actions = decide(ME, view([dataset(primary=OTHER, manifested=True)],
                              leases=[lease(ME, expires=0)], nodes=[node(OTHER)]), held())
    assert actions == [Push(DS, OTHER, OTHER_URL)]


def test_handed_off_copy_is_kept_until_the_new_primary_reports_it():
    actions = decide(ME, view([dataset(primary=OTHER, manifested=True)], nodes=[node(OTHER)]),
                     held(HANDED_OFF))
    assert [type(a) for a in actions] == [Wait]


def test_handed_off_copy_is_cleaned_up_once_the_new_primary_reports_it():
    actions = decide(ME, view([dataset(primary=OTHER, manifested=True)],
                              nodes=[node(OTHER, [DS])]), held(HANDED_OFF))
    assert actions == [Cleanup(DS)]


def test_handed_off_copy_is_cleaned_up_when_a_third_node_ends_up_with_it():
    actions = decide(ME, view([dataset(primary=THIRD, manifested=True)],
                              nodes=[node(OTHER), node(THIRD, [DS])]), held(HANDED_OFF))
    assert actions == [Cleanup(DS)]


def test_handed_off_copy_waits_when_the_dataset_moves_back_here():
    actions = decide(ME, view([dataset(primary=ME, manifested=True)], nodes=[node(OTHER)]),
                     held(HANDED_OFF))
    assert [type(a) for a in actions] == [Wait]


def test_deleted_dataset_held_here_is_destroyed():
    assert decide(ME, view([dataset(deleted=True, manifested=True)]), held()) == [Destroy(DS)]


def test_deleted_dataset_leased_here_is_kept():
    actions = decide(ME, view([dataset(deleted=True, manifested=True)], leases=[lease(ME)]),
                     held())
    assert [type(a) for a in actions] == [Wait]


def test_deleted_dataset_leased_elsewhere_is_destroyed_here():
    actions = decide(ME, view([dataset(deleted=True, manifested=True)],
                              leases=[lease(OTHER)]), held())
    assert actions == [Destroy(DS)]


def test_deleted_dataset_replica_is_destroyed():
    assert decide(ME, view([dataset(primary=OTHER, deleted=True, manifested=True)]),
                  held(REPLICA)) == [Destroy(DS)]


def test_deleted_dataset_not_held_is_not_created():
    assert decide(ME, view([dataset(deleted=True)]), {}) == []


def test_replica_of_a_live_dataset_is_kept():
    assert decide(ME, view([dataset(primary=OTHER, manifested=True)],
                           nodes=[node(OTHER, [DS])]), held(REPLICA)) == []


def test_unconfigured_local_dataset_is_left_alone():
    assert decide(ME, view([]), held()) == []


def test_one_action_per_dataset_in_id_order():
    second = "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb"
    actions = decide(ME, view([dataset(dataset_id=second), dataset()]), {})
    assert actions == [Create(DS), Create(second)]


def test_view_ids_are_compared_case_insensitively():
    actions = decide(ME, view([dataset(primary=OTHER.upper(), dataset_id=DS.upper(),
                                       manifested=True)], nodes=[node(OTHER.upper())]), held())
    assert actions == [Push(DS, OTHER, OTHER_URL)]


IN_USE = {DS: ["web, since 12:00:00"]}


def test_dataset_in_use_here_is_never_pushed_away_whatever_the_leases_say():
    [action] = decide(ME, view([dataset(primary=OTHER, manifested=True)],
                               nodes=[node(OTHER)]), held(), IN_USE)
    assert isinstance(action, Wait) and "in use here by web" in action.reason


def test_deleted_dataset_in_use_here_is_kept():
    [action] = decide(ME, view([dataset(deleted=True, manifested=True)]), held(), IN_USE)
    assert isinstance(action, Wait) and "in use" in action.reason


def test_handed_off_copy_still_mounted_here_is_not_deleted():
    [action] = decide(ME, view([dataset(primary=OTHER, manifested=True)],
                               nodes=[node(OTHER, [DS])]), held(HANDED_OFF), IN_USE)
    assert isinstance(action, Wait) and "in use" in action.reason


def generation_view(generation, reporting_node):
    entry = dict(dataset(primary=THIRD, manifested=True), generation=generation)
    return view([entry], nodes=[node(OTHER, [DS] if reporting_node == OTHER else []),
                                node(THIRD, [DS] if reporting_node == THIRD else [])])


def held_at(generation):
    return {DS: LocalDataset(DS, PRIMARY, f"/data/datasets/{DS}", generation=generation)}


def test_an_older_copy_while_another_node_serves_the_dataset_is_not_pushed():
    [action] = decide(ME, generation_view(6, OTHER), held_at(4))
    assert isinstance(action, Wait) and "superseded" in action.reason


def test_the_only_copy_is_pushed_however_many_times_the_primary_changed():
    assert decide(ME, generation_view(9, None), held_at(1)) == [Push(DS, THIRD, OTHER_URL)]


def test_a_copy_the_configured_primary_received_from_us_is_a_handoff_to_finish():
    # pushed and acquired there, our handoff interrupted: Push finds it and hands off
    assert decide(ME, generation_view(5, THIRD), held_at(4)) == [Push(DS, THIRD, OTHER_URL)]


# -- the trash: a restored dataset comes back from where it was kept ---------------------

TRASHED = frozenset({DS})


def test_a_deleted_primary_is_destroyed_which_keeps_it_in_the_trash():
    assert decide(ME, view([dataset(deleted=True, manifested=True)]), held()) == [Destroy(DS)]


def test_a_dataset_restored_here_from_our_trash_is_restored():
    assert decide(ME, view([dataset(manifested=True)]), {}, trashed=TRASHED) == [Restore(DS)]


def test_a_dataset_restored_elsewhere_leaves_our_trashed_copy_alone():
    configured = view([dataset(primary=OTHER, manifested=True)], nodes=[node(OTHER, [DS])])
    assert decide(ME, configured, {}, trashed=TRASHED) == []


def test_a_dataset_deleted_again_is_not_restored_from_the_trash():
    assert decide(ME, view([dataset(deleted=True, manifested=True)]), {},
                  trashed=TRASHED) == []


def test_no_restore_while_another_node_serves_the_dataset():
    configured = view([dataset(manifested=True)], nodes=[node(OTHER, [DS])])
    [action] = decide(ME, configured, {}, trashed=TRASHED)
    assert isinstance(action, Wait) and "push" in action.reason


def test_a_stale_copy_here_in_use_holds_the_restore_back():
    [action] = decide(ME, view([dataset(manifested=True)]), held(HANDED_OFF), IN_USE,
                      trashed=TRASHED)
    assert isinstance(action, Wait) and "in use" in action.reason


def test_a_primary_held_here_is_not_restored_over():
    assert decide(ME, view([dataset(manifested=True)]), held(), trashed=TRASHED) == []
