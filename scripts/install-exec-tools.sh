#!/bin/sh
# Install the programs the tests run besides Python: Debian's `nodejs` (node) and `jq`
# (the example exec schedulers, examples/exec-schedulers/), and `zsh` and `fish` (the
# shell completion tests). Used by CI on a fresh Debian machine, as root.
#
# Idempotent: when both are already on PATH it only prints their versions; `apt-get
# update` runs only when one is missing.
#
# Usage: sudo scripts/install-exec-tools.sh
set -eu

have() {
    for tool in node jq zsh fish; do
        command -v "$tool" >/dev/null 2>&1 || return 1
    done
}

if have; then
    echo "node $(node --version), $(jq --version), zsh and fish are already installed"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-exec-tools.sh: node, jq, zsh or fish is missing and installing them" \
         "needs root (apt-get install nodejs jq zsh fish)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends nodejs jq zsh fish

if ! have; then
    echo "install-exec-tools.sh: installed, but node, jq, zsh or fish is not on PATH" >&2
    exit 1
fi
echo "installed node $(node --version), $(jq --version), zsh and fish"
