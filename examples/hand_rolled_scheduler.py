"""A hand-rolled scheduler (Sked's readme: "hand roll a solution"): no daemon, no plugin.

Reads one snapshot, puts COUNT tasks of a service round-robin on the live hosts and
writes the issued state with commit_plan (optimistic: on a conflict, run it again).

    python examples/hand_rolled_scheduler.py sqlite:///tmp/sked.db default helloworld 2
"""

import sys

from skedlib import Plan, Store, Task, commit_plan, read_snapshot

url, cluster_name, service_name, count = *sys.argv[1:4], int(sys.argv[4])
prefix = sys.argv[5] if len(sys.argv) > 5 else "sked/"
with Store.open(url, prefix) as store:
    snap = read_snapshot(store)
    cluster, service = snap.clusters[cluster_name], snap.services[service_name]
    td = snap.task_definitions[(service.task_name, service.task_version)]
    hosts = sorted(h.name for h in snap.cluster_hosts(cluster) if not h.draining)
    old = {t.instance: t for t in snap.service_tasks(cluster.name, service.name)}
    plan = Plan(stop=[t.id for t in old.values() if t.instance >= count
                      or t.task_definition.version != td.version])
    for i in range(count):
        if i in old and old[i].host in hosts and not old[i].rejected:
            continue  # already placed on a live host
        plan.place.append(Task(cluster=cluster, task_definition=td, service=service.name,
                               instance=i, port=td.port, host=hosts[i % len(hosts)],
                               scheduled=True))
    result = commit_plan(store, snap, plan)
    print("\n".join(f"wrote {tid}" for tid in result.committed) or "nothing to do")
    sys.exit(f"conflicts, run again: {result.conflicts}" if result.conflicts else 0)
