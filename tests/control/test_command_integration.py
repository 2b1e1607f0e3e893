"""The real `powerstrip-flocker control` process on a free loopback port."""

import datetime
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from powerstripflocker.clients.http import TOKEN_ENV
from tests.support.limits import MIB, chunked_piece, send_body
from tests.support.processes import ManagedProcess, free_port

from .helpers import NODE1, NODE2

pytestmark = pytest.mark.integration


class Control:
    """One control service process and a tiny urllib client for it."""

    def __init__(self, tmp_path, *extra, env=None, scheme="http", context=None):
        self.tmp_path = tmp_path
        self.db = str(tmp_path / "state" / "control.db")
        self.extra = list(extra)
        self.env = env
        self.scheme = scheme
        self.context = context
        self.process = None

    def start(self):
        self.port = free_port()
        self.url = f"{self.scheme}://127.0.0.1:{self.port}"
        listen = f"tcp:{self.port}:interface=127.0.0.1"
        self.process = ManagedProcess.command(
            ["control", "--listen", listen, "--db", self.db, *self.extra],
            str(self.tmp_path / "control.log"), env=self.env,
        ).start()
        self.process.wait_until(self.answers, what=f"answering on {self.url}")
        return self

    def answers(self):
        try:
            return self.request("GET", "/v1/version", headers={})[0] == 200
        except (OSError, ssl.SSLError):
            return False

    def stop(self, sig=signal.SIGTERM):
        if sig == signal.SIGKILL:
            self.process.kill()
        else:
            self.process.stop()

    def token(self):
        """The token the service uses: from its options, its environment, or the one it
        made next to its database."""
        if "--cluster-token-file" in self.extra:
            path = self.extra[self.extra.index("--cluster-token-file") + 1]
        elif self.env and "POWERSTRIP_FLOCKER_CLUSTER_TOKEN" in self.env:
            return self.env["POWERSTRIP_FLOCKER_CLUSTER_TOKEN"]
        else:
            path = os.path.join(os.path.dirname(self.db), "cluster.token")
        with open(path, encoding="utf-8") as token_file:
            return token_file.read().strip()

    def request(self, method, path, body=None, headers=None, timeout=10):
        """(status, JSON body, headers); headers None: with the cluster token."""
        data = None if body is None else json.dumps(body).encode()
        if headers is None:
            headers = {"Authorization": f"Bearer {self.token()}"}
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=self.context) as r:
                return r.status, json.loads(r.read()), dict(r.headers)
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read()), dict(error.headers)


@pytest.fixture
def control(tmp_path):
    services = []

    def make(*extra, **kwargs):
        service = Control(tmp_path, *extra, **kwargs)
        services.append(service)
        return service

    yield make
    for service in services:
        if service.process:
            service.stop()


def test_configuration_and_leases_survive_a_restart(control):
    service = control().start()
    code, kept, _ = service.request("POST", "/v1/configuration/datasets", {
        "primary": NODE1, "metadata": {"name": "kept"}, "maximum_size": 1073741824})
    assert code == 201
    code, gone, _ = service.request("POST", "/v1/configuration/datasets", {"primary": NODE2})
    service.request("DELETE", f"/v1/configuration/datasets/{gone['dataset_id']}")
    service.request("POST", f"/v1/configuration/datasets/{kept['dataset_id']}",
                    {"primary": NODE2})
    service.request("POST", "/v1/configuration/leases",
                    {"dataset_id": kept["dataset_id"], "node_uuid": NODE2, "expires": None})
    service.request("POST", "/v1/configuration/leases",
                    {"dataset_id": gone["dataset_id"], "node_uuid": NODE2, "expires": 600})
    _, before, headers = service.request("GET", "/v1/configuration/datasets")
    _, leases_before, _ = service.request("GET", "/v1/configuration/leases")
    service.stop()

    service.start()
    _, after, headers_after = service.request("GET", "/v1/configuration/datasets")
    assert after == before
    assert after[0]["primary"] == NODE2 and after[1]["deleted"] is True
    assert headers_after["X-Configuration-Tag"] == headers["X-Configuration-Tag"]
    _, leases_after, _ = service.request("GET", "/v1/configuration/leases")
    by_id = {lease["dataset_id"]: lease for lease in leases_after}
    assert by_id[kept["dataset_id"]] == {
        "dataset_id": kept["dataset_id"], "node_uuid": NODE2, "expires": None}
    assert 560 < by_id[gone["dataset_id"]]["expires"] <= 600
    assert len(leases_before) == 2
    # The deleted id stays reserved across the restart.
    code, body, _ = service.request("POST", "/v1/configuration/datasets",
                                    {"primary": NODE1, "dataset_id": gone["dataset_id"]})
    assert (code, body) == (409, {"description": "The provided dataset_id is already in use."})


