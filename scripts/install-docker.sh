#!/bin/sh
# Install what the docker executor's tests need on Debian/Ubuntu: the Docker engine
# (dockerd, containerd, runc, docker-proxy, docker-init: package docker.io) and a
# statically linked busybox (busybox-static) from which the tests build their image.
#
# Idempotent: does nothing when both are present. Needs root (or sudo).
# The packages' service is never started: the tests run a private dockerd of their own
# (tests/harness/dockerd.py), so a policy-rc.d that refuses service starts is put in
# place for the duration of the install when none exists.
set -eu

have_dockerd() {
    command -v dockerd >/dev/null 2>&1 || [ -x /usr/sbin/dockerd ]
}

have_static_busybox() {
    [ -x /bin/busybox ] || return 1
    # a static binary has no program interpreter (its path, ld-linux…, sits in the first
    # few hundred bytes of a dynamic one)
    ! head -c 4096 /bin/busybox | grep -q -a "ld-linux\|ld-musl"
}

if have_dockerd && have_static_busybox; then
    echo "install-docker: dockerd and a static busybox are already installed"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-docker: apt-get not found; install docker.io (dockerd) and" \
         "busybox-static by hand" >&2
    exit 1
fi

packages=""
have_dockerd || packages="$packages docker.io"
have_static_busybox || packages="$packages busybox-static"

policy=/usr/sbin/policy-rc.d
made_policy=""
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod 755 "$policy"
    made_policy=1
fi
cleanup() {
    if [ -n "$made_policy" ]; then
        $SUDO rm -f "$policy"
    fi
}
trap cleanup EXIT INT TERM

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# shellcheck disable=SC2086 # word splitting of the package list is intended
$SUDO apt-get install -y -q --no-install-recommends $packages

have_dockerd || { echo "install-docker: dockerd is still missing" >&2; exit 1; }
have_static_busybox || { echo "install-docker: /bin/busybox is not static" >&2; exit 1; }
echo "install-docker: installed:$packages"
