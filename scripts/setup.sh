#!/usr/bin/env bash
# Sourced by demo.sh and run-tests.sh: installs the Debian packages and the Python
# package (into .venv, with the extras given in PSF_EXTRAS, at the versions pinned in
# constraints.txt) that both need (ruby only lets a test check that the Vagrantfiles
# parse). Run as root on Debian.

apt_packages=(docker.io busybox-static btrfs-progs debootstrap shellcheck ruby ca-certificates iproute2 socat
              python3-venv etcd-server curl)
missing=()
for package in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" \
        || missing+=("$package")
done
if ((${#missing[@]})); then
    echo "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
# Debian's docker.io starts the system daemon; we run our own daemons instead.
if command -v systemctl >/dev/null && systemctl is-active --quiet docker 2>/dev/null; then
    systemctl stop docker.socket docker.service || true
fi
# Likewise Debian's etcd-server: the tests start their own three-member clusters.
if command -v systemctl >/dev/null && systemctl is-active --quiet etcd 2>/dev/null; then
    systemctl stop etcd.service || true
fi

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "Python >= 3.11 is required" >&2; exit 1; }
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
# constraints.txt: the exact versions the test suite last passed with (docs/testing.md).
.venv/bin/pip install --quiet --disable-pip-version-check -c constraints.txt \
    -e ".${PSF_EXTRAS:-}"
