"""The HTTP device bridge end to end, with device code written the way Cloud IoT Core's HTTP
samples wrote it (requests-style calls, URL-safe base64, snake_case bodies)."""

from __future__ import annotations

import base64

import httpx

from ironcore.registry.wire import parse_timestamp
from tests.bridge.devices import (
    LOCATION,
    PROJECT,
    admin,
    create_device,
    create_registry,
    make_jwt,
    new_key,
)
from tests.conftest import Database, Server, events_in_log


def device_url(server: Server, registry: str, device: str) -> str:
    location = f"{server.url}/v1/projects/{PROJECT}/locations/{LOCATION}"
    return f"{location}/registries/{registry}/devices/{device}"


def b64(data: bytes) -> str:
    # What the official HTTP sample sent: URL-safe base64.
    return base64.urlsafe_b64encode(data).decode()


def test_publish_state_and_config(bridge: Server, database: Database) -> None:
    create_registry(bridge, "reg-http")
    key = new_key()
    created = create_device(bridge, "reg-http", "dev-http", key)
    url = device_url(bridge, "reg-http", "dev-http")
    headers = {"authorization": f"Bearer {make_jwt(key)}", "content-type": "application/json"}

    r = httpx.post(
        f"{url}:publishEvent", json={"binary_data": b64(b"\xfb\xffhello")}, headers=headers
    )
    assert (r.status_code, r.json()) == (200, {})
    r = httpx.post(
        f"{url}:publishEvent",
        json={"binaryData": b64(b"alarm").rstrip("="), "subFolder": "alerts"},
        headers=headers,
    )
    assert (r.status_code, r.json()) == (200, {})
    by_numeric_id = f"{device_url(bridge, 'reg-http', created['numId'])}:publishEvent"
    assert (
        httpx.post(by_numeric_id, json={"binary_data": b64(b"n")}, headers=headers).status_code
        == 200
    )

    r = httpx.post(f"{url}:setState", json={"state": {"binary_data": b64(b"on")}}, headers=headers)
    assert (r.status_code, r.json()) == (200, {})
    # A second state within the second waits for its turn (bridge/channel.py), then is stored.
    r = httpx.post(f"{url}:setState", json={"state": {"binary_data": b64(b"off")}}, headers=headers)
    assert (r.status_code, r.json()) == (200, {})

    r = httpx.get(f"{url}/config", params={"local_version": 0}, headers=headers)
    assert r.status_code == 200 and r.json()["version"] == "1"
    with admin(bridge) as api:
        api.post(
            "/registries/reg-http/devices/dev-http:modifyCloudToDeviceConfig",
            json={"binaryData": base64.b64encode(b"cfg").decode()},
        ).raise_for_status()
        states = api.get("/registries/reg-http/devices/dev-http/states").json()["deviceStates"]
        assert [base64.b64decode(s["binaryData"]) for s in states] == [b"off", b"on"]
        # Stored a second apart (less the first write's own latency, hence the margin).
        off, on = (parse_timestamp(s["updateTime"]) for s in states)
        assert (off - on).total_seconds() > 0.9
    r = httpx.get(f"{url}/config", params={"local_version": 1}, headers=headers)
    assert r.json()["version"] == "2" and base64.b64decode(r.json()["binaryData"]) == b"cfg"
    r = httpx.get(f"{url}/config", params={"localVersion": 2}, headers=headers)
    assert r.status_code == 200 and r.json() == {"version": "2"}
    r = httpx.get(f"{url}/config", params={"local_version": 3}, headers=headers)
    assert r.status_code == 400 and r.json()["error"]["status"] == "OUT_OF_RANGE"

    logged = {data: (topic, attrs) for topic, data, attrs in events_in_log(bridge, database)}
    assert logged[b"\xfb\xffhello"][0] == f"projects/{PROJECT}/topics/events"
    assert logged[b"\xfb\xffhello"][1]["deviceNumId"] == created["numId"]
    assert logged[b"alarm"] == (
        f"projects/{PROJECT}/topics/alerts",
        {
            "deviceId": "dev-http",
            "deviceNumId": created["numId"],
            "deviceRegistryId": "reg-http",
            "deviceRegistryLocation": LOCATION,
            "projectId": PROJECT,
            "subFolder": "alerts",
        },
    )
    assert logged[b"on"][0] == f"projects/{PROJECT}/topics/state"


