"""Who is calling: the bearer token of an `Authorization` value (an HTTP header, gRPC
metadata), looked up and cached, as a `Caller`; or, on the Pub/Sub emulator port, whose
clients send no credentials, one fixed caller.

Every adapter authenticates here, so a credential means the same on every wire. Roles and
permissions are `access.roles`; admin tokens `access.tokens`; service accounts, their access
tokens and JWTs `access.service_accounts` and `access.assertions`.

Answers are cached for `_CACHE_SECONDS` per server, counted from before the lookup began, so
no server trusts an answer read before a change for longer than that after the change. That
is what makes revocation and rotation take effect on the next request on every server of a
cluster without a database round trip per request: `invalidated` forgets this server's answers
and, where other servers may share the database (PostgreSQL), waits the cache out before the
revoking call returns. On SQLite one server owns the database, and forgetting suffices.

An admin token's use is noted in memory (`AdminTokens.note_use`) and written behind, in batches
(`AdminTokens.flush_uses`, which the primary runs every `LAST_USED_SECONDS` and at shutdown).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Protocol

from ironcore.access.assertions import LEEWAY_SECONDS, looks_like_jwt, verify
from ironcore.access.policies import PolicyIndex
from ironcore.access.roles import NO_ROLE, Caller
from ironcore.access.service_accounts import (
    ACCESS_TOKEN_PREFIX,
    ServiceAccounts,
    service_account_caller,
)
from ironcore.access.tokens import TOKEN_PREFIX, AdminTokens, hash_token
from ironcore.errors import Unauthenticated
from ironcore.registry.store.tokens import TokenRecord
from ironcore.registry.wire import format_timestamp

log = logging.getLogger(__name__)
# How long a server trusts an answer it looked up; `invalidated` waits this long.
_CACHE_SECONDS = 2.0
# A token's last use is noted this often at most (so it may be listed up to this much early).
_NOTE_SECONDS = 1.0


# The caller of every call on the Pub/Sub emulator port: it may publish, read topics and
# subscriptions, create subscriptions and consume from them, and nothing else, unless
# `--pubsub-emulator-as SERVICE_ACCOUNT` names a service account to act as instead.
PUBSUB_EMULATOR = Caller("ironcore:pubsub-emulator", frozenset({"pubsub-client"}))


class Authenticator(Protocol):
    async def caller(self, authorization: str) -> Caller:
        """The caller a call's `Authorization` value stands for; Unauthenticated if none."""
        ...


class FixedCaller:
    """Every call is `caller`'s, whatever its `Authorization` value: for a port whose clients
    send no credentials (Google's Pub/Sub emulator protocol)."""

    def __init__(self, caller: Caller) -> None:
        self._caller = caller

    async def caller(self, authorization: str) -> Caller:
        return self._caller


def admin_caller(record: TokenRecord) -> Caller:
    """The caller of a valid admin token: global, named by its principal (`adminToken:<id>`,
    or its person's `user:<email>`, still granted what policies bind to `adminToken:<id>`)."""
    own = f"adminToken:{record.id}"
    roles = frozenset() if record.role == NO_ROLE else frozenset({record.role})
    aliases = () if record.principal == own else (own,)
    return Caller(record.principal, roles, aliases=aliases)


def credential_kind(authorization: str) -> str:
    """How a call authenticated, told by its credential's form (for the audit log): `adminToken`,
    `serviceAccountJwt`, `accessToken`, `none` without a bearer token, else `unknown`."""
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return "none"
    if looks_like_jwt(token):
        return "serviceAccountJwt"
    if token.startswith(ACCESS_TOKEN_PREFIX):
        return "accessToken"
    return "adminToken" if token.startswith(TOKEN_PREFIX) else "unknown"


