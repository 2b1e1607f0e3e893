"""Images built offline for the Dockerfile test: a Debian base from debootstrap,
and the adapter image built from the repository's Dockerfile on top of it."""

import glob
import os
import shutil
import subprocess
import tempfile

from powerstripflocker.localcluster.layout import ClusterError
from powerstripflocker.localcluster.machine import docker

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE_DIR = "/var/cache/powerstrip-flocker"
SUITE = "bookworm"
BASE_IMAGE = f"psf-debian-python:{SUITE}"
ADAPTER_IMAGE = "powerstrip-flocker:test"
HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def debian_mirror():
    """The Debian mirror this machine's apt uses (never a name of our own)."""
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        with open(path) as sources:
            for line in sources:
                if line.startswith("URIs:"):
                    return line.split()[1]
    for path in ["/etc/apt/sources.list", *glob.glob("/etc/apt/sources.list.d/*.list")]:
        if os.path.exists(path):
            with open(path) as sources:
                for line in sources:
                    words = line.split()
                    if len(words) >= 3 and words[0] == "deb":
                        return next(w for w in words[1:] if "://" in w)
    raise ClusterError("no Debian mirror configured in /etc/apt")


def debian_rootfs_archive():
    """A tarball of a minimal Debian with python3 and venv; made once, then cached."""
    archive = os.path.join(CACHE_DIR, f"debian-{SUITE}-python.tar")
    if os.path.exists(archive):
        return archive
    os.makedirs(CACHE_DIR, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="debootstrap-") as work:
        rootfs = os.path.join(work, "rootfs")
        subprocess.run(
            ["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
             SUITE, rootfs, debian_mirror()],
            check=True, capture_output=True, timeout=1800,
        )
        shutil.rmtree(os.path.join(rootfs, "var/cache/apt/archives"), ignore_errors=True)
        partial = archive + ".partial"
        subprocess.run(["tar", "-C", rootfs, "-cf", partial, "."], check=True, timeout=600)
        os.rename(partial, archive)
    return archive


def import_debian_base(docker_host):
    if docker(docker_host, "image", "inspect", BASE_IMAGE).returncode == 0:
        return BASE_IMAGE
    with open(debian_rootfs_archive(), "rb") as archive:
        imported = subprocess.run(["docker", "-H", docker_host, "import", "-", BASE_IMAGE],
                                  stdin=archive, capture_output=True, timeout=600)
    if imported.returncode != 0:
        raise ClusterError(f"docker import of the Debian base failed: {imported.stderr!r}")
    return BASE_IMAGE


def build_adapter_image(docker_host):
    """docker build of the repository's Dockerfile on the debootstrap base, with the
    host's CA bundle for pip, as a user behind an intercepting proxy would."""
    base = import_debian_base(docker_host)
    with tempfile.TemporaryDirectory(prefix="psf-build-") as context:
        for name in ("Dockerfile", ".dockerignore", "setup.py", "README.md"):
            shutil.copy2(os.path.join(REPO, name), context)
        shutil.copytree(os.path.join(REPO, "powerstripflocker"),
                        os.path.join(context, "powerstripflocker"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        if os.path.exists(HOST_CA_BUNDLE):
            shutil.copy2(HOST_CA_BUNDLE, os.path.join(context, "ca-bundle.crt"))
        built = subprocess.run(
            ["docker", "-H", docker_host, "build", "--network", "host",
             "--build-arg", f"BASE_IMAGE={base}", "-t", ADAPTER_IMAGE, context],
            capture_output=True, text=True, timeout=1800,
            env=dict(os.environ, DOCKER_BUILDKIT="0"),
        )
    if built.returncode != 0:
        raise ClusterError(f"docker build failed:\n{built.stdout[-3000:]}\n{built.stderr}")
    return ADAPTER_IMAGE
