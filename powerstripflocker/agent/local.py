"""What this node knows of its own datasets beyond the backend: what runs on each (one
thing at a time) and what uses each (in-use tracking fills that in)."""


class InUseHere(Exception):
    """The kernel shows the dataset in use here: it is not moved or deleted now."""


class Busy:
    """The one thing running on each dataset here ("push", "receive", "acquire"...)."""

    def __init__(self):
        self.running = {}

    def lock(self, dataset_id, what):
        """Whether dataset_id was free; it is held for `what` now if it was."""
        if dataset_id in self.running:
            return False
        self.running[dataset_id] = what
        return True

    def unlock(self, dataset_id):
        self.running.pop(dataset_id, None)

    def __contains__(self, dataset_id):
        return dataset_id in self.running

    def __getitem__(self, dataset_id):
        return self.running[dataset_id]


class LocalUse:
    """What uses the datasets here. Nothing is known to use them until in-use tracking
    sets these: users_of(dataset_id) -> descriptions of the containers using it (reported
    so another node can say who holds a volume); in_use(dataset_id, fresh=False) -> what
    uses it here, mounted in a mount namespace or a running container's ([] when nothing;
    fresh asks the kernel now); fencing_events() -> the latest fencings, for metrics."""

    def __init__(self):
        self.users_of = lambda dataset_id: []
        self.in_use = lambda dataset_id, fresh=False: []
        self.fencing_events = lambda: []

    def check_not_in_use(self, dataset_id, what):
        """Raise InUseHere when the kernel shows dataset_id in use now."""
        users = self.in_use(dataset_id, fresh=True)
        if users:
            raise InUseHere(f"dataset {dataset_id} is in use here by {', '.join(users[:3])}: "
                            f"not {what} it while it is")
