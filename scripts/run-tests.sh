#!/usr/bin/env bash
# Installs everything the test suite needs on a Debian machine and runs it.
# Run as root (the end-to-end tests start their own dockerd and btrfs loop devices).
# Extra arguments go to pytest, e.g. scripts/run-tests.sh -m "not e2e" -x
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=(docker.io busybox-static btrfs-progs debootstrap shellcheck ca-certificates)
missing=()
for package in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    echo "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
# Debian's docker.io starts the system daemon; the tests run their own daemons instead.
if command -v systemctl >/dev/null && systemctl is-active --quiet docker 2>/dev/null; then
    systemctl stop docker.socket docker.service || true
fi

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "Python >= 3.11 is required" >&2; exit 1; }
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[test]'

status=0
.venv/bin/python -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests: failing" >&2
    exit 1
fi
exit "$status"
