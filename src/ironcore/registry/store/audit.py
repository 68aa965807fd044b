"""The audit log: who changed what, from where, how, and with what result (`schema.audit_log`).

Who, from where, how and which method are known where a call comes in (the REST middleware,
the gRPC method handler, the MQTT bridge for a device's own key-rotation steps); whether it
changed anything is known where its transaction commits.
So the adapter says who is acting (`acting`, a context variable for the call's task) and
`Database.write()` appends one entry to every write transaction made while an actor acts, in
that same transaction: the entry and the change commit or roll back together, and a call that
changed nothing (a read, a refused update) leaves no "OK" entry. A service that updates a
resource says which fields changed (`changed`, before/after) before it writes, and the entry
carries them; a create says the name of what it creates (`created`), so that the entry names
the new resource rather than its collection. A write transaction that turns out to change
nothing (the row was gone, the etag stale) says so (`unchanged`) and carries no entry. Reads
never write, so they are never recorded.

A call that changes nothing stored but acts (a command sent to a device) records its attempt
apart, with its result (`AuditStore.attempted`).

A call refused before it could change anything (authentication failed, permission denied)
has no transaction of its own: its adapter appends a separate entry (`AuditStore.denied`),
at most `DENIALS_PER_MINUTE` per client address a minute (a server's
`--audit-denials-per-minute`), so a storm of guesses cannot fill
the database; the first entry after a quiet minute says how many were left out.

The request's fields are recorded without secrets: every key that names one (`_SECRET_KEYS`)
is dropped whatever its depth, a URL's user name, password and secret-named query parameters
are replaced by `REDACTED`, a config's or command's data (`binaryData`) is recorded as its
size and SHA-256, and long values are cut (`_MAX_VALUE`). Entries are read by
project, newest first, with a filter (`Query`); no API changes or deletes them, and the
server's retention sweep (`delete_before`) is the only delete.
"""

from __future__ import annotations

import base64
import binascii
import contextvars
import hashlib
import json
import logging
import operator
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sqlalchemy import Connection, delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from ironcore.errors import InvalidArgument
from ironcore.registry.store.schema import audit_log

if TYPE_CHECKING:
    from ironcore.registry.store.database import Database

log = logging.getLogger(__name__)

# Request fields that carry secrets, compared lower-case without `_`: tokens, private keys,
# passphrases, push-subscription signing secrets, service-account key files.
_SECRET_KEYS = frozenset(
    {
        "token",
        "accesstoken",
        "refreshtoken",
        "assertion",
        "secret",
        "signingsecret",
        "clientsecret",
        "password",
        "passphrase",
        "privatekey",
        "privatekeydata",
        "authorization",
    }
)
# Fields holding a config's or a command's bytes (base64): recorded as their size and hash.
_DATA_KEYS = frozenset({"binarydata"})
# A URL anywhere in a recorded string (push endpoints): its credentials are left out.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>]+")
REDACTED = "REDACTED"
# A recorded value longer than this is cut (configs and commands may be 64 KiB of data).
_MAX_VALUE = 1024
DENIALS_PER_MINUTE = 20
# Client addresses whose denials are counted at once; beyond it the oldest window is dropped.
_MAX_ADDRESSES = 10_000
PAGE_SIZE = 100
# One statement, its values as parameters: compiled once (SQLAlchemy's cache), not per entry.
_INSERT = insert(audit_log)
MAX_PAGE_SIZE = 1000


@dataclass
class Actor:
    """Who is acting in the current call, and on what; `changes` is filled by the service."""

    wire: str  # rest, grpc
    principal: str
    authentication: str
    address: str
    method: str
    resource: str
    fields: Mapping[str, Any] = field(default_factory=dict)
    changes: dict[str, dict[str, Any]] = field(default_factory=dict)
    # False: this call's writes are not changes to record (reads, Pub/Sub message traffic).
    records: bool = True


_actor: contextvars.ContextVar[Actor | None] = contextvars.ContextVar("audit_actor", default=None)


def acting(actor: Actor | None) -> contextvars.Token[Actor | None]:
    """Make `actor` the one acting in this task from here on (None: nobody, nothing recorded)."""
    return _actor.set(actor)


def current() -> Actor | None:
    return _actor.get()


