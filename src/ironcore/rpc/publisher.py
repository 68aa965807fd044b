"""`google.pubsub.v1.Publisher`'s unary methods over the embedded Pub/Sub (`routing.pubsub`),
with the same permission per method as the REST routes (`api.pubsub`). Topics made here are
backed by the embedded event log (REST's `backend` field has no place in Google's Topic)."""

from __future__ import annotations

import warnings
from typing import Any

import grpc
from google.protobuf import empty_pb2
from google.protobuf.message import Message

from ironcore.access.callers import Authenticator
from ironcore.access.roles import Caller, require
from ironcore.errors import InvalidArgument
from ironcore.registry.names import is_valid_project
from ironcore.registry.store.audit import AuditStore
from ironcore.routing.pubsub import PubSub, parse_topic
from ironcore.rpc.calls import Method, unary

with warnings.catch_warnings():
    # As in rpc.device_manager: google-api-core's Python-version warning is not for a log.
    warnings.simplefilter("ignore", FutureWarning)
    from google.pubsub_v1 import types as pubsub

SERVICE = "google.pubsub.v1.Publisher"
_Topic = pubsub.Topic.pb()


class PublisherService:
    def __init__(
        self,
        pubsub_service: PubSub,
        authenticator: Authenticator,
        audit_log: AuditStore | None = None,
    ) -> None:
        """With `audit_log`, refused calls are recorded there (rpc.calls.unary)."""
        self.pubsub = pubsub_service
        self.authenticator = authenticator
        self.audit_log = audit_log

    def handler(self) -> grpc.GenericRpcHandler:
        methods: dict[str, tuple[Method, type[Message]]] = {
            "CreateTopic": (self.create_topic, _Topic),
            "GetTopic": (self.get_topic, pubsub.GetTopicRequest.pb()),
            "ListTopics": (self.list_topics, pubsub.ListTopicsRequest.pb()),
            "DeleteTopic": (self.delete_topic, pubsub.DeleteTopicRequest.pb()),
            "Publish": (self.publish, pubsub.PublishRequest.pb()),
        }
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                name: unary(name, method, request_type, self.authenticator, self.audit_log)
                for name, (method, request_type) in methods.items()
            },
        )

    async def create_topic(self, request: Any, caller: Caller) -> Message:
        require(caller, "pubsub.topics.create", request.name)
        created = await self.pubsub.create_topic(parse_topic(request.name, "name"))
        return _Topic(name=created.name)

    async def get_topic(self, request: Any, caller: Caller) -> Message:
        require(caller, "pubsub.topics.get", request.topic)
        found = await self.pubsub.get_topic(parse_topic(request.topic, "topic"))
        return _Topic(name=found.name)

    async def list_topics(self, request: Any, caller: Caller) -> Message:
        require(caller, "pubsub.topics.list", request.project)
        topics = await self.pubsub.list_topics(project_id(request.project))
        return pubsub.ListTopicsResponse.pb()(topics=[_Topic(name=t.name) for t in topics])

    async def delete_topic(self, request: Any, caller: Caller) -> Message:
        require(caller, "pubsub.topics.delete", request.topic)
        await self.pubsub.delete_topic(parse_topic(request.topic, "topic"))
        return empty_pb2.Empty()

    async def publish(self, request: Any, caller: Caller) -> Message:
        require(caller, "pubsub.topics.publish", request.topic)
        ids = await self.pubsub.publish(
            parse_topic(request.topic, "topic"),
            [(m.data, dict(m.attributes)) for m in request.messages],
        )
        return pubsub.PublishResponse.pb()(message_ids=ids)


def project_id(name: str) -> str:
    """The id in `projects/P`, as ListTopics and ListSubscriptions name a project."""
    prefix, _, project = name.partition("/")
    if prefix != "projects" or not is_valid_project(project):
        raise InvalidArgument.field("project", f"{name[:100]!r} is not projects/{{project}}")
    return project
