"""docs/access.md's table of roles and permissions says what `access.roles.PERMISSIONS`
says, so that the documentation cannot drift from what the calls decide."""

from __future__ import annotations

from pathlib import Path

from ironcore.access.roles import GOOGLE_ROLES, PERMISSIONS

DOC = Path(__file__).parent.parent / "docs" / "access.md"


def table() -> dict[str, frozenset[str]]:
    """The permissions of each role, as the table has them."""
    text = DOC.read_text()
    start = text.index("<!-- roles table")
    rows = text[start : text.index("<!-- end of roles table -->")].splitlines()[1:]
    cells = [[c.strip() for c in row.strip().strip("|").split("|")] for row in rows if row]
    roles = ["roles/" + c.strip("`") for c in cells[0][1:]]
    held: dict[str, set[str]] = {role: set() for role in roles}
    for row in cells[2:]:
        for role, mark in zip(roles, row[1:], strict=True):
            assert mark in ("", "✓"), row
            if mark:
                held[role].add(row[0].strip("`"))
    return {role: frozenset(p) for role, p in held.items()}


def test_the_table_is_the_code() -> None:
    documented = table()
    assert list(documented) == list(GOOGLE_ROLES)
    for role in GOOGLE_ROLES:
        assert documented[role] == PERMISSIONS[role], role


def test_admin_token_roles_keep_what_they_could_do() -> None:
    """What `viewer`, `editor` and `owner` tokens could do before policies decided: the
    permissions they held then, and the ironcore.* permissions that now guard the routes they
    reached through borrowed device permissions (manifests, rotation, firmware, revocations)."""
    read = {
        "cloudiot.registries.get",
        "cloudiot.registries.list",
        "cloudiot.registries.getIamPolicy",
        "cloudiot.devices.get",
        "cloudiot.devices.list",
        "pubsub.topics.get",
        "pubsub.topics.list",
        "pubsub.subscriptions.get",
        "pubsub.subscriptions.list",
        "pubsub.topics.getIamPolicy",
        "pubsub.subscriptions.getIamPolicy",
        "ironcore.firmware.get",
        "ironcore.revocations.list",
    }
    write = read | {
        f"cloudiot.{p}"
        for p in (
            "registries.create",
            "registries.update",
            "registries.delete",
            "devices.create",
            "devices.update",
            "devices.delete",
            "devices.updateConfig",
            "devices.sendCommand",
            "devices.bindGateway",
            "devices.unbindGateway",
        )
    }
    write |= {
        f"pubsub.{p}"
        for p in (
            "topics.create",
            "topics.delete",
            "topics.publish",
            "subscriptions.create",
            "subscriptions.delete",
            "subscriptions.consume",
        )
    }
    write |= {
        "ironcore.manifests.import",
        "ironcore.devices.rotateCredentials",
        "ironcore.firmware.upload",
        "ironcore.firmware.rollout",
    }
    own = write | {
        "cloudiot.registries.setIamPolicy",
        "pubsub.topics.setIamPolicy",
        "pubsub.subscriptions.setIamPolicy",
        "ironcore.tokens.manage",
        "ironcore.revocations.manage",
        "ironcore.serviceAccounts.manage",
    }
    for role, before in [("viewer", read), ("editor", write), ("owner", own)]:
        assert before <= PERMISSIONS[role], (role, before - PERMISSIONS[role])
