#!/usr/bin/env bash
# The killer demo on this machine: installs what it needs, starts a two-node
# cluster (two dockerd, agents, adapters, proxies, one control service), moves a
# volume from node1 to node2, and leaves the cluster up. Run as root on Debian.
# Arguments go to `powerstrip-flocker demo`; `scripts/demo.sh down` tears it down.
set -euo pipefail
cd "$(dirname "$0")/.."
PSF_EXTRAS=""
# shellcheck source=scripts/setup.sh
. scripts/setup.sh

exec .venv/bin/powerstrip-flocker demo "$@"
