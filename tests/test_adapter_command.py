"""The real `powerstrip-flocker adapter` process, with its control service down."""

import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid

import pytest

from .support.processes import ManagedProcess, free_port

pytestmark = pytest.mark.integration


def post_json(url, document, timeout=60):
    request = urllib.request.Request(url, data=json.dumps(document).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture
def adapter_without_control_service(tmp_path):
    port, closed_port = free_port(), free_port()
    process = ManagedProcess.command(
        ["adapter", "--control-url", f"http://127.0.0.1:{closed_port}/v1/",
         "--node-uuid", str(uuid.uuid4()), "--listen", f"tcp:{port}:interface=127.0.0.1",
         "--timeout", "20", "--log-format", "json"],
        tmp_path / "adapter.log",
    ).start()
    process.wait_for_http(f"http://127.0.0.1:{port}/metrics")
    yield f"http://127.0.0.1:{port}", process
    process.stop()


def test_an_unreachable_control_service_fails_the_hook_with_a_clear_message(
        adapter_without_control_service):
    url, process = adapter_without_control_service
    hook = {"PowerstripProtocolVersion": 1, "Type": "pre-hook", "ClientRequest": {
        "Method": "POST", "Request": "/v1.41/containers/create",
        "Body": json.dumps({"HostConfig": {"Binds": ["/flocker/demo:/data"]}})}}
    status, reply = post_json(url + "/flocker-adapter", hook)
    assert status == 503
    assert "volume 'demo': cannot reach the control service at http://127.0.0.1:" in (
        reply["message"])
    assert "ConnectionRefusedError" in reply["message"]


def test_hooks_without_flocker_volumes_still_work_and_healthz_reports_the_outage(
        adapter_without_control_service):
    url, process = adapter_without_control_service
    hook = {"PowerstripProtocolVersion": 1, "Type": "pre-hook", "ClientRequest": {
        "Method": "GET", "Request": "/v1.41/containers/json", "Body": None}}
    assert post_json(url + "/flocker-adapter", hook) == (200, {
        "PowerstripProtocolVersion": 1, "ModifiedClientRequest": hook["ClientRequest"]})
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(url + "/healthz", timeout=30)
    assert raised.value.code == 503
    assert "cannot reach the control service" in json.loads(raised.value.read())["reason"]
    log_lines = [json.loads(line) for line in open(process.log_path) if line.startswith("{")]
    assert any("listening" in line.get("log_format", "") for line in log_lines)


@pytest.mark.parametrize("arguments, message", [
    (["--maximum-size", "1000"], "--maximum-size must be at least"),
    (["--timeout", "0"], "timeouts must be positive"),
    (["--node-uuid", "a", "--node-address", "b"], "not allowed with argument"),
])
def test_bad_options_are_refused_before_starting(arguments, message):
    result = subprocess.run([sys.executable, "-m", "powerstripflocker", "adapter", *arguments],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert message in result.stderr


def test_a_control_service_that_never_answers_fails_the_hook_at_its_deadline(tmp_path):
    """The deadline, not the control service, is what the user hears about."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts connections, never answers
    port = free_port()
    process = ManagedProcess.command(
        ["adapter", "--control-url", f"http://127.0.0.1:{silent.getsockname()[1]}",
         "--node-uuid", str(uuid.uuid4()), "--listen", f"tcp:{port}:interface=127.0.0.1",
         "--timeout", "2", "--request-timeout", "30"],
        tmp_path / "adapter.log",
    ).start()
    try:
        process.wait_for_http(f"http://127.0.0.1:{port}/metrics")
        hook = {"PowerstripProtocolVersion": 1, "Type": "pre-hook", "ClientRequest": {
            "Method": "POST", "Request": "/v1.41/containers/create",
            "Body": json.dumps({"HostConfig": {"Binds": ["/flocker/slow:/data"]}})}}
        status, reply = post_json(f"http://127.0.0.1:{port}/flocker-adapter", hook)
    finally:
        process.stop()
        silent.close()
    assert status == 504, reply
    assert "did not answer within the 2s deadline" in reply["message"]
