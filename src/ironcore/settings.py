"""One settings object for a server process: command-line flags > IRONCORE_* env > defaults.

The CLI reads flags and the environment (typer's `envvar`); everything downstream takes this
object, so there is one place that says what can be configured.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def default_data_dir() -> Path:
    return Path(os.environ.get("IRONCORE_DATA_DIR") or Path.home() / ".ironcore")


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    api_host: str = "0.0.0.0"
    api_port: int = 8080
    # Empty means the embedded SQLite database in the data directory.
    database_url: str = ""
    # PostgreSQL schema for every table (created if missing); keeps deployments or test runs apart.
    database_schema: str = ""
    log_format: str = "text"
    log_level: str = "info"

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'ironcore.db'}"

    @property
    def admin_token_file(self) -> Path:
        return self.data_dir / "admin-token"
