"""What a storage failure means to a caller: the database unreachable (UNAVAILABLE) or its disk
full (RESOURCE_EXHAUSTED), as `ironcore.errors` values every adapter already maps to its wire.

The drivers raise many shapes for the same fault (an `OSError` from the socket, asyncpg's
`PostgresConnectionError`, SQLAlchemy's `OperationalError` around either, `sqlite3` errors
carrying SQLite's result code), and an adapter seeing any of them answered 500 with a
traceback. `storage_fault` reads the chain of causes once, here. What it does not recognise
(a constraint, a bad statement) is a bug or a rule, and is left alone.
"""

from __future__ import annotations

import errno
import sqlite3

from ironcore.errors import IronCoreError, ResourceExhausted, Unavailable

# SQLite's primary result codes (https://sqlite.org/rescode.html).
_SQLITE_FULL = 13
_SQLITE_UNAVAILABLE = frozenset(
    {
        5,  # SQLITE_BUSY: another process held the file longer than busy_timeout
        6,  # SQLITE_LOCKED
        8,  # SQLITE_READONLY: the file or its directory cannot be written
        10,  # SQLITE_IOERR
        14,  # SQLITE_CANTOPEN
    }
)
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_NETWORK_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ETIMEDOUT,
        errno.EPIPE,
    }
)
# PostgreSQL SQLSTATE classes: 08 connection exception, 57P operator intervention (shutdown,
# cannot connect now), 53 insufficient resources (53100 disk full, 53200 out of memory, 53300
# too many connections).
_PG_UNAVAILABLE_PREFIXES = ("08", "57P")
_PG_DISK_FULL = "53100"


def storage_fault(error: BaseException) -> IronCoreError | None:
    """The error to raise instead of `error` when it is a storage fault; None when it is not."""
    for cause in _causes(error):
        if isinstance(cause, IronCoreError):
            return None
        if isinstance(cause, sqlite3.Error):
            code = getattr(cause, "sqlite_errorcode", 0) & 0xFF
            if code == _SQLITE_FULL:
                return disk_full(cause)
            if code in _SQLITE_UNAVAILABLE:
                return Unavailable(f"The database is unavailable: {_text(cause)}")
            return None
        state = str(getattr(cause, "sqlstate", "") or "")
        if state == _PG_DISK_FULL:
            return disk_full(cause)
        if state.startswith("53") or state.startswith(_PG_UNAVAILABLE_PREFIXES):
            return Unavailable(f"The database is unavailable: {_text(cause)}")
        if _is_connection_error(cause):
            return Unavailable(f"The database is unavailable: {_text(cause)}")
        if isinstance(cause, OSError) and cause.errno in _DISK_FULL_ERRNOS:
            return disk_full(cause)
    return None


def disk_full(cause: BaseException) -> ResourceExhausted:
    return ResourceExhausted(
        f"The database's disk is full; nothing was written ({_text(cause)}). "
        "Free space where the database is stored."
    )


def _is_connection_error(error: BaseException) -> bool:
    if isinstance(error, ConnectionError | TimeoutError):
        return True
    if isinstance(error, OSError):
        return error.errno in _NETWORK_ERRNOS or error.errno is None
    # asyncpg's own, without importing it (SQLite-only installs never load it).
    names = {cls.__name__ for cls in type(error).__mro__}
    return bool(names & {"PostgresConnectionError", "ConnectionDoesNotExistError"}) or (
        "InterfaceError" in names and "connection" in str(error).lower()
    )


def _causes(error: BaseException) -> list[BaseException]:
    """`error`, then what it wraps: SQLAlchemy's `orig`, or the `__cause__` it was raised from
    (not `__context__`: an error met while handling another is not caused by it)."""
    found: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in found and len(found) < 8:
        found.append(current)
        wrapped = getattr(current, "orig", None)
        current = wrapped if isinstance(wrapped, BaseException) else current.__cause__
    return found


def _text(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[:300]
