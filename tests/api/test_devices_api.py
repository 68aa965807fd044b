"""The admin REST API for devices, configs, states and gateway bindings, against the in-process
app on SQLite and PostgreSQL: the wire format, every rule and limit, and that a refused write
changes nothing."""

from __future__ import annotations

import asyncio
import base64
import functools
import textwrap
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ironcore import limits
from ironcore.registry.names import RegistryName
from ironcore.registry.resources import Device
from ironcore.registry.service import DeviceManager
from tests.api.errors import assert_error
from tests.conftest import Api, Clock
from tests.keys import Ca, es256_key, make_ca, public_pem, rsa_key, self_signed_pem

PROJECT, LOCATION, REGISTRY = "p1", "us-central1", "reg-1"
PARENT = f"projects/{PROJECT}/locations/{LOCATION}"
REGISTRY_NAME = f"{PARENT}/registries/{REGISTRY}"
REGISTRY_URL = f"/v1/{REGISTRY_NAME}"
DEVICES = f"{REGISTRY_URL}/devices"
EPOCH_TEXT = "1970-01-01T00:00:00Z"
IGNORED_QUERY = {
    "$alt": "json;enum-encoding=int",
    "alt": "json",
    "prettyPrint": "false",
    "fields": "id",
    "$.xgafv": "2",
}
LAST_TIMES = (
    "lastHeartbeatTime",
    "lastEventTime",
    "lastStateTime",
    "lastConfigAckTime",
    "lastConfigSendTime",
    "lastErrorTime",
)


# Keys are slow to make; each kind is made once per run.


@functools.cache
def es256_pem(n: int = 0) -> str:
    return public_pem(es256_key())


@functools.cache
def rsa_pem(bits: int = 2048) -> str:
    return public_pem(rsa_key(bits))


@functools.cache
def p384_pem() -> str:
    return public_pem(ec.generate_private_key(ec.SECP384R1()))


@functools.cache
def es256_cert(n: int = 0) -> str:
    return self_signed_pem(es256_key(), f"device {n}")


@functools.cache
def rsa_cert() -> str:
    return self_signed_pem(rsa_key())


@functools.cache
def rsa_key_and_cert() -> tuple[str, str]:
    """One RSA key, as a bare public key and inside a certificate."""
    key = rsa_key()
    return public_pem(key), self_signed_pem(key)


@functools.cache
def unknown_curve_pem() -> str:
    """A SubjectPublicKeyInfo naming an EC curve no library knows."""
    der = (
        es256_key()
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    p256 = bytes.fromhex("06082a8648ce3d030107")
    assert p256 in der
    der = der.replace(p256, bytes.fromhex("06082a8648ce3d030163"))
    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode(), 64))
    return f"-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----\n"


def credential(fmt: object, key: str, **extra: Any) -> dict[str, Any]:
    return {"publicKey": {"format": fmt, "key": key}, **extra}


async def make_registry(api: Api, registry: str = REGISTRY, **fields: Any) -> None:
    response = await api.client.post(f"/v1/{PARENT}/registries", json={"id": registry, **fields})
    assert response.status_code == 200, response.text


async def create(api: Api, body: dict[str, Any], devices: str = DEVICES) -> httpx.Response:
    return await api.client.post(devices, json=body)


async def created(api: Api, body: dict[str, Any], devices: str = DEVICES) -> dict[str, Any]:
    response = await create(api, body, devices)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def read(api: Api, device: str, devices: str = DEVICES) -> dict[str, Any]:
    # Ids may hold '%', which a URL path must escape.
    response = await api.client.get(f"{devices}/{quote(device, safe='')}")
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def device_ids(api: Api, devices: str = DEVICES, **params: Any) -> list[str]:
    response = await api.client.get(devices, params=params)
    assert response.status_code == 200, response.text
    return sorted(d["id"] for d in response.json()["devices"])


def all_keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in all_keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in all_keys(v)}
    return set()


@pytest.fixture
async def registry(api: Api) -> str:
    await make_registry(api)
    return REGISTRY


# Wire format


async def test_plain_device_wire_format(api: Api, registry: str) -> None:
    device = await created(api, {"id": "dev-plain"})
    num_id = device["numId"]
    assert isinstance(num_id, str) and num_id.isdigit() and len(num_id) == 16
    assert device["name"] == f"{REGISTRY_NAME}/devices/{num_id}"
    assert device["id"] == "dev-plain"
    for key in LAST_TIMES:
        assert device[key] == EPOCH_TEXT
    assert device["gatewayConfig"] == {}
    assert device["config"]["version"] == "1"
    assert device["config"]["cloudUpdateTime"].endswith("Z")
    assert "binaryData" not in device["config"]
    for key in ("blocked", "metadata", "credentials", "state", "logLevel", "lastErrorStatus"):
        assert key not in device
    assert not any("_" in key for key in all_keys(device))
    assert await read(api, "dev-plain") == device


async def test_full_device_wire_format(api: Api, registry: str) -> None:
    config = b"\xfb\xff config"
    device = await created(
        api,
        {
            "id": "dev-full",
            "credentials": [
                credential("ES256_PEM", es256_pem()),
                credential(
                    "RSA_X509_PEM", rsa_cert(), expirationTime="2030-01-02T03:04:05.123456789Z"
                ),
            ],
            "blocked": True,
            "config": {"binaryData": base64.urlsafe_b64encode(config).decode().rstrip("=")},
            "logLevel": "INFO",
            "metadata": {"site": "north", "empty": ""},
            "gatewayConfig": {"gatewayType": "GATEWAY", "gatewayAuthMethod": "ASSOCIATION_ONLY"},
        },
    )
    assert device["credentials"] == [
        {"publicKey": {"format": "ES256_PEM", "key": es256_pem()}, "expirationTime": EPOCH_TEXT},
        {
            "publicKey": {"format": "RSA_X509_PEM", "key": rsa_cert()},
            "expirationTime": "2030-01-02T03:04:05.123456Z",
        },
    ]
    assert device["blocked"] is True
    assert device["config"]["binaryData"] == base64.b64encode(config).decode()
    assert device["config"]["version"] == "1"
    assert device["logLevel"] == "INFO"
    assert device["metadata"] == {"site": "north", "empty": ""}
    assert device["gatewayConfig"] == {
        "gatewayType": "GATEWAY",
        "gatewayAuthMethod": "ASSOCIATION_ONLY",
    }
    assert await read(api, "dev-full") == device


async def test_snake_case_and_enum_numbers_are_accepted(api: Api, registry: str) -> None:
    device = await created(
        api,
        {
            "id": "dev-snake",
            "credentials": [{"public_key": {"format": 2, "key": es256_pem()}}],
            "log_level": 40,
            "gateway_config": {"gateway_type": 2, "gateway_auth_method": 3},
            "config": {"binary_data": "AAE="},
        },
    )
    assert device["credentials"][0]["publicKey"]["format"] == "ES256_PEM"
    assert device["logLevel"] == "DEBUG"
    assert device["gatewayConfig"] == {
        "gatewayType": "NON_GATEWAY",
        "gatewayAuthMethod": "ASSOCIATION_AND_DEVICE_AUTH_TOKEN",
    }
    assert device["config"]["binaryData"] == "AAE="


