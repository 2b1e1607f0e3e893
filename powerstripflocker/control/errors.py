"""The control service's deliberate refusals: a status code and Flocker's
{"description": ...} body (with more fields for some), rendered by httpapi.py."""


class APIError(Exception):
    """A deliberate error answer: status code plus Flocker's {"description": ...} body."""

    def __init__(self, code, description, errors=None):
        super().__init__(code, description)
        self.code = code
        self.description = description
        self.errors = errors

    def body(self):
        result = {"description": self.description}
        if self.errors is not None:
            result["errors"] = list(self.errors)
        return result


DATASET_NOT_FOUND = "Dataset not found."
DATASET_DELETED = "The dataset has been deleted."
DATASET_ID_IN_USE = "The provided dataset_id is already in use."
LEASE_NOT_FOUND = "Lease not found."
NODE_ERA_NOT_FOUND = "No node found with given era."


class HeldElsewhere(APIError):
    """409: another node holds the lease; the body names it and what uses the dataset."""

    def __init__(self, description, holder):
        super().__init__(409, description)
        self.holder = holder

    def body(self):
        return dict(super().body(), holder=dict(self.holder))


class ClaimedElsewhere(APIError):
    """409: a claim that waited for generation G found the dataset moved to another node."""

    def __init__(self, description, claimant):
        super().__init__(409, description)
        self.claimant = claimant

    def body(self):
        return dict(super().body(), claimed_by=dict(self.claimant))


class TagMismatch(APIError):
    """412: X-If-Configuration-Matches names a configuration that is not the current one."""

    def __init__(self, wanted, current):
        super().__init__(412, f"Tag doesn't match. Required: {wanted}, current: {current}")
        self.current = current
