"""`ironcore demo` tells the whole story on an empty data directory and every step checks out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_demo_runs_the_story(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ironcore", "demo", "--data-dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "imported 10, unchanged 0, rejected 0" in out
    assert "10/10 devices connected" in out
    assert "acknowledged by 10" in out
    assert "1 command received" in out
    assert "now signs with slot" in out
    assert "10/10 reconnects refused" in out
    assert "rotated key is refused too" in out
    assert "connects again with its rotated key" in out
    # The audit step lists the rotated device's changes, the device's own steps among them.
    summary = out[out.index("• audit:") :]
    for method in ("StartKeyRotation", "OfferRotationKey", "CompleteKeyRotation", "ReattestDevice"):
        assert method in summary


def test_demo_refuses_a_used_directory(tmp_path: Path) -> None:
    (tmp_path / "something").write_text("x")
    done = subprocess.run(
        [sys.executable, "-m", "ironcore", "demo", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "not empty" in done.stderr
