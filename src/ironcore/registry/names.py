"""Resource names of the device manager and the ids inside them.

A device segment may be the string id or the numeric id; names ironcore returns always end in
the numeric id, as Cloud IoT Core's did.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ironcore import limits
from ironcore.errors import InvalidArgument

# Project and location ids are the caller's to choose; these keep them usable in a path.
_PROJECT = re.compile(r"[a-zA-Z0-9][-a-zA-Z0-9_.:~]{0,99}")
_LOCATION = re.compile(r"[a-z][-a-z0-9]{0,62}")
# Numeric ids are stored as signed 64-bit integers; a larger number names no device.
NUM_ID_LIMIT = 2**63 - 1


def check_id(value: str, field: str) -> str:
    if not limits.is_valid_id(value):
        raise InvalidArgument.field(
            field,
            f"{value[:60]!r} is not a valid id: 3 to 255 characters from [a-zA-Z0-9-._+~%], "
            "starting with a letter, and not starting with 'goog'",
        )
    return value


def is_valid_project(value: str) -> bool:
    return bool(_PROJECT.fullmatch(value))


def parse_num_id(value: str, field: str) -> int:
    """A numeric device id given as decimal text; it has to fit the database's int64."""
    if not (value.isascii() and value.isdigit()) or int(value) > NUM_ID_LIMIT:
        raise InvalidArgument.field(field, f"{value[:40]!r} is not a numeric device id")
    return int(value)


@dataclass(frozen=True, slots=True)
class LocationName:
    project: str
    location: str

    @classmethod
    def parse(cls, project: str, location: str) -> LocationName:
        if not is_valid_project(project):
            raise InvalidArgument.field("parent", f"invalid project id {project[:60]!r}")
        if not _LOCATION.fullmatch(location):
            raise InvalidArgument.field("parent", f"invalid location {location[:60]!r}")
        return cls(project, location)

    def __str__(self) -> str:
        return f"projects/{self.project}/locations/{self.location}"


@dataclass(frozen=True, slots=True)
class RegistryName:
    location: LocationName
    registry: str

    @classmethod
    def parse(cls, project: str, location: str, registry: str) -> RegistryName:
        return cls(LocationName.parse(project, location), check_id(registry, "name"))

    @property
    def project(self) -> str:
        return self.location.project

    def __str__(self) -> str:
        return f"{self.location}/registries/{self.registry}"


@dataclass(frozen=True, slots=True)
class DeviceRef:
    """A device as a request names it: by string id or by numeric id."""

    registry: RegistryName
    device_id: str | None
    num_id: int | None

    @classmethod
    def parse(cls, registry: RegistryName, segment: str, field: str = "name") -> DeviceRef:
        if segment.isascii() and segment.isdigit():
            return cls(registry, None, parse_num_id(segment, field))
        return cls(registry, check_id(segment, field), None)

    def __str__(self) -> str:
        return f"{self.registry}/devices/{self.device_id or self.num_id}"


def device_name(registry: RegistryName, num_id: int) -> str:
    return f"{registry}/devices/{num_id}"


# Full resource names, as gRPC requests carry them (REST takes the same parts from its path).
# A device may be named under a registry's group (`registries/r/groups/g/devices/d`), as in v1.
_LOCATION_NAME = re.compile(r"projects/([^/]+)/locations/([^/]+)")
_REGISTRY_NAME = re.compile(_LOCATION_NAME.pattern + r"/registries/([^/]+)")
_DEVICE_NAME = re.compile(_REGISTRY_NAME.pattern + r"(?:/groups/[^/]+)?/devices/([^/]+)")


def _match(pattern: re.Pattern[str], text: str, field: str, shape: str) -> re.Match[str]:
    found = pattern.fullmatch(text)
    if found is None:
        raise InvalidArgument.field(field, f"{text[:120]!r} is not of the form {shape}")
    return found


def parse_location_name(text: str, field: str = "parent") -> LocationName:
    """`projects/P/locations/L`."""
    found = _match(_LOCATION_NAME, text, field, "projects/P/locations/L")
    return LocationName.parse(*found.groups())


def parse_registry_name(text: str, field: str = "name") -> RegistryName:
    """`projects/P/locations/L/registries/R`."""
    found = _match(_REGISTRY_NAME, text, field, "projects/P/locations/L/registries/R")
    return RegistryName.parse(*found.groups())


def parse_device_name(text: str, field: str = "name") -> DeviceRef:
    """`projects/P/locations/L/registries/R/devices/D`, D a string or numeric id."""
    found = _match(_DEVICE_NAME, text, field, "projects/P/locations/L/registries/R/devices/D")
    project, location, registry, device = found.groups()
    return DeviceRef.parse(RegistryName.parse(project, location, registry), device, field)
