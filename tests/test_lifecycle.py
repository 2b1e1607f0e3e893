"""Parts as services: started in order, stopped in the reverse order, each waiting for
the one before; `up` composes its five parts in the documented order."""

import pytest
from twisted.application.service import Service
from twisted.internet.defer import Deferred

from powerstripflocker.serving.lifecycle import InOrder, PartService, when_started


class Recorded(PartService):
    """A part whose start and stop end when the test says so."""

    def __init__(self, name, events):
        self.name = name
        self.events = events
        self.starting = Deferred()
        self.stopping = Deferred()

    async def start(self):
        self.events.append(f"start {self.name}")
        await self.starting
        self.events.append(f"started {self.name}")

    async def stop(self):
        self.events.append(f"stop {self.name}")
        await self.stopping
        self.events.append(f"stopped {self.name}")


def parts(names, events):
    whole = InOrder()
    made = [Recorded(name, events) for name in names]
    for part in made:
        part.setServiceParent(whole)
    return whole, made


def results(deferred):
    outcome = []
    deferred.addBoth(outcome.append)
    return outcome


def test_parts_start_one_after_another_and_stop_in_reverse_each_after_the_next():
    events = []
    whole, (a, b, c) = parts("abc", events)
    whole.startService()
    started = results(when_started(whole))
    assert events == ["start a"]
    a.starting.callback(None)
    assert events[-1] == "start b"
    b.starting.callback(None)
    c.starting.callback(None)
    assert started == [None]
    assert events == ["start a", "started a", "start b", "started b", "start c", "started c"]

    del events[:]
    stopped = results(whole.stopService())
    assert events == ["stop c"]
    c.stopping.callback(None)
    assert events == ["stop c", "stopped c", "stop b"]
    b.stopping.callback(None)
    a.stopping.callback(None)
    assert stopped == [None]
    assert events == ["stop c", "stopped c", "stop b", "stopped b", "stop a", "stopped a"]
    assert not any(part.running for part in (whole, a, b, c))


def test_a_part_that_fails_to_start_stops_those_started_and_fails_the_whole():
    events = []
    whole, (a, b, c) = parts("abc", events)
    for part in (a, c):
        part.stopping.callback(None)
    whole.startService()
    started = results(when_started(whole))
    a.starting.callback(None)
    b.starting.errback(SystemExit(2))
    [failure] = started
    assert failure.check(SystemExit) and failure.value.code == 2
    assert events == ["start a", "started a", "start b", "stop a", "stopped a"]
    assert "start c" not in events
    # The reactor's shutdown then stops the whole: nothing is stopped twice.
    stopped = results(whole.stopService())
    assert stopped == [None]
    assert events.count("stop a") == 1 and "stop b" not in events


def test_a_stop_during_the_start_waits_for_it_then_stops():
    events = []
    whole, (a,) = parts("a", events)
    a.stopping.callback(None)
    whole.startService()
    stopped = results(whole.stopService())
    assert stopped == [] and events == ["start a"]
    a.starting.callback(None)
    assert stopped == [None]
    assert events == ["start a", "started a", "stop a", "stopped a"]


def test_a_plain_service_is_started_at_once():
    events = []
    whole, (a,) = parts("a", events)
    plain = Service()
    plain.setServiceParent(whole)
    whole.startService()
    a.starting.callback(None)
    assert plain.running
    a.stopping.callback(None)
    assert results(whole.stopService()) == [None]
    assert not plain.running


@pytest.fixture
def up_options(tmp_path):
    from powerstripflocker.cli.main import build_parser
    return build_parser().parse_args([
        "up", "--state-dir", str(tmp_path / "state"), "--docker", "unix:///nonexistent.sock",
        "--proxy-socket", str(tmp_path / "run" / "docker.sock"),
        "--plugin-dir", str(tmp_path / "plugins"), "--control-port", "14523",
        "--agent-port", "14524", "--adapter-port", "19999"])


def test_up_starts_control_agent_adapter_plugin_proxy_and_stops_them_in_reverse(up_options):
    from twisted.internet.task import Clock

    from powerstripflocker.cli.up import build

    whole = build(Clock(), up_options)
    events = []

    def record(part):
        async def start():
            events.append(f"start {part.name}")

        async def stop():
            events.append(f"stop {part.name}")
        part.start, part.stop = start, stop

    for part in whole:
        record(part)
    whole.startService()
    assert results(when_started(whole)) == [None]
    assert results(whole.stopService()) == [None]
    assert events == ["start control", "start agent", "start adapter", "start plugin",
                      "start proxy", "stop proxy", "stop plugin", "stop adapter",
                      "stop agent", "stop control"]


def test_up_gives_each_part_the_units_options_for_one_loopback_node(up_options, tmp_path):
    from powerstripflocker.cli.up import part_options

    parts = part_options(up_options, environ={})
    state = tmp_path / "state"
    assert parts["control"].db == str(state / "control.db")
    assert parts["control"].cluster_token_file is None  # made on first start, there:
    for name in ("agent", "adapter", "plugin"):
        assert parts[name].cluster_token_file == str(state / "cluster.token")
        assert parts[name].control_url == "http://127.0.0.1:14523"
    assert parts["control"].listen == "tcp:14523:interface=127.0.0.1"
    assert parts["agent"].listen == "tcp:14524:interface=127.0.0.1"
    assert parts["agent"].data_root == str(state / "agent")
    assert parts["agent"].docker == parts["proxy"].docker == "unix:///nonexistent.sock"
    assert parts["adapter"].listen == "tcp:19999:interface=127.0.0.1"
    assert parts["adapter"].node_address == parts["agent"].address == "127.0.0.1"
    assert parts["plugin"].socket == str(tmp_path / "plugins" / "flocker.sock")
    assert parts["proxy"].listen == f"unix://{tmp_path / 'run' / 'docker.sock'}"
    assert parts["proxy"].config == str(state / "adapters.yml")
    with_env = part_options(up_options, environ={"POWERSTRIP_FLOCKER_CLUSTER_TOKEN": "t"})
    assert all(with_env[name].cluster_token_file is None
               for name in ("control", "agent", "adapter", "plugin"))
