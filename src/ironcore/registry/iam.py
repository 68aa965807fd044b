"""The rules of setIamPolicy, getIamPolicy and testIamPermissions whatever the resource: what a
policy must hold, the etag that makes a read-modify-write safe, the policy of a resource that
has none, and which permissions testIamPermissions answers about on each kind of resource.

Registries (`registry.service`) and Pub/Sub topics and subscriptions (`routing.policies`)
keep their policies in different tables and follow these same rules."""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ironcore.errors import Aborted, InvalidArgument
from ironcore.registry.resources import Policy

# Google's IAM answers an unset policy with this etag (base64 "ACAB").
EMPTY_POLICY_ETAG = b"\x00\x20\x01"
# The members a binding may name: `adminToken:<id>` is an admin token, `user:<email>` every
# admin token created for that person (`access.tokens`); `group:` is kept, for clients that
# manage groups, and grants nothing here (ironcore has no groups).
MEMBER_KINDS = ("serviceAccount", "adminToken", "user", "group")
# What follows each kind: an admin token's id, or an email address (checked for its form only,
# compared in lower case). 254 characters at most, as SMTP allows.
EMAIL_MAX = 254
_EMAIL = re.compile(
    r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+"
)
_TOKEN_ID = re.compile(r"[0-9a-f]{12}")
STALE = "The policy was changed by someone else (etag mismatch); read it again"
# The permissions testIamPermissions answers about on each kind of resource, by prefix: those
# that act on it or on what lies in it (a registry's devices). As Google did, the others are
# left out of the answer, whatever the caller holds: a topic's answer never lists
# `cloudiot.*`, a registry's never `pubsub.*`. A project answers about all of them.
APPLICABLE: dict[str, tuple[str, ...]] = {
    "projects": ("",),
    "registries": ("cloudiot.", "ironcore.devices.", "ironcore.manifests."),
    "topics": ("pubsub.topics.",),
    "subscriptions": ("pubsub.subscriptions.",),
}


@dataclass(frozen=True)
class PolicyWrite:
    """A policy checked for storing: `policy` as it will be answered (with its new etag),
    `body` and `etag` as stored, and the etag the stored policy must still have (`expected`:
    None for an unconditional write, "" for "no policy yet")."""

    policy: Policy
    body: dict[str, Any]
    etag: str
    expected: str | None


def is_email(text: str) -> bool:
    """Whether `text` has an email address's form (any case; ASCII only: lower() maps some
    non-ASCII letters, the Kelvin sign, to ASCII ones)."""
    return text.isascii() and len(text) <= EMAIL_MAX and bool(_EMAIL.fullmatch(text.lower()))


def member_problem(member: str) -> str:
    """What is wrong with a binding's member, or "" when it is one ironcore knows:
    `adminToken:<12 hex digits>`, or `user:`, `serviceAccount:`, `group:` and an email address."""
    kind, _, value = member.partition(":")
    if kind not in MEMBER_KINDS or not value:
        kinds = ", ".join(k + ":..." for k in MEMBER_KINDS)
        return f"{member[:100]!r} is not one of {kinds}"
    if kind == "adminToken":
        if not _TOKEN_ID.fullmatch(value):
            return f"{member[:100]!r}: an admin token's id is the 12 hex digits after ic_"
    elif not is_email(value):
        return (
            f"{member[:100]!r}: a {kind} is named by an email address (like {kind}:a@example.com)"
        )
    return ""


def empty_policy() -> Policy:
    return Policy(etag=EMPTY_POLICY_ETAG)


def policy_write(policy: Policy) -> PolicyWrite:
    """Check a policy given to setIamPolicy (InvalidArgument naming the field) and give it a
    fresh etag: every binding names a role and members of a kind ironcore knows, and has no
    condition (ironcore does not evaluate conditions, and a
    binding that silently granted without its condition would grant too much)."""
    for i, binding in enumerate(policy.bindings):
        if not binding.role:
            raise InvalidArgument.field(f"policy.bindings[{i}].role", "is required")
        if binding.condition is not None:
            raise InvalidArgument.field(
                f"policy.bindings[{i}].condition",
                "conditional bindings are not supported; bind the role without a condition",
            )
        for j, member in enumerate(binding.members):
            problem = member_problem(member)
            if problem:
                raise InvalidArgument.field(f"policy.bindings[{i}].members[{j}]", problem)
    expected = base64.b64encode(policy.etag).decode() if policy.etag else None
    if expected == base64.b64encode(EMPTY_POLICY_ETAG).decode():
        expected = ""
    fresh = Policy(version=policy.version, bindings=policy.bindings, etag=secrets.token_bytes(8))
    body = fresh.to_wire()
    etag = body.pop("etag")
    return PolicyWrite(fresh, body, etag, expected)


def stale() -> Aborted:
    return Aborted(STALE)


def applicable(kind: str, permissions: Iterable[str]) -> list[str]:
    """Those of `permissions` (a testIamPermissions request's) that apply to a resource of
    `kind` (a key of APPLICABLE), in the order asked. InvalidArgument, naming the entry, for a
    wildcard (`*`, `cloudiot.*`): Google takes permission names only."""
    asked = list(permissions)
    for i, permission in enumerate(asked):
        if "*" in permission:
            raise InvalidArgument.field(
                f"permissions[{i}]",
                f"{permission[:100]!r} has a wildcard; name each permission "
                "(cloudiot.devices.get, ...)",
            )
    return [p for p in asked if p.startswith(APPLICABLE[kind])]
