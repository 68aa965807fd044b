"""A project's IAM policy: `POST /ironcore/v1/projects/{p}:getIamPolicy|setIamPolicy|
testIamPermissions`, Resource Manager's verbs on ironcore's path. Its bindings hold on every
registry, device, topic and subscription of the project (`access.policies`)."""

from __future__ import annotations

from fastapi import APIRouter, Body, Request
from fastapi.responses import JSONResponse

from ironcore.access.policies import ProjectPolicies, project_name
from ironcore.access.tokens import AdminTokens
from ironcore.api.deps import CallerDep, allowed, ok
from ironcore.api.registries import (
    GetIamPolicyRequest,
    SetIamPolicyRequest,
    TestIamPermissionsRequest,
    policy_wire,
)
from ironcore.registry.iam import applicable

router = APIRouter()
PROJECT = "/ironcore/v1/projects/{project}"


def _policies(request: Request) -> ProjectPolicies:
    tokens: AdminTokens = request.app.state.tokens
    return ProjectPolicies(tokens.store)


@router.post(PROJECT + ":getIamPolicy", name="GetProjectIamPolicy")
async def get_project_iam_policy(
    project: str,
    request: Request,
    caller: CallerDep,
    body: GetIamPolicyRequest = Body(GetIamPolicyRequest()),
) -> JSONResponse:
    allowed(caller, "resourcemanager.projects.getIamPolicy", project_name(project))
    return ok(policy_wire(await _policies(request).get_iam_policy(project)))


@router.post(PROJECT + ":setIamPolicy", name="SetProjectIamPolicy")
async def set_project_iam_policy(
    project: str, request: Request, caller: CallerDep, body: SetIamPolicyRequest
) -> JSONResponse:
    allowed(caller, "resourcemanager.projects.setIamPolicy", project_name(project))
    return ok(policy_wire(await _policies(request).set_iam_policy(project, body.policy)))


@router.post(PROJECT + ":testIamPermissions", name="TestProjectIamPermissions")
async def test_project_iam_permissions(
    project: str, caller: CallerDep, body: TestIamPermissionsRequest
) -> JSONResponse:
    name = project_name(project)
    granted = [p for p in applicable("projects", body.permissions) if caller.may(p, name)]
    return ok({"permissions": granted} if granted else {})
