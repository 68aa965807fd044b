"""The gRPC API: Google's services (`google.cloud.iot.v1.DeviceManager`, …) over grpcio's
asyncio server, for backend code written against Google's client libraries.

Thin adapters, like `ironcore.api`: every method authenticates through `access.callers`,
checks its permission with `access.roles`, and calls the same services the REST API calls.
Messages are the official client libraries' own classes, so nothing of Google's protos is
copied here; they are converted to and from the proto3 JSON form (`registry.wire`) the
services already speak.
"""
