#!/usr/bin/env bash
# Installs everything the test suite needs on a Debian machine and runs it.
# Run as root (the end-to-end tests start their own dockerd and btrfs loop devices).
# Extra arguments go to pytest, e.g. scripts/run-tests.sh -m "not e2e" -x
set -euo pipefail
cd "$(dirname "$0")/.."
PSF_EXTRAS="[test]"
# shellcheck source=scripts/setup.sh
. scripts/setup.sh

status=0
.venv/bin/python -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests: failing" >&2
    exit 1
fi
exit "$status"
