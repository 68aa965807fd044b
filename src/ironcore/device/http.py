"""An HTTP device client for ironcore's HTTP bridge (Cloud IoT Core's `cloudiotdevice` v1).

Every request carries a fresh-enough device JWT as its bearer token; the bridge remembers
nothing between requests. Errors come back as `DeviceHttpError` with the google.rpc status the
bridge sent.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import httpx

from ironcore.device.mqtt import DeviceName
from ironcore.device.tokens import TokenSource


class DeviceHttpError(Exception):
    def __init__(self, status_code: int, status: str, message: str) -> None:
        super().__init__(f"{status_code} {status}: {message}")
        self.status_code = status_code
        self.status = status
        self.message = message


@dataclass(frozen=True)
class DeviceConfig:
    version: int
    # None when the device already has the newest version (it asked with local_version).
    data: bytes | None


class DeviceHttpClient:
    def __init__(
        self,
        base_url: str,
        name: DeviceName,
        tokens: TokenSource,
        verify: str | bool = True,
        timeout: float = 30.0,
    ) -> None:
        """`base_url` is the bridge's root, e.g. `https://iot.example.com:8080` (without /v1)."""
        self.name = name
        self.tokens = tokens
        self._http = httpx.Client(base_url=base_url.rstrip("/"), verify=verify, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def _path(self, device_id: str | None) -> str:
        n = self.name
        return (
            f"/v1/projects/{n.project}/locations/{n.location}/registries/{n.registry}"
            f"/devices/{device_id or n.device_id}"
        )

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.tokens.token()}"}
        response = self._http.request(method, path, headers=headers, **kwargs)
        body: dict[str, Any] = response.json() if response.content else {}
        if response.status_code != 200:
            error = body.get("error", {})
            raise DeviceHttpError(
                response.status_code, error.get("status", ""), error.get("message", response.text)
            )
        return body

    def publish_event(
        self, payload: bytes, subfolder: str = "", delegated_device_id: str = ""
    ) -> None:
        """Publish telemetry; as a gateway, `delegated_device_id` names the device it is for."""
        body: dict[str, Any] = {"binaryData": base64.b64encode(payload).decode()}
        if subfolder:
            body["subFolder"] = subfolder
        if delegated_device_id:
            body["gatewayInfo"] = {"delegatedDeviceId": delegated_device_id}
        self._call("POST", f"{self._path(None)}:publishEvent", json=body)

    def set_state(self, payload: bytes, delegated_device_id: str = "") -> None:
        body: dict[str, Any] = {"state": {"binaryData": base64.b64encode(payload).decode()}}
        if delegated_device_id:
            body["gatewayInfo"] = {"delegatedDeviceId": delegated_device_id}
        self._call("POST", f"{self._path(None)}:setState", json=body)

    def get_config(self, local_version: int = 0, delegated_device_id: str = "") -> DeviceConfig:
        params: dict[str, Any] = {"local_version": local_version}
        if delegated_device_id:
            params["gatewayInfo.delegatedDeviceId"] = delegated_device_id
        body = self._call("GET", f"{self._path(None)}/config", params=params)
        data = base64.b64decode(body["binaryData"]) if "binaryData" in body else None
        if data is None and local_version == 0:
            data = b""
        return DeviceConfig(int(body["version"]), data)