async def test_key_formats_by_number_use_cloud_iot_cores_numbers(api: Api, registry: str) -> None:
    for number, name, key in [
        (1, "RSA_X509_PEM", rsa_cert()),
        (2, "ES256_PEM", es256_pem()),
        (3, "RSA_PEM", rsa_pem()),
        (4, "ES256_X509_PEM", es256_cert()),
    ]:
        body = {"id": f"dev-fmt-{number}", "credentials": [credential(number, key)]}
        device = await created(api, body)
        assert device["credentials"][0]["publicKey"]["format"] == name


async def test_unknown_query_parameters_are_ignored(api: Api, registry: str) -> None:
    response = await api.client.post(DEVICES, params=IGNORED_QUERY, json={"id": "dev-q"})
    assert response.status_code == 200, response.text
    full = response.json()
    got = await api.client.get(f"{DEVICES}/dev-q", params=IGNORED_QUERY)
    assert got.json() == full
    listed = await api.client.get(DEVICES, params=IGNORED_QUERY)
    assert listed.json() == {"devices": [{"id": "dev-q", "numId": full["numId"]}]}
    configs = await api.client.get(f"{DEVICES}/dev-q/configVersions", params=IGNORED_QUERY)
    assert [c["version"] for c in configs.json()["deviceConfigs"]] == ["1"]


REFUSED_CREATES: list[tuple[dict[str, Any], str]] = [
    # Unknown fields, named as the client spelled them.
    ({"id": "dev-x", "bogus": 1}, "bogus"),
    ({"id": "dev-x", "gatewayConfig": {"type": "GATEWAY"}}, "gatewayConfig.type"),
    (
        {"id": "dev-x", "credentials": [{"publicKey": {"format": 2, "key": "k", "alg": 1}}]},
        "credentials.0.publicKey.alg",
    ),
    ({"id": "dev-x", "config": {"data": "AA=="}}, "config.data"),
    # Values of the wrong type, out of the enum or out of range.
    ({"id": "dev-x", "config": {"binaryData": "%%%"}}, "config.binaryData"),
    ({"id": "dev-x", "logLevel": "LOUD"}, "logLevel"),
    ({"id": "dev-x", "gatewayConfig": {"gatewayType": 7}}, "gatewayConfig.gatewayType"),
    ({"id": "dev-x", "metadata": {"k": 1}}, "metadata.k"),
    ({"id": "dev-x", "metadata": ["k"]}, "metadata"),
    (
        {"id": "dev-x", "credentials": [credential(2, "k", expirationTime="soon")]},
        "credentials.0.expirationTime",
    ),
    (
        {
            "id": "dev-x",
            "credentials": [credential(2, "k", expirationTime="0001-01-01T00:00:00+01:00")],
        },
        "credentials.0.expirationTime",
    ),
    ({"id": "dev-x", "numId": "12abc"}, "numId"),
    # Text no database can keep: NUL (PostgreSQL) anywhere a string is stored.
    ({"id": "dev-x", "metadata": {"k": "a\x00b"}}, "metadata"),
    ({"id": "dev-x", "metadata": {"k\x00": "v"}}, "metadata"),
    (
        {"id": "dev-x", "credentials": [credential(2, es256_pem() + "\x00")]},
        "credentials.0.publicKey.key",
    ),
    # Fields the server assigns, and configs over 64 KB.
    ({"id": "dev-x", "name": f"{REGISTRY_NAME}/devices/dev-x"}, "device.name"),
    ({"id": "dev-x", "numId": "2928540609735937"}, "device.num_id"),
    ({"id": "dev-x", "numId": 12}, "device.num_id"),
    ({"id": "dev-x", "config": {"version": "3"}}, "device.config.version"),
    ({"id": "dev-x", "config": {"version": 1, "binaryData": "AA=="}}, "device.config.version"),
    (
        {
            "id": "dev-x",
            "config": {"binaryData": base64.b64encode(b"x" * (64 * 1024 + 1)).decode()},
        },
        "device.config.binary_data",
    ),
]


async def test_refused_creates_name_the_field_and_create_nothing(api: Api, registry: str) -> None:
    for body, field in REFUSED_CREATES:
        assert_error(await create(api, body), 400, "INVALID_ARGUMENT", field)
    # JSON can escape an unpaired surrogate, which is not Unicode.
    for content, field in [
        (b'{"id": "dev-x", "metadata": {"k": "\\ud800"}}', "metadata"),
        (b'{"id": "dev-x", "logLevel": "\\udfff"}', "logLevel"),
        (b'{"id": "dev-\\ud800"}', "id"),
    ]:
        response = await api.client.post(DEVICES, content=content)
        assert_error(response, 400, "INVALID_ARGUMENT", field)
    assert await device_ids(api) == []


async def test_early_expiration_times_read_back(api: Api, registry: str) -> None:
    """Years before 1000 must be written with four digits, or the stored device would no
    longer parse."""
    device = await created(
        api,
        {
            "id": "dev-old",
            "credentials": [credential(2, es256_pem(), expirationTime="0001-01-01T00:00:00Z")],
        },
    )
    assert device["credentials"][0]["expirationTime"] == "0001-01-01T00:00:00Z"
    assert (await read(api, "dev-old"))["credentials"] == device["credentials"]


# Create rules


BAD_IDS = [
    "",
    "ab",
    "1dev",
    "-dev",
    "dev ice",
    "dev/x",
    "dev$",
    "dévice",
    "goog",
    "google-dev",
    "d" * 256,
]


async def test_bad_device_ids_are_refused(api: Api, registry: str) -> None:
    for device_id in BAD_IDS:
        assert_error(await create(api, {"id": device_id}), 400, "INVALID_ARGUMENT", "device.id")
    assert await device_ids(api) == []


async def test_good_device_ids_are_accepted(api: Api, registry: str) -> None:
    good = ["abc", "d" * 255, "Dev-1.x_y+z~w%20"]
    for device_id in good:
        assert (await created(api, {"id": device_id}))["id"] == device_id
        assert (await read(api, device_id))["id"] == device_id
    assert await device_ids(api) == sorted(good)


async def test_device_ids_are_unique_per_registry(api: Api, registry: str) -> None:
    first = await created(api, {"id": "dev-dup", "blocked": True})
    assert_error(await create(api, {"id": "dev-dup"}), 409, "ALREADY_EXISTS")
    assert await read(api, "dev-dup") == first
    await created(api, {"id": "DEV-DUP"})
    await make_registry(api, "reg-2")
    other = await created(api, {"id": "dev-dup"}, f"/v1/{PARENT}/registries/reg-2/devices")
    assert other["numId"] != first["numId"]
    assert await device_ids(api) == ["DEV-DUP", "dev-dup"]


async def test_config_of_exactly_64_kb_and_version_zero_are_accepted(
    api: Api, registry: str
) -> None:
    data = b"y" * (64 * 1024)
    device = await created(
        api,
        {
            "id": "dev-64k",
            "config": {"version": "0", "binaryData": base64.b64encode(data).decode()},
        },
    )
    assert base64.b64decode(device["config"]["binaryData"]) == data
    assert device["config"]["version"] == "1"


