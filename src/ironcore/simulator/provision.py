"""Fleet members with generated keys, registered through the admin API.

A generated key lives in memory only, which is what a simulator needs; real devices keep
theirs in a secure element (see `ironcore.device`).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from ironcore import jose
from ironcore.device.software_element import SoftwareElement
from ironcore.device.tokens import DEFAULT_LIFETIME_SECONDS, es256_jwt, es256_jwt_with
from ironcore.simulator.fleet import Member, Target


def _raw_signer(key: ec.EllipticCurvePrivateKey) -> Callable[[bytes], bytes]:
    def sign(digest: bytes) -> bytes:
        return jose.es256_signature(key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256()))))

    return sign


def member_with_key(device_id: str, key: ec.EllipticCurvePrivateKey, project: str) -> Member:
    sign = _raw_signer(key)
    return Member(
        device_id, lambda: es256_jwt_with(sign, project, time.time(), DEFAULT_LIFETIME_SECONDS)
    )


async def register_generated(
    api_url: str,
    token: str,
    target: Target,
    count: int,
    prefix: str = "sim",
    verify: ssl.SSLContext | bool = True,
) -> list[Member]:
    """Create the registry (if needed) and `count` devices with fresh ES256 keys; devices left
    from an earlier run get the new key instead. `verify`: what an https API is checked
    against."""
    headers = {"Authorization": f"Bearer {token}"}
    location = f"/v1/projects/{target.project}/locations/{target.location}"
    registry = f"{location}/registries/{target.registry}"
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(count)]
    topic = f"projects/{target.project}/topics/{target.registry}-events"
    async with httpx.AsyncClient(
        base_url=api_url, headers=headers, timeout=60, verify=verify
    ) as api:
        response = await api.post(
            f"{location}/registries",
            json={"id": target.registry, "eventNotificationConfigs": [{"pubsubTopicName": topic}]},
        )
        if response.status_code not in (200, 409):
            raise RuntimeError(f"cannot create registry {target.registry}: {response.text}")
        gate = asyncio.Semaphore(16)

        async def one(index: int, key: ec.EllipticCurvePrivateKey) -> Member:
            device_id = f"{prefix}-{index:06d}"
            pem = (
                key.public_key()
                .public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
                .decode()
            )
            credentials = [{"publicKey": {"format": "ES256_PEM", "key": pem}}]
            async with gate:
                r = await api.post(
                    f"{registry}/devices", json={"id": device_id, "credentials": credentials}
                )
                if r.status_code == 409:
                    r = await api.patch(
                        f"{registry}/devices/{device_id}",
                        params={"updateMask": "credentials"},
                        json={"credentials": credentials},
                    )
                if r.status_code != 200:
                    raise RuntimeError(f"cannot register {device_id}: {r.text}")
            return member_with_key(device_id, key, target.project)

        return list(await asyncio.gather(*(one(i, k) for i, k in enumerate(keys))))


def members_from_reel(reel: Path, project: str, template: str = "d{SERIAL}") -> list[Member]:
    """The software elements of a reel made by `ironcore factory reel`, named as
    `ironcore manifest import` names them (`template` with {serial} / {SERIAL})."""
    paths = sorted((reel / "elements").glob("*.json"))
    if not paths:
        raise FileNotFoundError(f"{reel}/elements holds no software elements")
    members = []
    for path in paths:
        element = SoftwareElement.open(path)
        serial = element.serial_number().hex()
        device_id = template.format(serial=serial, SERIAL=serial.upper())
        members.append(Member(device_id, _element_token(element, project)))
    return members


def _element_token(element: SoftwareElement, project: str) -> Callable[[], str]:
    return lambda: es256_jwt(element, 0, project, time.time(), DEFAULT_LIFETIME_SECONDS)
