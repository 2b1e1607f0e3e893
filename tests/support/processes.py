"""Start the project's own commands as real processes for integration tests."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request


def free_port():
    """A TCP port on loopback that nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ManagedProcess:
    """One child process with its log in a file; stopped (and reaped) by stop()."""

    def __init__(self, args, log_path, env=None):
        self.args = list(args)
        self.log_path = log_path
        self.env = dict(os.environ, **(env or {}))
        self.process = None

    @classmethod
    def command(cls, subcommand_args, log_path, env=None):
        """powerstrip-flocker SUBCOMMAND ... run with this interpreter."""
        return cls([sys.executable, "-m", "powerstripflocker", *subcommand_args], log_path, env)

    def start(self):
        self.log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            self.args, stdout=self.log, stderr=subprocess.STDOUT, env=self.env,
            start_new_session=True,
        )
        return self

    def wait_until(self, ready, timeout=30.0, what="ready"):
        """Poll ready() until it is true; fail with the process log when it never is."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.args} exited {self.process.returncode}:\n{self.tail()}")
            try:
                if ready():
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.args} not {what} after {timeout}s:\n{self.tail()}")

    def wait_for_http(self, url, timeout=30.0):
        def answers():
            try:
                with urllib.request.urlopen(url, timeout=2):
                    return True
            except urllib.error.HTTPError:
                return True
        return self.wait_until(answers, timeout, what=f"answering {url}")

    def kill(self, sig=signal.SIGKILL):
        """Send sig to the whole process group and reap the child."""
        if self.process and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=30)

    def stop(self, timeout=10.0):
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        if getattr(self, "log", None):
            self.log.close()

    def tail(self, lines=40):
        try:
            with open(self.log_path, "rb") as log:
                return b"\n".join(log.read().splitlines()[-lines:]).decode("utf-8", "replace")
        except OSError:
            return "(no log)"
