"""Sample a running server with py-spy while a benchmark measures it, and summarize where the
time went (`python -m benchmarks.api --profile DIR`).

py-spy writes collapsed stacks (`frame;frame;… count`); the summary reports the frames with the
most samples on top of the stack (self) and anywhere in it (total), by function and file, so
the cost of a library (SQLAlchemy, pydantic, Starlette) shows up next to ironcore's own code.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

_LINE = re.compile(r":\d+\)$")
_THREAD = re.compile(r"^(process|thread) \(\d+\):? ?(Thread-\d+ )?")
_CONTINUED = re.compile(r"\n(?!(thread|process) \(|$)")
_ROOTS = ("Runner.run ", "_connection_worker_thread ", "WorkerThread.run ", "Thread.run ")


def py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def start(pid: int, seconds: float, output: Path) -> subprocess.Popen[bytes]:
    exe = py_spy()
    if exe is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    args = [exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds)))]
    args += ["--rate", "250", "--format", "raw", "--output", str(output), "--nonblocking"]
    # --gil: only the thread holding the GIL is sampled, because the GIL is what a single
    # server process runs out of; --threads tells the event loop from aiosqlite's threads.
    args += ["--threads", "--gil"]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _frame(raw: str) -> str:
    # "function (path/to/module.py:123)" -> "function (module.py)"
    name, _, where = raw.partition(" (")
    where = _LINE.sub(")", "(" + where) if where else ""
    path = where.strip("()")
    for marker in ("site-packages/", "src/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})" if path else name


def _package(frame: str) -> str:
    if frame.endswith("[native]"):
        return "native code under the event loop or an aiosqlite thread"
    where = frame.rpartition(" (")[2].rstrip(")")
    return where.split("/", 1)[0] if "/" in where else where


def summarize(collapsed: Path, top: int = 15) -> str:
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    samples = 0
    # A stack is one line, but a frame's text can hold a line break (seen under grpcio's
    # Cython frames): a line that does not start a stack (every stack starts with its thread,
    # as `start` records them) continues the one before.
    text = _CONTINUED.sub("", collapsed.read_text())
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        if frames[0].startswith(("thread ", "process ")):
            threads[_THREAD.sub("", frames[0]) or "?"] += count
            frames = [f for f in frames if not f.startswith(("thread ", "process "))]
        samples += count
        names = [_frame(f) for f in frames]
        # Drop the frames every stack starts with (runpy, typer, asyncio.Runner, threading), so
        # "total" ranks the work, not the scaffolding; time spent in a root frame itself is
        # native code below it: uvloop's loop and I/O, or SQLite in an aiosqlite thread.
        for i in range(len(names) - 1, -1, -1):
            if names[i].startswith(_ROOTS):
                root = names[i]
                names = names[i + 1 :] or [f"{root} [native]"]
                break
        if names:
            own[names[-1]] += count
            packages[_package(names[-1])] += count
        for name in set(names):
            if "(ironcore/" in name:
                total[name] += count
    out = [f"{samples} samples"]
    if threads:
        shares = ", ".join(f"{t} {100 * c / samples:.0f}%" for t, c in threads.most_common(4))
        out.append(f"by thread: {shares}")
    out.append("self samples by package:")
    out += [f"  {100 * c / samples:5.1f}%  {name}" for name, c in packages.most_common(8)]
    out.append(f"top {top} by self samples:")
    out += [f"  {100 * c / samples:5.1f}%  {name}" for name, c in own.most_common(top)]
    out.append(f"top {top} ironcore functions by total samples (callees included):")
    out += [f"  {100 * c / samples:5.1f}%  {name}" for name, c in total.most_common(top)]
    return "\n".join(out)
