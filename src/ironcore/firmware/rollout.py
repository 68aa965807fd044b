"""Firmware images and staged rollouts: every rule of them (docs/firmware.md, Rollouts).

An uploaded image is checked against its signed manifest and stored durably in the data
directory under its SHA-256. A rollout tells the devices of one stage after another through
their config (a `firmware` key merged into a JSON config), reads their outcome from their last
state, advances when every device of the stage has reported and halts by itself when the
stage's failure rate passes the threshold.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ironcore import limits
from ironcore.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from ironcore.formats.firmware import (
    MODEL_PATTERN,
    VERSION_MAX,
    FirmwareRejected,
    Image,
    ManifestError,
    check,
    kid,
    parse,
    software_verifier,
)
from ironcore.registry.names import RegistryName, check_id, is_valid_project
from ironcore.registry.service import DeviceManager
from ironcore.registry.store.firmware import (
    RUNNING,
    FirmwareStore,
    ImageRecord,
    RolloutRecord,
    TargetDevice,
)
from ironcore.registry.store.registries import RegistryRecord
from ironcore.registry.wire import format_timestamp

log = logging.getLogger(__name__)
HALTED = "HALTED"
SUCCEEDED = "SUCCEEDED"
# The upload is one JSON request with the image in base64, held in memory while it is
# checked; 64 MiB covers MCU and most Linux-module images. Larger ones need a streaming
# upload, which this API does not have yet.
UPLOAD_MAX_BYTES = 64 << 20
DEFAULT_STAGES = (1.0, 10.0, 100.0)
DEFAULT_THRESHOLD = 0.2
MAX_STAGES = 10
# A device id list travels in the rollout row; past this, target the registry instead.
MAX_DEVICE_IDS = 10_000
# Stage membership is decided in basis points, so stages like 0.5% work and 100% is everyone.
_BUCKETS = 10_000
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")


def bucket(device_id: str) -> int:
    """The device's place in [0, 10000): the first 64 bits of SHA-256(id), scaled.

    It depends on the id alone, so the same devices go first in every rollout: a fleet's
    canaries are stable and an operator can tell in advance which devices they are.
    """
    digest = hashlib.sha256(device_id.encode()).digest()
    return (int.from_bytes(digest[:8], "big") * _BUCKETS) >> 64


def stage_members(device_ids: Sequence[str], percent: float, min_size: int) -> list[str]:
    """The devices a stage of `percent` % reaches: those whose bucket is below it, but at
    least `min_size` (in bucket order), so 1% of a small fleet is not nobody."""
    ordered = sorted(device_ids, key=lambda d: (bucket(d), d))
    inside = sum(1 for d in ordered if bucket(d) < percent * _BUCKETS / 100)
    return ordered[: min(len(ordered), max(inside, min_size))]


def merge_config(data: bytes, firmware: dict[str, Any]) -> bytes:
    """The device's config with `firmware` set; the rest of a JSON object config survives.

    An empty config counts as `{}`; any other config that is not a JSON object cannot carry
    the key without breaking the device's own parsing, so it is refused (FailedPrecondition).
    """
    document: Any = {}
    if data.strip():
        try:
            document = json.loads(data)
        except (ValueError, RecursionError):  # not JSON, or nested too deeply to read
            raise FailedPrecondition("its config is not JSON") from None
    if not isinstance(document, dict):
        raise FailedPrecondition("its config is not a JSON object")
    merged = json.dumps({**document, "firmware": firmware}, separators=(",", ":")).encode()
    if len(merged) > limits.CONFIG_BYTES:
        raise FailedPrecondition(f"its config with the firmware key exceeds {limits.CONFIG_BYTES}")
    return merged


def firmware_state(data: bytes | None) -> dict[str, Any]:
    """The `firmware` member of a device state, or {} when it has none (or is not JSON)."""
    try:
        document = json.loads(data or b"")
    except (ValueError, RecursionError):  # not JSON, or nested too deeply to read
        return {}
    firmware = document.get("firmware") if isinstance(document, dict) else None
    return firmware if isinstance(firmware, dict) else {}


def running_version(firmware: dict[str, Any]) -> int | None:
    version = firmware.get("version")
    return version if isinstance(version, int) and not isinstance(version, bool) else None


@dataclass(frozen=True)
class Outcome:
    kind: str  # "succeeded", "failed" or "pending"
    reason: str = ""
    message: str = ""


def outcome(state: bytes | None, rollout_id: str, version: int) -> Outcome:
    """What a device's last state says about a rollout of `version`.

    Running the version (or a later one) is success whatever told the device; a refusal
    counts only when the device says it answers this rollout, so an old failure is not held
    against a new rollout.
    """
    firmware = firmware_state(state)
    running = running_version(firmware)
    if running is not None and running >= version:
        return Outcome("succeeded")
    if firmware.get("rollout") == rollout_id and firmware.get("result") == "refused":
        return Outcome("failed", str(firmware.get("reason", "")), str(firmware.get("message", "")))
    return Outcome("pending")


@dataclass(frozen=True)
class RolloutSpec:
    stages: list[float]
    failure_threshold: float
    min_stage_size: int
    device_ids: list[str] | None

    def __post_init__(self) -> None:
        if not 1 <= len(self.stages) <= MAX_STAGES:
            raise InvalidArgument.field("stages", f"must have 1 to {MAX_STAGES} stages")
        previous = 0.0
        for percent in self.stages:
            if not previous < percent <= 100:
                raise InvalidArgument.field(
                    "stages", "must be percentages in (0, 100], strictly increasing"
                )
            previous = percent
        if not 0 <= self.failure_threshold <= 1:
            raise InvalidArgument.field("failure_threshold", "must be between 0 and 1")
        if not 1 <= self.min_stage_size <= MAX_DEVICE_IDS:
            raise InvalidArgument.field("min_stage_size", f"must be 1 to {MAX_DEVICE_IDS}")
        if self.device_ids is not None:
            if not 1 <= len(self.device_ids) <= MAX_DEVICE_IDS:
                raise InvalidArgument.field(
                    "device_ids",
                    f"must list 1 to {MAX_DEVICE_IDS} devices (or target the registry)",
                )
            for device_id in self.device_ids:
                check_id(device_id, "device_ids")

    def to_json(self) -> dict[str, Any]:
        return {
            "stages": self.stages,
            "failureThreshold": self.failure_threshold,
            "minStageSize": self.min_stage_size,
            "deviceIds": self.device_ids,
        }


class Firmware:
    """Images and rollouts. `directory` is `<data-dir>/firmware`; None on an app built
    without a data directory, which then refuses to store or serve images."""

    def __init__(self, store: FirmwareStore, manager: DeviceManager, directory: Path | None):
        self.store = store
        self.manager = manager
        self.directory = directory

    # Images

    def _directory(self) -> Path:
        if self.directory is None:
            raise FailedPrecondition("this server has no data directory for firmware images")
        return self.directory

    async def upload(
        self, project: str, image: bytes, manifest: bytes, public_key_pem: str = ""
    ) -> ImageRecord:
        """Check `image` against `manifest` (and its signature, given the public key), then
        store both durably. Nothing is written unless every check passes."""
        _check_project(project)
        directory = self._directory()
        if len(image) > UPLOAD_MAX_BYTES:
            raise InvalidArgument.field("image", f"is larger than {UPLOAD_MAX_BYTES} bytes")
        signed = parse(manifest)
        claims = signed.manifest
        if len(image) != claims.size:
            raise InvalidArgument.field(
                "image", f"is {len(image)} bytes; the manifest says {claims.size}"
            )
        digest = hashlib.sha256(image).digest()
        if digest != claims.sha256:
            raise InvalidArgument.field(
                "image",
                f"has SHA-256 {digest.hex()}; the manifest says {claims.sha256.hex()}",
            )
        if public_key_pem:
            _check_signature(manifest, Image(len(image), digest), public_key_pem)
        sha256 = digest.hex()
        same_version = await self.store.get_image(
            project, model=claims.model, version=claims.version
        )
        if same_version is not None and same_version.sha256 != sha256:
            raise AlreadyExists(
                f"project {project} already has {claims.model} version {claims.version} with "
                f"SHA-256 {same_version.sha256}; sign a new version"
            )
        await asyncio.to_thread(_write_durably, directory, sha256, image)
        return await self.store.add_image(
            ImageRecord(
                project,
                sha256,
                claims.model,
                claims.version,
                claims.size,
                json.dumps(signed.to_json(), separators=(",", ":")),
                self.manager.clock(),
            )
        )

    async def list_images(self, project: str) -> list[ImageRecord]:
        _check_project(project)
        return await self.store.list_images(project)

    async def image_file(self, project: str, sha256: str) -> Path:
        """The stored file of an image of `project`, for serving to its devices."""
        image = None
        if SHA256_PATTERN.fullmatch(sha256):
            image = await self.store.get_image(project, sha256=sha256)
        if image is None:
            raise NotFound(f"firmware image {sha256[:64]!r} not found in project {project}")
        path = self._directory() / image.sha256
        if not path.is_file():
            raise FailedPrecondition(f"firmware image {image.sha256} is missing from the disk")
        return path

    # Rollouts

    async def start(
        self,
        registry: RegistryName,
        spec: RolloutSpec,
        sha256: str = "",
        model: str = "",
        version: int | None = None,
    ) -> dict[str, Any]:
        """Start a rollout of an image (by SHA-256, or model and version) and tell its first
        stage at once."""
        record = await self._registry(registry)
        if sha256 and not SHA256_PATTERN.fullmatch(sha256):
            raise InvalidArgument.field("sha256", "must be 64 lowercase hex digits")
        if model and not MODEL_PATTERN.fullmatch(model):
            raise InvalidArgument.field("model", "is not a valid model name")
        if version is not None and not 0 <= version <= VERSION_MAX:
            raise InvalidArgument.field("version", f"must be 0 to {VERSION_MAX}")
        if sha256:
            image = await self.store.get_image(registry.project, sha256=sha256)
        elif model and version is not None:
            image = await self.store.get_image(registry.project, model=model, version=version)
        else:
            raise InvalidArgument.field("image", "give sha256, or model and version")
        if image is None:
            raise NotFound(f"no such firmware image in project {registry.project}; upload it first")
        if spec.device_ids is not None:
            found = await self.store.target_devices(record.pk, spec.device_ids)
            missing = sorted(set(spec.device_ids) - {t.device_id for t in found})
            if missing:
                raise NotFound(f"device {missing[0]} is not in registry {registry}")
        rollout = await self.store.add_rollout(
            record.pk, image.sha256, spec.to_json(), self.manager.clock()
        )
        if rollout is None:
            raise FailedPrecondition(
                f"registry {registry} already has a running rollout; halt it or let it finish"
            )
        return await self._evaluate(registry, rollout, image)

    async def get(self, registry: RegistryName, rollout_id: str) -> dict[str, Any]:
        """The rollout and its counts, after moving it on if its devices allow."""
        record = await self._registry(registry)
        rollout = await self.store.get_rollout(record.pk, _rollout_id(rollout_id))
        if rollout is None:
            raise NotFound(f"rollout {rollout_id[:20]} not found in registry {registry}")
        return await self._evaluate(registry, rollout, await self._image(registry, rollout))

    async def list(self, registry: RegistryName) -> dict[str, Any]:
        """Every rollout of the registry, and how many of its devices run each version."""
        record = await self._registry(registry)
        views = [
            await self._evaluate(registry, rollout, await self._image(registry, rollout))
            for rollout in await self.store.list_rollouts(record.pk)
        ]
        devices = await self.store.target_devices(record.pk, None)
        return {"rollouts": views, "versions": _versions(devices)}

    async def halt(self, registry: RegistryName, rollout_id: str, reason: str) -> dict[str, Any]:
        record = await self._registry(registry)
        rollout = await self.store.get_rollout(record.pk, _rollout_id(rollout_id))
        if rollout is None:
            raise NotFound(f"rollout {rollout_id[:20]} not found in registry {registry}")
        if rollout.state != RUNNING:
            raise FailedPrecondition(f"rollout {rollout.id} is {rollout.state}, not RUNNING")
        await self.store.move_rollout(
            rollout.id,
            rollout.stage,
            rollout.stage,
            HALTED,
            f"halted by an operator: {reason}" if reason else "halted by an operator",
            self.manager.clock(),
        )
        return await self.get(registry, rollout_id)

    async def evaluate_running(self) -> None:
        """Move every running rollout on; the server calls this periodically so rollouts
        advance and halt without anyone asking for their status."""
        for name, rollout in await self.store.running_rollouts():
            await self._evaluate(name, rollout, await self._image(name, rollout))

    async def _registry(self, name: RegistryName) -> RegistryRecord:
        record = await self.manager.store.registries.get_registry(name)
        if record is None:
            raise NotFound(f"Registry {name} not found")
        return record

    async def _image(self, registry: RegistryName, rollout: RolloutRecord) -> ImageRecord:
        image = await self.store.get_image(registry.project, sha256=rollout.sha256)
        if image is None:
            raise NotFound(f"the image of rollout {rollout.id} is gone")
        return image

    async def _evaluate(
        self, registry: RegistryName, rollout: RolloutRecord, image: ImageRecord
    ) -> dict[str, Any]:
        spec = rollout.spec
        stages: list[float] = spec["stages"]
        rid = str(rollout.id)
        devices = {
            t.device_id: t
            for t in await self.store.target_devices(rollout.registry_pk, spec["deviceIds"])
        }
        document = {"rollout": rid, "manifest": json.loads(image.manifest)}
        # Each pass tells the current stage and judges it; an advance starts the next pass.
        while True:
            members = stage_members(list(devices), stages[rollout.stage], spec["minStageSize"])
            skipped: dict[str, str] = {}
            outcomes: dict[str, Outcome] = {}
            for device_id in members:
                target = devices[device_id]
                result = outcome(target.state_data, rid, image.version)
                problem = ""
                if result.kind == "pending":
                    problem = await self._tell(
                        registry, image, target, document, write=rollout.state == RUNNING
                    )
                if problem:
                    skipped[device_id] = problem
                else:
                    outcomes[device_id] = result
            counts = Counter(o.kind for o in outcomes.values())
            reported = counts["succeeded"] + counts["failed"]
            if rollout.state != RUNNING:
                break
            now = self.manager.clock()
            threshold = spec["failureThreshold"]
            if reported and counts["failed"] / reported > threshold:
                reason = (
                    f"stage {rollout.stage + 1} ({stages[rollout.stage]:g}%): "
                    f"{counts['failed']} of {reported} devices that reported refused the image, "
                    f"above the failure threshold {threshold:g}"
                )
                moved = (rollout.stage, HALTED, reason)
            elif counts["pending"] or skipped:
                # A skipped device has not reported either: the operator fixes its config
                # (it is told at the next evaluation) or halts the rollout.
                break
            elif rollout.stage + 1 == len(stages):
                moved = (rollout.stage, SUCCEEDED, "")
            else:
                moved = (rollout.stage + 1, RUNNING, "")
            if await self.store.move_rollout(rollout.id, rollout.stage, *moved, now):
                log.info("rollout %s of %s: stage %d, %s", rid, registry, moved[0] + 1, moved[1])
            # Moved by us or by another process: the row says where it stands now.
            fresh = await self.store.get_rollout(rollout.registry_pk, rollout.id)
            assert fresh is not None
            rollout = fresh
        return _view(registry, rollout, image, devices, members, outcomes, skipped)

    async def _tell(
        self,
        registry: RegistryName,
        image: ImageRecord,
        target: TargetDevice,
        document: dict[str, Any],
        write: bool,
    ) -> str:
        """Write the firmware key into the device's config (if `write`); the problem that
        prevents it, or "" when the device is told or could be.

        Written through the store rather than DeviceManager.modify_config: its one-update-a-
        second rule guards a device against a runaway operator, whereas a rollout writes each
        device once, and waiting out the rule for each device of a fleet would stall it. The
        write is still compare-and-set on the config version, so an operator's concurrent
        update is never lost; the loser is simply told on the next evaluation.
        """
        told = firmware_state(target.config_data)
        if told.get("rollout") == document["rollout"]:
            return ""
        # Relative to the HTTP bridge the device already talks to (see docs/firmware.md).
        device = quote(target.device_id, safe="")
        url = f"/ironcore/v1/{registry}/devices/{device}/firmware/{image.sha256}"
        personal = {**document, "url": url}
        try:
            data = merge_config(target.config_data, personal)
        except FailedPrecondition as problem:
            return problem.message
        if not write:
            return ""
        config = await self.manager.store.configs.modify_config(
            target.num_id,
            target.config_version,
            data,
            self.manager.clock(),
            limits.CONFIG_VERSIONS_KEPT,
        )
        if config is not None and self.manager.links is not None:
            await self.manager.links.config_changed(target.num_id, config)
        return ""


def _view(
    registry: RegistryName,
    rollout: RolloutRecord,
    image: ImageRecord,
    devices: dict[str, TargetDevice],
    members: list[str],
    outcomes: dict[str, Outcome],
    skipped: dict[str, str],
) -> dict[str, Any]:
    rid = str(rollout.id)
    spec = rollout.spec
    counts = Counter(o.kind for o in outcomes.values())
    failures = []
    for device_id in sorted(devices):
        result = outcome(devices[device_id].state_data, rid, image.version)
        if result.kind == "failed":
            failures.append(
                {"deviceId": device_id, "reason": result.reason, "message": result.message}
            )
    return {
        "id": rid,
        "name": f"{registry}/rollouts/{rid}",
        "image": image_wire(image),
        "target": {"deviceIds": spec["deviceIds"]} if spec["deviceIds"] else {"registry": True},
        "stages": spec["stages"],
        "failureThreshold": spec["failureThreshold"],
        "minStageSize": spec["minStageSize"],
        "state": rollout.state,
        "stage": rollout.stage,
        "stagePercent": spec["stages"][rollout.stage],
        "reason": rollout.reason,
        "createTime": format_timestamp(rollout.created_at),
        "updateTime": format_timestamp(rollout.updated_at),
        "devices": {
            "targeted": len(devices),
            "inStage": len(members),
            "succeeded": counts["succeeded"],
            "failed": counts["failed"],
            "pending": counts["pending"],
            "skipped": len(skipped),
        },
        "versions": _versions(list(devices.values())),
        "failures": failures,
        "skipped": [{"deviceId": d, "reason": r} for d, r in sorted(skipped.items())],
    }


def _versions(devices: list[TargetDevice]) -> dict[str, int]:
    """How many devices run each version, by their last state ("unknown": no firmware key)."""
    counts = Counter(
        str(v) if (v := running_version(firmware_state(t.state_data))) is not None else "unknown"
        for t in devices
    )
    return dict(sorted(counts.items()))


def image_wire(image: ImageRecord) -> dict[str, Any]:
    return {
        "sha256": image.sha256,
        "model": image.model,
        "version": image.version,
        "size": str(image.size),
        "createTime": format_timestamp(image.created_at),
    }


def _check_project(project: str) -> None:
    if not is_valid_project(project):
        raise InvalidArgument.field("parent", f"invalid project id {project[:60]!r}")


def _rollout_id(value: str) -> int:
    if not value.isdigit() or len(value) > 18:
        raise NotFound(f"rollout {value[:20]!r} not found")
    return int(value)


def _check_signature(manifest: bytes, image: Image, public_key_pem: str) -> None:
    try:
        key = serialization.load_pem_public_key(public_key_pem.encode())
    except (ValueError, TypeError):
        raise InvalidArgument.field("public_key", "is not a PEM public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise InvalidArgument.field("public_key", "is not an EC (P-256) public key")
    try:
        check(manifest, image, software_verifier(key), kid(key), None, 0)
    except (ManifestError, FirmwareRejected) as refused:
        raise InvalidArgument(f"{refused.reason}: {refused.message}") from None


def _write_durably(directory: Path, sha256: str, image: bytes) -> None:
    """Write beside, fsync, rename, fsync the directory: the upload is acknowledged only
    once the image would survive a power cut. ResourceExhausted when the disk is full (the
    partial file removed)."""
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / f".{sha256}.{os.getpid()}.partial"
    try:
        with partial.open("wb") as out:
            out.write(image)
            out.flush()
            os.fsync(out.fileno())
    except OSError as error:
        partial.unlink(missing_ok=True)
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ResourceExhausted(
                f"No room for the {len(image)}-byte image in {directory}: the disk is full"
            ) from None
        raise
    os.replace(partial, directory / sha256)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
