"""The one-shot client commands end with their own answer: no reactor chatter."""

import subprocess
import sys

import pytest

from .support.processes import free_port

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("command", [["status"], ["release", "x"], ["restore", "x"]])
def test_an_unreachable_control_service_is_one_line_and_status_1(command, tmp_path):
    token = tmp_path / "token"
    token.write_text("t\n")
    result = subprocess.run(
        [sys.executable, "-m", "powerstripflocker", *command, "--control-url",
         f"http://127.0.0.1:{free_port()}", "--cluster-token-file", str(token)],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "Main loop terminated" not in result.stderr
    [line] = result.stderr.splitlines()
    assert "cannot reach the control service at http://127.0.0.1:" in line, line
