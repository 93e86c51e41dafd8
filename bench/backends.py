"""The store figures of every backend side by side, and skedlib's overhead over the raw
clients. Starts its own servers (etcd 1 and 3 members, a Consul dev agent) on loopback.

    python bench/backends.py [--quick]

Prints JSON: for each backend the figures of ``bench/store.py`` (puts/s, 100-op
transactions/s — 64 on Consul, its limit —, listing 10,000 keys, watch wake-up p50/p99),
then for etcd and Consul the mean latency of get/put/txn through skedlib and through the
raw client on the same server, and their ratio (target: at most 1.3).
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import store as store_bench  # noqa: E402

from skedlib.plugins import open_backend  # noqa: E402
from skedlib.store.base import Compare, Put  # noqa: E402


def _mean_us(fn: Callable[[int], object], n: int) -> float:
    for i in range(min(20, n)):
        fn(i)
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    return round((time.perf_counter() - t0) / n * 1e6, 1)


def overhead_etcd(url: str, endpoint: str, n: int) -> dict[str, Any]:
    import grpc

    # the raw client: etcd's API over plain grpc (the plugin's generated messages and stubs,
    # no failover, no checks), with the same per-call deadline and the same requests
    from skedlib_etcd.stubs import Stub
    from skedlib_etcd.stubs import rpc_pb2 as pb

    channel = grpc.insecure_channel(endpoint)
    kv = Stub(channel, "KV")
    b = open_backend(url)
    ns = f"ovh/{uuid.uuid4().hex[:6]}/"
    b.put(ns + "k", b"v")

    def raw_txn(i: int) -> object:
        return kv.Txn(pb.TxnRequest(
            compare=[pb.Compare(target=pb.Compare.MOD, key=(ns + "absent").encode(),
                                mod_revision=0)],
            success=[pb.RequestOp(request_put=pb.PutRequest(key=(ns + "t").encode(),
                                                            value=b"v" * 100))]), timeout=5)

    out = {
        "get": (_mean_us(lambda i: b.get(ns + "k"), n),
                _mean_us(lambda i: kv.Range(pb.RangeRequest(key=(ns + "k").encode()),
                                            timeout=5), n)),
        "put": (_mean_us(lambda i: b.put(ns + "p", b"v" * 100), n),
                _mean_us(lambda i: kv.Put(pb.PutRequest(key=(ns + "p").encode(),
                                                        value=b"v" * 100), timeout=5), n)),
        "txn": (_mean_us(lambda i: b.txn([Compare(ns + "absent", 0)],
                                         [Put(ns + "t", b"v" * 100)]), n),
                _mean_us(raw_txn, n)),
    }
    b.close()
    channel.close()
    return _ratios(out)


def overhead_consul(url: str, http: str, n: int) -> dict[str, Any]:
    import requests

    session = requests.Session()
    b = open_backend(url)
    ns = f"ovh/{uuid.uuid4().hex[:6]}/"
    b.put(ns + "k", b"v")
    value = base64.b64encode(b"v" * 100).decode()

    def raw_txn(i: int) -> object:
        ops = [{"KV": {"Verb": "delete-cas", "Key": ns + "absent", "Index": 0}},
               {"KV": {"Verb": "set", "Key": ns + "t", "Value": value}}]
        return session.put(f"{http}/v1/txn", json=ops, timeout=5).json()

    def raw_put(i: int) -> object:  # a txn, as a plain PUT /v1/kv does not give the index
        ops = [{"KV": {"Verb": "set", "Key": ns + "p", "Value": value}}]
        return session.put(f"{http}/v1/txn", json=ops, timeout=5).json()

    # the same requests skedlib sends: consistent reads, writes that return their index
    out = {
        "get": (_mean_us(lambda i: b.get(ns + "k"), n),
                _mean_us(lambda i: session.get(f"{http}/v1/kv/{ns}k?consistent",
                                               timeout=5).json(), n)),
        "put": (_mean_us(lambda i: b.put(ns + "p", b"v" * 100), n), _mean_us(raw_put, n)),
        "txn": (_mean_us(lambda i: b.txn([Compare(ns + "absent", 0)],
                                         [Put(ns + "t", b"v" * 100)]), n),
                _mean_us(raw_txn, n)),
    }
    b.close()
    return _ratios(out)


def _ratios(pairs: dict[str, tuple[float, float]]) -> dict[str, Any]:
    return {op: {"skedlib_us": s, "raw_us": r, "ratio": round(s / r, 2)}
            for op, (s, r) in pairs.items()}


def main() -> None:
    from tests.harness.consul import ConsulCluster
    from tests.harness.etcd import EtcdCluster

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n = 200 if args.quick else 1000
    tmp = tempfile.mkdtemp(prefix="skedbench-")
    results: list[dict[str, Any]] = []
    overhead: dict[str, Any] = {}
    results.append(store_bench.run("memory://", args.quick))
    results.append(store_bench.run(f"sqlite://{Path(tmp) / 'b.db'}", args.quick))
    with EtcdCluster(1, name="bench1").start() as one:
        results.append({**store_bench.run(one.url(), args.quick), "backend": "etcd (1 member)"})
        overhead["etcd"] = overhead_etcd(one.url(), one.members[0].endpoint, n)
    with EtcdCluster(3, name="bench3").start() as three:
        results.append({**store_bench.run(three.url(), args.quick),
                        "backend": "etcd (3 members)"})
    with ConsulCluster(1, dev=True, name="benchc").start() as consul:
        url = consul.url()
        results.append({**store_bench.run(url, args.quick), "backend": "consul (dev agent)"})
        http = "http://" + url.split("://", 1)[1].split("?")[0].split(",")[0]
        overhead["consul"] = overhead_consul(url, http, n)
    json.dump({"bench": "backends", "results": results, "overhead_vs_raw_client": overhead},
              sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
