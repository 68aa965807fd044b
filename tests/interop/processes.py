"""A client program run as its own process (a device sample, a backend sample) that reports
what it sees as JSON lines on stdout, read as they come."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from typing import Any


class ReportingProcess:
    """The program running, its JSON lines read as they come; `name` says which in failures."""

    def __init__(self, args: list[str], env: dict[str, str], name: str) -> None:
        self.name = name
        self.process = subprocess.Popen(
            args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.records: list[dict[str, Any]] = []
        self._lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(json.loads(line))
        self._lines.put(None)

    def expect(self, event: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        """The first record (seen or still to come) of `event` with these field values."""

        def matches(record: dict[str, Any]) -> bool:
            return record["event"] == event and all(record.get(k) == v for k, v in fields.items())

        for seen in self.records:
            if matches(seen):
                return seen
        deadline = time.monotonic() + timeout
        while True:
            try:
                record = self._lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                if time.monotonic() < deadline:
                    continue
                raise AssertionError(
                    f"no {event} {fields} from the {self.name} within {timeout} s; "
                    f"it said {self.records}"
                ) from None
            if record is None:
                self._lines.put(None)  # the program has exited: later calls end at once too
                raise AssertionError(
                    f"no {event} {fields} from the {self.name} before it exited; it said "
                    f"{self.records}; stderr: {self.stderr()}"
                )
            self.records.append(record)
            if matches(record):
                return record

    def index(self, record: dict[str, Any]) -> int:
        return next(i for i, seen in enumerate(self.records) if seen is record)

    def stderr(self) -> str:
        assert self.process.stderr is not None
        return self.process.stderr.read()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
