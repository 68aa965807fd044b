"""The Cloud IoT Core v1 discovery document, generated from the app's route table.

Older backends build their REST client with `googleapiclient.discovery.build("cloudiot", "v1")`,
which reads this document to learn every resource and method. It is derived from the FastAPI
routes under `/v1/projects/{project}/locations/` (Cloud IoT Core's own surface), so a route added
there appears here without further work. ironcore's own routes (`/ironcore/v1/…`: tokens,
manifests, firmware, key rotation) and the Pub/Sub routes are left out: they belong to other
APIs than `cloudiot v1`, and a discovery client built for it would never call them.

Google's document names resources by the whole resource name (`v1/{+name}`), not by its parts;
each route's `{project}/…/{x}` run becomes one reserved-expansion parameter with a pattern, so
the client sends the path the route already matches.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.routing import BaseRoute

from ironcore.api.envelope import error_response
from ironcore.errors import Code

router = APIRouter()
ROUTE_PREFIX = "/v1/projects/{project}/locations/"
# Google's parameter names for the verbs that do not act on `name`.
_VERB_PARAMETERS = {
    "bindDeviceToGateway": "parent",
    "unbindDeviceFromGateway": "parent",
    "getIamPolicy": "resource",
    "setIamPolicy": "resource",
    "testIamPermissions": "resource",
}
_SCALARS = {"string", "integer", "number", "boolean"}


@router.get("/$discovery/rest", include_in_schema=False)
async def discovery_rest(request: Request, version: str = "v1") -> Response:
    if version != "v1":
        return error_response(Code.NOT_FOUND, f"No discovery document for cloudiot {version}")
    return JSONResponse(document(request.app, _root_url(request)))


@router.get("/discovery/v1/apis/cloudiot/v1/rest", include_in_schema=False)
async def discovery_apis(request: Request) -> JSONResponse:
    return JSONResponse(document(request.app, _root_url(request)))


def _root_url(request: Request) -> str:
    public: str = request.app.state.public_url
    return public or str(request.base_url)


def document(app: FastAPI, root_url: str) -> dict[str, Any]:
    """The RestDescription of `cloudiot v1` for the routes `app` serves, rooted at `root_url`."""
    schemas: dict[str, Any] = {"Empty": {"id": "Empty", "type": "object", "properties": {}}}
    resources: dict[str, Any] = {}
    routes = [r for r in api_routes(app.routes) if r.path.startswith(ROUTE_PREFIX)]
    # Collections whose members have routes of their own take a `parent`; the rest
    # (configVersions, states) are listed by the `name` of the resource they belong to.
    collections = {c for r in routes for c in re.findall(r"/(\w+)/\{", r.path)}
    bodies = {_resource_key(r.path): r for r in routes if _method_name(r) == "create"}
    # The group forms of a method are unnamed routes of the same endpoint as the named one.
    names = {r.endpoint: r.name for r in routes if r.include_in_schema}
    for route in routes:
        node: dict[str, Any] = {"resources": resources}
        for part in _resource_path(route.path):
            node = node.setdefault("resources", {}).setdefault(part, {})
        method = _method(route, names.get(route.endpoint, route.name), collections, bodies, schemas)
        node.setdefault("methods", {})[_method_name(route)] = method
    return {
        "kind": "discovery#restDescription",
        "discoveryVersion": "v1",
        "id": "cloudiot:v1",
        "name": "cloudiot",
        "version": "v1",
        "title": "Cloud IoT API (ironcore)",
        "protocol": "rest",
        "rootUrl": root_url,
        "servicePath": "",
        "baseUrl": root_url,
        "parameters": {
            "alt": {"type": "string", "location": "query", "default": "json"},
            "fields": {"type": "string", "location": "query"},
        },
        "resources": resources,
        "schemas": schemas,
    }


def api_routes(routes: Sequence[BaseRoute]) -> Iterator[APIRoute]:
    """Every APIRoute, including those of routers the app includes (which FastAPI keeps as
    one entry per router; ironcore includes them without a prefix)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        included = getattr(route, "original_router", None)
        if isinstance(included, APIRouter):
            yield from api_routes(included.routes)


def _split(path: str) -> tuple[str, str]:
    """The path up to its last `{param}`, and what follows it (`/devices`, `:verb`, ``)."""
    end = path.rindex("}") + 1
    return path[:end], path[end:]


def _resource_path(path: str) -> list[str]:
    """`projects`, `locations`, `registries`, `devices`, … for the resource a route acts on."""
    named, rest = _split(path)
    parts = [p for p in named.split("/")[2:] if not p.startswith("{")]
    collection = rest.split(":")[0].strip("/")
    return [*parts, collection] if collection else parts


def _resource_key(path: str) -> str:
    return ".".join(_resource_path(path))


