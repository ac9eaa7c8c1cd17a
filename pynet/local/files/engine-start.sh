#!/bin/sh
# Start dockerd on the socket in the bind-mounted /engine folder. PYNET_CONTAINERD_STORE=1
# turns on the containerd image store (the default of fresh Docker Engine 29+ and Desktop).
set -eu
mkdir -p /etc/docker
if [ "${PYNET_CONTAINERD_STORE:-0}" = 1 ]; then
    printf '%s\n' '{"features": {"containerd-snapshotter": true}}' >/etc/docker/daemon.json
else
    printf '%s\n' '{}' >/etc/docker/daemon.json
fi
rm -f /engine/docker.sock /var/run/docker.pid
exec dockerd --host unix:///engine/docker.sock
