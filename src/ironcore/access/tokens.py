"""Admin tokens: bearer tokens, each with a principal, a role, an optional expiry, and the time
it was last used.

A token's principal is the IAM member it acts as: `adminToken:<id>`, its own, or
`user:<email>` for a token created for a person (`--user`), so that every token of that person
(a laptop's, a CI job's) is granted what policies bind to the person. A token's role may be
`none`: it then holds only what policies grant.

A token is created by `ironcore tokens create` (or the first `ironcore serve`), shown once and
kept only as a SHA-256 hash. It carries its id, which listings show and rotation and
revocation take. Rotation gives a token a new secret and keeps everything else (id, principal,
role, name, expiry); the old secret stops working as a revoked token does (see
`access.callers.TokenAuthenticator.invalidated`). A token's uses are noted in memory and
written behind in batches (`note_use`, `flush_uses`), never a write per request.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from ironcore.access.roles import NO_ROLE, ROLES
from ironcore.errors import FailedPrecondition, InvalidArgument, NotFound
from ironcore.registry.iam import EMAIL_MAX, is_email
from ironcore.registry.store import Store
from ironcore.registry.store.tokens import TokenRecord

# An admin token shows its id (to list, rotate and revoke it) and carries its secret after it.
TOKEN_PREFIX = "ic_"
TOKEN_NAME_MAX = 200
# The longest lifetime a token may be given: ten years (and no datetime overflow).
MAX_LIFETIME = timedelta(days=3650)
# How often a server writes the last uses it noted (`flush_uses`); listings lag by up to this.
LAST_USED_SECONDS = 60.0

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(?:\d{1,9}[smhdw])+")
_PART = re.compile(r"(\d+)([smhdw])")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_duration(text: str) -> timedelta:
    """A lifetime written as whole numbers of units, largest first or not: `90s`, `5m`, `12h`,
    `30d`, `2w`, `1d12h`. More than zero and at most MAX_LIFETIME; ValueError otherwise."""
    value = text.strip()
    if not value.isascii() or not _DURATION.fullmatch(value):
        raise ValueError(
            f"{text!r:.40} is not a duration: write whole numbers with units s, m, h, d or w "
            "(90s, 5m, 12h, 30d, 1d12h)"
        )
    seconds = sum(int(n) * _UNITS[unit] for n, unit in _PART.findall(value))
    if seconds <= 0:
        raise ValueError("a duration must be more than zero")
    if seconds > MAX_LIFETIME.total_seconds():
        raise ValueError(f"a duration may be at most {MAX_LIFETIME.days} days")
    return timedelta(seconds=seconds)


def user_principal(user: str) -> str:
    """The member `user:<email>` of the person `user` names (an email address, any case);
    InvalidArgument naming the field `user` if it is not one."""
    if not is_email(user):
        raise InvalidArgument.field(
            "user",
            f"{user[:100]!r} is not an email address (like alice@example.com; at most "
            f"{EMAIL_MAX} characters, ASCII)",
        )
    return f"user:{user.lower()}"


def token_principal(token: str, user: str = "") -> str:
    """The principal of the admin token `token` (`ic_<id>_...`) created for `user`, or for
    no one."""
    return user_principal(user) if user else f"adminToken:{_id_of(token)}"


def _id_of(token: str) -> str:
    return token.removeprefix(TOKEN_PREFIX).partition("_")[0]


def _valid_id(token_id: str) -> bool:
    # Ids are hex (see create); anything else names no token and stays out of SQL.
    return token_id.isascii() and token_id.isalnum() and len(token_id) <= 32


class AdminTokens:
    def __init__(
        self, store: Store, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self.store = store
        self.clock = clock
        self._uses: dict[str, datetime] = {}  # token id → its last use not yet written

    async def create(
        self, role: str, name: str, expires_at: datetime | None = None, user: str = ""
    ) -> str:
        """Create an admin token and return it; only its hash is kept. It stops working at
        `expires_at`, if given (which must be in the future, within MAX_LIFETIME). With
        `user` (an email address) it acts as `user:<email>`, else as `adminToken:<id>`."""
        if role not in ROLES:
            raise InvalidArgument.field(
                "role",
                f"must be one of {', '.join(ROLES)} ({NO_ROLE}: only what IAM policies grant)",
            )
        # Refused rather than cut, so the name shown at creation is the name listed later.
        if len(name) > TOKEN_NAME_MAX:
            raise InvalidArgument.field("name", f"at most {TOKEN_NAME_MAX} characters")
        now = self.clock()
        if expires_at is not None and expires_at <= now:
            raise InvalidArgument.field("expireTime", "must be in the future")
        if expires_at is not None and expires_at - now > MAX_LIFETIME:
            raise InvalidArgument.field("expireTime", f"at most {MAX_LIFETIME.days} days ahead")
        token_id = secrets.token_hex(6)
        token = _new_token(token_id)
        await self.store.tokens.add_token(
            token_id, name, role, hash_token(token), token_principal(token, user), now, expires_at
        )
        return token

    async def list_tokens(self) -> list[TokenRecord]:
        return await self.store.tokens.list_tokens()

    async def revoke(self, token_id: str) -> None:
        if not _valid_id(token_id) or not await self.store.tokens.revoke_token(
            token_id, self.clock()
        ):
            raise NotFound(f"No active admin token with id {token_id!r}")

    async def rotate(self, token_id: str) -> tuple[str, TokenRecord]:
        """A new secret for the token `token_id`, returned once with the token's record; the
        old secret is no longer valid. NotFound for no such token; FailedPrecondition for a
        revoked or expired one (create a new token instead)."""
        token = _new_token(token_id)
        if _valid_id(token_id) and await self.store.tokens.rotate_token(
            token_id, hash_token(token), self.clock()
        ):
            record = await self.store.tokens.token(token_id)
            if record is not None:
                return token, record
        found = await self.store.tokens.token(token_id) if _valid_id(token_id) else None
        if found is None:
            raise NotFound(f"No admin token with id {token_id!r}")
        if found.revoked:
            raise FailedPrecondition(
                f"Admin token {token_id!r} is revoked and cannot be rotated; create a new one"
            )
        raise FailedPrecondition(
            f"Admin token {token_id!r} expired and cannot be rotated; create a new one"
        )

    async def find(self, token_hash: str) -> TokenRecord | None:
        """The unrevoked token with this hash (`hash_token`), expired or not; None if unknown
        or revoked."""
        return await self.store.tokens.active_token(token_hash)

    def note_use(self, token_id: str) -> None:
        """The token `token_id` was used just now; written by the next `flush_uses`."""
        self._uses[token_id] = self.clock()

    async def flush_uses(self) -> None:
        """Write the uses noted since the last flush, in one transaction; if that fails, they
        are kept for the next one."""
        uses, self._uses = self._uses, {}
        if not uses:
            return
        try:
            await self.store.tokens.mark_used(uses)
        except BaseException:
            self._uses = uses | self._uses
            raise

    async def count(self) -> int:
        """How many tokens were ever created (revoked ones too)."""
        return await self.store.tokens.count_tokens()


def _new_token(token_id: str) -> str:
    return f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
