"""Deployment pieces: adapters.yml, the systemd units and the provisioning scripts."""

import glob
import os
import shlex
import shutil
import subprocess
import sys

import pytest
import yaml

from powerstripflocker.cli.main import build_parser
from powerstripflocker.localcluster.commands import (
    adapter_command, agent_command, control_command, plugin_command, proxy_command,
)
from powerstripflocker.localcluster.layout import adapters_config
from powerstripflocker.cli.units import node_layout

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_repository_adapters_yml_is_the_local_clusters_configuration():
    with open(os.path.join(REPO, "adapters.yml")) as config:
        assert yaml.safe_load(config) == adapters_config("http://127.0.0.1:9999/flocker-adapter")


def test_units_run_the_local_clusters_command_lines(tmp_path):
    output, config_dir = tmp_path / "units", tmp_path / "etc"
    result = subprocess.run(
        [sys.executable, "-m", "powerstripflocker", "units", "--node-name", "node1",
         "--address", "192.168.56.11", "--control-address", "192.168.56.11", "--control",
         "--output", str(output), "--config-dir", str(config_dir)],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    options = build_parser().parse_args(
        ["units", "--node-name", "node1", "--address", "192.168.56.11",
         "--control-address", "192.168.56.11", "--config-dir", str(config_dir)])
    cluster, node = node_layout(options)
    expected = {
        "control": control_command(cluster), "agent": agent_command(cluster, node),
        "adapter": adapter_command(cluster, node), "proxy": proxy_command(node),
        "plugin": plugin_command(cluster, node),
    }
    for name, command in expected.items():
        text = (output / f"powerstrip-flocker-{name}.service").read_text()
        [exec_start] = [line for line in text.splitlines() if line.startswith("ExecStart=")]
        assert shlex.split(exec_start[len("ExecStart="):]) == command
    assert "--listen unix:///var/run/docker.sock --docker unix:///var/run/docker.real.sock" in (
        shlex.join(expected["proxy"]))
    assert "interface=127.0.0.1" in expected["adapter"][-1]
    assert expected["plugin"][-1] == "/run/docker/plugins/flocker.sock"
    with open(config_dir / "adapters.yml") as written:
        assert yaml.safe_load(written) == adapters_config(
            "http://127.0.0.1:9999/flocker-adapter")


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_provisioning_and_project_scripts_pass_shellcheck():
    scripts = sorted(glob.glob(os.path.join(REPO, "vagrant", "*.sh"))
                     + glob.glob(os.path.join(REPO, "vagrant-aws", "*.sh"))
                     + glob.glob(os.path.join(REPO, "scripts", "*.sh")))
    assert any(path.endswith("provision.sh") for path in scripts)
    result = subprocess.run(["shellcheck", "--external-sources", *scripts], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_both_vagrantfiles_provision_with_the_one_script():
    for folder, cluster in (("vagrant", '"cluster"'), ("vagrant-aws", '"../vagrant/cluster"')):
        with open(os.path.join(REPO, folder, "Vagrantfile")) as vagrantfile:
            text = vagrantfile.read()
        assert f"require_relative {cluster}" in text
        assert "PowerstripFlockerCluster.provision(node, name, NODES, TOKEN)" in text
    with open(os.path.join(REPO, "vagrant", "cluster.rb")) as cluster_rb:
        assert 'File.join(__dir__, "provision.sh")' in cluster_rb.read()


@pytest.mark.skipif(shutil.which("ruby") is None, reason="ruby is not installed")
def test_the_vagrant_ruby_files_parse():
    files = [os.path.join(REPO, "vagrant", "cluster.rb"), os.path.join(REPO, "vagrant", "Vagrantfile"),
             os.path.join(REPO, "vagrant-aws", "Vagrantfile")]
    result = subprocess.run(["ruby", "-c", *files], capture_output=True, text=True)
    assert result.returncode == 0 and "Syntax OK" in result.stdout, result.stderr


def test_units_serve_a_reachable_control_service_over_tls_never_plain_http(tmp_path):
    config_dir = str(tmp_path / "etc")
    for control_address, scheme in (("192.168.56.11", "https"), ("127.0.0.1", "http")):
        options = build_parser().parse_args(
            ["units", "--node-name", "node1", "--address", "192.168.56.11",
             "--control-address", control_address, "--config-dir", config_dir])
        cluster, node = node_layout(options)
        control = control_command(cluster)
        assert "--insecure-http" not in control
        assert cluster.control_url == f"{scheme}://{control_address}:4523"
        for command in (agent_command(cluster, node), adapter_command(cluster, node),
                        plugin_command(cluster, node)):
            assert command[command.index("--control-url") + 1] == cluster.control_url
            assert ("--tls-ca" in command) == (scheme == "https")
        if scheme == "https":
            assert control[control.index("--tls-cert") + 1] == f"{config_dir}/control.crt"
            assert control[control.index("--tls-key") + 1] == f"{config_dir}/control.key"
            agent = agent_command(cluster, node)
            assert agent[agent.index("--tls-ca") + 1] == f"{config_dir}/cluster-ca.crt"


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("ruby") is None, reason="ruby is not installed")
def test_the_vagrant_clusters_tls_files_serve_the_control_service(tmp_path):
    import ssl
    import urllib.request

    from tests.support.processes import ManagedProcess, free_port

    script = ('require ARGV[0]; PowerstripFlockerCluster.tls(ARGV[1], "127.0.0.1")'
              '.each { |name, pem| File.write(File.join(ARGV[1], name), pem) }')
    made = subprocess.run(["ruby", "-e", script, os.path.join(REPO, "vagrant", "cluster.rb"),
                           str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    assert os.stat(tmp_path / ".tls-127.0.0.1" / "control.key").st_mode & 0o777 == 0o600
    port = free_port()
    control = ManagedProcess.command(
        ["control", "--listen", f"tcp:{port}:interface=127.0.0.1", "--db",
         str(tmp_path / "state" / "control.db"), "--tls-cert", str(tmp_path / "control.crt"),
         "--tls-key", str(tmp_path / "control.key")], str(tmp_path / "control.log")).start()
    context = ssl.create_default_context(cafile=str(tmp_path / "cluster-ca.crt"))

    def answers():
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/v1/version", timeout=5,
                                    context=context) as response:
            return response.status == 200

    try:
        control.wait_until(answers, what="answering over TLS")
    finally:
        control.stop()
