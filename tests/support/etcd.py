"""A real three-member etcd cluster on loopback, for contract and failover tests.

    cluster = EtcdCluster().start()          # SkipTest (from EtcdCluster()) without etcd
    cluster.endpoint                          # "etcd://127.0.0.1:C1,127.0.0.1:C2,127.0.0.1:C3"
    leader = cluster.leader()                 # the member whose maintenance/status says so
    cluster.kill(leader)                      # kill -9; its data dir stays
    cluster.restart(leader)                   # same name, ports and data dir: it rejoins
    cluster.kill_leader()                     # both at once, returns the member killed
    member.pause(); member.resume()           # SIGSTOP / SIGCONT: silent, connections open
    cluster.stop()

    EtcdCluster(tls=True)                     # etcds://: members ask for client certificates
    cluster.tls_files                         # TLSFiles(ca, cert, key) for EtcdClient

Each member listens on its own free client and peer ports on 127.0.0.1 and keeps its
data under the cluster's temporary directory; the initial cluster token is unique to
the cluster, so members of two clusters started side by side never talk to each other.
The helpers block (subprocess and urllib): call them from a test's set-up or from a
thread, never from code running on the reactor.
"""

import datetime
import ipaddress
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from unittest import SkipTest

from powerstripflocker.clients.etcd_client import TLSFiles

from tests.support.processes import free_port

ETCD = "etcd"
# Debian's defaults (100 ms heartbeat, 1 s election timeout) are kept: shorter ones make
# a member of a busy two-core test machine call elections nobody asked for.
HEARTBEAT_MS = 100
ELECTION_MS = 1000


def etcd_missing():
    """Why a real etcd cannot be started here, or None when it can."""
    if shutil.which(ETCD) is None:
        return "etcd is not installed (Debian: apt-get install etcd-server)"
    return None


def require_etcd():
    reason = etcd_missing()
    if reason:
        raise SkipTest(reason)


def _post(url, body, timeout=2.0, context=None):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
        return json.loads(response.read())


def make_certificates(directory):
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files in
    directory; returns their paths by role."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    os.makedirs(directory, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(common_name):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    def issue(subject, key, issuer, issuer_key, ca, usage=None):
        builder = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(issuer)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if usage is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    def write(role, certificate, key):
        cert_path = os.path.join(directory, f"{role}.pem")
        key_path = os.path.join(directory, f"{role}-key.pem")
        with open(cert_path, "wb") as out:
            out.write(certificate.public_bytes(serialization.Encoding.PEM))
        with open(key_path, "wb") as out:
            out.write(key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
        return cert_path, key_path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = issue("psf test etcd CA", ca_key, name("psf test etcd CA"), ca_key, ca=True)
    paths = {"ca": write("ca", ca, ca_key)[0]}
    # etcd's gateway connects to the member's own gRPC port with the server's
    # certificate, so that certificate serves as a client one too.
    for role, usage in (("server", [ExtendedKeyUsageOID.SERVER_AUTH,
                                    ExtendedKeyUsageOID.CLIENT_AUTH]),
                        ("client", [ExtendedKeyUsageOID.CLIENT_AUTH])):
        key = ec.generate_private_key(ec.SECP256R1())
        paths[role], paths[f"{role}-key"] = write(
            role, issue(f"psf test etcd {role}", key, ca.subject, ca_key, False, usage), key)
    return paths


class EtcdMember:
    """One etcd process: its name, URLs, data dir and log."""

    def __init__(self, cluster, name):
        self.cluster = cluster
        self.name = name
        self.client_port = free_port()
        self.peer_port = free_port()
        scheme = "https" if cluster.certificates else "http"
        self.client_url = f"{scheme}://127.0.0.1:{self.client_port}"
        self.peer_url = f"http://127.0.0.1:{self.peer_port}"
        self.address = f"127.0.0.1:{self.client_port}"
        self.data_dir = os.path.join(cluster.base_dir, name)
        self.log_path = os.path.join(cluster.base_dir, f"{name}.log")
        self.process = None
        self._log = None

    def args(self):
        return [*self._base_args(), *self._tls_args()]

    def _tls_args(self):
        paths = self.cluster.certificates
        if not paths:
            return []
        return ["--cert-file", paths["server"], "--key-file", paths["server-key"],
                "--trusted-ca-file", paths["ca"], "--client-cert-auth"]

    def _base_args(self):
        return [
            ETCD,
            "--name", self.name,
            "--data-dir", self.data_dir,
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self.cluster.initial_cluster(),
            "--initial-cluster-state", "new",
            "--initial-cluster-token", self.cluster.token,
            "--heartbeat-interval", str(HEARTBEAT_MS),
            "--election-timeout", str(ELECTION_MS),
            "--logger", "zap", "--log-level", "warn",
        ]

    def start(self):
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.args(), stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        return self

    @property
    def running(self):
        return self.process is not None and self.process.poll() is None

    def kill(self, sig=signal.SIGKILL):
        if self.running:
            os.killpg(self.process.pid, sig)
            self.process.wait(timeout=30)
        if self._log is not None:
            self._log.close()
            self._log = None

    def pause(self):
        """SIGSTOP: its connections stay open and silent, as behind a cut link."""
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self):
        if self.running:
            os.killpg(self.process.pid, signal.SIGCONT)

    def status(self, timeout=2.0):
        """This member's /v3/maintenance/status answer (ids as the gateway spells them)."""
        return _post(self.client_url + "/v3/maintenance/status", {}, timeout,
                     self.cluster.ssl_context)

    def healthy(self):
        try:
            with urllib.request.urlopen(self.client_url + "/health", timeout=2,
                                        context=self.cluster.ssl_context) as response:
                return json.loads(response.read()).get("health") == "true"
        except (OSError, ValueError):
            return False

    def tail(self, lines=30):
        try:
            with open(self.log_path, "rb") as log:
                return b"\n".join(log.read().splitlines()[-lines:]).decode("utf-8", "replace")
        except OSError:
            return "(no log)"

    def __repr__(self):
        return f"<etcd member {self.name} at {self.address}>"


