"""A real, private dockerd for end-to-end tests and benchmarks, and an offline busybox image.

    daemon = DockerDaemon(tmpdir).start()
    ensure_busybox_image(daemon)
    subprocess.run(daemon.cli("run", "--rm", "busybox", "echo", "hi"))
    daemon.stop()

Each daemon has its own --data-root, --exec-root, --pidfile and unix socket,
and runs with --bridge=none --iptables=false, so several can run side by side
and none touches the host's network or /var/lib/docker. stop() ends the
daemon (and the containerd it started), then unmounts anything left under its
roots.
"""

import os
import shutil
import signal
import subprocess
import tempfile
import time

from powerstripflocker.localcluster.machine import (  # noqa: F401 - missing_requirements is re-exported
    import_busybox_image, missing_requirements, unmount_under,
)

IMAGE = "busybox:latest"


class DockerDaemon:
    """One dockerd with private roots and socket."""

    def __init__(self, base_dir=None, name="dockerd"):
        if base_dir is None:
            base_dir = tempfile.mkdtemp(prefix="psf-dockerd-")
        # unix socket paths are limited to 108 bytes; keep the run dir short
        self.base_dir = str(base_dir)
        self.run_dir = tempfile.mkdtemp(prefix="psfd-", dir="/tmp")
        self.data_root = os.path.join(self.base_dir, name, "data")
        self.exec_root = os.path.join(self.run_dir, "exec")
        self.pidfile = os.path.join(self.run_dir, "docker.pid")
        self.socket = os.path.join(self.run_dir, "docker.sock")
        self.log_path = os.path.join(self.base_dir, f"{name}.log")
        self.host = f"unix://{self.socket}"
        self.process = None

    def start(self, timeout=60.0):
        os.makedirs(self.data_root, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [
                "dockerd",
                "--data-root", self.data_root,
                "--exec-root", self.exec_root,
                "--pidfile", self.pidfile,
                "-H", self.host,
                "--bridge=none", "--iptables=false", "--ip6tables=false",
                "--ip-masq=false", "--userland-proxy=false",
                "--log-level=warn",
            ],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = self.tail()
                self._cleanup()
                raise RuntimeError(f"dockerd exited {self.process.returncode}:\n{log}")
            if os.path.exists(self.socket) and self._answers():
                return self
            time.sleep(0.1)
        log = self.tail()
        self.stop()
        raise RuntimeError(f"dockerd not ready after {timeout}s:\n{log}")

    def _answers(self):
        result = subprocess.run(
            ["docker", "-H", self.host, "version", "--format", "{{.Server.Version}}"],
            capture_output=True, timeout=10,
        )
        return result.returncode == 0

    def cli(self, *args, host=None):
        """argv for the docker CLI against this daemon (or another host, e.g. a proxy)."""
        return ["docker", "-H", host or self.host, *args]

    def run(self, *args, host=None, timeout=60, check=True, **kwargs):
        return subprocess.run(self.cli(*args, host=host), capture_output=True, timeout=timeout,
                              check=check, **kwargs)

    def stop(self, timeout=30.0):
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        if self.process is not None:
            # the containerd (and shims) dockerd started live in its process group
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._cleanup()

    def _cleanup(self):
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None
        unmount_under(self.data_root)
        unmount_under(self.exec_root)
        unmount_under(self.run_dir)
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def tail(self, lines=30):
        try:
            with open(self.log_path, "rb") as log:
                return b"\n".join(log.read().splitlines()[-lines:]).decode("utf-8", "replace")
        except OSError:
            return "(no log)"

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def ensure_busybox_image(daemon, image=IMAGE):
    """Import busybox:latest offline (Debian's static busybox + applet links); idempotent."""
    return import_busybox_image(daemon.host, image)
