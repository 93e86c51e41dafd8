#!/bin/sh
# Install what the example exec schedulers (examples/exec-schedulers/) run with: Debian's
# `nodejs` (node) and `jq` packages. Used by CI on a fresh Debian machine, as root.
#
# Idempotent: when both are already on PATH it only prints their versions; `apt-get
# update` runs only when one is missing.
#
# Usage: sudo scripts/install-exec-tools.sh
set -eu

have() {
    command -v node >/dev/null 2>&1 && command -v jq >/dev/null 2>&1
}

if have; then
    echo "node $(node --version) and $(jq --version) are already installed"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-exec-tools.sh: node or jq is missing and installing them needs root" \
         "(apt-get install nodejs jq)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends nodejs jq

if ! have; then
    echo "install-exec-tools.sh: nodejs and jq were installed but node or jq is not on PATH" >&2
    exit 1
fi
echo "installed node $(node --version) and $(jq --version)"
