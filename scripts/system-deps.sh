#!/usr/bin/env bash
# Install the system tools the tests and the local rehearsal need: a Docker engine, debootstrap
# (to build base images without a registry), an SSH client and systemd-analyze.
# Debian/Ubuntu, as root.
set -euo pipefail

needed=()
command -v dockerd >/dev/null || needed+=(docker.io)
[ -x /usr/bin/docker ] || command -v docker >/dev/null || needed+=(docker.io)
command -v debootstrap >/dev/null || needed+=(debootstrap)
command -v ssh >/dev/null || needed+=(openssh-client)
command -v ssh-keygen >/dev/null || needed+=(openssh-client)
command -v gzip >/dev/null || needed+=(gzip)
# Network namespaces for the dead-peer tests (tests/chat/test_chat_dead_peers.py): ip, ss, iptables.
command -v ip >/dev/null || needed+=(iproute2)
command -v ss >/dev/null || needed+=(iproute2)
command -v iptables >/dev/null || needed+=(iptables)
# A real Redis for the cluster tests (tests/chat/test_backplane_redis.py and the cluster tests)
# and as the pub/sub reference server of bench/chat_load.py.
command -v redis-server >/dev/null || needed+=(redis-server)
# Scores the chat unit's sandbox offline (tests/ansible/test_chat_sandbox.py).
command -v systemd-analyze >/dev/null || needed+=(systemd)

if [ ${#needed[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "missing: ${needed[*]}; install them (Debian/Ubuntu: sudo apt-get install ${needed[*]})" >&2
    exit 1
fi
echo "installing ${needed[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${needed[@]}" >/dev/null
