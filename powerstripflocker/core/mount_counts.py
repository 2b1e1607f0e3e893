"""How many times Docker has mounted each volume, per mount id, through a volume plugin.

Docker calls a plugin's Mount once for every container that uses a volume and Unmount
when each stops, naming the mount with an id; a volume is in use from the first Mount of
a mount id to its last Unmount, and the plugin holds the volume's lease for that long.
"""


class MountCounts:
    """Docker's outstanding Mounts of each volume name, per mount id, and the dataset each
    name's mounts hold (an Unmount releases its lease without asking where the volume is)."""

    def __init__(self):
        self._counts = {}  # name -> {mount id: count}
        self._datasets = {}  # name -> dataset_id of its mounts

    def is_mounted(self, name, mount_id):
        """Whether name has a Mount under mount_id not yet matched by an Unmount."""
        return bool(self._counts.get(name, {}).get(mount_id))

    def mounted(self, name, mount_id, dataset_id):
        """Count one more Mount of name (the volume of dataset_id) under mount_id."""
        counts = self._counts.setdefault(name, {})
        counts[mount_id] = counts.get(mount_id, 0) + 1
        self._datasets[name] = dataset_id

    def unmounted(self, name, mount_id):
        """Count one Unmount; the dataset_id whose use under mount_id it ends, else None
        (more Mounts of it remain, or there was none to match)."""
        counts = self._counts.get(name, {})
        if not counts.get(mount_id):
            return None
        counts[mount_id] -= 1
        if counts[mount_id]:
            return None
        del counts[mount_id]
        return self._datasets[name]
