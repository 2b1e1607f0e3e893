"""The rules of a lease and of the claims that keep it, as pure functions shared by
the control service and the in-memory fake of its API.

A lease says "dataset D is in use on node N". A claim is the lease a hook takes just
before it answers with D's path on N: that path must stay put until the container
that will use it starts, whatever N's agent renews or releases meanwhile for the
containers it already sees. So a lease records, besides its expiry, until when a
claim keeps it (claimed_until). The agent's renewal on seeing a new user start
retires the claims made before it (they did their job); its release after the last
user stops leaves a lease that a later claim still keeps.
"""


def granted(now, expires, existing, claim=False, new_user=False):
    """(expiration, claimed_until) of a lease granted or renewed at now for expires
    seconds (None: never expires). existing: the holder's current (expiration,
    claimed_until), or None when it held none."""
    claimed_until = None
    if existing is not None and not new_user:
        claimed_until = existing[1]
    if claimed_until is not None and claimed_until <= now:
        claimed_until = None
    expiration = None if expires is None else now + expires
    if claim and expiration is not None:
        claimed_until = max(claimed_until or expiration, expiration)
    if expiration is not None and claimed_until is not None:
        expiration = max(expiration, claimed_until)
    return expiration, claimed_until


def after_use_ended(now, claimed_until):
    """(expiration, claimed_until) once the holder's use ended, or None when the lease
    goes: it stays only for a claim that has not lapsed."""
    if claimed_until is not None and claimed_until > now:
        return claimed_until, claimed_until
    return None


def still_claimed(now, expires, existing):
    """Whether a claim asked again at now for expires seconds is answered from the
    holder's lease as it is (existing: its (expiration, claimed_until)), writing nothing:
    while at least half of expires is left of both, as a DHCP client renews at half its
    lease. A hook that polls its claim then costs a read, not a write that wakes every
    agent."""
    if expires is None or existing is None:
        return False
    expiration, claimed_until = existing
    if claimed_until is None:
        return False  # no claim outstanding (its users' start used it up): make one
    ends = claimed_until if expiration is None else min(expiration, claimed_until)
    return ends - now >= expires / 2
