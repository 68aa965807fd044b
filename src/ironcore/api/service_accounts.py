"""Service account routes (ironcore's own prefix; Google's IAM API shapes): accounts and their
keys, for owners. The rules are ironcore.access.service_accounts."""

from __future__ import annotations

import base64
import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import Field

from ironcore.access.service_accounts import ServiceAccounts, account_name
from ironcore.api.deps import CallerDep, allowed, ok
from ironcore.api.oauth import token_uri
from ironcore.registry.store.service_accounts import AccountRecord, KeyRecord
from ironcore.registry.wire import Message, format_timestamp

router = APIRouter()
ACCOUNTS = "/ironcore/v1/projects/{project}/serviceAccounts"
ACCOUNT = ACCOUNTS + "/{account}"
KEYS = ACCOUNT + "/keys"
MANAGE = "ironcore.serviceAccounts.manage"


async def _accounts(request: Request) -> ServiceAccounts:
    accounts: ServiceAccounts = request.app.state.service_accounts
    return accounts


Accounts = Annotated[ServiceAccounts, Depends(_accounts)]


class CreateServiceAccountRequest(Message):
    account_id: str
    roles: list[str] = Field(default_factory=list)
    display_name: str = ""


def account_wire(account: AccountRecord) -> dict[str, Any]:
    """An account as Google IAM's ServiceAccount, with ironcore's `roles` and `createTime`."""
    return {
        "name": account_name(account),
        "projectId": account.project,
        "uniqueId": account.unique_id,
        "email": account.email,
        "displayName": account.display_name,
        "oauth2ClientId": account.unique_id,
        "roles": list(account.roles),
        "createTime": format_timestamp(account.created_at),
    }


def key_wire(project: str, key: KeyRecord) -> dict[str, Any]:
    """A key as Google IAM's ServiceAccountKey, without private data."""
    return {
        "name": f"projects/{project}/serviceAccounts/{key.email}/keys/{key.key_id}",
        "privateKeyType": "TYPE_GOOGLE_CREDENTIALS_FILE",
        "keyAlgorithm": "KEY_ALG_RSA_2048",
        "validAfterTime": format_timestamp(key.created_at),
        "validBeforeTime": "9999-12-31T23:59:59Z",
        "keyOrigin": "GOOGLE_PROVIDED",
        "keyType": "USER_MANAGED",
    }


@router.post(ACCOUNTS, name="CreateServiceAccount")
async def create_account(
    project: str, accounts: Accounts, caller: CallerDep, body: CreateServiceAccountRequest
) -> JSONResponse:
    allowed(caller, MANAGE, f"projects/{project}")
    created = await accounts.create(project, body.account_id, body.roles, body.display_name)
    return ok(account_wire(created))


@router.get(ACCOUNTS, name="ListServiceAccounts")
async def list_accounts(project: str, accounts: Accounts, caller: CallerDep) -> JSONResponse:
    allowed(caller, MANAGE, f"projects/{project}")
    return ok({"accounts": [account_wire(a) for a in await accounts.list_accounts(project)]})


@router.get(ACCOUNT, name="GetServiceAccount")
async def get_account(
    project: str, account: str, accounts: Accounts, caller: CallerDep
) -> JSONResponse:
    allowed(caller, MANAGE, f"projects/{project}")
    return ok(account_wire(await accounts.get(project, account)))


@router.delete(ACCOUNT, name="DeleteServiceAccount")
async def delete_account(
    project: str, account: str, request: Request, accounts: Accounts, caller: CallerDep
) -> JSONResponse:
    allowed(caller, MANAGE, f"projects/{project}")
    await accounts.delete(project, account)
    await request.app.state.auth.invalidated()
    return ok()


@router.post(KEYS, name="CreateServiceAccountKey")
async def create_key(
    project: str, account: str, request: Request, accounts: Accounts, caller: CallerDep
) -> JSONResponse:
    allowed(caller, MANAGE, f"projects/{project}")
    made = await accounts.create_key(project, account, token_uri(request))
    key_file = json.dumps(made.key_file, indent=2).encode()
    return ok(key_wire(project, made.key) | {"privateKeyData": base64.b64encode(key_file).decode()})


@router.get(KEYS, name="ListServiceAccountKeys")
async def list_keys(
    project: str, account: str, accounts: Accounts, caller: CallerDep
) -> JSONResponse:
    allowed(caller, MANAGE, f"projects/{project}")
    keys = await accounts.list_keys(project, account)
    return ok({"keys": [key_wire(project, k) for k in keys]})


@router.delete(KEYS + "/{key_id}", name="DeleteServiceAccountKey")
async def delete_key(
    project: str, account: str, key_id: str, request: Request, accounts: Accounts, caller: CallerDep
) -> JSONResponse:
    allowed(caller, MANAGE, f"projects/{project}")
    await accounts.delete_key(project, account, key_id)
    await request.app.state.auth.invalidated()
    return ok()
