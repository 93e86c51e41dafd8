#!/usr/bin/env bash
# Prove the packages as a user gets them (docs/decisions.md, "Packaging"):
#
#   1. build every sdist, then each wheel from its sdist (python -m build), and check
#      that the sdists carry no tests (their harness is not in them);
#   2. install the wheels, not editable, into a fresh venv, with every extra and the
#      neighbours that need protobuf >= 5 (opentelemetry-exporter-otlp, grpcio-status);
#   3. pip check;
#   4. the quickstart a pip user runs, outside the checkout: sked example hello-world >
#      h.yml, then sked up --once -f h.yml on the embedded store, to healthy tasks;
#   5. sked --backend etcd://… against a throwaway etcd: apply, get, no traceback;
#   6. tests run from that venv against throwaway servers (the repository's tests/ and
#      harness copied beside them, so that skedlib and the plugins are imported from the
#      venv, not from the checkout): the same sked commands on sqlite, etcd and Consul
#      (tests/backends/test_switch_backends.py) and, with --conformance, the store
#      conformance suites of etcd and Consul (about 5 more minutes: Consul's leases
#      last at least 20 s, so they are not part of CI's run).
#
# Usage: scripts/check_wheels.sh [--no-neighbours] [--conformance]
#   --no-neighbours   leave out opentelemetry-exporter-otlp and grpcio-status
# Needs python3 (with venv), network access to the package index, an etcd binary
# ($SKED_ETCD_BIN, etcd on PATH or /usr/bin/etcd: scripts/install-etcd.sh) and, for step
# 6, Consul (.cache/bin/consul: scripts/install-consul.py). Everything it makes is under
# one temporary directory, removed at exit with the servers it started.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
NEIGHBOURS=(opentelemetry-exporter-otlp grpcio-status)
CONFORMANCE=0
for arg in "$@"; do
  case "$arg" in
    --no-neighbours) NEIGHBOURS=() ;;
    --conformance) CONFORMANCE=1 ;;
    *) echo "usage: scripts/check_wheels.sh [--no-neighbours] [--conformance]" >&2; exit 2 ;;
  esac
