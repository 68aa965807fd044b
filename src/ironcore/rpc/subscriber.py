"""`google.pubsub.v1.Subscriber`'s unary methods over the embedded Pub/Sub (`routing.pubsub`),
with the same permission per method as the REST routes (`api.pubsub`), and StreamingPull
(`rpc.streaming_pull`), which hears of the acks and nacks made by the unary methods."""

from __future__ import annotations

import warnings
from typing import Any

import grpc
from google.protobuf import empty_pb2
from google.protobuf.message import Message

from ironcore.access.callers import Authenticator
from ironcore.access.roles import Caller, require
from ironcore.errors import InvalidArgument
from ironcore.registry.store.audit import AuditStore
from ironcore.routing.pubsub import (
    PubSub,
    message_wire,
    parse_subscription,
    subscription_wire,
)
from ironcore.rpc.calls import Method, message, unary
from ironcore.rpc.publisher import project_id
from ironcore.rpc.streaming_pull import StreamingPull

with warnings.catch_warnings():
    # As in rpc.device_manager: google-api-core's Python-version warning is not for a log.
    warnings.simplefilter("ignore", FutureWarning)
    from google.pubsub_v1 import types as pubsub

SERVICE = "google.pubsub.v1.Subscriber"
_Subscription = pubsub.Subscription.pb()


class SubscriberService:
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
        self.streaming_pull = StreamingPull(pubsub_service, authenticator, audit_log)

    def handler(self) -> grpc.GenericRpcHandler:
        methods: dict[str, tuple[Method, type[Message]]] = {
            "CreateSubscription": (self.create_subscription, _Subscription),
            "GetSubscription": (self.get_subscription, pubsub.GetSubscriptionRequest.pb()),
            "ListSubscriptions": (self.list_subscriptions, pubsub.ListSubscriptionsRequest.pb()),
            "DeleteSubscription": (
                self.delete_subscription,
                pubsub.DeleteSubscriptionRequest.pb(),
            ),
            "Pull": (self.pull, pubsub.PullRequest.pb()),
            "Acknowledge": (self.acknowledge, pubsub.AcknowledgeRequest.pb()),
            "ModifyAckDeadline": (self.modify_ack_deadline, pubsub.ModifyAckDeadlineRequest.pb()),
        }
        handlers = {
            name: unary(name, method, request_type, self.authenticator, self.audit_log)
            for name, (method, request_type) in methods.items()
        }
        handlers["StreamingPull"] = self.streaming_pull.handler()
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    async def create_subscription(self, request: Any, caller: Caller) -> Message:
        require(caller, "pubsub.subscriptions.create", request.name)
        if request.push_config.push_endpoint:
            # A push subscription's signing secret is shown once, in REST's answer; Google's
            # Subscription has no field for it.
            raise InvalidArgument.field(
                "push_config", "create push subscriptions over REST, which returns their secret"
            )
        created = await self.pubsub.create_subscription(
            parse_subscription(request.name, "name"),
            request.topic,
            request.ack_deadline_seconds,
            "",
            request.dead_letter_policy.dead_letter_topic,
            request.dead_letter_policy.max_delivery_attempts,
        )
        return message(_Subscription, subscription_wire(created))

    async def get_subscription(self, request: Any, caller: Caller) -> Message:
        require(caller, "pubsub.subscriptions.get", request.subscription)
        found = await self.pubsub.get_subscription(
            parse_subscription(request.subscription, "subscription")
        )
        return message(_Subscription, subscription_wire(found))

    async def list_subscriptions(self, request: Any, caller: Caller) -> Message:
        require(caller, "pubsub.subscriptions.list", request.project)
        found = await self.pubsub.list_subscriptions(project_id(request.project))
        return message(
            pubsub.ListSubscriptionsResponse.pb(),
            {"subscriptions": [subscription_wire(s) for s in found]},
        )

    async def delete_subscription(self, request: Any, caller: Caller) -> Message:
        require(caller, "pubsub.subscriptions.delete", request.subscription)
        await self.pubsub.delete_subscription(
            parse_subscription(request.subscription, "subscription")
        )
        return empty_pb2.Empty()

    async def pull(self, request: Any, caller: Caller) -> Message:
        require(caller, "pubsub.subscriptions.consume", request.subscription)
        delivered = await self.pubsub.pull(
            parse_subscription(request.subscription, "subscription"), request.max_messages
        )
        received = [
            {"ackId": str(m.event_pk), "message": message_wire(m), "deliveryAttempt": m.attempt}
            for m in delivered
        ]
        return message(pubsub.PullResponse.pb(), {"receivedMessages": received})

    async def acknowledge(self, request: Any, caller: Caller) -> Message:
        require(caller, "pubsub.subscriptions.consume", request.subscription)
        await self.streaming_pull.acknowledge(
            parse_subscription(request.subscription, "subscription"), list(request.ack_ids)
        )
        return empty_pb2.Empty()

    async def modify_ack_deadline(self, request: Any, caller: Caller) -> Message:
        require(caller, "pubsub.subscriptions.consume", request.subscription)
        await self.streaming_pull.modify_ack_deadline(
            parse_subscription(request.subscription, "subscription"),
            list(request.ack_ids),
            request.ack_deadline_seconds,
        )
        return empty_pb2.Empty()