def done(token: contextvars.Token[Actor | None]) -> None:
    """The call is over: nothing written from here on is its change. A task it started holds a
    copy of its context, and so the actor; marking the actor finished keeps that task's later
    writes (bookkeeping, deliveries) out of the call's entries."""
    finished = _actor.get()
    if finished is not None:
        finished.records = False
    _actor.reset(token)


def changed(before: Mapping[str, Any], after: Mapping[str, Any]) -> None:
    """Say which top-level fields an update changes (wire forms before and after); recorded
    with the update's entry, secrets dropped."""
    actor = _actor.get()
    if actor is None:
        return
    # Redacted as a request is: a secret field is left out, data recorded by size and hash.
    shown_before, shown_after = redacted(dict(before)), redacted(dict(after))
    for key in sorted(set(shown_before) | set(shown_after)):
        if before.get(key) != after.get(key):
            actor.changes[key] = {
                "before": shown_before.get(key),
                "after": shown_after.get(key),
            }


def created(name: str) -> None:
    """Say the name of the resource the acting call creates (before the write that creates it,
    or inside its transaction): the entry names it, not the collection the call addressed."""
    actor = _actor.get()
    if actor is not None:
        actor.resource = name


def created_id(resource_id: str) -> None:
    """Say the id of the resource the acting call creates in the collection it addressed (a
    POST to `…/rollouts` creates `…/rollouts/<id>`), before or inside the write that does."""
    actor = _actor.get()
    if actor is not None:
        actor.resource = f"{actor.resource}/{resource_id}"


def unchanged(conn: AsyncConnection | Connection) -> None:
    """Say that the write transaction `conn` changes nothing after all (what it was to change
    is gone, or was changed by someone else meanwhile): it carries no entry."""
    _unchanged.set(conn)


# The write transaction (its connection object, one per transaction) that changes nothing.
_unchanged: contextvars.ContextVar[AsyncConnection | Connection | None] = contextvars.ContextVar(
    "audit_unchanged", default=None
)


def redacted(value: Any) -> Any:
    """`value` (a request's JSON) without the values of secret keys, URLs without their
    credentials, data as its size and hash, long strings cut."""
    if isinstance(value, Mapping):
        return {
            str(k): _data(v) if _key(k) in _DATA_KEYS else redacted(v)
            for k, v in value.items()
            if _key(k) not in _SECRET_KEYS
        }
    if isinstance(value, list):
        return [redacted(v) for v in value]
    if isinstance(value, str):
        if "://" in value:
            value = _URL.sub(lambda found: _url(found.group(0)), value)
        if len(value) > _MAX_VALUE:
            return value[:_MAX_VALUE] + "…"
    return value


def _key(key: object) -> str:
    return str(key).lower().replace("_", "").replace("-", "")


def _data(value: Any) -> Any:
    """A config's or command's data (base64) as its size and SHA-256, never its bytes."""
    if not isinstance(value, str):
        return redacted(value)
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raw = value.encode()
    return {"size": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}


