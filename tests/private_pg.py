"""A PostgreSQL server of a test's own, for faults the shared one must never see: stopped,
restarted or frozen by the test.

`initdb` in a temporary directory, trust authentication, 127.0.0.1 on a free port, fsync off
(nothing here outlives the test). As root (CI), the server runs as the `postgres` user, since
PostgreSQL refuses to run as root. The `private_postgres` fixture in conftest.py gives one per
test, stopped and removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path


def _binaries() -> Path:
    """IRONCORE_TEST_PG_BIN, or the newest Debian PostgreSQL's binaries (15 on this machine;
    CI installs Debian's `postgresql`, whatever its version)."""
    chosen = os.environ.get("IRONCORE_TEST_PG_BIN")
    if chosen:
        return Path(chosen)
    versions = [initdb.parent for initdb in Path("/usr/lib/postgresql").glob("*/bin/initdb")]
    found = sorted(
        versions, key=lambda bin: int(bin.parent.name) if bin.parent.name.isdigit() else 0
    )
    return found[-1] if found else Path("/usr/lib/postgresql/15/bin")


BIN = _binaries()


def available() -> bool:
    return (BIN / "initdb").exists() and (BIN / "pg_ctl").exists()


class PrivatePostgres:
    def __init__(self, port: int) -> None:
        self.port = port
        self.root = Path(tempfile.mkdtemp(prefix="ironcore-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self._user = "postgres" if os.geteuid() == 0 else None
        if self._user is not None:
            shutil.chown(self.root, self._user, self._user)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        """Start the server (made on the first start) and wait until it accepts connections."""
        if not self.data.exists():
            self._run(
                BIN / "initdb",
                *("-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"),
                "--no-sync",
            )
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=50"
        )
        self._run(
            BIN / "pg_ctl",
            *("-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "30"),
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: `fast` disconnects clients and shuts down cleanly, `immediate` is
        a crash (recovery runs at the next start)."""
        self._run(BIN / "pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def freeze(self) -> None:
        """Stop every process of the server (SIGSTOP): connections stay open and nothing
        answers, as a hung database host."""
        self._signal_all(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal_all(signal.SIGCONT)

    def destroy(self) -> None:
        """Stop the server whatever its state (frozen, stopped, crashed) and remove its files."""
        postmaster = self._postmaster()
        if postmaster is not None:
            try:
                self.thaw()
                self.stop("immediate")
            except (OSError, RuntimeError, subprocess.TimeoutExpired):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(postmaster, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)

    def _signal_all(self, signum: int) -> None:
        postmaster = self._postmaster()
        assert postmaster is not None, "the private PostgreSQL is not running"
        for pid in (postmaster, *_children(postmaster)):
            with contextlib.suppress(ProcessLookupError):  # a backend that just ended
                os.kill(pid, signum)

    def _postmaster(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (FileNotFoundError, ValueError):
            return None

    def _run(self, *args: object) -> None:
        result = subprocess.run(
            [str(arg) for arg in args],
            user=self._user,
            cwd=self.root,
            capture_output=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(
                f"{args[0]} failed: {result.stdout.decode()}{result.stderr.decode()}{log}"
            )


def _children(parent: int) -> list[int]:
    """The pids whose parent is `parent` (the postmaster's backends and helpers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            found.append(int(entry.name))
    return found