def test_refusals(bridge: Server) -> None:
    create_registry(bridge, "reg-refuse")
    key, other = new_key(), new_key()
    create_device(bridge, "reg-refuse", "dev-ok", key)
    create_device(bridge, "reg-refuse", "dev-blocked", key, blocked=True)
    url = device_url(bridge, "reg-refuse", "dev-ok")

    def status(method: str, path: str, token: str | None, **kwargs: object) -> tuple[int, str]:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        r = httpx.request(method, path, headers=headers, **kwargs)  # type: ignore[arg-type]
        return r.status_code, r.json()["error"]["status"]

    event = {"json": {"binary_data": b64(b"x")}}
    assert status("POST", f"{url}:publishEvent", None, **event) == (401, "UNAUTHENTICATED")
    assert status("POST", f"{url}:publishEvent", make_jwt(other), **event) == (
        401,
        "UNAUTHENTICATED",
    )
    assert status("POST", f"{url}:publishEvent", bridge.token, **event) == (401, "UNAUTHENTICATED")
    assert status("POST", f"{url}:publishEvent", make_jwt(key, audience="x"), **event) == (
        401,
        "UNAUTHENTICATED",
    )
    blocked = device_url(bridge, "reg-refuse", "dev-blocked")
    assert status("POST", f"{blocked}:publishEvent", make_jwt(key), **event) == (
        403,
        "PERMISSION_DENIED",
    )
    nobody = device_url(bridge, "reg-refuse", "nobody")
    assert status("POST", f"{nobody}:publishEvent", make_jwt(key), **event) == (404, "NOT_FOUND")
    token = make_jwt(key)
    assert status("POST", f"{url}:publishEvent", token, json={"binary_data": "!!"}) == (
        400,
        "INVALID_ARGUMENT",
    )
    big = {"json": {"binary_data": b64(b"x" * (256 * 1024 + 1))}}
    assert status("POST", f"{url}:publishEvent", token, **big) == (400, "INVALID_ARGUMENT")

    create_registry(bridge, "reg-notopic", eventNotificationConfigs=[])
    create_device(bridge, "reg-notopic", "dev-nt", key)
    nt = device_url(bridge, "reg-notopic", "dev-nt")
    assert status("POST", f"{nt}:publishEvent", token, **event) == (400, "INVALID_ARGUMENT")

    with admin(bridge) as api:
        api.patch(
            "/registries/reg-refuse",
            params={"updateMask": "httpConfig"},
            json={"httpConfig": {"httpEnabledState": "HTTP_DISABLED"}},
        ).raise_for_status()
    assert status("POST", f"{url}:publishEvent", token, **event) == (403, "PERMISSION_DENIED")


def test_gateway_delegation(bridge: Server) -> None:
    create_registry(bridge, "reg-gwh")
    gw_key, dev_key = new_key(), new_key()
    create_device(
        bridge,
        "reg-gwh",
        "gw-http",
        gw_key,
        gatewayConfig={"gatewayType": "GATEWAY", "gatewayAuthMethod": "ASSOCIATION_ONLY"},
    )
    create_device(bridge, "reg-gwh", "dev-behind", dev_key)
    gateway_url = device_url(bridge, "reg-gwh", "gw-http")
    body = {"binary_data": b64(b"relayed"), "gateway_info": {"delegated_device_id": "dev-behind"}}
    headers = {"authorization": f"Bearer {make_jwt(gw_key)}"}
    r = httpx.post(f"{gateway_url}:publishEvent", json=body, headers=headers)
    assert r.status_code == 403 and "not bound" in r.json()["error"]["message"]
    with admin(bridge) as api:
        api.post(
            "/registries/reg-gwh:bindDeviceToGateway",
            json={"gatewayId": "gw-http", "deviceId": "dev-behind"},
        ).raise_for_status()
        r = httpx.post(f"{gateway_url}:publishEvent", json=body, headers=headers)
        assert (r.status_code, r.json()) == (200, {})
        via = {"binary_data": b64(b"through"), "gateway_info": {"gateway_id": "gw-http"}}
        device_headers = {"authorization": f"Bearer {make_jwt(dev_key)}"}
        r = httpx.post(
            f"{device_url(bridge, 'reg-gwh', 'dev-behind')}:publishEvent",
            json=via,
            headers=device_headers,
        )
        assert (r.status_code, r.json()) == (200, {})
