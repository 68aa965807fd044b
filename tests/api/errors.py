"""The Google error envelope every refusal of the admin API is sent in, checked."""

from __future__ import annotations

from typing import Any

import httpx

BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"


def field_violations(error: dict[str, Any]) -> list[str]:
    """The fields a refusal's google.rpc.BadRequest details name."""
    return [
        violation["field"]
        for detail in error["details"]
        if detail["@type"] == BAD_REQUEST
        for violation in detail["fieldViolations"]
    ]


def assert_error(
    response: httpx.Response, http: int, status: str, field: str | None = None
) -> dict[str, Any]:
    """Check the Google error envelope; `field`, when given, must be (the start of) the name of
    a field violation and appear in the message. The envelope's `error`."""
    assert response.status_code == http, response.text
    body = response.json()
    assert list(body) == ["error"]
    error: dict[str, Any] = body["error"]
    assert set(error) == {"code", "message", "status", "details"}
    assert error["code"] == http
    assert error["status"] == status
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["details"], list)
    if field is not None:
        violations = field_violations(error)
        assert any(v.startswith(field) for v in violations), (field, violations)
        assert field in error["message"], (field, error["message"])
    return error
