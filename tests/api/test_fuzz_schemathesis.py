"""Schemathesis fuzzing of every operation in the app's OpenAPI document, against a real
`ironcore serve` process on SQLite with an owner token.

Cases are positive and negative (schemathesis' two modes); some name the seeded registry and
devices in their path, and some are steered (a valid new id, update mask, role or gateway
pair) so that the generated bodies and queries reach the device manager's rules rather than
stopping at "registry not found". Every response must be below 500, every 4xx must be the
Google error envelope, and afterwards the server must still be serving with no unexpected
error in its log. Each operation's test checks all of this for its own cases, so that any one
of them, run alone, fuzzes what it then checks.
"""

from __future__ import annotations

import json
from typing import Any, cast

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.core.result import Err
from schemathesis.schemas import APIOperation

from ironcore.errors import Code
from ironcore.registry.service import DeviceManager
from ironcore.registry.store import Store
from ironcore.runtime.inprocess import admin_api
from tests.conftest import Server

# The document does not touch the store, so a manager without one can describe the app.
OPENAPI = admin_api(DeviceManager(cast(Store, None))).openapi()
SCHEMA = schemathesis.openapi.from_dict(OPENAPI)
Operation = APIOperation[Any, Any, Any, Any]


def _operations() -> list[Operation]:
    found = []
    for result in SCHEMA.get_all_operations():
        if isinstance(result, Err):
            raise result.err()
        found.append(result.ok())
    return found


OPERATIONS = _operations()
PINNED = {"project": "p1", "location": "us-central1", "registry": "reg-1", "device": "dev-1"}
# The google.rpc codes each HTTP status may carry (400 is INVALID_ARGUMENT, FAILED_PRECONDITION
# or OUT_OF_RANGE, for instance); 405 has no code of its own and is sent as UNIMPLEMENTED.
STATUSES_OF_HTTP: dict[int, set[str]] = {405: {"UNIMPLEMENTED"}}
for _code in Code:
    STATUSES_OF_HTTP.setdefault(_code.http_status, set()).add(_code.name)
EXAMPLES_PER_OPERATION = 30


@pytest.fixture(scope="module")
def server(module_server: Server) -> Server:
    """The module's server, seeded (each test checks the log it wrote)."""
    seed(module_server)
    return module_server


def seed(server: Server) -> None:
    """A registry with a device and a gateway it is bound to."""
    parent = "/v1/projects/p1/locations/us-central1/registries"
    devices = f"{parent}/reg-1/devices"
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {server.token}"}
    ) as http:
        for url, body in [
            (parent, {"id": "reg-1"}),
            (devices, {"id": "dev-1", "metadata": {"k": "v"}}),
            (devices, {"id": "gw-1", "gatewayConfig": {"gatewayType": "GATEWAY"}}),
            (f"{parent}/reg-1:bindDeviceToGateway", {"gatewayId": "gw-1", "deviceId": "dev-1"}),
        ]:
            response = http.post(url, json=body)
            assert response.status_code == 200, response.text


def test_every_device_manager_operation_is_in_the_document() -> None:
    names = {name_of(op) for op in OPERATIONS}
    assert names >= {
        "CreateDeviceRegistry",
        "ListDeviceRegistries",
        "GetDeviceRegistry",
        "UpdateDeviceRegistry",
        "DeleteDeviceRegistry",
        "BindDeviceToGateway",
        "UnbindDeviceFromGateway",
        "GetIamPolicy",
        "SetIamPolicy",
        "TestIamPermissions",
        "CreateDevice",
        "ListDevices",
        "GetDevice",
        "UpdateDevice",
        "DeleteDevice",
        "ModifyCloudToDeviceConfig",
        "ListDeviceConfigVersions",
        "ListDeviceStates",
        "SendCommandToDevice",
        "CreateToken",
        "ListTokens",
        "RevokeToken",
    }


def name_of(operation: Operation) -> str:
    return str(operation.definition.raw["operationId"]).split("_")[0]


