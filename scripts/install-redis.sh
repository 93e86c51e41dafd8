#!/bin/sh
# Install the Redis server that bench/jobs.py runs RQ against: Debian's `redis-server`
# package (/usr/bin/redis-server). As root, on a Debian machine.
#
# Idempotent: when `redis-server` is already on PATH it only prints its version;
# `apt-get update` runs only when it is missing.
#
# The bench starts its own throwaway server on a free port of 127.0.0.1 (no persistence)
# and stops it at the end; it does not use the system service the package may enable on
# hosts that run systemd.
#
# Usage: sudo scripts/install-redis.sh
set -eu

if binary=$(command -v redis-server 2>/dev/null); then
    echo "redis-server is already installed: $binary ($("$binary" --version))"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-redis.sh: redis-server is missing and installing it needs root (apt-get)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends redis-server

if ! binary=$(command -v redis-server 2>/dev/null); then
    echo "install-redis.sh: redis-server was installed but is not on PATH" >&2
    exit 1
fi
echo "installed $binary ($("$binary" --version))"
