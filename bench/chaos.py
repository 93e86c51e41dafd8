"""Chaos bench: a whole deployment as real processes under random faults; prints JSON.

Starts a 3-member etcd cluster (or 3 Consul servers and a Consul client agent per host, or
one SQLite file), ``skedlib-scheduler`` daemons (3 on etcd and Consul, 1 on SQLite), 4
``skedlib-agent`` processes and ``--tasks`` ``sleep`` tasks in four services, injects
faults at random from ``--seed`` for ``--duration`` seconds (kill -9 of schedulers, of
agents with and without their tasks restarted before or after their lease expired, of the
etcd or Consul leader; SIGSTOP/SIGCONT of an etcd member; on Consul, kill -9 of a whole
host: agent, tasks and Consul agent; scale up and down), heals everything and waits for
convergence (on Consul, also for the catalog to hold exactly the issued tasks: its
convergence time is under ``catalog``). Prints the faults by kind, the convergence time, the
double-run window (task-seconds with a task live on two hosts, sampled every 0.5 s) and
the invariants (tests/harness/chaos.py documents them). Exits 1 when an invariant does not
hold. Usage::

    .venv/bin/python bench/chaos.py --backend etcd --duration 300 --tasks 400 [--seed 1]
    .venv/bin/python bench/chaos.py --backend consul --duration 150 --tasks 200
    .venv/bin/python bench/chaos.py --backend sqlite --duration 120 --tasks 200
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness.chaos import Chaos, ChaosConfig  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("etcd", "consul", "sqlite"), default="etcd")
    parser.add_argument("--duration", type=float, default=300.0,
                        help="seconds of fault injection (default 300)")
    parser.add_argument("--tasks", type=int, default=400,
                        help="tasks at full scale (default 400)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--converge-timeout", type=float, default=300.0)
    parser.add_argument("--keep", action="store_true",
                        help="keep the logs and state directory (its path is printed)")
    args = parser.parse_args()
    config = ChaosConfig(backend=args.backend, duration=args.duration, tasks=args.tasks,
                         seed=args.seed, converge_timeout=args.converge_timeout,
                         keep=args.keep)
    with Chaos(config) as chaos:
        chaos.start()
        report = chaos.run()
        if not report["ok"]:
            print(chaos.logs(), file=sys.stderr)
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
