"""The gRPC servers' metrics: calls by full method name and status code, unary latency, open
streams; in the process's Prometheus registry beside the REST API's (`ironcore.metrics`), so
/metrics shows both.

`Counted` wraps the servers' handlers once per method (cached), so a call costs a few
attribute reads, two clock reads and two increments; the method label is the full method name
(`/google.pubsub.v1.Publisher/Publish`) of a method the server has, or "unknown" for any
other name a client sends (a label per arbitrary name would grow without bound)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
from prometheus_client import Counter, Gauge, Histogram

CALLS = Counter(
    "ironcore_grpc_calls_total",
    "gRPC calls by full method name and status code; a stream counts when it ends",
    ["method", "code"],
)
LATENCY = Histogram(
    "ironcore_grpc_call_seconds",
    "Unary gRPC call latency, by full method name",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
STREAMS = Gauge("ironcore_grpc_streams_open", "Open gRPC streams, by full method name", ["method"])
UNKNOWN = "unknown"

Context = grpc.aio.ServicerContext[bytes, bytes]


class Counted(grpc.GenericRpcHandler):
    """`handlers` with every call of a method they serve counted."""

    def __init__(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._handlers = handlers
        self._methods: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method: str = handler_call_details.method
        found = self._methods.get(method)
        if found is not None:
            return found
        for handler in self._handlers:
            served = handler.service(handler_call_details)
            if served is not None:
                found = self._methods[method] = _counted(method, served)
                return found
        # grpc answers UNIMPLEMENTED.
        CALLS.labels(UNKNOWN, grpc.StatusCode.UNIMPLEMENTED.name).inc()
        return None


def _counted(
    method: str, handler: grpc.RpcMethodHandler[Any, Any]
) -> grpc.RpcMethodHandler[Any, Any]:
    codes = _Codes(method)
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _unary(handler.unary_unary, codes, LATENCY.labels(method)),
            handler.request_deserializer,
            handler.response_serializer,
        )
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            _stream(handler.stream_stream, codes, STREAMS.labels(method)),
            handler.request_deserializer,
            handler.response_serializer,
        )
    return handler  # ironcore serves no other kind of method


class _Codes:
    """A method's counters by status code, looked up once each."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.ok = CALLS.labels(method, grpc.StatusCode.OK.name)
        self._others: dict[Any, Any] = {}

    def failed(self, context: Context, error: BaseException) -> None:
        if isinstance(error, asyncio.CancelledError):
            code: Any = grpc.StatusCode.CANCELLED
        else:
            # Set by abort (ironcore's errors); grpc answers UNKNOWN for anything else.
            code = context.code() or grpc.StatusCode.UNKNOWN
        counter = self._others.get(code)
        if counter is None:
            name = code.name if isinstance(code, grpc.StatusCode) else str(code)
            counter = self._others[code] = CALLS.labels(self.method, name)
        counter.inc()


def _unary(behavior: Any, codes: _Codes, latency: Any) -> Callable[[Any, Context], Awaitable[Any]]:
    async def call(request: Any, context: Context) -> Any:
        start = time.perf_counter()
        try:
            answer = await behavior(request, context)
        except BaseException as error:
            codes.failed(context, error)
            raise
        finally:
            latency.observe(time.perf_counter() - start)
        codes.ok.inc()
        return answer

    return call


def _stream(
    behavior: Any, codes: _Codes, open_: Any
) -> Callable[[AsyncIterator[Any], Context], Awaitable[None]]:
    # ironcore's streaming methods are coroutines that write with `context.write`, not
    # async generators.
    async def call(requests: AsyncIterator[Any], context: Context) -> None:
        open_.inc()
        try:
            await behavior(requests, context)
        except BaseException as error:
            codes.failed(context, error)
            raise
        finally:
            open_.dec()
        codes.ok.inc()

    return call
