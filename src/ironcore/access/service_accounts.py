"""Service accounts: principals of one project, with Google's role names, that authenticate
with Google-format JSON key files.

An account is `NAME@PROJECT.iam.gserviceaccount.com`, so IAM member strings
(`serviceAccount:...`) keep their form. `create_key` makes an RSA 2048 key pair and returns
the private key once, in the key file `google.oauth2.service_account` reads; only the public
key is kept. What a key file proves is `access.assertions`.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ironcore.access.roles import GOOGLE_ROLES, PERMISSIONS, Caller
from ironcore.access.tokens import hash_token
from ironcore.errors import FailedPrecondition, InvalidArgument, NotFound
from ironcore.registry.names import is_valid_project
from ironcore.registry.store.database import Database
from ironcore.registry.store.service_accounts import (
    AccountRecord,
    KeyRecord,
    ServiceAccountStore,
)

EMAIL_DOMAIN = "iam.gserviceaccount.com"
# Google's rule for an account id (the part of the email before '@').
_ACCOUNT_ID = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
ACCOUNT_ID_MIN, ACCOUNT_ID_MAX = 6, 30
DISPLAY_NAME_MAX = 100
# Access tokens the token endpoint issues: opaque, recognizable, valid this long.
ACCESS_TOKEN_PREFIX = "ic-sa_"
ACCESS_TOKEN_SECONDS = 3600
# The fields of a key file `token_uri` and the service's own URLs do not cover: Google's
# values, which no service-account flow fetches.
_GOOGLE_AUTH_URI = "https://accounts.google.com/o/oauth2/auth"
_GOOGLE_CERTS_URI = "https://www.googleapis.com/oauth2/v1/certs"
_GOOGLE_ROBOT_CERTS = "https://www.googleapis.com/robot/v1/metadata/x509/"
UNIVERSE_DOMAIN = "googleapis.com"


def service_account_caller(account: AccountRecord) -> Caller:
    """The caller an account's credentials stand for: its roles, in its project only."""
    roles = frozenset(r for r in account.roles if r in PERMISSIONS)
    return Caller(f"serviceAccount:{account.email}", roles, account.project)


def account_name(account: AccountRecord) -> str:
    return f"projects/{account.project}/serviceAccounts/{account.email}"


@dataclass(frozen=True)
class NewKey:
    """A key just made: its record, and the key file, which is shown this once."""

    key: KeyRecord
    key_file: dict[str, str]


