"""The etcd ``Txn`` call's messages, written and read straight in protobuf's wire format.

etcd3 0.12's generated modules pin protobuf to 3.20, which has no compiled extension for
Python 3.11: messages are built and parsed in pure Python. A scheduler's commit is a
stream of 128-operation transactions, and that cost (about 40 protobuf objects a task)
was most of the client's time. So the one hot call, ``KV/Txn``, serializes its request
with the few bytes of protobuf it needs and reads back only the header's revision and
``succeeded``; everything else still goes through etcd3's stubs. A test checks the bytes
against the generated messages.

Messages (etcd's ``rpc.proto``)::

    TxnRequest  { repeated Compare compare = 1; repeated RequestOp success = 2; ... }
    Compare     { CompareResult result = 1; CompareTarget target = 2; bytes key = 3;
                  oneof target_union { ...; int64 mod_revision = 6; ... } }
    RequestOp   { oneof request { ...; PutRequest request_put = 2;
                                  DeleteRangeRequest request_delete_range = 3; ... } }
    PutRequest  { bytes key = 1; bytes value = 2; int64 lease = 3; ... }
    DeleteRangeRequest { bytes key = 1; ... }
    TxnResponse { ResponseHeader header = 1; bool succeeded = 2; ... }
    ResponseHeader { uint64 cluster_id = 1; uint64 member_id = 2; int64 revision = 3; ... }
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["TxnReply", "delete_op", "mod_revision_equals", "put_op", "read_txn_reply",
           "txn_request"]

_MOD = 2  # CompareTarget.MOD; CompareResult.EQUAL is 0 (the default, not written)


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int64: two's complement in ten bytes
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _len_field(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _int_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def mod_revision_equals(key: bytes, revision: int) -> bytes:
    """A ``Compare``: the key's mod revision equals ``revision`` (0: it does not exist)."""
    return _int_field(2, _MOD) + _len_field(3, key) + _int_field(6, revision)


def put_op(key: bytes, value: bytes, lease: int = 0) -> bytes:
    """A ``RequestOp`` holding a ``PutRequest``."""
    put = _len_field(1, key)
    if value:
        put += _len_field(2, value)
    if lease:
        put += _int_field(3, lease)
    return _len_field(2, put)


def delete_op(key: bytes) -> bytes:
    """A ``RequestOp`` holding a ``DeleteRangeRequest`` of one key."""
    return _len_field(3, _len_field(1, key))


def txn_request(compares: Iterable[bytes], success: Iterable[bytes]) -> bytes:
    """A serialized ``TxnRequest`` (no failure branch)."""
    return b"".join([*(_len_field(1, c) for c in compares),
                     *(_len_field(2, op) for op in success)])


class TxnReply:
    """What a commit needs of a ``TxnResponse``."""

    __slots__ = ("revision", "succeeded")

    def __init__(self, succeeded: bool, revision: int) -> None:
        self.succeeded = succeeded
        self.revision = revision


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(data: bytes) -> Iterable[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) for every field of a message."""
    pos = 0
    while pos < len(data):
        tag, pos = _read_varint(data, pos)
        number, kind = tag >> 3, tag & 7
        if kind == 0:
            value, pos = _read_varint(data, pos)
            yield number, kind, value
        elif kind == 2:
            size, pos = _read_varint(data, pos)
            if pos + size > len(data):
                raise ValueError("truncated field")
            yield number, kind, data[pos:pos + size]
            pos += size
        elif kind == 1:
            pos += 8
        elif kind == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {kind}")


def read_txn_reply(data: bytes) -> TxnReply:
    """Parse a serialized ``TxnResponse`` (its per-operation responses are skipped)."""
    succeeded = False
    revision = 0
    for number, kind, value in _fields(data):
        if number == 1 and kind == 2 and isinstance(value, bytes):
            for n, k, v in _fields(value):
                if n == 3 and k == 0 and isinstance(v, int):
                    revision = v - (1 << 64) if v >= 1 << 63 else v
        elif number == 2 and kind == 0:
            succeeded = bool(value)
    return TxnReply(succeeded, revision)
