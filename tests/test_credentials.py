"""The cluster token: made once (0600), found by clients in one order, and the rule that
turns a request's credentials into None (served), 401 or 403."""

import os

import pytest
from twisted.web.http_headers import Headers

from powerstripflocker.clients.http import (
    TOKEN_ENV, TokenError, client_token, is_local_url, read_token_file,
)
from powerstripflocker.serving.credentials import make_token_file, refusal


def test_a_token_is_made_once_with_mode_0600(tmp_path):
    path = str(tmp_path / "cluster.token")
    previous = os.umask(0)
    try:
        token, made = make_token_file(path)
    finally:
        os.umask(previous)
    assert made and len(token) == 64 and int(token, 16) >= 0
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert make_token_file(path) == (token, False)


def test_clients_take_the_file_then_the_environment_then_a_local_services_file(tmp_path):
    given, default = tmp_path / "given", tmp_path / "default"
    given.write_text("from-file\n")
    default.write_text("made-by-control\n")
    environ = {TOKEN_ENV: "from-env"}
    local, remote = "http://127.0.0.1:4523", "https://10.0.0.1:4523"
    assert client_token(str(given), local, environ, str(default)) == "from-file"
    assert client_token(None, local, environ, str(default)) == "from-env"
    assert client_token(None, local, {}, str(default)) == "made-by-control"
    assert client_token(None, remote, {}, str(default)) is None
    assert client_token(None, local, {}, str(tmp_path / "absent")) is None
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(TokenError, match="holds no token"):
        read_token_file(str(tmp_path / "empty"))
    with pytest.raises(TokenError, match="cannot read"):
        client_token(str(tmp_path / "absent"), local, {})


@pytest.mark.parametrize("url, local", [
    ("http://127.0.0.1:4523", True), ("http://127.0.0.7:1/v1", True),
    ("http://localhost:4523", True), ("http://[::1]:4523", True),
    ("http://10.0.0.1:4523", False), ("https://control.example:4523", False),
])
def test_local_urls(url, local):
    assert is_local_url(url) is local


class Plain:
    """A transport without TLS."""


class Certified:
    def __init__(self, certificate):
        self.certificate = certificate

    def getPeerCertificate(self):
        return self.certificate


def test_refusals():
    def check(headers, transport=Plain(), token="s3cret"):
        answer = refusal(Headers(headers), transport, token)
        return None if answer is None else answer.code

    assert check({}) == 401
    assert check({b"Authorization": [b"Bearer s3cret"]}) is None
    assert check({b"Authorization": [b"Bearer wrong"]}) == 403
    assert check({b"Authorization": [b"s3cret"]}) == 403
    assert check({b"Authorization": [b"Bearer s3cret", b"Bearer s3cret"]}) == 403
    assert check({}, Certified(object())) is None
    assert check({}, Certified(None)) == 401
    assert refusal(Headers({}), Plain(), "t").headers == [
        (b"WWW-Authenticate", b'Bearer realm="powerstrip-flocker"')]
