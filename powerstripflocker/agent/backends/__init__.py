"""Storage backends for the node agent, behind one interface (IStorageBackend)."""

from powerstripflocker.agent.backends.base import (
    BackendError,
    Conflict,
    IStorageBackend,
    MissingParent,
    ReceivePlan,
    SendPlan,
    TrashEntry,
)


def make_backend(name, reactor, data_root, btrfs_quota=False):
    if name == "directory":
        from powerstripflocker.agent.backends.directory import DirectoryBackend
        return DirectoryBackend(reactor, data_root)
    if name == "btrfs":
        from powerstripflocker.agent.backends.btrfs import BtrfsBackend
        return BtrfsBackend(reactor, data_root, quota=btrfs_quota)
    raise ValueError(f"unknown backend {name!r} (directory, btrfs)")


BACKENDS = ("directory", "btrfs")

__all__ = [
    "BACKENDS", "BackendError", "Conflict", "IStorageBackend", "MissingParent",
    "ReceivePlan", "SendPlan", "TrashEntry", "make_backend",
]
