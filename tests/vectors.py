"""Where the real test vectors live: in the repository, under tests/data/ (see its README)."""

from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
MICROCHIP = DATA / "microchip"