def test_a_change_survives_kill_9(control):
    service = control().start()
    code, created, _ = service.request("POST", "/v1/configuration/datasets", {"primary": NODE1})
    assert code == 201
    service.stop(signal.SIGKILL)
    service.start()
    _, datasets, _ = service.request("GET", "/v1/configuration/datasets")
    assert datasets == [created]


def test_a_create_wakes_a_waiting_long_poll_at_once(control):
    service = control().start()
    _, view, _ = service.request("GET", "/agent/v1/cluster")
    answers = []

    def poll():
        answers.append((time.monotonic(), service.request(
            "GET", f"/agent/v1/cluster?generation={view['generation']}&timeout=20",
            timeout=30)))

    waiter = threading.Thread(target=poll)
    waiter.start()
    time.sleep(0.3)
    assert answers == []
    sent = time.monotonic()
    code, created, _ = service.request("POST", "/v1/configuration/datasets", {"primary": NODE1})
    waiter.join(10)
    assert answers, "long-poll never answered"
    answered_at, (code, woke, _) = answers[0]
    assert code == 200
    assert answered_at - sent < 1.0
    assert woke["generation"] != view["generation"]
    assert [d["dataset_id"] for d in woke["datasets"]] == [created["dataset_id"]]


def test_a_restarted_service_does_not_answer_an_old_generation_as_current(control):
    service = control().start()
    _, view, _ = service.request("GET", "/agent/v1/cluster")
    service.stop()
    service.start()
    started = time.monotonic()
    code, again, _ = service.request(
        "GET", f"/agent/v1/cluster?generation={view['generation']}&timeout=10")
    assert code == 200 and time.monotonic() - started < 2
    assert again["generation"] != view["generation"]


def test_cluster_token_from_environment(control):
    service = control(env={"POWERSTRIP_FLOCKER_CLUSTER_TOKEN": "tok-env"}).start()
    report = {"host": "127.0.0.1", "agent_url": "http://127.0.0.1:4524", "datasets": []}
    code, body, headers = service.request("PUT", f"/agent/v1/nodes/{NODE1}", report,
                                          headers={})
    assert code == 401 and "description" in body
    code, body, _ = service.request("PUT", f"/agent/v1/nodes/{NODE1}", report,
                                    headers={"Authorization": "Bearer tok-env"})
    assert code == 200 and "generation" in body
    _, nodes, _ = service.request("GET", "/v1/state/nodes")
    assert nodes == [{"host": "127.0.0.1", "uuid": NODE1}]


def test_a_token_is_made_on_first_start_kept_0600_and_logged(control):
    service = control().start()
    path = os.path.join(os.path.dirname(service.db), "cluster.token")
    token = service.token()
    assert len(token) == 64 and int(token, 16) >= 0
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert f"made the cluster token in {path}" in service.process.tail(50)
    service.stop()
    service.start()
    assert service.token() == token
    assert service.request("GET", "/v1/configuration/datasets")[0] == 200


def test_database_wal_shm_and_lock_are_0600(control):
    service = control().start()
    service.request("POST", "/v1/configuration/datasets", {"primary": NODE1})
    for suffix in ("", "-wal", "-shm", ".lock"):
        path = service.db + suffix
        assert os.stat(path).st_mode & 0o777 == 0o600, path


def test_an_older_world_readable_database_is_tightened(control):
    service = control().start()
    service.stop()
    os.chmod(service.db, 0o644)
    service.start()
    assert os.stat(service.db).st_mode & 0o777 == 0o600


@pytest.mark.parametrize("listen", ["tcp:{port}", "tcp:{port}:interface=0.0.0.0"])
def test_plain_http_beyond_loopback_needs_insecure_http(tmp_path, listen):
    command = [sys.executable, "-m", "powerstripflocker", "control", "--db",
               str(tmp_path / "c.db"), "--listen", listen.format(port=free_port())]
    result = subprocess.run(command, capture_output=True, timeout=30, text=True)
    assert result.returncode == 2, result.stderr
    assert "is not loopback: serve TLS there" in result.stderr
    assert "--insecure-http" in result.stderr


