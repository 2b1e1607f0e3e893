"""Client set-up in one place: the control service's URL forms, the TLS policy, the
quiet connection pool, and the id check both sides use."""

import pytest
from twisted.internet.task import Clock
from twisted.web.client import BrowserLikePolicyForHTTPS

from powerstripflocker.clients.http import (
    _QuietFactory, connection_pool, control_root, http_client, tls_policy,
)
from powerstripflocker.protocol.ids import canonical_uuid, is_uuid, is_uuid4


@pytest.mark.parametrize("given", [
    "http://h:4523", "http://h:4523/", "http://h:4523/v1", "http://h:4523/v1/",
    " http://h:4523/v1 ", "http://h:4523//",
])
def test_every_form_of_a_control_url_has_one_root(given):
    assert control_root(given) == "http://h:4523"


@pytest.mark.parametrize("given, root", [
    ("https://h:4523/v1", "https://h:4523"),
    ("https://h:4523/v1/", "https://h:4523"),
    ("https://h:4523", "https://h:4523"),
    ("http://h/prefix/v1", "http://h/prefix"),
    ("http://h/prefix/", "http://h/prefix"),
    ("http://h:4523/v12", "http://h:4523/v12"),
])
def test_https_and_path_prefixes_are_kept(given, root):
    assert control_root(given) == root


def test_a_client_certificate_needs_the_ca():
    assert isinstance(tls_policy(), BrowserLikePolicyForHTTPS)
    with pytest.raises(ValueError, match="needs the cluster CA"):
        tls_policy(None, "client.pem")


def test_the_pool_logs_no_line_per_connection():
    pool = connection_pool(Clock(), persistent=False, max_per_host=8)
    assert pool._factory is _QuietFactory and not _QuietFactory.noisy
    assert (pool.persistent, pool.maxPersistentPerHost) == (False, 8)
    assert http_client(Clock(), pool=pool)._agent._pool is pool


def test_ids():
    upper = "6C1B8A4D-6B8D-4F0A-9C55-1C2D8A0D2F11"
    assert canonical_uuid(upper) == upper.lower()
    for not_one in ("6c1b8a4d6b8d4f0a9c551c2d8a0d2f11", "{" + upper + "}", upper + "\n",
                    "unknown", None, 42):
        assert canonical_uuid(not_one) is None and not is_uuid(not_one)
    assert is_uuid4(upper) and not is_uuid4("6c1b8a4d-6b8d-1f0a-9c55-1c2d8a0d2f11")
    assert is_uuid("6c1b8a4d-6b8d-1f0a-9c55-1c2d8a0d2f11")