# Steering: valid values for the few fields random data almost never gets right, so that the
# rest of a generated request is judged by the rules behind them.
UPDATE_MASKS = {
    "UpdateDevice": [
        "blocked",
        "credentials",
        "metadata",
        "logLevel",
        "gateway_config.gateway_auth_method",
        "blocked,metadata,credentials",
    ],
    "UpdateDeviceRegistry": [
        "eventNotificationConfigs",
        "state_notification_config",
        "mqttConfig",
        "httpConfig.httpEnabledState",
        "logLevel",
        "credentials",
    ],
}
GATEWAY_CHOICES = ["gw-1", "dev-1", "fz-1"]
DEVICE_CHOICES = ["dev-1", "gw-1", "fz-1"]


def steer(name: str, case: Case[Any], n: int) -> Case[Any]:
    body = case.body if isinstance(case.body, dict) else None
    if name in ("CreateDeviceRegistry", "CreateDevice") and body is not None:
        body["id"] = f"fz-{n}"
        for server_assigned in ("name", "numId", "num_id"):
            body.pop(server_assigned, None)
    elif name in UPDATE_MASKS:
        masks = UPDATE_MASKS[name]
        case.query = {**(case.query or {}), "updateMask": masks[n % len(masks)]}
        if body is not None:
            for unchangeable in ("id", "numId", "num_id"):
                body.pop(unchangeable, None)
    elif name in ("BindDeviceToGateway", "UnbindDeviceFromGateway") and body is not None:
        body["gatewayId"] = GATEWAY_CHOICES[n % 3]
        body["deviceId"] = DEVICE_CHOICES[(n // 3) % 3]
    elif name == "CreateToken" and body is not None:
        body["role"] = ["viewer", "editor", "owner"][n % 3]
    return case


def check(case: Case[Any], response: Any) -> None:
    status = response.status_code
    where = f"{case.method} {case.formatted_path} query={case.query} body={case.body!r:.300}"
    assert status < 500, f"{where} -> {status} {response.text[:500]}"
    body = json.loads(response.text)
    assert isinstance(body, dict), where
    if status >= 400:
        assert list(body) == ["error"], f"{where} -> {response.text[:500]}"
        error = body["error"]
        assert set(error) == {"code", "message", "status", "details"}, where
        assert error["code"] == status, where
        assert isinstance(error["message"], str) and error["message"], where
        assert isinstance(error["details"], list), where
        assert error["status"] in STATUSES_OF_HTTP[status], f"{where} -> {error}"


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda op: op.label)
def test_fuzz_operation(server: Server, operation: Operation) -> None:
    names = {p.name for p in operation.path_parameters}
    pinned = {key: value for key, value in PINNED.items() if key in names}
    strategies = [
        operation.as_strategy(mode, path_parameters=fixed)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        for fixed in ({}, pinned)
    ]
    name = name_of(operation)
    steered = st.tuples(
        operation.as_strategy(GenerationMode.POSITIVE, path_parameters=pinned),
        st.integers(0, 10**6),
    ).map(lambda pair: steer(name, *pair))
    strategies += [steered, steered]
    headers = {"Authorization": f"Bearer {server.token}"}
    session = requests.Session()
    seen: list[int] = []
    log_start = server.log.stat().st_size

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=st.one_of(strategies))
    def fuzz(case: Case[Any]) -> None:
        response = case.call(base_url=server.url, headers=headers, session=session, timeout=30)
        check(case, response)
        seen.append(response.status_code)

    try:
        fuzz()
    finally:
        session.close()
    assert seen
    assert_still_serving(server, log_start)


def assert_still_serving(server: Server, log_start: int) -> None:
    """The fuzzed server is alive, ready and answering, and logged no error since `log_start`."""
    assert server.process.poll() is None, server.log.read_text()[-5000:]
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    response = httpx.get(
        f"{server.url}/v1/projects/p1/locations/us-central1/registries",
        headers={"Authorization": f"Bearer {server.token}"},
    )
    assert response.status_code == 200, response.text
    with server.log.open("rb") as log:
        log.seek(log_start)
        written = log.read().decode(errors="replace")
    assert "unexpected error" not in written and "Traceback" not in written, written[-5000:]
