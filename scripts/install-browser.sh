#!/bin/sh
# Install the browser the web console's test drives: Debian's `chromium` and
# `chromium-driver` (no browser download works without them). Used by CI on a fresh
# Debian machine, as root.
#
# Idempotent: when chromium and chromedriver are already there it only prints their
# versions; `apt-get update` runs only when one is missing.
#
# Usage: sudo scripts/install-browser.sh
set -eu

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    echo "chromium is already installed: $(chromium --version 2>/dev/null | head -n 1)"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-browser.sh: chromium is missing and installing it needs root (apt-get)" >&2
    exit 1
fi

apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    chromium chromium-driver
chromium --version