async def test_create_in_a_missing_registry_is_not_found(api: Api) -> None:
    assert_error(await create(api, {"id": "dev-x"}), 404, "NOT_FOUND")


# Credentials


BAD_CREDENTIALS: list[tuple[str, Any, str]] = [
    (
        "malformed PEM",
        lambda: [
            credential("ES256_PEM", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
        ],
        "device.credentials[0].public_key.key",
    ),
    (
        "not PEM",
        lambda: [credential("RSA_PEM", "ssh-rsa AAAA")],
        "device.credentials[0].public_key.key",
    ),
    ("empty key", lambda: [credential("RSA_PEM", "")], "device.credentials[0].public_key.key"),
    (
        "RSA 1024",
        lambda: [credential("RSA_PEM", rsa_pem(1024))],
        "device.credentials[0].public_key.key",
    ),
    (
        "P-384 as ES256",
        lambda: [credential("ES256_PEM", p384_pem())],
        "device.credentials[0].public_key.key",
    ),
    (
        "RSA as ES256",
        lambda: [credential("ES256_PEM", rsa_pem())],
        "device.credentials[0].public_key.key",
    ),
    (
        "EC as RSA",
        lambda: [credential("RSA_PEM", es256_pem())],
        "device.credentials[0].public_key.key",
    ),
    (
        "cert as *_PEM",
        lambda: [credential("ES256_PEM", es256_cert())],
        "device.credentials[0].public_key.key",
    ),
    (
        "key as *_X509_PEM",
        lambda: [credential("ES256_X509_PEM", es256_pem())],
        "device.credentials[0].public_key.key",
    ),
    (
        "RSA cert as ES256_X509",
        lambda: [credential("ES256_X509_PEM", rsa_cert())],
        "device.credentials[0].public_key.key",
    ),
    (
        "unknown curve",
        lambda: [credential("ES256_PEM", unknown_curve_pem())],
        "device.credentials[0].public_key.key",
    ),
    (
        "unspecified format",
        lambda: [credential("UNSPECIFIED_PUBLIC_KEY_FORMAT", es256_pem())],
        "device.credentials[0].public_key.format",
    ),
    (
        "no public key",
        lambda: [{"expirationTime": "2030-01-01T00:00:00Z"}],
        "device.credentials[0].public_key",
    ),
    (
        "second one bad",
        lambda: [credential("ES256_PEM", es256_pem()), credential("RSA_PEM", rsa_pem(1024))],
        "device.credentials[1].public_key.key",
    ),
    (
        "four credentials",
        lambda: [credential("ES256_PEM", es256_pem(i)) for i in range(4)],
        "device.credentials",
    ),
    (
        "duplicate key",
        lambda: [credential("ES256_PEM", es256_pem()), credential("ES256_PEM", es256_pem())],
        "device.credentials[1].public_key",
    ),
    (
        "same key as PEM and in a cert",
        lambda: [
            credential("RSA_PEM", rsa_key_and_cert()[0]),
            credential("RSA_X509_PEM", rsa_key_and_cert()[1]),
        ],
        "device.credentials[1].public_key",
    ),
]


async def test_bad_credentials_are_refused_and_nothing_is_created(api: Api, registry: str) -> None:
    for name, make, field in BAD_CREDENTIALS:
        response = await create(api, {"id": "dev-cred", "credentials": make()})
        assert response.status_code == 400, name
        message = assert_error(response, 400, "INVALID_ARGUMENT", field)["message"]
        if name in ("duplicate key", "same key as PEM and in a cert"):
            assert "twice" in message, message
        if name == "four credentials":
            assert "at most 3" in message, message
        if name == "RSA 1024":
            assert "1024 bits" in message, message
        if name == "P-384 as ES256":
            assert "P-256" in message, message
    assert await device_ids(api) == []


async def test_three_credentials_of_every_kind_are_accepted(api: Api, registry: str) -> None:
    device = await created(
        api,
        {
            "id": "dev-three",
            "credentials": [
                credential("RSA_PEM", rsa_pem()),
                credential("ES256_X509_PEM", es256_cert()),
                credential("ES256_PEM", es256_pem(1)),
            ],
        },
    )
    assert len(device["credentials"]) == 3


async def test_refused_credential_update_keeps_the_old_credentials(api: Api, registry: str) -> None:
    before = await created(api, {"id": "dev-keep", "credentials": [credential(2, es256_pem())]})
    response = await api.client.patch(
        f"{DEVICES}/dev-keep",
        params={"updateMask": "credentials"},
        json={"credentials": [credential(2, es256_pem(1)), credential(3, rsa_pem(1024))]},
    )
    assert_error(response, 400, "INVALID_ARGUMENT", "device.credentials[1].public_key.key")
    assert await read(api, "dev-keep") == before


class TestRegistryCa:
    @pytest.fixture
    async def ca(self, api: Api) -> Ca:
        ca = make_ca("Registry CA")
        await make_registry(
            api,
            credentials=[{"publicKeyCertificate": {"format": 1, "certificate": ca.pem}}],
        )
        return ca

    async def test_a_plain_key_is_refused(self, api: Api, ca: Ca) -> None:
        response = await create(api, {"id": "dev-ca", "credentials": [credential(2, es256_pem())]})
        assert_error(response, 400, "INVALID_ARGUMENT", "device.credentials[0].public_key.format")
        assert await device_ids(api) == []

    async def test_a_certificate_signed_by_another_ca_is_refused(self, api: Api, ca: Ca) -> None:
        other = make_ca("Registry CA")  # the same name, but another key
        for pem in (other.issue(es256_key()), es256_cert()):
            response = await create(api, {"id": "dev-ca", "credentials": [credential(4, pem)]})
            assert_error(response, 400, "INVALID_ARGUMENT", "device.credentials[0].public_key.key")
        assert await device_ids(api) == []

    async def test_the_ca_certificate_itself_is_refused(self, api: Api, ca: Ca) -> None:
        response = await create(api, {"id": "dev-ca", "credentials": [credential(4, ca.pem)]})
        assert_error(response, 400, "INVALID_ARGUMENT", "device.credentials[0].public_key.key")
        assert await device_ids(api) == []

    async def test_a_certificate_signed_by_the_registry_ca_is_accepted(
        self, api: Api, ca: Ca
    ) -> None:
        rsa_device = ca.issue(rsa_key(), "rsa device")
        device = await created(
            api,
            {
                "id": "dev-ca",
                "credentials": [credential(4, ca.issue(es256_key())), credential(1, rsa_device)],
            },
        )
        assert [c["publicKey"]["format"] for c in device["credentials"]] == [
            "ES256_X509_PEM",
            "RSA_X509_PEM",
        ]

    async def test_existing_devices_survive_a_later_ca(self, api: Api) -> None:
        await make_registry(api)
        before = await created(api, {"id": "dev-old", "credentials": [credential(2, es256_pem())]})
        ca = make_ca("Later CA")
        response = await api.client.patch(
            REGISTRY_URL,
            params={"updateMask": "credentials"},
            json={"credentials": [{"publicKeyCertificate": {"certificate": ca.pem}}]},
        )
        assert response.status_code == 200, response.text
        url = f"{DEVICES}/dev-old"

        response = await api.client.patch(
            url, params={"updateMask": "blocked"}, json={"blocked": True}
        )
        assert response.status_code == 200, response.text
        assert response.json()["blocked"] is True
        assert response.json()["credentials"] == before["credentials"]

        # Keeping the old key and adding a CA-signed certificate works ...
        signed = credential(4, ca.issue(es256_key()))
        response = await api.client.patch(
            url,
            params={"updateMask": "credentials"},
            json={"credentials": [*before["credentials"], signed]},
        )
        assert response.status_code == 200, response.text
        kept = response.json()["credentials"]
        assert len(kept) == 2
        # ... adding another plain key does not, and changes nothing.
        response = await api.client.patch(
            url,
            params={"updateMask": "credentials"},
            json={"credentials": [*kept, credential(2, es256_pem(1))]},
        )
        assert_error(response, 400, "INVALID_ARGUMENT", "device.credentials[2].public_key.format")
        assert (await read(api, "dev-old"))["credentials"] == kept


# Metadata


async def test_metadata_limits(api: Api, registry: str) -> None:
    cases: list[tuple[dict[str, str], bool]] = [
        ({f"k{i}": "v" for i in range(500)}, True),
        ({f"k{i}": "v" for i in range(501)}, False),
        ({"k" * 128: "v"}, True),
        ({"k" * 129: "v"}, False),
        ({"1key": "v"}, False),
        ({"bad key": "v"}, False),
        ({"": "v"}, False),
        ({"key/x": "v"}, False),
        ({"key": "v" * (32 * 1024)}, True),
        ({"key": "v" * (32 * 1024 + 1)}, False),
        ({"key": "é" * (16 * 1024 + 1)}, False),  # 32 KB + 2 bytes of UTF-8
        ({f"k{i}": "v" * (32 * 1024) for i in range(8)}, False),  # 256 KB + 16 bytes
        ({f"k{i}": "v" * (30 * 1024) for i in range(8)}, True),
    ]
    accepted = []
    for n, (metadata, ok) in enumerate(cases):
        response = await create(api, {"id": f"dev-meta-{n:02d}", "metadata": metadata})
        if ok:
            assert response.status_code == 200, response.text
            assert (await read(api, f"dev-meta-{n:02d}"))["metadata"] == metadata
            accepted.append(f"dev-meta-{n:02d}")
        else:
            assert_error(response, 400, "INVALID_ARGUMENT", "device.metadata")
    assert await device_ids(api) == accepted


async def test_refused_metadata_update_changes_nothing(api: Api, registry: str) -> None:
    before = await created(api, {"id": "dev-meta", "metadata": {"a": "1"}})
    response = await api.client.patch(
        f"{DEVICES}/dev-meta",
        params={"updateMask": "metadata"},
        json={"metadata": {f"k{i}": "v" for i in range(501)}},
    )
    assert_error(response, 400, "INVALID_ARGUMENT", "device.metadata")
    assert await read(api, "dev-meta") == before


# Update


async def test_update_mask_in_either_spelling(api: Api, registry: str) -> None:
    await created(api, {"id": "dev-up"})
    url = f"{DEVICES}/dev-up"
    body = {
        "blocked": True,
        "logLevel": "ERROR",
        "metadata": {"a": "b"},
        "gatewayConfig": {"gatewayAuthMethod": "DEVICE_AUTH_TOKEN_ONLY"},
    }
    response = await api.client.patch(url, params={"updateMask": "blocked,logLevel"}, json=body)
    assert response.status_code == 200, response.text
    device = response.json()
    assert device["blocked"] is True and device["logLevel"] == "ERROR"
    assert "metadata" not in device and device["gatewayConfig"] == {}

    response = await api.client.patch(
        url, params={"update_mask": "metadata,gateway_config.gateway_auth_method"}, json=body
    )
    assert response.status_code == 200, response.text
    device = response.json()
    assert device["metadata"] == {"a": "b"}
    assert device["gatewayConfig"] == {"gatewayAuthMethod": "DEVICE_AUTH_TOKEN_ONLY"}
    assert await read(api, "dev-up") == device


async def test_a_masked_field_absent_from_the_body_is_reset(api: Api, registry: str) -> None:
    before = await created(
        api,
        {
            "id": "dev-reset",
            "credentials": [credential(2, es256_pem())],
            "blocked": True,
            "metadata": {"a": "b"},
        },
    )
    # The python client's body for updateMask=blocked,credentials when only blocked is set.
    response = await api.client.patch(
        f"{DEVICES}/dev-reset", params={"updateMask": "blocked,credentials"}, json={}
    )
    assert response.status_code == 200, response.text
    device = await read(api, "dev-reset")
    assert "credentials" not in device and "blocked" not in device
    assert device["metadata"] == {"a": "b"}
    assert device["numId"] == before["numId"]


async def test_update_accepts_the_id_and_name_of_the_device_itself(api: Api, registry: str) -> None:
    before = await created(api, {"id": "dev-self"})
    response = await api.client.patch(
        f"{DEVICES}/dev-self",
        params={"updateMask": "blocked"},
        json={"id": "dev-self", "name": before["name"], "blocked": True},
    )
    assert response.status_code == 200, response.text
    assert response.json()["blocked"] is True


REFUSED_UPDATES: list[tuple[dict[str, str], dict[str, Any], str]] = [
    ({}, {"blocked": True}, "update_mask"),
    ({"updateMask": ""}, {"blocked": True}, "update_mask"),
    ({"updateMask": "bogus"}, {"blocked": True}, "update_mask"),
    ({"updateMask": "blocked,gatewayConfig.nope"}, {"blocked": True}, "update_mask"),
    ({"updateMask": "id"}, {"id": "dev-other"}, "update_mask"),
    ({"updateMask": "numId"}, {"numId": "1"}, "update_mask"),
    ({"update_mask": "num_id"}, {}, "update_mask"),
    ({"updateMask": "name"}, {}, "update_mask"),
    ({"updateMask": "config"}, {"config": {"binaryData": "AA=="}}, "update_mask"),
    ({"updateMask": "config.binaryData"}, {}, "update_mask"),
    ({"updateMask": "state"}, {}, "update_mask"),
    (
        {"updateMask": "lastHeartbeatTime"},
        {"lastHeartbeatTime": "2030-01-01T00:00:00Z"},
        "update_mask",
    ),
    ({"updateMask": "gatewayConfig"}, {"gatewayConfig": {"gatewayType": 1}}, "update_mask"),
    (
        {"updateMask": "gatewayConfig.gatewayType"},
        {"gatewayConfig": {"gatewayType": 1}},
        "update_mask",
    ),
    ({"update_mask": "gateway_config.gateway_type"}, {}, "update_mask"),
    ({"updateMask": "blocked"}, {"id": "dev-other", "blocked": True}, "device.id"),
    ({"updateMask": "blocked"}, {"numId": "123", "blocked": True}, "device.num_id"),
    ({"updateMask": "blocked"}, {"blocked": True, "x": 1}, "x"),
    (
        {"updateMask": "credentials"},
        {"credentials": [credential(2, "junk")]},
        "device.credentials[0]",
    ),
    ({"updateMask": "metadata"}, {"metadata": {"1": "x"}}, "device.metadata"),
]


async def test_refused_updates_change_nothing(api: Api, registry: str) -> None:
    before = await created(
        api,
        {
            "id": "dev-keep",
            "credentials": [credential(2, es256_pem())],
            "metadata": {"a": "b"},
            "config": {"binaryData": "AQID"},
        },
    )
    for params, body, field in REFUSED_UPDATES:
        response = await api.client.patch(f"{DEVICES}/dev-keep", params=params, json=body)
        assert_error(response, 400, "INVALID_ARGUMENT", field)
        assert await read(api, "dev-keep") == before, (params, body)


async def test_update_of_a_missing_device_is_not_found(api: Api, registry: str) -> None:
    response = await api.client.patch(
        f"{DEVICES}/dev-none", params={"updateMask": "blocked"}, json={"blocked": True}
    )
    assert_error(response, 404, "NOT_FOUND")
    assert await device_ids(api) == []


# Get


async def test_get_by_numeric_id_and_through_a_group(api: Api, registry: str) -> None:
    device = await created(api, {"id": "dev-num", "metadata": {"a": "b"}})
    assert await read(api, device["numId"]) == device
    group = f"{REGISTRY_URL}/groups/any-group/devices"
    assert await read(api, "dev-num", group) == device
    assert await read(api, device["numId"], group) == device
    assert_error(await api.client.get(f"{DEVICES}/1000000000000000"), 404, "NOT_FOUND")
    assert_error(await api.client.get(f"{DEVICES}/dev-none"), 404, "NOT_FOUND")


async def test_get_with_an_impossible_device_segment_is_refused(api: Api, registry: str) -> None:
    for segment in ("99999999999999999999999", "9223372036854775808", "x", "²", "١٢٣"):
        response = await api.client.get(f"{DEVICES}/{segment}")
        assert_error(response, 400, "INVALID_ARGUMENT", "name")
    # The largest int64 is a possible numeric id; there is just no such device.
    assert_error(await api.client.get(f"{DEVICES}/9223372036854775807"), 404, "NOT_FOUND")


async def test_a_device_in_another_registry_is_not_found(api: Api, registry: str) -> None:
    device = await created(api, {"id": "dev-here"})
    await make_registry(api, "reg-2")
    other = f"/v1/{PARENT}/registries/reg-2/devices"
    assert_error(await api.client.get(f"{other}/dev-here"), 404, "NOT_FOUND")
    assert_error(await api.client.get(f"{other}/{device['numId']}"), 404, "NOT_FOUND")


async def test_get_field_mask(api: Api, registry: str) -> None:
    device = await created(
        api, {"id": "dev-mask", "metadata": {"a": "b"}, "credentials": [credential(2, es256_pem())]}
    )
    cases: list[tuple[str, dict[str, Any]]] = [
        ("lastHeartbeatTime,gatewayConfig", {"lastHeartbeatTime": EPOCH_TEXT, "gatewayConfig": {}}),
        (
            "last_heartbeat_time,gateway_config",
            {"lastHeartbeatTime": EPOCH_TEXT, "gatewayConfig": {}},
        ),
        ("config.version", {"config": {"version": "1"}}),
        ("config.version,metadata", {"config": {"version": "1"}, "metadata": {"a": "b"}}),
        ("blocked", {}),
        ("id", {}),
        (" metadata , blocked ", {"metadata": {"a": "b"}}),
        ("credentials", {"credentials": device["credentials"]}),
    ]
    always = {"id": "dev-mask", "name": device["name"], "numId": device["numId"]}
    for mask, expected in cases:
        for name in ("fieldMask", "field_mask"):
            response = await api.client.get(f"{DEVICES}/dev-mask", params={name: mask})
            assert response.status_code == 200, response.text
            assert response.json() == {**always, **expected}, mask
    # An empty mask means every field.
    response = await api.client.get(f"{DEVICES}/dev-mask", params={"fieldMask": ""})
    assert response.json() == device


async def test_get_with_a_bad_field_mask_is_refused(api: Api, registry: str) -> None:
    await created(api, {"id": "dev-mask", "credentials": [credential(2, es256_pem())]})
    # A path may end at a repeated or map field, but not go through one.
    for mask in ("bogus", "config.bogus", "id.x", "credentials.publicKey", "metadata.a", "a..b"):
        response = await api.client.get(f"{DEVICES}/dev-mask", params={"fieldMask": mask})
        assert_error(response, 400, "INVALID_ARGUMENT", "field_mask")


# List


async def test_list_returns_only_ids_without_a_field_mask(api: Api, registry: str) -> None:
    a = await created(api, {"id": "dev-a", "metadata": {"x": "y"}, "blocked": True})
    b = await created(api, {"id": "dev-b"})
    response = await api.client.get(DEVICES)
    assert response.status_code == 200
    devices = sorted(response.json()["devices"], key=lambda d: d["id"])
    assert devices == [{"id": "dev-a", "numId": a["numId"]}, {"id": "dev-b", "numId": b["numId"]}]
    assert "nextPageToken" not in response.json()


async def test_list_field_mask_in_either_spelling(api: Api, registry: str) -> None:
    device = await created(
        api, {"id": "dev-a", "metadata": {"x": "y"}, "gatewayConfig": {"gatewayType": "GATEWAY"}}
    )
    for params in (
        {"fieldMask": "config.version,gatewayConfig,metadata,name"},
        {"field_mask": "config.version,gateway_config,metadata,name"},
    ):
        response = await api.client.get(DEVICES, params=params)
        assert response.status_code == 200, response.text
        assert response.json()["devices"] == [
            {
                "id": "dev-a",
                "numId": device["numId"],
                "name": device["name"],
                "config": {"version": "1"},
                "gatewayConfig": {"gatewayType": "GATEWAY"},
                "metadata": {"x": "y"},
            }
        ]
    assert_error(
        await api.client.get(DEVICES, params={"fieldMask": "nope"}),
        400,
        "INVALID_ARGUMENT",
        "field_mask",
    )


@pytest.fixture
async def fleet(api: Api, registry: str) -> dict[str, dict[str, Any]]:
    """Two gateways and three devices: dev-1 bound to gw-1 and gw-2, dev-2 bound to gw-1."""
    devices = {}
    for device_id, gateway in [
        ("gw-1", "GATEWAY"),
        ("gw-2", 1),
        ("dev-1", "NON_GATEWAY"),
        ("dev-2", None),
        ("dev-3", "GATEWAY_TYPE_UNSPECIFIED"),
    ]:
        body: dict[str, Any] = {"id": device_id}
        if gateway is not None:
            body["gatewayConfig"] = {"gatewayType": gateway, "gatewayAuthMethod": 1}
        devices[device_id] = await created(api, body)
    for gateway_id, device_id in [("gw-1", "dev-1"), ("gw-2", "dev-1"), ("gw-1", "dev-2")]:
        response = await api.client.post(
            f"{REGISTRY_URL}:bindDeviceToGateway",
            json={"gatewayId": gateway_id, "deviceId": device_id},
        )
        assert response.status_code == 200 and response.json() == {}, response.text
    return devices


async def test_list_filters(api: Api, fleet: dict[str, dict[str, Any]]) -> None:
    num = {name: device["numId"] for name, device in fleet.items()}
    cases: list[tuple[Any, list[str]]] = [
        ({}, ["dev-1", "dev-2", "dev-3", "gw-1", "gw-2"]),
        ([("deviceIds", "dev-1"), ("deviceIds", "gw-2"), ("deviceIds", "nope")], ["dev-1", "gw-2"]),
        ([("device_ids", "dev-3")], ["dev-3"]),
        ([("deviceNumIds", num["dev-2"]), ("deviceNumIds", num["gw-1"])], ["dev-2", "gw-1"]),
        ({"deviceNumIds": "1000000000000000"}, []),
        ({"gatewayListOptions.gatewayType": "GATEWAY"}, ["gw-1", "gw-2"]),
        ({"gatewayListOptions.gatewayType": "1"}, ["gw-1", "gw-2"]),
        ({"gatewayListOptions.gatewayType": "NON_GATEWAY"}, ["dev-1", "dev-2", "dev-3"]),
        ({"gateway_list_options.gateway_type": "2"}, ["dev-1", "dev-2", "dev-3"]),
        ({"gatewayListOptions.associationsGatewayId": "gw-1"}, ["dev-1", "dev-2"]),
        ({"gatewayListOptions.associationsGatewayId": num["gw-2"]}, ["dev-1"]),
        ({"gateway_list_options.associations_gateway_id": "gw-2"}, ["dev-1"]),
        ({"gatewayListOptions.associationsGatewayId": "nope"}, []),
        ({"gatewayListOptions.associationsDeviceId": "dev-1"}, ["gw-1", "gw-2"]),
        ({"gatewayListOptions.associationsDeviceId": num["dev-2"]}, ["gw-1"]),
        ({"gatewayListOptions.associationsDeviceId": "dev-3"}, []),
        (
            {"deviceIds": "dev-1", "gatewayListOptions.associationsGatewayId": "gw-2"},
            ["dev-1"],
        ),
    ]
    for params, expected in cases:
        response = await api.client.get(DEVICES, params=params)
        assert response.status_code == 200, (params, response.text)
        assert sorted(d["id"] for d in response.json()["devices"]) == expected, params
    # The groups alias lists the same devices.
    group = f"{REGISTRY_URL}/groups/g/devices"
    assert await device_ids(api, group) == sorted(fleet)


async def test_bad_list_requests_are_refused(api: Api, fleet: dict[str, dict[str, Any]]) -> None:
    cases: list[tuple[dict[str, str], str]] = [
        (
            {
                "gatewayListOptions.gatewayType": "GATEWAY",
                "gatewayListOptions.associationsGatewayId": "gw-1",
            },
            "gateway_list_options",
        ),
        (
            {
                "gatewayListOptions.associationsGatewayId": "gw-1",
                "gatewayListOptions.associationsDeviceId": "dev-1",
            },
            "gateway_list_options",
        ),
        ({"gatewayListOptions.gatewayType": "ROUTER"}, "gateway_list_options.gateway_type"),
        ({"gatewayListOptions.gatewayType": "7"}, "gateway_list_options.gateway_type"),
        (
            {"gatewayListOptions.associationsGatewayId": "x"},
            "gateway_list_options.associations_gateway_id",
        ),
        ({"deviceIds": "1abc"}, "device_ids"),
        ({"deviceIds": "dev\x00-1"}, "device_ids"),
        ({"deviceNumIds": "12ab"}, "device_num_ids"),
        ({"deviceNumIds": "99999999999999999999"}, "device_num_ids"),
        ({"deviceNumIds": "-5"}, "device_num_ids"),
        ({"pageToken": "not-a-token"}, "page_token"),
        ({"pageSize": "-3"}, "page_size"),
    ]
    for params, field in cases:
        response = await api.client.get(DEVICES, params=params)
        assert_error(response, 400, "INVALID_ARGUMENT", field)


async def test_list_of_a_missing_registry_is_not_found(api: Api) -> None:
    assert_error(await api.client.get(DEVICES), 404, "NOT_FOUND")


async def test_page_tokens_walk_1200_devices(
    api: Api, manager: DeviceManager, registry: str
) -> None:
    parent = RegistryName.parse(PROJECT, LOCATION, REGISTRY)
    expected = set()
    for start in range(0, 1200, 50):
        batch = await asyncio.gather(
            *(
                manager.create_device(parent, Device(id=f"bulk-{i:04d}"))
                for i in range(start, start + 50)
            )
        )
        expected |= {(device.id, str(device.num_id)) for device in batch}
    assert len(expected) == 1200

    response = await api.client.get(DEVICES, params={"pageSize": "1000"})
    assert response.status_code == 200
    assert len(response.json()["devices"]) == limits.LIST_PAGE_SIZE_MAX == 500

    seen: list[tuple[str, str]] = []
    token = ""
    sizes = []
    while True:
        params = {"pageSize": "500", "fieldMask": "numId"}
        if token:
            params["pageToken"] = token
        response = await api.client.get(DEVICES, params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        sizes.append(len(body["devices"]))
        seen += [(d["id"], d["numId"]) for d in body["devices"]]
        token = body.get("nextPageToken", "")
        if not token:
            break
    assert sizes == [500, 500, 200]
    assert len(seen) == len(set(seen)) == 1200
    assert set(seen) == expected
    # Without a page size the server still stops at 500.
    response = await api.client.get(DEVICES)
    assert len(response.json()["devices"]) == 500 and response.json()["nextPageToken"]


# Delete


async def test_delete_device(api: Api, registry: str) -> None:
    device = await created(api, {"id": "dev-del"})
    response = await api.client.delete(f"{DEVICES}/{device['numId']}")
    assert response.status_code == 200 and response.json() == {}
    assert_error(await api.client.get(f"{DEVICES}/dev-del"), 404, "NOT_FOUND")
    assert_error(await api.client.delete(f"{DEVICES}/dev-del"), 404, "NOT_FOUND")
    # The id can be used again, and gets a fresh numeric id with a fresh config history.
    again = await created(api, {"id": "dev-del"})
    assert again["config"]["version"] == "1"
    configs = await api.client.get(f"{DEVICES}/dev-del/configVersions")
    assert [c["version"] for c in configs.json()["deviceConfigs"]] == ["1"]


# Configs


async def modify(api: Api, device: str, data: bytes, version: Any = None) -> httpx.Response:
    body: dict[str, Any] = {"binaryData": base64.b64encode(data).decode()}
    if version is not None:
        body["versionToUpdate"] = version
    return await api.client.post(f"{DEVICES}/{device}:modifyCloudToDeviceConfig", json=body)


async def config_versions(api: Api, device: str, **params: Any) -> list[dict[str, Any]]:
    response = await api.client.get(f"{DEVICES}/{device}/configVersions", params=params)
    assert response.status_code == 200, response.text
    configs: list[dict[str, Any]] = response.json()["deviceConfigs"]
    return configs


async def test_each_modify_adds_one_version(api: Api, registry: str, clock: Clock) -> None:
    await created(api, {"id": "dev-cfg"})
    response = await modify(api, "dev-cfg", b"first")
    assert response.status_code == 200, response.text
    config = response.json()
    assert config["version"] == "2"
    assert base64.b64decode(config["binaryData"]) == b"first"
    assert config["cloudUpdateTime"] == "2026-01-01T00:00:00Z"
    assert set(config) == {"version", "cloudUpdateTime", "binaryData"}

    clock.advance(1.1)
    # versionToUpdate given as a string, as int64 is on the wire, or as a number.
    response = await modify(api, "dev-cfg", b"second", "2")
    assert response.status_code == 200, response.text
    assert response.json()["version"] == "3"
    clock.advance(1.1)
    response = await modify(api, "dev-cfg", b"third", 3)
    assert response.json()["version"] == "4"
    clock.advance(1.1)
    # 0 means "whatever the current version is".
    response = await modify(api, "dev-cfg", b"", 0)
    assert response.json()["version"] == "5"
    assert "binaryData" not in response.json()

    device = await read(api, "dev-cfg")
    assert device["config"]["version"] == "5" and "binaryData" not in device["config"]
    assert [c["version"] for c in await config_versions(api, "dev-cfg")] == [
        "5",
        "4",
        "3",
        "2",
        "1",
    ]


async def test_modify_accepts_url_safe_unpadded_base64(api: Api, registry: str) -> None:
    await created(api, {"id": "dev-cfg"})
    data = b"\xfb\xff\xfe"
    response = await api.client.post(
        f"{DEVICES}/dev-cfg:modifyCloudToDeviceConfig",
        json={"binary_data": base64.urlsafe_b64encode(data).decode().rstrip("=")},
    )
    assert response.status_code == 200, response.text
    assert response.json()["binaryData"] == base64.b64encode(data).decode()


async def test_stale_version_to_update_is_refused(api: Api, registry: str, clock: Clock) -> None:
    await created(api, {"id": "dev-cfg"})
    assert (await modify(api, "dev-cfg", b"v2")).status_code == 200
    clock.advance(5)
    before = await config_versions(api, "dev-cfg")
    for stale in (1, 3, "7"):
        response = await modify(api, "dev-cfg", b"stale", stale)
        assert_error(response, 400, "FAILED_PRECONDITION")
    assert await config_versions(api, "dev-cfg") == before
    assert (await modify(api, "dev-cfg", b"v3", 2)).json()["version"] == "3"


async def test_two_modifies_within_a_second_are_rate_limited(
    api: Api, registry: str, clock: Clock
) -> None:
    await created(api, {"id": "dev-rate"})
    assert (await modify(api, "dev-rate", b"a")).status_code == 200
    clock.advance(0.5)
    assert_error(await modify(api, "dev-rate", b"b"), 429, "RESOURCE_EXHAUSTED")
    assert [c["version"] for c in await config_versions(api, "dev-rate")] == ["2", "1"]
    clock.advance(0.6)
    response = await modify(api, "dev-rate", b"b")
    assert response.status_code == 200, response.text
    assert response.json()["version"] == "3"
    # The limit is per device.
    await created(api, {"id": "dev-other"})
    assert (await modify(api, "dev-other", b"a")).status_code == 200


async def test_ten_versions_are_kept_newest_first(api: Api, registry: str, clock: Clock) -> None:
    await created(api, {"id": "dev-hist"})
    for i in range(12):
        response = await modify(api, "dev-hist", f"config {i + 2}".encode())
        assert response.status_code == 200, response.text
        clock.advance(1.5)
    configs = await config_versions(api, "dev-hist")
    assert [c["version"] for c in configs] == [str(v) for v in range(13, 3, -1)]
    assert base64.b64decode(configs[0]["binaryData"]) == b"config 13"
    assert configs[0]["cloudUpdateTime"] > configs[-1]["cloudUpdateTime"]
    three = await config_versions(api, "dev-hist", numVersions=3)
    assert [c["version"] for c in three] == ["13", "12", "11"]
    assert three == configs[:3]
    assert await config_versions(api, "dev-hist", num_versions=0) == configs
    assert await config_versions(api, "dev-hist", numVersions=50) == configs


async def test_bad_modifies_change_nothing(api: Api, registry: str) -> None:
    await created(api, {"id": "dev-cfg", "config": {"binaryData": "AQID"}})
    before = await config_versions(api, "dev-cfg")
    cases: list[tuple[dict[str, Any], str, str]] = [
        (
            {"binaryData": base64.b64encode(b"z" * (64 * 1024 + 1)).decode()},
            "INVALID_ARGUMENT",
            "binary_data",
        ),
        ({"binaryData": "a"}, "INVALID_ARGUMENT", "binaryData"),
        ({"binaryData": "AA==", "versionToUpdate": -1}, "INVALID_ARGUMENT", "version_to_update"),
        ({"binaryData": "AA==", "versionToUpdate": "one"}, "INVALID_ARGUMENT", "versionToUpdate"),
        ({"binaryData": "AA==", "versionToUpdate": 1.5}, "INVALID_ARGUMENT", "versionToUpdate"),
        ({"binaryData": "AA==", "extra": 1}, "INVALID_ARGUMENT", "extra"),
    ]
    for body, status, field in cases:
        url = f"{DEVICES}/dev-cfg:modifyCloudToDeviceConfig"
        assert_error(await api.client.post(url, json=body), 400, status, field)
        assert await config_versions(api, "dev-cfg") == before
    assert (await read(api, "dev-cfg"))["config"]["binaryData"] == "AQID"


async def test_modify_of_exactly_64_kb_is_accepted(api: Api, registry: str) -> None:
    await created(api, {"id": "dev-cfg"})
    response = await modify(api, "dev-cfg", b"z" * (64 * 1024))
    assert response.status_code == 200, response.text


async def test_config_routes_of_a_missing_device_are_not_found(api: Api, registry: str) -> None:
    assert_error(await modify(api, "dev-none", b"x"), 404, "NOT_FOUND")
    response = await api.client.get(f"{DEVICES}/dev-none/configVersions")
    assert_error(response, 404, "NOT_FOUND")
    assert_error(await api.client.get(f"{DEVICES}/dev-none/states"), 404, "NOT_FOUND")
    response = await api.client.get(
        f"{DEVICES}/dev-none/configVersions", params={"numVersions": -1}
    )
    assert_error(response, 400, "INVALID_ARGUMENT", "num_versions")


# States


async def states(api: Api, device: str, **params: Any) -> list[dict[str, Any]]:
    response = await api.client.get(f"{DEVICES}/{device}/states", params=params)
    assert response.status_code == 200, response.text
    result: list[dict[str, Any]] = response.json().get("deviceStates", [])
    return result


async def test_states_start_empty(api: Api, registry: str) -> None:
    await created(api, {"id": "dev-st"})
    assert await states(api, "dev-st") == []
    assert "state" not in await read(api, "dev-st")


async def test_ten_states_are_kept_newest_first(
    api: Api, manager: DeviceManager, registry: str, clock: Clock
) -> None:
    device = await created(api, {"id": "dev-st"})
    for i in range(12):
        clock.advance(2)
        await manager.store.configs.add_state(
            int(device["numId"]), f"state {i}".encode(), clock(), keep=limits.STATES_KEPT
        )
    listed = await states(api, "dev-st")
    assert [base64.b64decode(s["binaryData"]) for s in listed] == [
        f"state {i}".encode() for i in range(11, 1, -1)
    ]
    assert listed[0]["updateTime"] == "2026-01-01T00:00:24Z"
    assert listed[-1]["updateTime"] == "2026-01-01T00:00:06Z"
    three = await states(api, "dev-st", numStates=3)
    assert three == listed[:3]
    assert await states(api, "dev-st", num_states=0) == listed
    latest = await read(api, "dev-st")
    assert latest["state"] == listed[0]
    assert latest["lastStateTime"] == "2026-01-01T00:00:24Z"
    response = await api.client.get(f"{DEVICES}/dev-st/states", params={"numStates": -2})
    assert_error(response, 400, "INVALID_ARGUMENT", "num_states")


# Commands


async def test_send_command_to_a_disconnected_device_fails_precondition(
    api: Api, registry: str
) -> None:
    await created(api, {"id": "dev-cmd"})
    url = f"{DEVICES}/dev-cmd:sendCommandToDevice"
    response = await api.client.post(url, json={"binaryData": "Y21k", "subfolder": "a/b"})
    assert_error(response, 400, "FAILED_PRECONDITION")
    response = await api.client.post(url, json={"binaryData": "Y21k", "subfolder": "a/#"})
    assert_error(response, 400, "INVALID_ARGUMENT", "subfolder")
    response = await api.client.post(f"{DEVICES}/dev-none:sendCommandToDevice", json={})
    assert_error(response, 404, "NOT_FOUND")


# Gateway bindings


async def bind(
    api: Api, gateway: str, device: str, verb: str = "bindDeviceToGateway"
) -> httpx.Response:
    return await api.client.post(
        f"{REGISTRY_URL}:{verb}", json={"gatewayId": gateway, "deviceId": device}
    )


async def unbind(api: Api, gateway: str, device: str) -> httpx.Response:
    return await bind(api, gateway, device, "unbindDeviceFromGateway")


async def bound_to(api: Api, gateway: str) -> list[str]:
    return await device_ids(api, **{"gatewayListOptions.associationsGatewayId": gateway})


async def test_bind_rules(api: Api, fleet: dict[str, dict[str, Any]]) -> None:
    # Only a GATEWAY can be bound to, and a gateway cannot be bound.
    assert_error(await bind(api, "dev-3", "dev-2"), 400, "INVALID_ARGUMENT", "gateway_id")
    assert_error(await bind(api, "dev-1", "dev-2"), 400, "INVALID_ARGUMENT", "gateway_id")
    assert_error(await bind(api, "gw-1", "gw-2"), 400, "INVALID_ARGUMENT", "device_id")
    assert_error(await bind(api, "gw-none", "dev-3"), 404, "NOT_FOUND")
    assert_error(await bind(api, "gw-1", "dev-none"), 404, "NOT_FOUND")
    assert_error(await bind(api, "", "dev-3"), 400, "INVALID_ARGUMENT", "gateway_id")
    assert_error(await bind(api, "gw-1", ""), 400, "INVALID_ARGUMENT", "device_id")
    assert_error(await bind(api, "g", "dev-3"), 400, "INVALID_ARGUMENT", "gateway_id")
    assert await bound_to(api, "gw-1") == ["dev-1", "dev-2"]
    assert await bound_to(api, "gw-2") == ["dev-1"]

    # Numeric ids work for both, and binding twice is fine.
    gw2, dev3 = fleet["gw-2"]["numId"], fleet["dev-3"]["numId"]
    for _ in range(2):
        response = await bind(api, gw2, dev3)
        assert response.status_code == 200 and response.json() == {}, response.text
    assert await bound_to(api, "gw-2") == ["dev-1", "dev-3"]
    # So is the groups binding.
    response = await api.client.post(
        f"{REGISTRY_URL}/groups/g:bindDeviceToGateway",
        json={"gateway_id": "gw-2", "device_id": "dev-2"},
    )
    assert response.status_code == 200, response.text
    assert await bound_to(api, "gw-2") == ["dev-1", "dev-2", "dev-3"]

    response = await unbind(api, "gw-2", dev3)
    assert response.status_code == 200 and response.json() == {}
    assert_error(await unbind(api, "gw-2", "dev-3"), 404, "NOT_FOUND")
    assert_error(await unbind(api, "gw-none", "dev-3"), 404, "NOT_FOUND")
    assert await bound_to(api, "gw-2") == ["dev-1", "dev-2"]


async def test_bound_devices_and_gateways_cannot_be_deleted(
    api: Api, fleet: dict[str, dict[str, Any]]
) -> None:
    for name in ("dev-1", "gw-1"):
        response = await api.client.delete(f"{DEVICES}/{name}")
        assert_error(response, 400, "FAILED_PRECONDITION")
        assert await read(api, name) == fleet[name]
    assert await bound_to(api, "gw-1") == ["dev-1", "dev-2"]
    # Unbinding everything makes both deletable.
    for gateway, device in [("gw-1", "dev-1"), ("gw-2", "dev-1"), ("gw-1", "dev-2")]:
        assert (await unbind(api, gateway, device)).status_code == 200
    for name in ("dev-1", "gw-1"):
        assert (await api.client.delete(f"{DEVICES}/{name}")).status_code == 200
    assert await device_ids(api) == ["dev-2", "dev-3", "gw-2"]


async def test_a_device_binds_to_at_most_ten_gateways(api: Api, registry: str) -> None:
    await created(api, {"id": "dev-many"})
    for i in range(limits.GATEWAYS_PER_DEVICE + 1):
        await created(api, {"id": f"gw-{i:02d}", "gatewayConfig": {"gatewayType": "GATEWAY"}})
    for i in range(limits.GATEWAYS_PER_DEVICE):
        response = await bind(api, f"gw-{i:02d}", "dev-many")
        assert response.status_code == 200, response.text
    response = await bind(api, f"gw-{limits.GATEWAYS_PER_DEVICE:02d}", "dev-many")
    assert_error(response, 400, "FAILED_PRECONDITION")
    gateways = await device_ids(api, **{"gatewayListOptions.associationsDeviceId": "dev-many"})
    assert gateways == [f"gw-{i:02d}" for i in range(limits.GATEWAYS_PER_DEVICE)]
    # Rebinding an existing pair is still fine at the limit.
    assert (await bind(api, "gw-00", "dev-many")).status_code == 200


async def test_bind_in_a_missing_registry_is_not_found(api: Api) -> None:
    assert_error(await bind(api, "gw-1", "dev-1"), 404, "NOT_FOUND")