class TokenAuthenticator:
    """Every bearer credential ironcore accepts, told apart by its form: a self-signed JWT of
    a service-account key (`access.assertions`), an access token from the token endpoint
    (`ACCESS_TOKEN_PREFIX`), or an admin token. Answers, refusals included, are cached for a
    moment, so a deleted key or revoked token stops working within `_CACHE_SECONDS`. Every
    caller is also granted what the IAM policies bind to it (`access.policies`)."""

    def __init__(
        self,
        tokens: AdminTokens,
        accounts: ServiceAccounts | None = None,
        audiences: frozenset[str] = frozenset(),
        shared: bool = False,
    ) -> None:
        """`shared`: other servers may use the same database (PostgreSQL), so `invalidated`
        waits out their caches."""
        self.tokens = tokens
        self.accounts = accounts
        self.audiences = audiences
        self.shared = shared
        # Token hash → (answer, until when it is trusted, the admin token's id or "").
        self._cache: dict[str, tuple[Caller | Unauthenticated, float, str]] = {}
        self._generation = 0  # `forget`s so far
        self._noted: dict[str, float] = {}  # admin token id → when its use was last noted
        self.policies = PolicyIndex(tokens.store)

    async def caller(self, authorization: str) -> Caller:
        """The caller an `Authorization` value (`Bearer <token>`) names; Unauthenticated if
        it is missing, malformed, unknown, revoked or expired."""
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("Request is missing an 'Authorization: Bearer <token>' header")
        await self.policies.fresh()
        digest = hash_token(token)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is None or cached[1] <= now:
            if len(self._cache) > 10_000:
                self._cache.clear()
            found: Caller | Unauthenticated
            token_id = ""
            generation = self._generation
            try:
                resolved, seconds, token_id = await self._resolve(token)
                found = replace(resolved, bound=self.policies.roles)
            except Unauthenticated as refused:
                found, seconds = refused, _CACHE_SECONDS
            cached = (found, now + seconds, token_id)
            if generation == self._generation:
                self._cache[digest] = cached
        if isinstance(cached[0], Unauthenticated):
            raise cached[0]
        # Noted at most once a second per token: reading the wall clock costs more than the
        # rest of a cached answer.
        if cached[2] and now - self._noted.get(cached[2], -_NOTE_SECONDS) >= _NOTE_SECONDS:
            self._noted[cached[2]] = now
            self.tokens.note_use(cached[2])
        return cached[0]

    async def _resolve(self, token: str) -> tuple[Caller, float, str]:
        """The caller of a token, for how long that answer may be cached, and the id of the
        admin token it is ("" for any other credential)."""
        if self.accounts is not None and looks_like_jwt(token):
            try:
                verified = await verify(
                    self.accounts, token, self.audiences, scope_instead_of_aud=True
                )
            except Unauthenticated as refused:
                log.warning("refused a service-account JWT: %s", refused.message)
                raise Unauthenticated(
                    f"The service-account JWT is not valid: {refused.message}"
                ) from None
            left = verified.expires_at + LEEWAY_SECONDS - time.time()
            return service_account_caller(verified.account), min(_CACHE_SECONDS, left), ""
        if self.accounts is not None and token.startswith(ACCESS_TOKEN_PREFIX):
            account = await self.accounts.access_token_account(token)
            if account is None:
                log.warning(
                    "refused an access token: unknown, expired, or its key or account deleted"
                )
                raise Unauthenticated(
                    "The access token is not valid (unknown or expired, or its key or service "
                    "account was deleted)"
                )
            return service_account_caller(account), _CACHE_SECONDS, ""
        record = await self.tokens.find(hash_token(token))
        if record is None:
            raise Unauthenticated("The bearer token is not valid (unknown or revoked)")
        seconds = _CACHE_SECONDS
        if record.expires_at is not None:
            left = (record.expires_at - self.tokens.clock()).total_seconds()
            if left <= 0:
                raise Unauthenticated(
                    f"The admin token {record.id} expired at {format_timestamp(record.expires_at)}"
                )
            seconds = min(seconds, left)
        return admin_caller(record), seconds, record.id

    def forget(self) -> None:
        """Forget every answer this server cached (something changed here), and any lookup
        in flight: it may have read the database before the change."""
        self._cache.clear()
        self._generation += 1

    async def invalidated(self) -> None:
        """A credential was revoked or changed: once this returns, no server answers a call
        from what it cached before. This server forgets now; other servers sharing the
        database stop trusting their answers within `_CACHE_SECONDS` of the change, so with
        `shared` this waits that long."""
        self.forget()
        if self.shared:
            await asyncio.sleep(_CACHE_SECONDS)
