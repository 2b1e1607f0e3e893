"""The control service's replicas as a client sees them (issue 14): the --control-url
list parsed once, and http.Replicas failing over between them, without a network."""

import argparse

import pytest
from twisted.internet import error as neterror
from twisted.internet.defer import CancelledError, Deferred, TimeoutError as DeferredTimeoutError
from twisted.internet.task import Clock
from twisted.web._newclient import ResponseNeverReceived

from powerstripflocker.clients.http import (
    ControlUrlError, Replicas, client_token, control_roots, control_url_argument,
)
from powerstripflocker.frontends.options import add_control_options, add_operator_options

A, B, C = "http://a:4523", "http://b:4523", "https://c/prefix"


@pytest.mark.parametrize("given, roots", [
    ("http://a:4523", (A,)),
    ("http://a:4523/v1/,http://b:4523", (A, B)),
    (" http://a:4523 , http://b:4523/v1 ,https://c/prefix/v1", (A, B, C)),
    ("http://a:4523,http://a:4523/v1/", (A,)),
    (["http://a:4523/v1", "http://b:4523/"], (A, B)),
])
def test_a_list_of_urls_gives_their_roots_in_order_without_repeats(given, roots):
    assert control_roots(given) == roots


@pytest.mark.parametrize("given, bad", [
    ("http://a:4523,,http://b:4523", "''"),
    ("http://a:4523,b:4523", "'b:4523'"),
    ("ftp://a", "'ftp://a'"),
    ("http://a:port", "'http://a:port'"),
    ("http://a:4523?x=1", "'http://a:4523?x=1'"),
    ("http://", "'http://'"),
    ("", "''"),
])
def test_a_bad_item_is_named(given, bad):
    with pytest.raises(ControlUrlError, match=bad.replace("?", r"\?")):
        control_roots(given)


@pytest.mark.parametrize("add_options", [add_control_options, add_operator_options])
def test_the_options_check_every_item(add_options, capsys):
    parser = argparse.ArgumentParser(prog="powerstrip-flocker adapter")
    add_options(parser)
    given = "http://a:4523,http://b:4523/v1"
    assert parser.parse_args(["--control-url", given]).control_url == given
    with pytest.raises(SystemExit):
        parser.parse_args(["--control-url", "http://a:4523,b"])
    assert "argument --control-url: 'b' in the control URL list" in capsys.readouterr().err
    assert control_url_argument(given) == given


def test_the_default_token_file_is_read_when_every_replica_is_on_this_machine(tmp_path):
    token_file = tmp_path / "cluster.token"
    token_file.write_text("local-token\n")
    local = "http://127.0.0.1:4523,http://localhost:4524/v1"
    assert client_token(None, local, {}, str(token_file)) == "local-token"
    assert client_token(None, local + ",http://10.0.0.2:4523", {}, str(token_file)) is None


class Answer:
    def __init__(self, code):
        self.code = code


def run(coroutine):
    """The result of a coroutine that never waits on a clock that is not advanced."""
    results = []
    Deferred.fromCoroutine(coroutine).addBoth(results.append)
    [result] = results
    return result


class Script:
    """attempt(root) answering from a script: root -> list of outcomes, in turn."""

    def __init__(self, **outcomes):
        self.outcomes = {root: list(steps) for root, steps in outcomes.items()}
        self.asked = []

    async def __call__(self, root):
        self.asked.append(root)
        outcome = self.outcomes[root].pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def unavailable(answer):
    return answer.code == 503


ROOTS = {"a": A, "b": B, "c": C}


def script(**outcomes):
    return Script(**{ROOTS[name]: steps for name, steps in outcomes.items()})


@pytest.mark.parametrize("failure", [
    neterror.ConnectionRefusedError(), DeferredTimeoutError(1, "no answer"), Answer(503),
    neterror.DNSLookupError(),
])
def test_a_replica_that_cannot_answer_is_passed_over_and_the_next_one_kept(failure):
    replicas = Replicas([A, B, C])
    attempt = script(a=[failure], b=[Answer(200), Answer(201)])
    assert run(replicas.call(attempt, unavailable)).code == 200
    assert replicas.root == B and replicas.in_turn() == (B, C, A)
    assert run(replicas.call(attempt, unavailable)).code == 201
    assert attempt.asked == [A, B, B]


