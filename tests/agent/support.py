"""Helpers for the agent tests: tree manifests, sample trees, btrfs on a loop device."""

import hashlib
import os
import shutil
import stat
import subprocess
import tempfile


def manifest(root):
    """{relative path: (type, mode, mtime_ns, sha256 or symlink target)} of a tree."""
    result = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in ["."] + dirnames + filenames if dirpath == root else dirnames + filenames:
            full = os.path.normpath(os.path.join(dirpath, name))
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                result[rel] = ("link", stat.S_IMODE(st.st_mode), st.st_mtime_ns,
                               os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                result[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns, None)
            else:
                digest = hashlib.sha256()
                with open(full, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        digest.update(block)
                result[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns,
                               digest.hexdigest())
    return result


def fill_sample_tree(root, random_bytes=256 * 1024, files=4):
    """Nested folders, an empty folder, a symlink, odd modes and fixed mtimes."""
    os.makedirs(os.path.join(root, "nested", "deeper", "deepest"), exist_ok=True)
    os.makedirs(os.path.join(root, "empty"), exist_ok=True)
    per_file = max(random_bytes // files, 1)
    for i in range(files):
        folder = os.path.join(root, "nested", "deeper") if i % 2 else os.path.join(root, "nested")
        with open(os.path.join(folder, f"random-{i}.bin"), "wb") as f:
            remaining = per_file
            while remaining:
                chunk = min(remaining, 1 << 20)
                f.write(os.urandom(chunk))
                remaining -= chunk
    with open(os.path.join(root, "nested", "deeper", "deepest", "script.sh"), "w") as f:
        f.write("#!/bin/sh\necho fish\n")
    os.chmod(os.path.join(root, "nested", "deeper", "deepest", "script.sh"), 0o750)
    with open(os.path.join(root, "secret.txt"), "w") as f:
        f.write("only me\n")
    os.chmod(os.path.join(root, "secret.txt"), 0o600)
    os.chmod(os.path.join(root, "empty"), 0o1777)
    os.symlink("nested/deeper/deepest/script.sh", os.path.join(root, "link-to-script"))
    os.symlink("/nowhere/at/all", os.path.join(root, "dangling"))
    stamp = 1_234_567_890_123_456_789
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), ns=(stamp, stamp), follow_symlinks=False)
            stamp += 1_000_001_007
        os.utime(dirpath, ns=(stamp, stamp))


def btrfs_skip_reason():
    """Why btrfs tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "btrfs tests need root (mkfs.btrfs, losetup, mount)"
    for tool in ("mkfs.btrfs", "btrfs", "mount", "umount", "losetup"):
        if shutil.which(tool) is None:
            return f"btrfs tests need {tool} (apt-get install btrfs-progs)"
    try:
        with open("/proc/filesystems", encoding="utf-8") as f:
            if "btrfs" not in f.read():
                subprocess.run(["modprobe", "btrfs"], check=False, capture_output=True)
        with open("/proc/filesystems", encoding="utf-8") as f:
            if "btrfs" not in f.read():
                return "the kernel has no btrfs support"
    except OSError as e:
        return f"cannot read /proc/filesystems: {e}"
    return None


class LoopBtrfs:
    """A btrfs file system in a sparse file, loop-mounted under a temporary directory."""

    def __init__(self, size="1G", parent=None):
        self.base = tempfile.mkdtemp(prefix="psf-btrfs-", dir=parent)
        self.image = os.path.join(self.base, "fs.img")
        self.mount_point = os.path.join(self.base, "mnt")

    def create(self, size="1G"):
        os.makedirs(self.mount_point)
        with open(self.image, "wb") as f:
            f.truncate(_parse_size(size))
        subprocess.run(["mkfs.btrfs", "-q", "-f", self.image], check=True, capture_output=True)
        subprocess.run(["mount", "-o", "loop", self.image, self.mount_point], check=True,
                       capture_output=True)
        return self

    def destroy(self):
        if os.path.ismount(self.mount_point):
            result = subprocess.run(["umount", self.mount_point], capture_output=True)
            if result.returncode != 0:
                subprocess.run(["umount", "-l", self.mount_point], capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)


def _parse_size(text):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if text[-1] in units:
        return int(text[:-1]) * units[text[-1]]
    return int(text)


def make_tls_files(directory, ip="127.0.0.1"):
    """A throw-away CA and a certificate for ip signed by it; returns PEM paths."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(common):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("powerstrip-flocker test CA"))
          .issuer_name(name("powerstrip-flocker test CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(
              digital_signature=True, key_cert_sign=True, crl_sign=True,
              content_commitment=False, key_encipherment=False, data_encipherment=False,
              key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name(ip)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {k: os.path.join(directory, f"{k}.pem") for k in ("ca", "cert", "key")}
    with open(paths["ca"], "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths["cert"], "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(paths["key"], "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return paths


class MountedElsewhere:
    """A process in a mount namespace of its own with source bind-mounted in it (at
    self.target, in that namespace only), as a container's init would be. It runs
    `sleep`, or with writing=True appends a counter line to log in the mount every
    100 ms."""

    SLEEP = 'mount --bind "$0" "$1" && echo ready && exec sleep 600'
    WRITE = ('mount --bind "$0" "$1" && echo ready && i=0 && '
             'while true; do i=$((i+1)); echo $i >> "$1/log"; sleep 0.1; done')

    def __init__(self, source, writing=False):
        self.target = tempfile.mkdtemp(prefix="psf-bind-")
        self.process = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             self.WRITE if writing else self.SLEEP, source, self.target],
            stdout=subprocess.PIPE)
        assert self.process.stdout.readline() == b"ready\n"

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.process.stdout.close()
        if os.path.isdir(self.target):
            os.rmdir(self.target)