def test_insecure_http_listens_beyond_loopback(tmp_path):
    port = free_port()
    process = ManagedProcess.command(
        ["control", "--db", str(tmp_path / "c.db"), "--listen", f"tcp:{port}",
         "--insecure-http"], str(tmp_path / "control.log")).start()
    try:
        process.wait_for_http(f"http://127.0.0.1:{port}/v1/version")
    finally:
        process.stop()


def test_cluster_token_file(control, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("tok-file\n")
    service = control("--cluster-token-file", str(token_file)).start()
    code, _, _ = service.request("GET", "/agent/v1/cluster",
                                 headers={"Authorization": "Bearer tok-env"})
    assert code == 403
    code, _, _ = service.request("GET", "/agent/v1/cluster",
                                 headers={"Authorization": "Bearer tok-file"})
    assert code == 200


@pytest.mark.parametrize("args", [
    ["--tls-ca", "/nonexistent/ca.pem"],
    ["--tls-cert", "/nonexistent/cert.pem"],
    ["--cluster-token-file", "/nonexistent/token"],
    ["--listen", "nonsense:1"],
])
def test_bad_options_exit_with_a_clear_error(tmp_path, args):
    result = subprocess.run(
        [sys.executable, "-m", "powerstripflocker", "control", "--db",
         str(tmp_path / "c.db"), "--listen", f"tcp:{free_port()}:interface=127.0.0.1", *args],
        capture_output=True, timeout=30, text=True,
    )
    assert result.returncode == 2, result.stderr
    assert "control service not started" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--db", "/tmp/x.db", "--store", "sqlite:///tmp/y.db"], "give --store or --db, not both"),
    (["--store", "sqlite://host/c.db"], "a sqlite URL names no host"),
    (["--store", "redis://127.0.0.1:6379"], "unknown scheme 'redis'"),
    (["--store", "etcd://127.0.0.1:2379"], "needs the cluster token every replica shares"),
    (["--store", "etcd://127.0.0.1:2379", "--store-ca", "/ca.pem"],
     "--store-ca given, but etcd://127.0.0.1:2379 is not etcds://"),
])
def test_a_store_that_cannot_work_is_refused_with_its_reason(args, message):
    result = subprocess.run(
        [sys.executable, "-m", "powerstripflocker", "control",
         "--listen", f"tcp:{free_port()}:interface=127.0.0.1", *args],
        capture_output=True, timeout=30, text=True,
        env={name: value for name, value in os.environ.items() if name != TOKEN_ENV},
    )
    assert result.returncode == 2, result.stderr
    assert "control service not started" in result.stderr
    assert message in result.stderr, result.stderr


def _certificates(directory):
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def key():
        return ec.generate_private_key(ec.SECP256R1())

    def name(common):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def builder(subject, issuer, public_key):
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                .public_key(public_key).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=1)))

    ca_key = key()
    ca = (builder(name("cluster-ca"), name("cluster-ca"), ca_key.public_key())
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(
              digital_signature=True, content_commitment=False, key_encipherment=False,
              data_encipherment=False, key_agreement=False, key_cert_sign=True,
              crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    paths = {}

    def write(label, certificate, private_key):
        cert_path = os.path.join(directory, f"{label}.crt")
        key_path = os.path.join(directory, f"{label}.key")
        with open(cert_path, "wb") as f:
            f.write(certificate.public_bytes(serialization.Encoding.PEM))
        if private_key is not None:
            with open(key_path, "wb") as f:
                f.write(private_key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption()))
        paths[label] = (cert_path, key_path)

    write("cluster", ca, None)
    for label, san in [("control", True), ("client", False)]:
        leaf_key = key()
        leaf = builder(name(label), ca.subject, leaf_key.public_key()).add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False)
        if san:
            leaf = leaf.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        write(label, leaf.sign(ca_key, hashes.SHA256()), leaf_key)
    return paths


