"""Files the local cluster writes: logs 0640, the token and its docker env file 0600."""

import os

from powerstripflocker.localcluster.cluster import LocalCluster
from powerstripflocker.localcluster.commands import control_command
from powerstripflocker.localcluster.layout import make_layout


def test_logs_are_0640_whatever_the_umask(tmp_path):
    cluster = LocalCluster(make_layout(str(tmp_path / "state"), str(tmp_path / "run")))
    previous = os.umask(0)
    try:
        cluster._spawn("probe", ["true"]).wait()
    finally:
        os.umask(previous)
    log = os.path.join(cluster.layout.log_dir, "probe.log")
    assert os.stat(log).st_mode & 0o777 == 0o640


def test_only_the_netns_bridge_gets_plain_http_beyond_loopback(tmp_path):
    loopback = make_layout(str(tmp_path / "state"), str(tmp_path / "run"))
    assert "--insecure-http" not in control_command(loopback)
    assert loopback.control_address == "127.0.0.1"
    bridge = make_layout(str(tmp_path / "state"), str(tmp_path / "run"), hosts="netns")
    assert bridge.control_address.startswith("198.18.")
    assert control_command(bridge)[-1] == "--insecure-http"
