"""The plugin's own etcd API modules: they load on the compiled protobuf runtime (>= 6,
beside packages that need protobuf >= 5 such as grpcio-status), and a commit-sized
transaction encodes what etcd expects."""

from __future__ import annotations

from importlib.metadata import requires

import pytest
from packaging.requirements import Requirement

from tests.harness import etcd as harness

harness.skip_module_unless_plugin_importable()

import google.protobuf  # noqa: E402 - after the check above
from google.protobuf.internal import api_implementation  # noqa: E402
from skedlib_etcd.backend import EtcdBackend, EtcdOptions  # noqa: E402
from skedlib_etcd.stubs import SERVICES, Stub, rpc_pb2  # noqa: E402

from skedlib.store.base import Compare, Delete, Put  # noqa: E402


def test_the_installed_protobuf_is_compiled_and_within_the_declared_range() -> None:
    declared = next(Requirement(r) for r in requires("skedlib-etcd") or []
                    if Requirement(r).name == "protobuf")
    assert google.protobuf.__version__ in declared.specifier
    assert int(google.protobuf.__version__.split(".")[0]) >= 6
    assert api_implementation.Type() == "upb"
    # registered in the runtime's default pool under a package of the plugin's own
    assert rpc_pb2.DESCRIPTOR.package == "skedlib_etcd.etcdserverpb"


def test_another_copy_of_etcds_protos_can_be_loaded_beside_the_plugins() -> None:
    from google.protobuf import descriptor_pb2, descriptor_pool

    # what importing another etcd client's generated rpc_pb2 does (etcd3, aetcd, ...)
    other = descriptor_pb2.FileDescriptorProto(name="another/client/rpc.proto",
                                               package="etcdserverpb")
    other.message_type.add(name="ResponseHeader")
    descriptor_pool.Default().AddSerializedFile(other.SerializeToString())
    assert rpc_pb2.ResponseHeader.DESCRIPTOR.full_name == "skedlib_etcd.etcdserverpb.ResponseHeader"


def test_a_stub_has_every_method_of_its_service_and_only_those() -> None:
    class Channel:  # records what the stub declares instead of opening a connection
        def __getattr__(self, kind: str) -> object:
            return lambda path, **kw: (kind, path)

    assert set(SERVICES) >= {"KV", "Watch", "Lease", "Maintenance", "Auth", "Cluster"}
    kv, watch, lease = (Stub(Channel(), s) for s in ("KV", "Watch", "Lease"))
    assert kv.Txn == ("unary_unary", "/etcdserverpb.KV/Txn")
    assert watch.Watch == ("stream_stream", "/etcdserverpb.Watch/Watch")
    assert lease.LeaseKeepAlive == ("stream_stream", "/etcdserverpb.Lease/LeaseKeepAlive")
    with pytest.raises(AttributeError, match="KV service has no method 'Watch'"):
        _ = kv.Watch
    with pytest.raises(ValueError, match="no service 'Nope'"):
        Stub(Channel(), "Nope")


def test_a_txn_request_is_etcds_message() -> None:
    sent: list[rpc_pb2.TxnRequest] = []

    class Member:  # what the backend's retry loop would call, minus the network
        class kv:
            @staticmethod
            def Txn(request: rpc_pb2.TxnRequest, **kw: object) -> rpc_pb2.TxnResponse:
                sent.append(request)
                return rpc_pb2.TxnResponse(header=rpc_pb2.ResponseHeader(revision=42),
                                           succeeded=True)

    backend = EtcdBackend(EtcdOptions(("127.0.0.1:1",)), connect=False)
    try:
        backend._run = lambda what, call, **kw: call(Member, 1.0, ())  # type: ignore[method-assign]
        result = backend.txn([Compare("a", 7)],
                             [Put("b", b"v"), Delete("c"), Put("b", b"w", lease="12")])
    finally:
        backend.close()
    assert (result.succeeded, result.revision) == (True, 42)
    expected = rpc_pb2.TxnRequest(
        compare=[rpc_pb2.Compare(result=rpc_pb2.Compare.EQUAL, target=rpc_pb2.Compare.MOD,
                                 key=b"a", mod_revision=7)],
        # several ops on one key collapse to the last, in the place of the last
        success=[rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=b"c")),
                 rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"b", value=b"w",
                                                                  lease=12))])
    assert sent == [expected]
