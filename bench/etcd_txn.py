"""The cost of a commit-sized etcd transaction's messages in the client, printed as JSON.

    python bench/etcd_txn.py

No server: builds and serializes a ``TxnRequest`` of one compare and 128 puts (a
scheduler's commit chunk: 60-byte keys, 200-byte values, a lease) with the etcd plugin's
generated messages, the way ``EtcdBackend.txn`` does (``filled_in_place``) and with nested
constructors (``nested_constructors``), and parses a 128-response ``TxnResponse``. Reports
microseconds per message (best of 5) and the protobuf runtime (``upb`` is the compiled one).
"""

from __future__ import annotations

import json
import os
import sys
import timeit
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import google.protobuf  # noqa: E402
from google.protobuf.internal import api_implementation  # noqa: E402
from skedlib_etcd.stubs import rpc_pb2 as pb  # noqa: E402

KEYS = [f"sked/tasks/default-service-{i // 8:04d}-1-{i:05d}/assignment".encode()
        for i in range(128)]
VALUES = [os.urandom(200) for _ in KEYS]


def filled_in_place() -> bytes:
    request = pb.TxnRequest()
    compare = request.compare.add()
    compare.target = pb.Compare.MOD
    compare.key = b"sked/locks/service"
    compare.mod_revision = 12345
    add = request.success.add
    for key, value in zip(KEYS, VALUES, strict=True):
        put = add().request_put
        put.key = key
        put.value = value
        put.lease = 7
    return request.SerializeToString()


def nested_constructors() -> bytes:
    return pb.TxnRequest(
        compare=[pb.Compare(target=pb.Compare.MOD, key=b"sked/locks/service",
                            mod_revision=12345)],
        success=[pb.RequestOp(request_put=pb.PutRequest(key=k, value=v, lease=7))
                 for k, v in zip(KEYS, VALUES, strict=True)]).SerializeToString()


REPLY = pb.TxnResponse(
    header=pb.ResponseHeader(cluster_id=1, member_id=2, revision=12346, raft_term=3),
    succeeded=True,
    responses=[pb.ResponseOp(response_put=pb.PutResponse(
        header=pb.ResponseHeader(revision=12346))) for _ in KEYS]).SerializeToString()


def parse_reply() -> tuple[bool, int]:
    reply = pb.TxnResponse.FromString(REPLY)
    return reply.succeeded, reply.header.revision


def _us(fn: Any, number: int = 1000) -> float:
    return round(min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6, 1)


def main() -> None:
    assert filled_in_place() == nested_constructors()
    json.dump({"bench": "etcd txn messages (1 compare, 128 puts)",
               "protobuf": google.protobuf.__version__,
               "runtime": api_implementation.Type(),
               "request_bytes": len(filled_in_place()),
               "encode_filled_in_place_us": _us(filled_in_place),
               "encode_nested_constructors_us": _us(nested_constructors),
               "parse_reply_us": _us(parse_reply)}, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
