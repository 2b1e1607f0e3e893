"""MountCounts: Docker's outstanding Mounts of each volume, per mount id."""

from powerstripflocker.core.mount_counts import MountCounts


def test_a_use_ends_at_the_unmount_matching_its_last_mount():
    counts = MountCounts()
    assert not counts.is_mounted("demo", "a")
    counts.mounted("demo", "a", "dataset-1")
    counts.mounted("demo", "a", "dataset-1")
    assert counts.is_mounted("demo", "a")
    assert counts.unmounted("demo", "a") is None
    assert counts.is_mounted("demo", "a")
    assert counts.unmounted("demo", "a") == "dataset-1"
    assert not counts.is_mounted("demo", "a")


def test_mount_ids_and_names_are_counted_apart():
    counts = MountCounts()
    counts.mounted("demo", "a", "dataset-1")
    counts.mounted("demo", "b", "dataset-1")
    counts.mounted("other", "a", "dataset-2")
    assert counts.unmounted("demo", "b") == "dataset-1"
    assert counts.is_mounted("demo", "a") and counts.is_mounted("other", "a")
    assert counts.unmounted("other", "a") == "dataset-2"
    assert counts.unmounted("demo", "a") == "dataset-1"


def test_an_unmount_without_a_mount_ends_nothing():
    counts = MountCounts()
    assert counts.unmounted("demo", "a") is None
    counts.mounted("demo", "a", "dataset-1")
    assert counts.unmounted("demo", "b") is None
    assert counts.unmounted("demo", "a") == "dataset-1"
    assert counts.unmounted("demo", "a") is None, "an extra Unmount is harmless"


def test_the_dataset_released_is_the_one_of_the_latest_mount():
    counts = MountCounts()
    counts.mounted("demo", "a", "dataset-1")
    counts.mounted("demo", "a", "dataset-2")
    counts.unmounted("demo", "a")
    assert counts.unmounted("demo", "a") == "dataset-2"
