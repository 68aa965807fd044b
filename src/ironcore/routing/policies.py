"""IAM policies of Pub/Sub topics and subscriptions: getIamPolicy, setIamPolicy and
testIamPermissions, as Cloud Pub/Sub serves them (`google.iam.v1.IAMPolicy` over gRPC, the
`:getIamPolicy` verbs over REST).

Policies are stored and answered here; what their bindings grant is decided with the caller's
own roles (`access.policies` reads them). The rules of a policy are the registries'
(`registry.iam`), plus one of Pub/Sub's: no conditional bindings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ironcore.errors import InvalidArgument, NotFound
from ironcore.registry.iam import applicable, empty_policy, policy_write, stale
from ironcore.registry.masks import parse_mask
from ironcore.registry.resources import Policy
from ironcore.registry.store.policies import PolicyStore, StoredPolicy
from ironcore.routing.pubsub import PubSub, parse_subscription, parse_topic

# The fields of a Policy that setIamPolicy's update_mask may name. Without a mask, all of
# them are set.
MASKABLE = ("bindings", "etag", "version")


def parse_resource(name: str, field: str = "resource") -> tuple[str, str]:
    """The kind (`topics` or `subscriptions`) and checked name of a Pub/Sub resource."""
    parts = name.split("/")
    if len(parts) == 4 and parts[2] == "subscriptions":
        return "subscriptions", parse_subscription(name, field)
    if len(parts) == 4 and parts[2] == "topics":
        return "topics", parse_topic(name, field)
    raise InvalidArgument.field(
        field,
        f"{name[:100]!r} is not projects/{{project}}/topics/{{topic}} or "
        "projects/{project}/subscriptions/{subscription}",
    )


def permission(kind: str, verb: str) -> str:
    """The permission a verb (`getIamPolicy`, `setIamPolicy`) needs on a kind of resource."""
    return f"pubsub.{kind}.{verb}"


class PubSubPolicies:
    def __init__(self, pubsub: PubSub) -> None:
        self.pubsub = pubsub
        self.store = PolicyStore(pubsub.store.db)

    async def get_iam_policy(self, kind: str, name: str) -> Policy:
        await self._exists(kind, name)
        stored = await self.store.get(name)
        if stored is None:
            return empty_policy()
        return Policy.model_validate(
            {**stored.policy, "version": stored.version, "etag": stored.etag}
        )

    async def set_iam_policy(
        self, kind: str, name: str, policy: Policy, update_mask: str = ""
    ) -> Policy:
        paths = set(parse_mask(update_mask, Policy, "update_mask", frozenset(MASKABLE)))
        paths = paths or set(MASKABLE)
        if paths != set(MASKABLE):
            current = await self.get_iam_policy(kind, name)
            policy = Policy(
                bindings=policy.bindings if "bindings" in paths else current.bindings,
                version=policy.version if "version" in paths else current.version,
                etag=policy.etag if "etag" in paths else b"",
            )
        write = policy_write(policy)
        body = dict(write.body)
        version = int(body.pop("version", 0))
        stored = StoredPolicy(body, version, write.etag)
        if not await self.store.set(kind, name, stored, write.expected):
            raise stale()
        return write.policy

    async def test_iam_permissions(
        self, kind: str, name: str, holds: Callable[[str], bool], permissions: Iterable[str]
    ) -> list[str]:
        """Those of `permissions` that apply to a resource of `kind` (`registry.iam.APPLICABLE`)
        and the caller `holds`, in the order asked."""
        asked = applicable(kind, permissions)
        try:
            await self._exists(kind, name)
        except NotFound:
            # Google answers an empty set, not NOT_FOUND, for a resource that does not exist.
            return []
        return [p for p in asked if holds(p)]

    async def _exists(self, kind: str, name: str) -> None:
        if kind == "topics":
            await self.pubsub.get_topic(name)
        else:
            await self.pubsub.get_subscription(name)