def test_every_replica_once_then_the_last_ones_answer_or_error():
    replicas = Replicas([A, B, C])
    attempt = script(a=[Answer(503)], b=[DeferredTimeoutError(1, "x")], c=[Answer(503)])
    assert run(replicas.call(attempt, unavailable)).code == 503
    assert attempt.asked == [A, B, C] and replicas.root == C
    attempt = script(c=[Answer(503)], a=[Answer(503)], b=[DeferredTimeoutError(1, "x")])
    failure = run(replicas.call(attempt, unavailable))
    assert failure.check(DeferredTimeoutError) and attempt.asked == [C, A, B]


def test_an_answer_that_is_not_503_is_kept_even_if_it_is_an_error():
    replicas = Replicas([A, B])
    attempt = script(a=[Answer(404)])
    assert run(replicas.call(attempt, unavailable)).code == 404
    assert attempt.asked == [A]


def test_other_errors_and_cancellations_are_not_failed_over():
    for error in (ValueError("bug"), CancelledError(),
                  ResponseNeverReceived([_failure(CancelledError())])):
        attempt = script(a=[error])
        failure = run(Replicas([A, B]).call(attempt, unavailable))
        assert failure.value is error and attempt.asked == [A]


def _failure(error):
    from twisted.python.failure import Failure
    return Failure(error)


def test_a_connection_closed_unanswered_is_retried_once_on_the_same_replica():
    closed = ResponseNeverReceived([_failure(neterror.ConnectionDone())])
    attempt = script(a=[closed, Answer(201)])
    assert run(Replicas([A]).call(attempt, unavailable)).code == 201
    assert attempt.asked == [A, A]
    # Once per request: the second close fails over, and on the last replica it fails.
    attempt = script(a=[closed, closed], b=[Answer(201)])
    assert run(Replicas([A, B]).call(attempt, unavailable)).code == 201
    assert attempt.asked == [A, A, B]
    attempt = script(a=[closed, closed])
    assert run(Replicas([A]).call(attempt, unavailable)).value is closed


def test_when_no_replica_accepts_a_connection_rounds_are_retried_after_a_pause():
    clock = Clock()
    refused = neterror.ConnectionRefusedError()
    replicas = Replicas([A, B], clock, connect_retries=2, first_delay=0.1)
    attempt = script(a=[refused, refused, refused], b=[refused, refused, Answer(200)])
    results = []
    Deferred.fromCoroutine(replicas.call(attempt, unavailable)).addBoth(results.append)
    assert attempt.asked == [A, B] and not results
    clock.advance(0.1)
    assert attempt.asked == [A, B, A, B] and not results
    clock.advance(0.4)
    assert attempt.asked == [A, B, A, B, A, B] and results[0].code == 200
    assert replicas.root == B


def test_a_round_of_refusals_and_503_answers_is_asked_again_after_a_pause():
    # One replica dead, the other answering 503 while its etcd elects a leader.
    clock = Clock()
    refused = neterror.ConnectionRefusedError()
    replicas = Replicas([A, B], clock, connect_retries=2, first_delay=0.1)
    attempt = script(a=[refused, refused], b=[Answer(503), Answer(200)])
    results = []
    Deferred.fromCoroutine(replicas.call(attempt, unavailable)).addBoth(results.append)
    assert attempt.asked == [A, B] and not results
    clock.advance(0.1)
    assert attempt.asked == [A, B, A, B] and results[0].code == 200
    assert replicas.root == B


def test_rounds_of_503_answers_end_with_the_last_answer_or_error():
    clock = Clock()
    results = []
    replicas = Replicas([A], clock, connect_retries=1, first_delay=0.1)
    attempt = script(a=[Answer(503), Answer(503)])
    Deferred.fromCoroutine(replicas.call(attempt, unavailable)).addBoth(results.append)
    clock.advance(0.1)
    assert attempt.asked == [A, A] and results[0].code == 503
    refused = neterror.ConnectionRefusedError()
    replicas = Replicas([A, B], clock, connect_retries=1, first_delay=0.1)
    attempt = script(a=[Answer(503), Answer(503)], b=[refused, refused])
    Deferred.fromCoroutine(replicas.call(attempt, unavailable)).addBoth(results.append)
    clock.advance(0.1)
    assert attempt.asked == [A, B, A, B] and results[1].value is refused


def test_rounds_are_not_retried_when_a_replica_may_have_received_the_request():
    refused = neterror.ConnectionRefusedError()
    replicas = Replicas([A, B], Clock(), connect_retries=3)
    attempt = script(a=[DeferredTimeoutError(1, "x")], b=[refused])
    assert run(replicas.call(attempt, unavailable)).value is refused
    assert attempt.asked == [A, B]


def test_no_url_is_an_error():
    with pytest.raises(ControlUrlError):
        Replicas([])
