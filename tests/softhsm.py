"""SoftHSM2 for tests: one private token directory per test session, a token per use.

The PKCS#11 module reads SOFTHSM2_CONF once, when it is first loaded, so the configuration is
made once per session and tests tell their tokens apart by label. Without SoftHSM2 the tests
that need it skip on a laptop and fail when IRONCORE_REQUIRE_SERVICES=1 (as CI sets).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
PIN = "1234"


@dataclass
class SoftHsm:
    module: str
    conf: Path

    def new_token(self, prefix: str = "t") -> str:
        label = f"{prefix}-{uuid.uuid4().hex[:12]}"
        subprocess.run(
            [
                *("softhsm2-util", "--init-token", "--free", "--label", label),
                *("--pin", PIN, "--so-pin", PIN),
            ],
            check=True,
            capture_output=True,
        )
        return label


_running: list[SoftHsm] = []


def softhsm_session(tmp: Path) -> Iterator[SoftHsm]:
    """The session's SoftHSM, made on first use (every conftest shares this one)."""
    if _running:
        yield _running[0]
        return
    if not (Path(MODULE).exists() and shutil.which("softhsm2-util")):
        message = f"SoftHSM2 is not installed ({MODULE}, softhsm2-util)"
        if os.environ.get("IRONCORE_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{message} and IRONCORE_REQUIRE_SERVICES=1")
        pytest.skip(message)
    (tmp / "tokens").mkdir()
    conf = tmp / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tmp / 'tokens'}\n"
        "objectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n"
    )
    # Set for the rest of the process: the module keeps the configuration it first read.
    os.environ["SOFTHSM2_CONF"] = str(conf)
    _running.append(SoftHsm(MODULE, conf))
    yield _running[0]
