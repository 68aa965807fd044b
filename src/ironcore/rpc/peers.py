"""Whom every gRPC call comes from (`access.backoff.client_address`), said before its method
runs, so that the back-off of failed authentication and the audit log see the same address.

It is the TCP peer; behind a trusted proxy (`--trusted-proxies`) the client its
`x-forwarded-for` metadata names (`access.forwarded`): HAProxy in HTTP mode relays gRPC
(HTTP/2) and adds the header with `option forwardfor`, as it does for REST. A balancer in TCP
mode with the PROXY protocol cannot be used for that: grpcio's C core accepts the connections
and starts HTTP/2 on them itself, with no place to read a header before the connection preface.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from ironcore.access.backoff import client_address, grpc_peer_address
from ironcore.access.forwarded import TrustedProxies

Context = grpc.aio.ServicerContext[bytes, bytes]


def call_client(context: Context, trusted: TrustedProxies) -> str:
    """The client address of a call: its peer's, or the one a trusted peer forwards."""
    peer = grpc_peer_address(context.peer())
    if not trusted:
        return peer
    forwarded = [
        value if isinstance(value, str) else value.decode("latin-1")
        for key, value in context.invocation_metadata() or ()
        if key == "x-forwarded-for"
    ]
    return trusted.client(peer, forwarded)


class Addressed(grpc.GenericRpcHandler):
    """`inner`'s methods, each call's client address said first (`call_client`)."""

    def __init__(self, inner: grpc.GenericRpcHandler, trusted: TrustedProxies) -> None:
        self._inner = inner
        self._trusted = trusted
        self._methods: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method: str = handler_call_details.method
        found = self._methods.get(method)
        if found is None:
            served = self._inner.service(handler_call_details)
            if served is None:
                return None
            found = self._methods[method] = self._addressed(served)
        return found

    def _addressed(
        self, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        trusted = self._trusted
        if handler.unary_unary is not None:
            # grpc's stubs type the handler's behaviours as synchronous.
            unary: Any = handler.unary_unary

            async def call(request: Any, context: Context) -> Any:
                client_address(call_client(context, trusted))
                return await unary(request, context)

            return grpc.unary_unary_rpc_method_handler(
                call, handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_stream is not None:
            stream: Any = handler.stream_stream

            async def streamed(requests: AsyncIterator[Any], context: Context) -> None:
                client_address(call_client(context, trusted))
                await stream(requests, context)

            return grpc.stream_stream_rpc_method_handler(
                streamed, handler.request_deserializer, handler.response_serializer
            )
        return handler  # ironcore serves no other kind of method
