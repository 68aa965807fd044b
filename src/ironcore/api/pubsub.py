"""Routes of the embedded Pub/Sub, in Cloud Pub/Sub's v1 REST shapes, plus a live tail
(server-sent events) for dashboards and `ironcore events tail`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from functools import partial
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import Field

from ironcore.access.policies import bindable
from ironcore.api.deps import CallerDep, allowed, ok
from ironcore.api.registries import SetIamPolicyRequest, TestIamPermissionsRequest, policy_wire
from ironcore.registry.wire import Bytes, Message
from ironcore.routing.policies import PubSubPolicies, permission
from ironcore.routing.pubsub import (
    PubSub,
    message_wire,
    subscription_name,
    subscription_wire,
    topic_name,
)

router = APIRouter()
TOPICS = "/v1/projects/{project}/topics"
TOPIC = TOPICS + "/{topic}"
SUBSCRIPTIONS = "/v1/projects/{project}/subscriptions"
SUBSCRIPTION = SUBSCRIPTIONS + "/{subscription}"
PubSubKind = Literal["topics", "subscriptions"]
# How often a live tail looks for new events.
TAIL_POLL_SECONDS = 0.2


class TopicBody(Message):
    name: str = ""
    # ironcore's own field: what backs the topic ("embedded" or "nats").
    backend: str = "embedded"
    labels: dict[str, str] = Field(default_factory=dict)


class PubsubMessage(Message):
    data: Bytes = b""
    attributes: dict[str, str] = Field(default_factory=dict)


class PublishRequest(Message):
    messages: list[PubsubMessage] = Field(default_factory=list)


class PushConfig(Message):
    push_endpoint: str = ""


class DeadLetterPolicy(Message):
    dead_letter_topic: str = ""
    max_delivery_attempts: int = 0


class SubscriptionBody(Message):
    name: str = ""
    topic: str = ""
    ack_deadline_seconds: int = 0
    push_config: PushConfig | None = None
    dead_letter_policy: DeadLetterPolicy | None = None


class PullRequest(Message):
    max_messages: int = 100
    return_immediately: bool = False


class AcknowledgeRequest(Message):
    ack_ids: list[str] = Field(default_factory=list)


class ModifyAckDeadlineRequest(Message):
    ack_ids: list[str] = Field(default_factory=list)
    ack_deadline_seconds: int = 0


def _pubsub(request: Request) -> PubSub:
    pubsub: PubSub = request.app.state.pubsub
    return pubsub


# IAM policies of topics and subscriptions (`routing.policies`). Pub/Sub's REST API reads a
# policy with GET (gcloud does); POST, as Cloud IoT Core's registries take it, is accepted too.
# Before the topic routes: GET {topic} would match `t:getIamPolicy` as a topic id.


def _policies(request: Request) -> PubSubPolicies:
    return PubSubPolicies(_pubsub(request))


def _resource(project: str, kind: str, resource: str) -> str:
    return (
        topic_name(project, resource) if kind == "topics" else subscription_name(project, resource)
    )


@router.get("/v1/projects/{project}/{kind}/{resource}:getIamPolicy", name="GetPubSubIamPolicy")
@router.post(
    "/v1/projects/{project}/{kind}/{resource}:getIamPolicy",
    name="GetPubSubIamPolicy",
    include_in_schema=False,
)
async def get_pubsub_iam_policy(
    project: str, kind: PubSubKind, resource: str, request: Request, caller: CallerDep
) -> JSONResponse:
    name = _resource(project, kind, resource)
    allowed(caller, permission(kind, "getIamPolicy"), name)
    policy = await _policies(request).get_iam_policy(kind, name)
    return ok(policy_wire(policy))


@router.post("/v1/projects/{project}/{kind}/{resource}:setIamPolicy", name="SetPubSubIamPolicy")
async def set_pubsub_iam_policy(
    project: str,
    kind: PubSubKind,
    resource: str,
    request: Request,
    caller: CallerDep,
    body: SetIamPolicyRequest,
) -> JSONResponse:
    name = _resource(project, kind, resource)
    allowed(caller, permission(kind, "setIamPolicy"), name)
    policy = await _policies(request).set_iam_policy(
        kind, name, bindable(body.policy), body.update_mask
    )
    return ok(policy_wire(policy))


@router.post(
    "/v1/projects/{project}/{kind}/{resource}:testIamPermissions",
    name="TestPubSubIamPermissions",
)
async def test_pubsub_iam_permissions(
    project: str,
    kind: PubSubKind,
    resource: str,
    request: Request,
    caller: CallerDep,
    body: TestIamPermissionsRequest,
) -> JSONResponse:
    name = _resource(project, kind, resource)
    granted = await _policies(request).test_iam_permissions(
        kind, name, partial(caller.may, resource=name), body.permissions
    )
    return ok({"permissions": granted} if granted else {})


@router.put(TOPIC, name="CreateTopic")
async def create_topic(
    project: str, topic: str, request: Request, caller: CallerDep, body: TopicBody
) -> JSONResponse:
    allowed(caller, "pubsub.topics.create", f"projects/{project}/topics/{topic}")
    created = await _pubsub(request).create_topic(topic_name(project, topic), body.backend)
    return ok({"name": created.name, "backend": created.backend})


@router.get(TOPICS, name="ListTopics")
async def list_topics(project: str, request: Request, caller: CallerDep) -> JSONResponse:
    allowed(caller, "pubsub.topics.list", f"projects/{project}")
    topics = await _pubsub(request).list_topics(project)
    return ok({"topics": [{"name": t.name, "backend": t.backend} for t in topics]})


@router.get(TOPIC, name="GetTopic")
async def get_topic(project: str, topic: str, request: Request, caller: CallerDep) -> JSONResponse:
    allowed(caller, "pubsub.topics.get", f"projects/{project}/topics/{topic}")
    found = await _pubsub(request).get_topic(topic_name(project, topic))
    return ok({"name": found.name, "backend": found.backend})


@router.delete(TOPIC, name="DeleteTopic")
async def delete_topic(
    project: str, topic: str, request: Request, caller: CallerDep
) -> JSONResponse:
    allowed(caller, "pubsub.topics.delete", f"projects/{project}/topics/{topic}")
    await _pubsub(request).delete_topic(topic_name(project, topic))
    return ok()


@router.post(TOPIC + ":publish", name="Publish")
async def publish(
    project: str, topic: str, request: Request, caller: CallerDep, body: PublishRequest
) -> JSONResponse:
    allowed(caller, "pubsub.topics.publish", f"projects/{project}/topics/{topic}")
    ids = await _pubsub(request).publish(
        topic_name(project, topic), [(m.data, m.attributes) for m in body.messages]
    )
    return ok({"messageIds": ids})


@router.get("/ironcore/v1/projects/{project}/topics/{topic}:tail", name="TailTopic")
async def tail_topic(
    project: str,
    topic: str,
    request: Request,
    caller: CallerDep,
    limit: int = Query(0, ge=0, description="Stop after this many events (0: never)"),
) -> StreamingResponse:
    """Server-sent events: every event published to the topic from now on, as JSON."""
    allowed(caller, "pubsub.topics.get", f"projects/{project}/topics/{topic}")
    pubsub = _pubsub(request)
    name = topic_name(project, topic)
    await pubsub.get_topic(name)
    start = await pubsub.store.last_position()

    async def stream() -> AsyncIterator[bytes]:
        after, sent = start, 0
        yield b": tailing " + name.encode() + b"\n\n"
        while not await request.is_disconnected():
            for event in await pubsub.store.read_after(name, after, 500):
                after = event.position
                yield f"data: {json.dumps(message_wire(event))}\n\n".encode()
                sent += 1
                if limit and sent >= limit:
                    return
            await asyncio.sleep(TAIL_POLL_SECONDS)

    return StreamingResponse(stream(), media_type="text/event-stream")


@router.put(SUBSCRIPTION, name="CreateSubscription")
async def create_subscription(
    project: str, subscription: str, request: Request, caller: CallerDep, body: SubscriptionBody
) -> JSONResponse:
    allowed(
        caller, "pubsub.subscriptions.create", f"projects/{project}/subscriptions/{subscription}"
    )
    dead = body.dead_letter_policy or DeadLetterPolicy()
    created = await _pubsub(request).create_subscription(
        subscription_name(project, subscription),
        body.topic,
        body.ack_deadline_seconds,
        body.push_config.push_endpoint if body.push_config else "",
        dead.dead_letter_topic,
        dead.max_delivery_attempts,
    )
    out: dict[str, Any] = subscription_wire(created)
    if created.push_secret:
        # Shown once: the key of the HMAC-SHA256 signature on every push request.
        out["pushConfig"]["signingSecret"] = created.push_secret
    return ok(out)


@router.get(SUBSCRIPTIONS, name="ListSubscriptions")
async def list_subscriptions(project: str, request: Request, caller: CallerDep) -> JSONResponse:
    allowed(caller, "pubsub.subscriptions.list", f"projects/{project}")
    found = await _pubsub(request).list_subscriptions(project)
    return ok({"subscriptions": [subscription_wire(s) for s in found]})


@router.get(SUBSCRIPTION, name="GetSubscription")
async def get_subscription(
    project: str, subscription: str, request: Request, caller: CallerDep
) -> JSONResponse:
    allowed(caller, "pubsub.subscriptions.get", f"projects/{project}/subscriptions/{subscription}")
    found = await _pubsub(request).get_subscription(subscription_name(project, subscription))
    return ok(subscription_wire(found))


@router.delete(SUBSCRIPTION, name="DeleteSubscription")
async def delete_subscription(
    project: str, subscription: str, request: Request, caller: CallerDep
) -> JSONResponse:
    allowed(
        caller, "pubsub.subscriptions.delete", f"projects/{project}/subscriptions/{subscription}"
    )
    await _pubsub(request).delete_subscription(subscription_name(project, subscription))
    return ok()


@router.post(SUBSCRIPTION + ":pull", name="Pull")
async def pull(
    project: str, subscription: str, request: Request, caller: CallerDep, body: PullRequest
) -> JSONResponse:
    allowed(
        caller, "pubsub.subscriptions.consume", f"projects/{project}/subscriptions/{subscription}"
    )
    messages = await _pubsub(request).pull(
        subscription_name(project, subscription), body.max_messages
    )
    received = [
        {"ackId": str(m.event_pk), "message": message_wire(m), "deliveryAttempt": m.attempt}
        for m in messages
    ]
    return ok({"receivedMessages": received} if received else {})


@router.post(SUBSCRIPTION + ":acknowledge", name="Acknowledge")
async def acknowledge(
    project: str, subscription: str, request: Request, caller: CallerDep, body: AcknowledgeRequest
) -> JSONResponse:
    allowed(
        caller, "pubsub.subscriptions.consume", f"projects/{project}/subscriptions/{subscription}"
    )
    await _pubsub(request).acknowledge(subscription_name(project, subscription), body.ack_ids)
    return ok()


@router.post(SUBSCRIPTION + ":modifyAckDeadline", name="ModifyAckDeadline")
async def modify_ack_deadline(
    project: str,
    subscription: str,
    request: Request,
    caller: CallerDep,
    body: ModifyAckDeadlineRequest,
) -> JSONResponse:
    allowed(
        caller, "pubsub.subscriptions.consume", f"projects/{project}/subscriptions/{subscription}"
    )
    await _pubsub(request).modify_ack_deadline(
        subscription_name(project, subscription), body.ack_ids, body.ack_deadline_seconds
    )
    return ok()
