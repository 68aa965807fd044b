"""The JSON error envelope of Google APIs, which google-api-core turns back into exceptions.

`{"error": {"code": <http status>, "message": ..., "status": "<google.rpc.Code name>",
"details": [...]}}`; field problems travel as a google.rpc.BadRequest detail.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from ironcore.errors import Code, FieldViolation


def error_response(
    code: Code,
    message: str,
    violations: list[FieldViolation] | None = None,
    http_status: int | None = None,
) -> JSONResponse:
    """The envelope for `code`; `http_status` overrides the code's usual HTTP status (405)."""
    status = http_status or code.http_status
    details: list[dict[str, Any]] = []
    if violations:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [
                    {"field": v.field, "description": v.description} for v in violations
                ],
            }
        )
    body = {
        "error": {
            "code": status,
            "message": message,
            "status": code.name,
            "details": details,
        }
    }
    return JSONResponse(body, status_code=status)