class EtcdCluster:
    """Three (or size) etcd members forming one new cluster on loopback."""

    def __init__(self, base_dir=None, size=3, tls=False):
        require_etcd()
        self.base_dir = str(base_dir or tempfile.mkdtemp(prefix="psf-etcd-"))
        self.token = f"psf-{uuid.uuid4()}"
        self.certificates = None
        self.ssl_context = None
        if tls:
            self.certificates = make_certificates(os.path.join(self.base_dir, "tls"))
            self.ssl_context = ssl.create_default_context(cafile=self.certificates["ca"])
            self.ssl_context.load_cert_chain(self.certificates["client"],
                                             self.certificates["client-key"])
        self.members = [EtcdMember(self, f"member{i}") for i in range(1, size + 1)]

    @property
    def tls_files(self):
        """TLSFiles for an EtcdClient of this cluster (etcds:// only)."""
        paths = self.certificates
        return TLSFiles(paths["ca"], paths["client"], paths["client-key"])

    def initial_cluster(self):
        return ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    @property
    def endpoint(self):
        """The etcd://HOST:PORT,... (etcds:// with TLS) endpoint list naming every member."""
        scheme = "etcds" if self.certificates else "etcd"
        return f"{scheme}://" + ",".join(m.address for m in self.members)

    def start(self, timeout=60.0):
        for member in self.members:
            member.start()
        try:
            self.wait_healthy(timeout)
        except Exception:
            self.stop()
            raise
        return self

    def wait_healthy(self, timeout=60.0, members=None):
        """Wait until every running member (or those given) answers healthy and one leader
        is agreed on; fail with the members' logs when that does not happen in time."""
        members = members or [m for m in self.members if m.running]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for member in members:
                if not member.running:
                    raise RuntimeError(f"{member} exited {member.process.returncode}:\n"
                                       f"{member.tail()}")
            if all(m.healthy() for m in members) and self._agreed_leader(members):
                return
            time.sleep(0.05)
        logs = "\n".join(f"--- {m.name}\n{m.tail()}" for m in members)
        raise RuntimeError(f"etcd cluster not healthy after {timeout}s:\n{logs}")

    def _agreed_leader(self, members):
        try:
            leaders = {m.status()["leader"] for m in members}
        except (OSError, ValueError, KeyError):
            return None
        return leaders.pop() if len(leaders) == 1 else None

    def leader(self, timeout=30.0):
        """The member that the running members agree is the leader."""
        deadline = time.monotonic() + timeout
        running = [m for m in self.members if m.running]
        while time.monotonic() < deadline:
            leader_id = self._agreed_leader(running)
            if leader_id is not None:
                for member in running:
                    try:
                        if member.status()["header"]["member_id"] == leader_id:
                            return member
                    except (OSError, ValueError, KeyError):
                        pass
            time.sleep(0.05)
        raise RuntimeError(f"no agreed etcd leader after {timeout}s")

    def kill(self, member):
        member.kill()
        return member

    def kill_leader(self):
        return self.kill(self.leader())

    def restart(self, member, timeout=60.0):
        """Start a killed member again on its own data dir; wait until it is back."""
        member.start()
        self.wait_healthy(timeout)
        return member

    def stop(self):
        for member in self.members:
            member.kill()
        shutil.rmtree(self.base_dir, ignore_errors=True)


class SharedCluster:
    """One cluster for a whole test class: starting one takes a second or two."""

    cluster = None

    @classmethod
    def get(cls):
        if cls.cluster is None:
            cls.cluster = EtcdCluster().start()
        return cls.cluster

    @classmethod
    def stop(cls):
        if cls.cluster is not None:
            cls.cluster.stop()
            cls.cluster = None
