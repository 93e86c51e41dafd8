"""gRPC stubs for etcd's v3 API, built from the descriptors of the generated messages.

The messages are the modules ``rpc_pb2``, ``kv_pb2`` and ``auth_pb2`` re-exported here,
generated from etcd's own ``.proto`` files by ``scripts/gen_proto.sh``. Their proto packages
are etcd's prefixed with ``skedlib_etcd.`` (``skedlib_etcd.etcdserverpb``), so another etcd
client's copy of the same protos can be imported in the same process; protobuf's binary
encoding does not carry message names, and the gRPC paths are etcd's
(``/etcdserverpb.KV/Range``). Instead of grpcio-tools'
``*_pb2_grpc`` modules (which pin a minimum grpcio), a :class:`Stub` declares each method
of a service on the channel from ``rpc.proto``'s service descriptors::

    kv = Stub(channel, "KV")
    response = kv.Range(rpc_pb2.RangeRequest(key=b"a"), timeout=5)

A method is a grpc multi-callable (``unary_unary``, ``unary_stream`` or ``stream_stream``,
as the proto says), called with the request (or an iterator of requests), ``timeout`` and
``metadata`` as usual.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message_factory import GetMessageClass

from skedlib_etcd._proto import auth_pb2, kv_pb2, rpc_pb2

__all__ = ["PACKAGE", "SERVICES", "Stub", "auth_pb2", "kv_pb2", "rpc_pb2"]

#: the services of etcd's ``rpc.proto``
SERVICES = tuple(rpc_pb2.DESCRIPTOR.services_by_name)
#: etcd's proto package, which names the services in gRPC paths
PACKAGE = "etcdserverpb"

_KINDS = {(False, False): "unary_unary", (False, True): "unary_stream",
          (True, False): "stream_unary", (True, True): "stream_stream"}


class Stub:
    """The methods of one etcd gRPC service (``"KV"``, ``"Watch"``, ``"Lease"``, ``"Auth"``,
    ``"Maintenance"``, ``"Cluster"``) on a channel, as attributes named like the proto's."""

    def __init__(self, channel: Any, service: str) -> None:
        descriptor = rpc_pb2.DESCRIPTOR.services_by_name.get(service)
        if descriptor is None:
            raise ValueError(f"etcd's rpc.proto has no service {service!r} (known: "
                             f"{', '.join(SERVICES)})")
        self.service = service
        for method in descriptor.methods:
            request = GetMessageClass(method.input_type)
            response = GetMessageClass(method.output_type)
            declare = getattr(channel, _KINDS[method.client_streaming, method.server_streaming])
            setattr(self, method.name, declare(
                f"/{PACKAGE}.{descriptor.name}/{method.name}",
                request_serializer=request.SerializeToString,
                response_deserializer=response.FromString))

    def __getattr__(self, name: str) -> Any:
        # only reached for a name __init__ did not set: the proto has no such method
        raise AttributeError(f"etcd's {self.__dict__.get('service', '?')} service has no "
                             f"method {name!r}")
