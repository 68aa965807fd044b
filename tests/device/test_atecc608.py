"""The ATECC608 backend without the chip: it must fail at open with a message that says why.

Microchip's cryptoauthlib is an optional extra; `make test` installs it apart from the venv
(in .venv/cryptoauthlib) so that the normal suite runs without it, and these tests run it in
a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REQUIRE_SERVICES

LIBRARY = Path(__file__).resolve().parents[2] / ".venv" / "cryptoauthlib"
OPEN = (
    "from ironcore.device.atecc608 import Atecc608Element\n"
    "from ironcore.device.secure_element import SecureElementError\n"
    "try:\n"
    "    Atecc608Element.open(bus=1, address=0x6A)\n"
    "except SecureElementError as error:\n"
    "    print(error)\n"
    "else:\n"
    "    print('OPENED')\n"
)


def run(pythonpath: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    done = subprocess.run(
        [sys.executable, "-c", OPEN], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_without_cryptoauthlib_says_how_to_get_it() -> None:
    assert run(None) == (
        "the ATECC608 backend needs Microchip's cryptoauthlib: pip install 'ironcore[atecc608]'"
    )


def test_without_the_chip_says_none_answered() -> None:
    if not (LIBRARY / "cryptoauthlib").is_dir():
        message = f"cryptoauthlib is not installed in {LIBRARY} (make test installs it)"
        if REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)
    out = run(str(LIBRARY))
    assert out.startswith("no ATECC608 answered on I2C bus 1 at address 0x6A"), out
    assert "ATCA_COMM_FAIL" in out or "failed" in out