def _url(url: str) -> str:
    """`url` without its user name and password, and with its secret-named query parameters'
    values replaced."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    secret_query = any(_secret_parameter(k) for k, _ in pairs)
    if "@" not in parts.netloc and not secret_query:
        return url  # as it was written
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rpartition('@')[2]}"
    query = parts.query
    if secret_query:
        query = urlencode([(k, REDACTED if _secret_parameter(k) else v) for k, v in pairs])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _secret_parameter(name: str) -> bool:
    """A query parameter named like a secret: the secret field names, and `key`, `sig`,
    `code`, `api_key`, `auth_token`, `X-Amz-Signature`, `client_secret`…"""
    key = _key(name)
    return (
        key in _SECRET_KEYS
        or key in {"key", "sig", "code", "auth", "credential", "credentials"}
        or key.endswith(("token", "secret", "password", "signature", "key", "passphrase"))
    )


def project_of(resource: str) -> str:
    """The project a resource name lies in (`projects/P/...`); "" for a global one (tokens)."""
    parts = resource.split("/")
    return parts[1] if len(parts) > 1 and parts[0] == "projects" else ""


@dataclass(frozen=True)
class Entry:
    id: int
    time: int  # microseconds since the epoch
    project: str
    principal: str
    authentication: str
    address: str
    method: str
    resource: str
    status: str
    detail: dict[str, Any]

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "time": _rfc3339(self.time),
            "principal": self.principal,
            "authentication": self.authentication,
            "clientAddress": self.address,
            "method": self.method,
            "resource": self.resource,
            "status": self.status,
            **self.detail,
        }


def _detail(actor: Actor) -> dict[str, Any]:
    return {"wire": actor.wire, "request": redacted(dict(actor.fields))}


def _row(actor: Actor, status: str, detail: dict[str, Any]) -> dict[str, Any]:
    return {
        "time": time.time_ns() // 1000,
        "project": project_of(actor.resource),
        "principal": actor.principal,
        "authentication": actor.authentication,
        "address": actor.address,
        "method": actor.method,
        "resource": actor.resource,
        "status": status,
        "detail": detail,
    }


async def record_change(conn: AsyncConnection) -> dict[str, Any] | None:
    """Append the acting call's entry to the write transaction `conn` (Database.write); the
    row to log once it commits, or None when nobody acts."""
    row = _change_row(conn)
    if row is not None:
        await conn.execute(_INSERT, row)
    return row


def record_change_sync(conn: Connection) -> dict[str, Any] | None:
    """`record_change` in a transaction run with a synchronous connection
    (Database.write_sync)."""
    row = _change_row(conn)
    if row is not None:
        conn.execute(_INSERT, row)
    return row


def _change_row(conn: AsyncConnection | Connection) -> dict[str, Any] | None:
    actor = _actor.get()
    if _unchanged.get() is conn or actor is None or not actor.records:
        return None
    detail: dict[str, Any] = {"wire": actor.wire, "request": redacted(dict(actor.fields))}
    if actor.changes:
        detail["changes"] = actor.changes
    return _row(actor, "OK", detail)


def logged(row: Mapping[str, Any]) -> None:
    """Write a committed entry to the log as well (one JSON object; `--log-format json`)."""
    # Checked first: the entry's JSON costs as much as its insert, and `--log-level warning`
    # writes no line to make it for.
    if log.isEnabledFor(logging.INFO):
        log.info("audit %s", json.dumps(row, sort_keys=True, default=str))


def _rfc3339(us: int) -> str:
    seconds, micros = divmod(us, 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{micros:06d}Z"


def _parse_time(value: str) -> int:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument.field(
            "filter", f"time {value!r} is not an RFC 3339 timestamp"
        ) from None
    if parsed.tzinfo is None:
        raise InvalidArgument.field("filter", f"time {value!r} has no time zone (add Z)")
    return int(parsed.timestamp() * 1_000_000)


_FIELDS = {
    "resource": audit_log.c.resource,
    "principal": audit_log.c.principal,
    "method": audit_log.c.method,
    "status": audit_log.c.status,
    "result": audit_log.c.status,
    "authentication": audit_log.c.authentication,
    "clientaddress": audit_log.c.address,
}


_TIME_OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "=": operator.eq,
}


def parse_filter(text: str) -> list[Any]:
    """A filter as SQL conditions: terms joined by ` AND `, each `FIELD=VALUE` (equal),
    `FIELD:VALUE` (starts with), or `time>=`, `time>`, `time<=`, `time<` an RFC 3339 time.
    Fields: resource, principal, method, status (or result), authentication, clientAddress.
    Values may be double-quoted."""
    conditions: list[Any] = []
    for term in (t.strip() for t in text.split(" AND ")):
        if not term:
            continue
        for op in (">=", "<=", "=", ":", ">", "<"):
            key, found, value = term.partition(op)
            if found and key and not any(c in key for c in "=:<>"):
                break
        else:
            raise InvalidArgument.field("filter", f"{term!r} is not FIELD=VALUE")
        key, value = key.strip(), value.strip().strip('"')
        if key == "time":
            compare = _TIME_OPERATORS.get(op)
            if compare is None:
                raise InvalidArgument.field("filter", f"{term!r}: time takes >=, >, <=, < or =")
            conditions.append(compare(audit_log.c.time, _parse_time(value)))
            continue
        column = _FIELDS.get(key.lower())
        if column is None:
            raise InvalidArgument.field(
                "filter", f"{key!r} is not a field of an entry ({', '.join(sorted(_FIELDS))}, time)"
            )
        if op == "=":
            conditions.append(column == value)
        elif op == ":":
            conditions.append(column.startswith(value, autoescape=True))
        else:
            raise InvalidArgument.field("filter", f"{term!r}: {key} takes = or :")
    return conditions


def _page_token(last_id: int) -> str:
    return base64.urlsafe_b64encode(str(last_id).encode()).decode()


def _after(token: str) -> int | None:
    if not token:
        return None
    try:
        return int(base64.urlsafe_b64decode(token.encode()).decode())
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise InvalidArgument.field("page_token", "is not a page token of this list") from None


class _Denials:
    """At most `per_minute` denial entries per client address a minute, and how many were
    left out since the last one written."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._windows: dict[str, tuple[float, int, int]] = {}

    def admit(self, address: str, now: float) -> int | None:
        """None to leave this denial out; otherwise how many were left out before it."""
        start, count, dropped = self._windows.get(address, (now, 0, 0))
        if now - start >= 60.0:
            start, count = now, 0
        if count >= self.per_minute:
            self._windows[address] = (start, count, dropped + 1)
            return None
        if address not in self._windows and len(self._windows) >= _MAX_ADDRESSES:
            del self._windows[next(iter(self._windows))]
        self._windows[address] = (start, count + 1, 0)
        return dropped


class AuditStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._denials = _Denials(DENIALS_PER_MINUTE)

    def limit_denials(self, per_minute: int) -> None:
        """Record at most `per_minute` refusals per client address a minute from now on
        (`--audit-denials-per-minute`)."""
        self._denials.per_minute = per_minute

    async def denied(self, actor: Actor, status: str, message: str) -> None:
        """Record a call refused before it changed anything (rate-limited per address)."""
        dropped = self._denials.admit(actor.address, time.monotonic())
        if dropped is None:
            return
        detail = _detail(actor)
        detail["message"] = message
        if dropped:
            detail["omittedDenials"] = dropped
        await self._append(_row(actor, status, detail))

    async def attempted(self, status: str, message: str = "") -> None:
        """Record the acting call's attempt at a change that stores nothing (a command sent to
        a device), with its result: "OK", or the error's status and `message`. Its own
        transaction: nothing else is written with it."""
        actor = _actor.get()
        if actor is None or not actor.records:
            return
        detail = _detail(actor)
        if message:
            detail["message"] = message
        await self._append(_row(actor, status, detail))

    async def _append(self, row: dict[str, Any]) -> None:
        token = acting(None)
        try:
            async with self.db.write() as conn:
                await conn.execute(_INSERT, row)
        finally:
            done(token)
        logged(row)

    async def list(
        self, project: str | None, filter_text: str, page_size: int, page_token: str
    ) -> tuple[list[Entry], str]:
        """A page of a project's entries (None: every entry), newest first, and the next
        page's token ("" at the end)."""
        if page_size < 0:
            raise InvalidArgument.field("page_size", "must not be negative")
        size = min(page_size or PAGE_SIZE, MAX_PAGE_SIZE)
        conditions = parse_filter(filter_text)
        if project is not None:
            conditions.append(audit_log.c.project == project)
        after = _after(page_token)
        if after is not None:
            conditions.append(audit_log.c.id < after)
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    select(audit_log)
                    .where(*conditions)
                    .order_by(audit_log.c.id.desc())
                    .limit(size + 1)
                )
            ).all()
        entries = [
            Entry(
                r.id,
                r.time,
                r.project,
                r.principal,
                r.authentication,
                r.address,
                r.method,
                r.resource,
                r.status,
                dict(r.detail if isinstance(r.detail, dict) else json.loads(r.detail)),
            )
            for r in rows[:size]
        ]
        return entries, _page_token(entries[-1].id) if len(rows) > size else ""

    async def delete_before(self, cutoff_us: int) -> int:
        """Delete the entries older than `cutoff_us` (the retention sweep; no API calls it)."""
        token = acting(None)
        try:
            async with self.db.write() as conn:
                result = await conn.execute(delete(audit_log).where(audit_log.c.time < cutoff_us))
        finally:
            done(token)
        return int(result.rowcount or 0)
