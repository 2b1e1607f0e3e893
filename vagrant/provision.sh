#!/usr/bin/env bash
# Provisions one node of a powerstrip-flocker cluster on Ubuntu/Debian, as root:
# Docker (its daemon moved to /var/run/docker.real.sock), this package in a
# virtualenv, and systemd units for the agent, the adapter, the proxy (on
# /var/run/docker.sock) and, on one node, the control service.
#
# Environment: NODE_NAME, NODE_ADDRESS, CONTROL_ADDRESS, RUN_CONTROL (yes/no),
# CLUSTER_TOKEN (shared by all nodes), CLUSTER_CA (the PEM of the CA every node checks
# the control service's certificate against), CONTROL_CERT and CONTROL_KEY (PEM, on the
# control node: the control service serves HTTPS), SOURCE (path of this repository on
# the node).
set -euo pipefail

: "${NODE_NAME:?set NODE_NAME, e.g. node1}"
: "${NODE_ADDRESS:?set NODE_ADDRESS to the cluster IPv4 address of this node}"
: "${CONTROL_ADDRESS:?set CONTROL_ADDRESS to the address of the control service node}"
: "${RUN_CONTROL:=no}"
: "${CLUSTER_TOKEN:?set CLUSTER_TOKEN (the same secret on every node)}"
: "${CLUSTER_CA:?set CLUSTER_CA to the PEM of the cluster CA certificate}"
: "${CONTROL_CERT:=}"
: "${CONTROL_KEY:=}"
: "${SOURCE:?set SOURCE to the repository checkout on this node}"

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq docker.io python3-venv busybox-static btrfs-progs

# dockerd listens on docker.real.sock; the proxy takes over the usual socket.
dockerd_path="$(command -v dockerd)"
install -d /etc/systemd/system/docker.service.d
cat > /etc/systemd/system/docker.service.d/powerstrip-flocker.conf <<UNIT
[Service]
ExecStart=
ExecStart=${dockerd_path} -H unix:///var/run/docker.real.sock --containerd=/run/containerd/containerd.sock
UNIT
systemctl disable --now docker.socket 2>/dev/null || true
systemctl daemon-reload
systemctl restart docker.service

python3 -m venv /opt/powerstrip-flocker
/opt/powerstrip-flocker/bin/pip install --quiet --disable-pip-version-check "${SOURCE}"

install -d -m 0700 /etc/powerstrip-flocker
(umask 077 && printf '%s' "${CLUSTER_TOKEN}" > /etc/powerstrip-flocker/cluster.token)
(umask 077 && printf '%s\n' "${CLUSTER_CA}" > /etc/powerstrip-flocker/cluster-ca.crt)

units_arguments=(--node-name "${NODE_NAME}" --address "${NODE_ADDRESS}"
                 --control-address "${CONTROL_ADDRESS}")
services=(powerstrip-flocker-agent powerstrip-flocker-adapter powerstrip-flocker-plugin
          powerstrip-flocker-proxy)
if [ "${RUN_CONTROL}" = "yes" ]; then
    : "${CONTROL_CERT:?set CONTROL_CERT and CONTROL_KEY on the control node}"
    : "${CONTROL_KEY:?set CONTROL_KEY on the control node}"
    (umask 077 && printf '%s\n' "${CONTROL_CERT}" > /etc/powerstrip-flocker/control.crt)
    (umask 077 && printf '%s\n' "${CONTROL_KEY}" > /etc/powerstrip-flocker/control.key)
    units_arguments+=(--control)
    services=(powerstrip-flocker-control "${services[@]}")
fi
/opt/powerstrip-flocker/bin/powerstrip-flocker units "${units_arguments[@]}"
systemctl daemon-reload
for service in "${services[@]}"; do
    systemctl enable --now "${service}.service"
done
echo "${NODE_NAME} is ready: docker -H unix:///var/run/docker.sock run -v /flocker/demo:/data ..."
