"""Clients' own addresses behind HAProxy (deploy/haproxy/haproxy.cfg, connecting from
HAPROXY_SOURCE, which the server trusts with --trusted-proxies): the admin API's back-off
slows the address a wrong-token storm comes from, not HAProxy's, and the audit log records each
client's address, which a client cannot choose by sending X-Forwarded-For itself; a device's
own key rotation steps over MQTT are recorded from the address HAProxy's PROXY header names."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ironcore.device.software_element import SoftwareElement
from ironcore.registry.store.audit import DENIALS_PER_MINUTE
from tests.api.test_auth_backoff import MOST, REGISTRIES, from_address
from tests.bridge.devices import create_registry
from tests.conftest import Database, Server, wait_for
from tests.device.test_rotation_e2e import ROTATION, device, rotation_state, start_rotation
from tests.device.test_sdk_clients import element_pem, register
from tests.ops.cluster import HAPROXY_SOURCE, Cluster, Haproxy, start_haproxy

pytestmark = pytest.mark.databases("postgresql")
STORM, OTHER = "127.0.0.2", "127.0.0.3"


@pytest.fixture
def front(tmp_path: Path, database: Database) -> Iterator[Server]:
    """One server behind HAProxy, as clients reach it."""
    cluster = Cluster(tmp_path, database, 1)
    try:
        cluster.start_all()
        haproxy: Haproxy = start_haproxy(cluster)
        try:
            yield haproxy.front(cluster)
        finally:
            haproxy.stop()
    finally:
        cluster.stop_all()


def audit_log(server: Server, source: str = "127.0.0.1") -> list[dict[str, Any]]:
    """Every entry, read from the address `source`."""
    with from_address(server, source) as client:
        answer = client.get(
            "/ironcore/v1/projects/-/auditLogs",
            params={"pageSize": 1000},
            headers={"Authorization": f"Bearer {server.token}"},
        )
    assert answer.status_code == 200, answer.text
    entries: list[dict[str, Any]] = answer.json()["auditLogs"]
    return entries


def test_a_storm_through_haproxy_slows_its_own_address_and_is_audited_as_its_own(
    front: Server,
) -> None:
    valid = {"Authorization": f"Bearer {front.token}"}
    wrong = {"Authorization": "Bearer not-a-token"}
    with from_address(front, STORM) as storm, from_address(front, OTHER) as other:
        statuses: list[int] = []
        while 429 not in statuses and len(statuses) < MOST:
            statuses.append(storm.get(REGISTRIES, headers=wrong).status_code)
            # The same HAProxy, another client: never slowed.
            assert other.get(REGISTRIES, headers=valid).status_code == 200
        assert statuses[:6] == [401] * 6, statuses
        assert statuses[-1] == 429, statuses
        # The storming address is refused whatever it sends: a valid token, or a valid token
        # and an X-Forwarded-For naming the other client (HAProxy appends the real one).
        assert storm.get(REGISTRIES, headers=valid).status_code == 429
        forged = storm.get(REGISTRIES, headers={**valid, "X-Forwarded-For": OTHER})
        assert forged.status_code == 429, forged.text
        # Past the audit log's 20 refusals a minute for the storm, the other client's own
        # refusal is still recorded: the limit counts each client apart.
        for _ in range(DENIALS_PER_MINUTE):
            assert storm.get(REGISTRIES, headers=wrong).status_code == 429
        assert other.get(REGISTRIES, headers=wrong).status_code == 401
        # A change from the other client, once plainly and once claiming to be someone else.
        for registry, claimed in (
            ("reg-plain", {}),
            ("reg-claimed", {"X-Forwarded-For": "1.2.3.4"}),
        ):
            created = other.post(REGISTRIES, json={"id": registry}, headers={**valid, **claimed})
            assert created.status_code == 200, created.text
    entries = audit_log(front)
    refusals = [e for e in entries if e["status"] in ("UNAUTHENTICATED", "RESOURCE_EXHAUSTED")]
    stormed = [e for e in refusals if e["clientAddress"] == STORM]
    assert {e["status"] for e in stormed} == {"UNAUTHENTICATED", "RESOURCE_EXHAUSTED"}
    [refused] = [e for e in refusals if e["clientAddress"] != STORM]
    assert (refused["clientAddress"], refused["status"]) == (OTHER, "UNAUTHENTICATED")
    changes = [e for e in entries if e["method"] == "CreateDeviceRegistry"]
    assert len(changes) == 2, changes
    assert {e["clientAddress"] for e in changes} == {OTHER}
    assert HAPROXY_SOURCE not in {e["clientAddress"] for e in entries}


def test_a_devices_rotation_steps_through_haproxy_carry_its_address(
    front: Server, tmp_path: Path
) -> None:
    """The device connects from 127.0.0.1 (its SDK binds no other); HAProxy reaches the server
    from HAPROXY_SOURCE and names the device in its PROXY header."""
    create_registry(front, "reg-sdk")
    element = SoftwareElement.provision(tmp_path / "rot-proxied.se")
    register(front, "rot-proxied", element_pem(element))
    _, _, client = device(front, tmp_path, "rot-proxied")
    client.start()
    try:
        start_rotation(front, "rot-proxied")
        wait_for(lambda: rotation_state(front, "rot-proxied") == "COMPLETED", 30, "completion")
    finally:
        client.stop()
    resource = f"{ROTATION.removeprefix('/ironcore/v1/')}/rot-proxied"
    steps = [e for e in audit_log(front) if e["resource"] == resource and e["wire"] == "mqtt"]
    assert {e["method"] for e in steps} >= {"OfferRotationKey", "CompleteKeyRotation"}, steps
    assert {e["clientAddress"] for e in steps} == {"127.0.0.1"}
