#!/bin/sh
# Install the Slurm that bench/jobs.py --slurm runs beside skedlib: Debian's `slurm-wlm`
# (slurmctld, slurmd, sbatch, squeue, scontrol) and `munge` (munged, mungekey). As root,
# on a Debian machine.
#
# Idempotent: when every program is already on PATH it only prints Slurm's version;
# `apt-get update` runs only when something is missing.
#
# The bench starts its own one-node cluster (a temporary slurm.conf, its own munge key and
# socket, loopback ports chosen free) and stops it at the end; it does not use the system
# services the packages may enable on hosts that run systemd.
#
# Usage: sudo scripts/install-slurm.sh
set -eu

PROGRAMS="munged mungekey slurmctld slurmd sbatch squeue scontrol"

# The first of PROGRAMS not on PATH (nothing, and status 1, when all are there).
first_missing() {
    for program in $PROGRAMS; do
        command -v "$program" >/dev/null 2>&1 || { echo "$program"; return 0; }
    done
    return 1
}

fail() { echo "install-slurm.sh: $*" >&2; exit 1; }

absent=$(first_missing) || { echo "Slurm is already installed: $(slurmctld -V)"; exit 0; }
[ "$(id -u)" -eq 0 ] || fail "$absent is missing and installing it needs root (apt-get)"

DEBIAN_FRONTEND=noninteractive apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y slurm-wlm munge

! absent=$(first_missing) || fail "slurm-wlm and munge were installed but $absent is not on PATH"
echo "installed $(slurmctld -V) and $(munged -V 2>&1 | head -n 1)"
