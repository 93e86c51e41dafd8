#!/bin/sh
# Install the etcd server that the etcd backend tests run against: Debian's `etcd-server`
# package (etcd 3.4, /usr/bin/etcd). Used by CI on a fresh Debian machine, as root.
#
# Idempotent: when an etcd binary is already there ($SKED_ETCD_BIN, `etcd` on PATH or
# /usr/bin/etcd) it only prints its version; `apt-get update` runs only when it is missing.
#
# The tests start their own throwaway servers on free ports (tests/harness/etcd.py); they
# do not use the system service the package may enable on hosts that run systemd.
#
# Usage: sudo scripts/install-etcd.sh
set -eu

find_etcd() {
    for candidate in "${SKED_ETCD_BIN:-}" "$(command -v etcd 2>/dev/null || true)" /usr/bin/etcd; do
        if [ -n "$candidate" ] && [ -x "$candidate" ]; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

if binary=$(find_etcd); then
    echo "etcd is already installed: $binary ($("$binary" --version | head -n 1))"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-etcd.sh: etcd is missing and installing it needs root (apt-get)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends etcd-server

if ! binary=$(find_etcd); then
    echo "install-etcd.sh: etcd-server was installed but no etcd binary was found" >&2
    exit 1
fi
echo "installed $binary ($("$binary" --version | head -n 1))"