class ServiceAccounts:
    def __init__(
        self, db: Database, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self.store = ServiceAccountStore(db)
        self.clock = clock

    # Accounts

    async def create(
        self, project: str, account_id: str, roles: Iterable[str], display_name: str = ""
    ) -> AccountRecord:
        _check_project(project)
        if not _valid_account_id(account_id):
            raise InvalidArgument.field(
                "accountId",
                f"{account_id[:40]!r} is not a valid account id: {ACCOUNT_ID_MIN} to "
                f"{ACCOUNT_ID_MAX} characters from [a-z0-9-], starting with a letter and not "
                "ending with '-'",
            )
        wanted = list(dict.fromkeys(roles))
        for role in wanted:
            if role not in GOOGLE_ROLES:
                raise InvalidArgument.field(
                    "roles", f"unknown role {role[:80]!r}; roles are {', '.join(GOOGLE_ROLES)}"
                )
        if len(display_name) > DISPLAY_NAME_MAX:
            raise InvalidArgument.field("displayName", f"at most {DISPLAY_NAME_MAX} characters")
        account = AccountRecord(
            email=f"{account_id}@{project}.{EMAIL_DOMAIN}",
            project=project,
            account_id=account_id,
            # Google's unique ids (the key file's client_id) are 21 digits.
            unique_id=str(10**20 + secrets.randbelow(9 * 10**20)),
            display_name=display_name,
            roles=tuple(wanted),
            created_at=self.clock(),
        )
        await self.store.add_account(account)
        return account

    async def list_accounts(self, project: str) -> list[AccountRecord]:
        _check_project(project)
        return await self.store.list_accounts(project)

    async def get(self, project: str, name: str) -> AccountRecord:
        """An account of `project` by its email or its account id."""
        _check_project(project)
        account_id, at, domain = name.partition("@")
        email = f"{account_id}@{project}.{EMAIL_DOMAIN}"
        # Only a well-formed id of this project's domain can name an account: nothing else
        # reaches SQL (PostgreSQL refuses some characters outright).
        named = _valid_account_id(account_id) and (not at or domain == email.partition("@")[2])
        found = await self.store.get_account(email) if named else None
        if found is None:
            raise NotFound(f"Service account {name[:300]!r} does not exist in project {project}")
        return found

    async def find(self, name: str) -> AccountRecord:
        """An account of any project by its email, or by its account id if one project alone
        has an account of that id (`--pubsub-emulator-as`)."""
        account_id, at, domain = name.partition("@")
        if at:
            project = domain.removesuffix("." + EMAIL_DOMAIN)
            if project != domain and is_valid_project(project):
                return await self.get(project, account_id)
            raise NotFound(f"{name[:300]!r} is not a service account's email")
        matches = await self.store.find_accounts(name) if _valid_account_id(name) else []
        if not matches:
            raise NotFound(f"No service account has the id {name[:60]!r}")
        if len(matches) > 1:
            raise FailedPrecondition(
                f"Several projects have a service account {name!r}; name it by its email: "
                + ", ".join(a.email for a in matches)
            )
        return matches[0]

    async def delete(self, project: str, name: str) -> None:
        """Delete an account with its keys: every credential of it stops working."""
        account = await self.get(project, name)
        await self.store.delete_account(account.email)

    # Keys

    async def create_key(self, project: str, name: str, token_uri: str) -> NewKey:
        account = await self.get(project, name)
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public_pem = (
            private.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )
        private_pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        key = KeyRecord(secrets.token_hex(20), account.email, public_pem, self.clock())
        await self.store.add_key(key.key_id, key.email, key.public_key, key.created_at)
        key_file = {
            "type": "service_account",
            "project_id": account.project,
            "private_key_id": key.key_id,
            "private_key": private_pem,
            "client_email": account.email,
            "client_id": account.unique_id,
            "auth_uri": _GOOGLE_AUTH_URI,
            "token_uri": token_uri,
            "auth_provider_x509_cert_url": _GOOGLE_CERTS_URI,
            "client_x509_cert_url": _GOOGLE_ROBOT_CERTS + account.email.replace("@", "%40"),
            "universe_domain": UNIVERSE_DOMAIN,
        }
        return NewKey(key, key_file)

    async def list_keys(self, project: str, name: str) -> list[KeyRecord]:
        account = await self.get(project, name)
        return await self.store.list_keys(account.email)

    async def delete_key(self, project: str, name: str, key_id: str) -> None:
        """Delete a key: JWTs it signed and access tokens issued for it stop working."""
        account = await self.get(project, name)
        if not _is_key_id(key_id) or not await self.store.delete_key(
            account.email, key_id, self.clock()
        ):
            raise NotFound(f"Service account {account.email} has no key {key_id[:60]!r}")

    # What credentials prove (access.assertions, access.callers)

    async def signing_key(self, key_id: str) -> tuple[AccountRecord, str] | None:
        """The account and public key PEM of a key that verifies now; None for a deleted or
        unknown key, or one of a deleted account."""
        if not _is_key_id(key_id):
            return None
        return await self.store.signing_key(key_id)

    async def issue_access_token(self, key_id: str) -> tuple[str, int]:
        """A new access token for the account of `key_id`, and its lifetime in seconds."""
        token = ACCESS_TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = self.clock()
        expires = now + timedelta(seconds=ACCESS_TOKEN_SECONDS)
        await self.store.add_access_token(hash_token(token), key_id, expires, now)
        return token, ACCESS_TOKEN_SECONDS

    async def access_token_account(self, token: str) -> AccountRecord | None:
        """The account of a valid access token; None if unknown, expired, or its key or
        account was deleted."""
        return await self.store.access_token(hash_token(token), self.clock())


def _is_key_id(key_id: str) -> bool:
    """Whether `key_id` has the form of the ids `create_key` makes (40 hex digits): nothing
    else is looked up."""
    return len(key_id) == 40 and all(c in "0123456789abcdef" for c in key_id)


def _valid_account_id(account_id: str) -> bool:
    return ACCOUNT_ID_MIN <= len(account_id) <= ACCOUNT_ID_MAX and bool(
        _ACCOUNT_ID.fullmatch(account_id)
    )


def _check_project(project: str) -> None:
    if not is_valid_project(project):
        raise InvalidArgument.field("project", f"{project[:100]!r} is not a valid project id")
