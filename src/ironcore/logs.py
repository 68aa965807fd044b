"""Log output: readable lines by default, one JSON object per line with `--log-format json`."""

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


class Throttled:
    """Warnings of one kind written at most once per `seconds`: for what a flood repeats (one
    line per refused connection would be a flood of its own). A line says how many of its kind
    were held back since the last one written."""

    def __init__(self, logger: logging.Logger, seconds: float = 10.0) -> None:
        self.logger = logger
        self.seconds = seconds
        self._kinds: dict[str, tuple[float, int]] = {}

    def warning(self, kind: str, message: str, *args: object) -> None:
        """`message % args`, unless a line of `kind` was written less than `seconds` ago."""
        now = time.monotonic()
        written, held = self._kinds.get(kind, (float("-inf"), 0))
        if now - written < self.seconds:
            self._kinds[kind] = (written, held + 1)
            return
        self._kinds[kind] = (now, 0)
        if held:
            message += " (%d more since the last such line)"
            args = (*args, held)
        self.logger.warning(message, *args)
