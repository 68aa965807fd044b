"""`google.iam.v1.IAMPolicy` for Pub/Sub topics and subscriptions (`routing.policies`): Cloud
Pub/Sub serves IAM as this separate service, not as methods of Publisher and Subscriber, so
`PublisherClient.get_iam_policy` and `SubscriberClient.set_iam_policy` call it here.

Served on the gRPC API port only: the Pub/Sub emulator port's caller has no IAM permission,
and Google's emulator has never served IAM either (googleapis/google-cloud-common#128)."""

from __future__ import annotations

from functools import partial
from typing import Any

import grpc
from google.iam.v1 import iam_policy_pb2
from google.protobuf.message import Message

from ironcore.access.callers import Authenticator
from ironcore.access.policies import bindable
from ironcore.access.roles import Caller, require
from ironcore.registry.resources import Policy
from ironcore.registry.store.audit import AuditStore
from ironcore.routing.policies import PubSubPolicies, parse_resource, permission
from ironcore.routing.pubsub import PubSub
from ironcore.rpc.calls import Method, mask, model, policy_message, unary

SERVICE = "google.iam.v1.IAMPolicy"


class IAMPolicyService:
    def __init__(
        self, pubsub: PubSub, authenticator: Authenticator, audit_log: AuditStore | None = None
    ) -> None:
        """With `audit_log`, refused calls are recorded there (rpc.calls.unary)."""
        self.policies = PubSubPolicies(pubsub)
        self.authenticator = authenticator
        self.audit_log = audit_log

    def handler(self) -> grpc.GenericRpcHandler:
        methods: dict[str, tuple[Method, type[Message]]] = {
            "GetIamPolicy": (self.get_iam_policy, iam_policy_pb2.GetIamPolicyRequest),
            "SetIamPolicy": (self.set_iam_policy, iam_policy_pb2.SetIamPolicyRequest),
            "TestIamPermissions": (
                self.test_iam_permissions,
                iam_policy_pb2.TestIamPermissionsRequest,
            ),
        }
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                name: unary(name, method, request_type, self.authenticator, self.audit_log)
                for name, (method, request_type) in methods.items()
            },
        )

    async def get_iam_policy(self, request: Any, caller: Caller) -> Message:
        kind, name = parse_resource(request.resource)
        require(caller, permission(kind, "getIamPolicy"), name)
        return policy_message(await self.policies.get_iam_policy(kind, name))

    async def set_iam_policy(self, request: Any, caller: Caller) -> Message:
        kind, name = parse_resource(request.resource)
        require(caller, permission(kind, "setIamPolicy"), name)
        policy = await self.policies.set_iam_policy(
            kind, name, bindable(model(Policy, request.policy)), mask(request.update_mask)
        )
        return policy_message(policy)

    async def test_iam_permissions(self, request: Any, caller: Caller) -> Message:
        kind, name = parse_resource(request.resource)
        granted = await self.policies.test_iam_permissions(
            kind, name, partial(caller.may, resource=name), request.permissions
        )
        return iam_policy_pb2.TestIamPermissionsResponse(permissions=granted)
