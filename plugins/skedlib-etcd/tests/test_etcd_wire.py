"""The hand-written Txn wire format is byte for byte what etcd3's generated messages give."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

etcdrpc = pytest.importorskip("etcd3.etcdrpc")
wire = pytest.importorskip("skedlib_etcd.wire")

keys = st.binary(min_size=1, max_size=40)
revisions = st.integers(min_value=0, max_value=2**62)
leases = st.integers(min_value=-(2**63), max_value=2**63 - 1)
ops = st.one_of(
    st.tuples(st.just("put"), keys, st.binary(max_size=300), leases),
    st.tuples(st.just("delete"), keys, st.just(b""), st.just(0)),
)


@given(st.lists(st.tuples(keys, revisions), max_size=10), st.lists(ops, max_size=20))
def test_txn_request_matches_the_generated_message(
        compares: list[tuple[bytes, int]], operations: list[tuple[str, bytes, bytes, int]]
) -> None:
    ours = wire.txn_request(
        [wire.mod_revision_equals(k, r) for k, r in compares],
        [wire.put_op(k, v, lease) if kind == "put" else wire.delete_op(k)
         for kind, k, v, lease in operations])
    theirs = etcdrpc.TxnRequest(
        compare=[etcdrpc.Compare(result=etcdrpc.Compare.EQUAL, target=etcdrpc.Compare.MOD,
                                 key=k, mod_revision=r) for k, r in compares],
        success=[etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=k, value=v, lease=lease))
                 if kind == "put" else
                 etcdrpc.RequestOp(request_delete_range=etcdrpc.DeleteRangeRequest(key=k))
                 for kind, k, v, lease in operations],
        failure=[])
    assert etcdrpc.TxnRequest.FromString(ours) == theirs
    assert ours == theirs.SerializeToString()


@given(st.booleans(), st.integers(min_value=0, max_value=2**63 - 1),
       st.integers(min_value=0, max_value=2**64 - 1), st.integers(min_value=0, max_value=5))
def test_txn_reply_reads_succeeded_and_revision(succeeded: bool, revision: int,
                                                cluster_id: int, responses: int) -> None:
    reply = etcdrpc.TxnResponse(
        header=etcdrpc.ResponseHeader(cluster_id=cluster_id, member_id=7, revision=revision,
                                      raft_term=3),
        succeeded=succeeded,
        responses=[etcdrpc.ResponseOp(response_put=etcdrpc.PutResponse(
            header=etcdrpc.ResponseHeader(revision=revision))) for _ in range(responses)])
    got = wire.read_txn_reply(reply.SerializeToString())
    assert (got.succeeded, got.revision) == (succeeded, revision)


def test_a_truncated_reply_is_an_error() -> None:
    data = etcdrpc.TxnResponse(header=etcdrpc.ResponseHeader(revision=300),
                               succeeded=True).SerializeToString()
    with pytest.raises(ValueError):
        wire.read_txn_reply(data[:-1])
