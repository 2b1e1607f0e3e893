"""The pure rules of leases and the claims that keep them (powerstripflocker/protocol/leases.py)."""

from hypothesis import given, strategies as st

from powerstripflocker.protocol.leases import after_use_ended, granted, still_claimed

NOW = 1000.0
seconds = st.floats(min_value=0.1, max_value=1e4, allow_nan=False)
times = st.floats(min_value=0, max_value=3e3, allow_nan=False)


def test_a_claim_sets_how_long_the_lease_is_kept_for_it():
    assert granted(NOW, 30, None, claim=True) == (NOW + 30, NOW + 30)


def test_a_renewal_never_cuts_an_outstanding_claim_short():
    assert granted(NOW, 5, (NOW + 30, NOW + 30)) == (NOW + 30, NOW + 30)
    assert granted(NOW, 60, (NOW + 30, NOW + 30)) == (NOW + 60, NOW + 30)


def test_a_new_users_start_uses_up_the_claims():
    assert granted(NOW, 5, (NOW + 30, NOW + 30), new_user=True) == (NOW + 5, None)


def test_a_lapsed_claim_is_forgotten():
    assert granted(NOW, 5, (NOW + 30, NOW - 1)) == (NOW + 5, None)


def test_the_end_of_use_keeps_the_lease_only_for_a_live_claim():
    assert after_use_ended(NOW, NOW + 12) == (NOW + 12, NOW + 12)
    assert after_use_ended(NOW, NOW) is None
    assert after_use_ended(NOW, None) is None


@given(seconds, st.none() | st.tuples(times, st.none() | times), st.booleans(), st.booleans())
def test_a_granted_lease_lasts_at_least_as_long_as_asked_and_as_its_live_claim(
        expires, existing, claim, new_user):
    expiration, claimed_until = granted(NOW, expires, existing, claim=claim, new_user=new_user)
    assert expiration >= NOW + expires
    if claimed_until is not None:
        assert NOW < claimed_until <= expiration
    if existing is not None and existing[1] is not None and existing[1] > NOW and not new_user:
        assert claimed_until >= existing[1]


def test_a_permanent_lease_stays_permanent():
    assert granted(NOW, None, (NOW + 30, NOW + 30)) == (None, NOW + 30)


def test_a_claim_asked_again_within_half_its_time_needs_no_renewal():
    held = granted(NOW, 30, None, claim=True)
    assert still_claimed(NOW + 15, 30, held)
    assert not still_claimed(NOW + 15.1, 30, held)
    # A shorter claim asked of a longer one: its half is long since covered.
    assert still_claimed(NOW + 25, 10, held)


def test_a_lease_without_an_outstanding_claim_is_always_claimed_anew():
    renewed_by_its_user = granted(NOW, 30, granted(NOW, 30, None, claim=True), new_user=True)
    assert not still_claimed(NOW, 30, renewed_by_its_user)
    assert not still_claimed(NOW, 30, None)
    assert not still_claimed(NOW, None, granted(NOW, None, None, claim=True))


@given(expires=seconds, elapsed=times)
def test_a_claim_answered_without_renewal_still_holds_half_of_what_was_asked(expires,
                                                                            elapsed):
    held = granted(NOW, expires, None, claim=True)
    if still_claimed(NOW + elapsed, expires, held):
        expiration, claimed_until = held
        assert min(expiration, claimed_until) >= NOW + elapsed + expires / 2