done
PROJECTS=(. plugins/skedlib-etcd plugins/skedlib-consul plugins/skedlib-docker)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sked-wheels.XXXXXX")
ETCD_PID=
cleanup() {
  if [ -n "$ETCD_PID" ]; then kill "$ETCD_PID" 2>/dev/null || true; wait "$ETCD_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
say() { printf '\033[1m==> check_wheels: %s\033[0m\n' "$*" >&2; }
fail() { echo "check_wheels: FAILED: $*" >&2; exit 1; }
pip_q() { "$@" -q --disable-pip-version-check; }

say "building the sdists, then the wheels from them"
"$PY" -m venv "$WORK/build-venv"
pip_q "$WORK/build-venv/bin/pip" install build
for p in "${PROJECTS[@]}"; do
  "$WORK/build-venv/bin/python" -m build -o "$WORK/dist" "$p" >"$WORK/build.log" 2>&1 \
    || { cat "$WORK/build.log" >&2; fail "building $p"; }
done
for sdist in "$WORK"/dist/*.tar.gz; do
  if tar tzf "$sdist" | grep -q '^[^/]*/tests/'; then
    fail "$(basename "$sdist") carries tests/ (without their harness)"
  fi
done
wheels=("$WORK"/dist/*.whl)
[ "${#wheels[@]}" -eq "${#PROJECTS[@]}" ] || fail "expected ${#PROJECTS[@]} wheels, got: ${wheels[*]}"
skedlib_wheel=$(ls "$WORK"/dist/skedlib-[0-9]*.whl)
for member in skedlib/examples/hello-world.yml skedlib_reference/plugin.py; do
  "$PY" -c 'import sys, zipfile; sys.exit(sys.argv[2] not in zipfile.ZipFile(sys.argv[1]).namelist())' \
    "$skedlib_wheel" "$member" || fail "the skedlib wheel has no $member"
done

say "installing the wheels into a fresh venv: skedlib[etcd,consul,docker] ${NEIGHBOURS[*]}"
"$PY" -m venv "$WORK/venv"
VPY=$WORK/venv/bin/python
# the wheel files are named on the command line, so that an index cannot offer another
# skedlib-* of the same name and version; --find-links resolves the extras to them
plugin_wheels=("$WORK"/dist/skedlib_*.whl)
pip_q "$WORK/venv/bin/pip" install --find-links "$WORK/dist" "$skedlib_wheel[etcd,consul,docker]" \
  "${plugin_wheels[@]}" ${NEIGHBOURS[@]+"${NEIGHBOURS[@]}"}

say "pip check"
"$WORK/venv/bin/pip" check

# from here on, nothing of the checkout is importable: run outside it
mkdir "$WORK/run"
cd "$WORK/run"
where=$("$VPY" -c 'import skedlib, skedlib_reference; print(skedlib.__file__, skedlib_reference.__file__)')
case "$where" in "$WORK/venv/"*" $WORK/venv/"*) ;; *) fail "skedlib is imported from $where" ;; esac
"$WORK/venv/bin/sked" version

say "the quickstart: sked example hello-world > h.yml && sked up --once -f h.yml"
export SKED_BACKEND="sqlite://$WORK/run/quickstart.db"
"$WORK/venv/bin/sked" example >/dev/null
"$WORK/venv/bin/sked" example hello-world > h.yml
"$WORK/venv/bin/sked" up --once -f h.yml --state-dir "$WORK/run/state" > up.log 2>&1 \
  || { cat up.log >&2; fail "sked up --once -f h.yml"; }
grep -q "every service is healthy" up.log || { cat up.log >&2; fail "no healthy tasks"; }
grep -A 5 "every service is healthy" up.log >&2
unset SKED_BACKEND

say "sked --backend etcd://… on a throwaway etcd"
etcd_bin=${SKED_ETCD_BIN:-$(command -v etcd || echo /usr/bin/etcd)}
[ -x "$etcd_bin" ] || fail "no etcd binary (scripts/install-etcd.sh, or set SKED_ETCD_BIN)"
read -r client_port peer_port < <("$VPY" -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
"$etcd_bin" --name check --data-dir "$WORK/etcd" \
  --listen-client-urls "http://127.0.0.1:$client_port" \
  --advertise-client-urls "http://127.0.0.1:$client_port" \
  --listen-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-cluster "check=http://127.0.0.1:$peer_port" >"$WORK/etcd.log" 2>&1 &
ETCD_PID=$!
ETCD_URL="etcd://127.0.0.1:$client_port?timeout=2"
for _ in $(seq 60); do
  "$WORK/venv/bin/sked" --backend "$ETCD_URL" get services >/dev/null 2>&1 && break
  sleep 0.5
done
sked_etcd() {
  local out rc=0
  out=$("$WORK/venv/bin/sked" --backend "$ETCD_URL" "$@" 2>&1) || rc=$?
  printf '%s\n' "$out" >&2
  case "$out" in *Traceback*) fail "sked $* printed a traceback" ;; esac
  [ "$rc" -eq 0 ] || fail "sked --backend etcd://… $* exited $rc"
}
sked_etcd apply -f h.yml
sked_etcd get services
kill "$ETCD_PID"; wait "$ETCD_PID" 2>/dev/null || true; ETCD_PID=

say "tests from the venv: sked on sqlite, etcd and Consul$([ "$CONFORMANCE" = 1 ] && echo '; the conformance suites')"
pip_q "$WORK/venv/bin/pip" install pytest pytest-timeout hypothesis
mkdir "$WORK/suite"
cp -r "$ROOT/tests" "$ROOT/conftest.py" "$ROOT/pyproject.toml" "$WORK/suite/"
suite=(tests/backends/test_switch_backends.py tests/test_consul_packaging.py)
cp "$ROOT/plugins/skedlib-consul/tests/test_consul_packaging.py" "$WORK/suite/tests/"
if [ "$CONFORMANCE" = 1 ]; then
  cp "$ROOT/plugins/skedlib-etcd/tests/test_etcd_conformance.py" \
     "$ROOT/plugins/skedlib-consul/tests/test_consul_conformance.py" "$WORK/suite/tests/"
  suite+=(tests/test_etcd_conformance.py tests/test_consul_conformance.py)
fi
cd "$WORK/suite"
# CI=true: a missing server binary or plugin fails instead of skipping
CI=true SKED_CONSUL_BIN=${SKED_CONSUL_BIN:-$ROOT/.cache/bin/consul} \
  "$VPY" -m pytest -q -p no:cacheprovider "${suite[@]}"
say "OK in ${SECONDS}s: the wheels install, pass pip check, run the quickstart, talk to etcd and Consul"