def test_mutual_tls(control, tmp_path):
    pytest.importorskip("cryptography")
    paths = _certificates(str(tmp_path))
    client_context = ssl.create_default_context(cafile=paths["cluster"][0])
    client_context.load_cert_chain(*paths["client"])
    service = control(
        "--tls-cert", paths["control"][0], "--tls-key", paths["control"][1],
        "--tls-ca", paths["cluster"][0], scheme="https", context=client_context,
    ).start()
    code, body, _ = service.request("POST", "/v1/configuration/datasets",
                                    {"primary": NODE1, "metadata": {"name": "tls"}})
    assert code == 201

    # Without a client certificate: the token, or a 401 (and /v1/version for health checks).
    anonymous = Control(tmp_path, scheme="https",
                        context=ssl.create_default_context(cafile=paths["cluster"][0]))
    anonymous.url = service.url
    assert anonymous.request("GET", "/v1/version", headers={})[0] == 200
    code, refused, _ = anonymous.request("GET", "/v1/configuration/datasets", headers={})
    assert code == 401 and "client certificate" in refused["description"]
    token = {"Authorization": f"Bearer {service.token()}"}
    assert anonymous.request("GET", "/v1/configuration/datasets", headers=token)[0] == 200

    result = subprocess.run(
        [sys.executable, "-m", "powerstripflocker", "status", "--control-url", service.url,
         "--tls-ca", paths["cluster"][0], "--tls-cert", paths["client"][0],
         "--tls-key", paths["client"][1]],
        capture_output=True, timeout=60, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "tls" in result.stdout and body["dataset_id"] in result.stdout

    # The frontends' FlockerClient over the same mutual TLS (release uses it).
    result = subprocess.run(
        [sys.executable, "-m", "powerstripflocker", "release", "tls", "--control-url",
         service.url, "--tls-ca", paths["cluster"][0], "--tls-cert", paths["client"][0],
         "--tls-key", paths["client"][1]],
        capture_output=True, timeout=60, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert f"volume 'tls' (dataset {body['dataset_id']}) holds no lease" in result.stdout


def test_status_command_prints_the_table(control):
    service = control().start()
    _, created, _ = service.request("POST", "/v1/configuration/datasets",
                                    {"primary": NODE1, "metadata": {"name": "shown"}})
    service.request("PUT", f"/agent/v1/nodes/{NODE1}", {
        "host": "10.9.9.9", "agent_url": "http://127.0.0.1:4524",
        "datasets": [{"dataset_id": created["dataset_id"], "path": "/srv/shown"}]})
    env = dict(os.environ, FLOCKER_CONTROL_SERVICE_BASE_URL=service.url + "/v1",
               POWERSTRIP_FLOCKER_CLUSTER_TOKEN=service.token())
    result = subprocess.run([sys.executable, "-m", "powerstripflocker", "status"],
                            capture_output=True, timeout=60, text=True, env=env)
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()
    assert header.split() == ["NAME", "DATASET", "PRIMARY", "STATE", "PATH", "SIZE", "LEASE",
                              "REPLICAS"]
    assert row.split() == ["shown", created["dataset_id"], "10.9.9.9", "manifest",
                           "/srv/shown", "-", "-", "-"]


def test_oversized_bodies_get_413_whether_sized_or_chunked(control):
    service = control().start()
    head = (b"POST /v1/configuration/datasets HTTP/1.1\r\nHost: c\r\n"
            b"Authorization: Bearer %s\r\n" % service.token().encode())
    for framing, piece in [(b"Content-Length: %d\r\n\r\n" % (3 * MIB), b"x" * 65536),
                           (b"Transfer-Encoding: chunked\r\n\r\n", chunked_piece(65536))]:
        answer, _ = send_body(("127.0.0.1", service.port), head + framing, piece, 3 * MIB)
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {
            "description": "the request body is larger than 1048576 bytes"}
    assert service.request("GET", "/v1/configuration/datasets")[1] == []


def test_a_second_service_on_the_same_database_is_refused(control):
    service = control().start()
    result = subprocess.run(
        [sys.executable, "-m", "powerstripflocker", "control", "--db", service.db,
         "--listen", f"tcp:{free_port()}:interface=127.0.0.1"],
        capture_output=True, timeout=30, text=True,
    )
    assert result.returncode == 2, result.stderr
    assert "another control service is using" in result.stderr
    assert service.request("GET", "/v1/version")[0] == 200
