"""Field masks and update masks, in the camelCase or snake_case spellings clients send.

gRPC clients sent snake_case paths; the Python REST client sends camelCase (`fieldMask=id,numId`).
Both are accepted; paths are kept in snake_case.
"""

from __future__ import annotations

import re
from typing import Any, get_origin

from pydantic import BaseModel
from pydantic.alias_generators import to_camel

from ironcore.errors import InvalidArgument

_CAMEL_HUMP = re.compile(r"(?<=[a-z0-9])([A-Z])")


def to_snake(segment: str) -> str:
    return _CAMEL_HUMP.sub(r"_\1", segment).lower()


def parse_mask(
    raw: str | None, model: type[BaseModel], field: str, allowed: frozenset[str] | None = None
) -> list[str]:
    """Split a comma list into snake_case paths, refusing paths the model does not have."""
    if not raw:
        return []
    paths = []
    for item in raw.split(","):
        path = ".".join(to_snake(part) for part in item.strip().split("."))
        if not path:
            continue
        if not _exists(model, path.split(".")):
            raise InvalidArgument.field(field, f"unknown field {item.strip()!r}")
        if allowed is not None and path not in allowed:
            raise InvalidArgument.field(
                field,
                f"field {item.strip()!r} cannot be updated; "
                f"updatable: {', '.join(sorted(allowed))}",
            )
        paths.append(path)
    return paths


def _exists(model: type[BaseModel], parts: list[str]) -> bool:
    info = model.model_fields.get(parts[0])
    if info is None:
        return False
    if len(parts) == 1:
        return True
    if get_origin(info.annotation) in (list, dict):
        # A FieldMask path may end at a repeated or map field but not go through one.
        return False
    return any(_exists(candidate, parts[1:]) for candidate in _model_args(info.annotation))


def _model_args(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [arg for a in getattr(annotation, "__args__", ()) for arg in _model_args(a)]


def select_fields(
    wire: dict[str, Any], paths: list[str], always: tuple[str, ...]
) -> dict[str, Any]:
    """Keep only the masked fields (and the `always` ones) of a resource in wire form."""
    out: dict[str, Any] = {key: wire[key] for key in always if key in wire}
    for path in paths:
        parts = [to_camel(part) for part in path.split(".")]
        source: Any = wire
        target = out
        for part in parts[:-1]:
            source = source.get(part) if isinstance(source, dict) else None
            if source is None:
                break
            target = target.setdefault(part, {})
        else:
            if isinstance(source, dict) and parts[-1] in source:
                target[parts[-1]] = source[parts[-1]]
    return out