def _method_name(route: APIRoute) -> str:
    rest = _split(route.path)[1]
    if ":" in rest:
        return rest.split(":", 1)[1]
    [http] = sorted(route.methods or ())
    if rest:
        return {"GET": "list", "POST": "create"}[http]
    return {"GET": "get", "PATCH": "patch", "DELETE": "delete", "PUT": "update"}[http]


def _method(
    route: APIRoute,
    operation: str,
    collections: set[str],
    bodies: dict[str, APIRoute],
    schemas: dict[str, Any],
) -> dict[str, Any]:
    named, rest = _split(route.path)
    name = _method_name(route)
    collection = rest.split(":")[0].strip("/")
    if name in _VERB_PARAMETERS:
        parameter = _VERB_PARAMETERS[name]
    elif collection in collections:
        parameter = "parent"
    else:
        parameter = "name"
    pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", named.removeprefix("/v1/")) + "$"
    parameters: dict[str, Any] = {
        parameter: {"type": "string", "location": "path", "required": True, "pattern": pattern}
    }
    for field in route.dependant.query_params:
        parameters[field.alias] = {"location": "query", **_query_type(field.field_info.annotation)}
    path = "v1/{+" + parameter + "}" + rest
    [http_method] = sorted(route.methods or ())
    method: dict[str, Any] = {
        "id": "cloudiot." + ".".join([*_resource_path(route.path), name]),
        "path": path,
        "flatPath": path,
        "httpMethod": http_method,
        "parameters": parameters,
        "parameterOrder": [parameter],
        "description": operation,
    }
    body = route.body_field.field_info.annotation if route.body_field else None
    if isinstance(body, type) and issubclass(body, BaseModel):
        method["request"] = {"$ref": _add_schema(body, schemas)}
    method["response"] = {"$ref": _response(route, operation, name, bodies, schemas)}
    return method


def _response(
    route: APIRoute,
    operation: str,
    name: str,
    bodies: dict[str, APIRoute],
    schemas: dict[str, Any],
) -> str:
    """The response schema: the declared model, else the resource itself for the standard
    methods that return it, else an open object named for the operation (the routes return
    JSONResponse, and the client needs a schema only to parse the body as JSON)."""
    model = route.response_model
    if isinstance(model, type) and issubclass(model, BaseModel):
        return _add_schema(model, schemas)
    if name == "delete":
        return "Empty"
    create = bodies.get(_resource_key(route.path))
    if name in ("get", "patch", "create") and create is not None and create.body_field:
        annotation = create.body_field.field_info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return _add_schema(annotation, schemas)
    schema_id = operation + "Response"
    schemas.setdefault(schema_id, {"id": schema_id, "type": "object"})
    return schema_id


def _query_type(annotation: Any) -> dict[str, Any]:
    origin = getattr(annotation, "__origin__", None)
    if origin is list:
        return {**_query_type(annotation.__args__[0]), "repeated": True}
    if annotation is bool:
        return {"type": "boolean"}
    if annotation is int:
        return {"type": "integer", "format": "int32"}
    return {"type": "string"}


def _add_schema(model: type[BaseModel], schemas: dict[str, Any]) -> str:
    """Adds `model` and every model it refers to as discovery schemas; returns its id."""
    generated = model.model_json_schema(by_alias=True, ref_template="{model}")
    for schema_id, definition in generated.pop("$defs", {}).items():
        schemas[schema_id] = _schema(definition, schema_id)
    schemas[model.__name__] = _schema(generated, model.__name__)
    return model.__name__


def _schema(json_schema: dict[str, Any], schema_id: str | None = None) -> dict[str, Any]:
    """A JSON Schema (as pydantic writes it) in the discovery document's schema dialect."""
    if "$ref" in json_schema:
        return {"$ref": json_schema["$ref"]}
    for combined in ("anyOf", "oneOf", "allOf"):
        if combined in json_schema:
            # The first form is the one the API writes (enums: by name, not number).
            options = [s for s in json_schema[combined] if s.get("type") != "null"]
            return _schema(options[0]) if options else {"type": "any"}
    kind = json_schema.get("type")
    out: dict[str, Any] = {"id": schema_id} if schema_id else {}
    if "description" in json_schema:
        out["description"] = json_schema["description"]
    if "enum" in json_schema:
        out.update(type="string", enum=[str(v) for v in json_schema["enum"]])
    elif kind in _SCALARS:
        out["type"] = kind
        if "format" in json_schema:
            out["format"] = json_schema["format"]
        elif kind == "integer":
            out["format"] = "int32"
    elif kind == "array":
        out.update(type="array", items=_schema(json_schema.get("items", {})))
    elif kind == "object" or "properties" in json_schema:
        out["type"] = "object"
        properties = json_schema.get("properties", {})
        if properties:
            out["properties"] = {k: _schema(v) for k, v in properties.items()}
        extra = json_schema.get("additionalProperties")
        if isinstance(extra, dict):
            out["additionalProperties"] = _schema(extra)
    else:
        out["type"] = "any"
    return out
