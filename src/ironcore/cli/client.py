"""The CLI's connection to a running ironcore: the REST API, a bearer token, one-line errors."""

from __future__ import annotations

import base64
import json
import os
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ironcore.settings import default_data_dir

err = Console(stderr=True)
# Piped into a file or another program, tables keep their natural width: ids and names are
# never cut short with an ellipsis to fit 80 columns.
out = Console(width=None if sys.stdout.isatty() else 10_000)


@dataclass
class Context:
    server: str
    token: str | None
    project: str
    location: str
    as_json: bool
    # What an https server's certificate is checked against (`trusted`).
    verify: ssl.SSLContext | bool = True

    @property
    def location_path(self) -> str:
        return f"/v1/projects/{self.project}/locations/{self.location}"

    def registry_path(self, registry: str) -> str:
        return f"{self.location_path}/registries/{registry}"

    def device_path(self, registry: str, device: str) -> str:
        return f"{self.registry_path(registry)}/devices/{device}"

    def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        if not self.token:
            fail(
                "no admin token: set IRONCORE_TOKEN, pass --token, or run on the server's machine "
                f"(it reads {default_data_dir() / 'admin-token'})"
            )
        try:
            response = httpx.request(
                method,
                self.server.rstrip("/") + path,
                json=body,
                params=params,
                headers={"Authorization": f"Bearer {self.token}"},
                timeout=30,
                verify=self.verify,
            )
        except httpx.InvalidURL as exc:
            fail(f"--server {self.server!r} is not a valid URL: {exc}")
        except httpx.HTTPError as exc:
            fail(f"cannot reach ironcore at {self.server}: {exc}")
        try:
            data: dict[str, Any] = response.json()
        except ValueError:
            fail(f"{response.status_code} from {self.server}: not JSON: {response.text[:200]}")
        if response.status_code >= 400:
            error = data.get("error", {})
            fail(
                f"{error.get('status', response.status_code)}: "
                f"{error.get('message', response.text)}"
            )
        return data

    def show(
        self, data: Any, columns: list[str] | None = None, rows: list[dict[str, Any]] | None = None
    ) -> None:
        """JSON for scripts with --json; otherwise a table of `rows` or the JSON pretty-printed."""
        if self.as_json:
            print(json.dumps(data, indent=2))
            return
        if columns is None or rows is None:
            out.print_json(json.dumps(data))
            return
        table = Table(*columns)
        for row in rows:
            table.add_row(*(_cell(row.get(c)) for c in columns))
        out.print(table)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def fail(message: str) -> NoReturn:
    # The message is text, not Rich markup: server messages quote things like `[a-zA-Z0-9]`.
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def read_text(path: Path) -> str:
    """A PEM file's text, or a one-line error naming the file."""
    try:
        return path.read_text()
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror or exc}")
    except UnicodeDecodeError:
        fail(f"cannot read {path}: not a text (PEM) file")


def token_from(token: str | None, data_dir: Path | None) -> str | None:
    if token:
        return token
    if os.environ.get("IRONCORE_TOKEN"):
        return os.environ["IRONCORE_TOKEN"]
    path = (data_dir or default_data_dir()) / "admin-token"
    try:
        return path.read_text().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def trusted(ca_file: Path | None, data_dir: Path | None) -> ssl.SSLContext:
    """The system's CAs and `ca_file`, or else the local CA of the server on this machine
    (`<data-dir>/tls/ca.crt`) when there is one: what an https --server is checked against."""
    context = ssl.create_default_context()
    path = ca_file or (data_dir or default_data_dir()) / "tls" / "ca.crt"
    try:
        context.load_verify_locations(cafile=path)
    except (OSError, ssl.SSLError) as exc:
        if ca_file is not None:
            fail(f"--ca-file {ca_file}: {getattr(exc, 'strerror', None) or exc}")
    return context


def payload_text(b64: str) -> str:
    """A base64 payload as text for people, or its size when it is not UTF-8."""
    raw = base64.b64decode(b64)
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return f"<{len(raw)} bytes>"
