"""Log output: readable lines by default, one JSON object per line with `--log-format json`;
and `RateLimited`, one line per cause for failures that repeat."""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import UTC, datetime


class JsonFormatter(logging.Formatter):
    def __init__(self, process: str = "") -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.process:
            entry["process"] = self.process
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


_QUIET = ("aiosqlite", "asyncpg", "sqlite3")


def configure(log_format: str, level: str, process: str = "") -> None:
    """`process` names a process other than the main one (an MQTT worker) in every line."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(process))
    else:
        where = f" [{process}]" if process else ""
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)-7s %(name)s{where}: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # The database drivers log every statement's parameters at debug (token hashes, sealed
    # secrets): never below warning, whatever --log-level says.
    for name in _QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


class RateLimited:
    """One log line per cause per `interval` seconds, for failures that repeat as fast as
    clients retry (a database outage met by every reconnecting device).

    The first occurrence of a cause is logged at once; later ones within the interval are
    counted, and the next line logged for that cause says how many were left out.
    """

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self.logger = logger
        self.interval = interval
        self._next: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(
        self, level: int, cause: str, message: str, *args: object, exc_info: bool = False
    ) -> bool:
        """Log `message` (%-formatted with `args`) for `cause` unless it was logged less than
        `interval` seconds ago; True if it was logged."""
        now = time.monotonic()
        if now < self._next.get(cause, 0.0):
            self._suppressed[cause] = self._suppressed.get(cause, 0) + 1
            return False
        self._next[cause] = now + self.interval
        left_out = self._suppressed.pop(cause, 0)
        if left_out:
            message += f" ({left_out} more like it in the last {self.interval:g} s not logged)"
        self.logger.log(level, message, *args, exc_info=exc_info)
        return True

    def warning(self, cause: str, message: str, *args: object) -> bool:
        return self.log(logging.WARNING, cause, message, *args)

    def error(self, cause: str, message: str, *args: object, exc_info: bool = False) -> bool:
        return self.log(logging.ERROR, cause, message, *args, exc_info=exc_info)
