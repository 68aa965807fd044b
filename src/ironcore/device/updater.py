"""The device side of a firmware rollout: from a config with a `firmware` key to a state.

    updater = Updater("https://iot.example.com:8080", tokens, boot, Path("/data/fw/download"))
    state = updater.apply(config_bytes)      # None when the config asks for nothing
    if state is not None:
        client.set_state(json.dumps(state).encode())

The image is downloaded with the device's JWT into a partial file named after its SHA-256.
A cut connection resumes with `Range: bytes=<have>-`, within one call or at the next one,
so a slow link never starts over. Nothing about the download is trusted: the image goes to
`SecureBoot.install`, which has the secure element verify the manifest, and the outcome is
reported in the shape the rollout reads (docs/firmware.md, Rollouts):

    {"firmware": {<SecureBoot.state()>, "rollout": "7", "result": "ok" | "refused",
                  "reason": "DIGEST_MISMATCH", "message": "…"}}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from ironcore.device.secure_boot import SecureBoot
from ironcore.device.tokens import TokenSource
from ironcore.formats.firmware import ManifestError, Reason, parse

# Reported when the server would not hand the image over (404, 401, …): the rollout counts
# it as a failure like a refusal, since the device cannot update either way.
DOWNLOAD_FAILED = "DOWNLOAD_FAILED"
_CHUNK = 64 * 1024


class DownloadInterrupted(Exception):
    """The connection failed on every attempt; the partial file is kept for the next call."""


class Updater:
    def __init__(
        self,
        base_url: str,
        tokens: TokenSource,
        boot: SecureBoot,
        directory: Path,
        verify: str | bool = True,
        timeout: float = 30.0,
        attempts: int = 5,
    ) -> None:
        """`base_url` is the HTTP bridge's root; `directory` holds partial downloads."""
        self.tokens = tokens
        self.boot = boot
        self.directory = directory
        self.attempts = attempts
        self._http = httpx.Client(base_url=base_url.rstrip("/"), verify=verify, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def apply(self, config: bytes) -> dict[str, Any] | None:
        """Act on a config: the state document to publish, or None if it names no firmware.

        Raises DownloadInterrupted when the server cannot be reached; call again later.
        """
        try:
            document = json.loads(config)
        except (UnicodeDecodeError, ValueError):
            return None
        firmware = document.get("firmware") if isinstance(document, dict) else None
        if not isinstance(firmware, dict):
            return None
        rollout = str(firmware.get("rollout", ""))
        url, manifest = firmware.get("url"), firmware.get("manifest")
        if not isinstance(url, str) or not url.startswith("/") or not isinstance(manifest, dict):
            return self._report(rollout, False, Reason.MALFORMED_MANIFEST, "no url or manifest")
        # Re-serializing is safe: the signature covers the member strings, not the object.
        manifest_bytes = json.dumps(manifest).encode()
        try:
            claims = parse(manifest_bytes).manifest
        except ManifestError as error:
            return self._report(rollout, False, error.reason, error.message)
        if self.boot.state()["version"] == claims.version:
            return self._report(rollout, True)
        partial = self.directory / f"{claims.sha256.hex()}.partial"
        try:
            self._download(url, partial, claims.size)
        except httpx.HTTPStatusError as error:
            message = f"the server answered {error.response.status_code} for the image"
            return self._report(rollout, False, DOWNLOAD_FAILED, message)
        image = partial.read_bytes()
        partial.unlink()
        result = self.boot.install(image, manifest_bytes)
        if not result.ok:
            return self._report(rollout, False, result.reason, result.message)
        version = self.boot.boot()
        if version != claims.version:
            last = self.boot.state()["lastResult"] or {}
            return self._report(rollout, False, last.get("reason", ""), last.get("message", ""))
        return self._report(rollout, True)

    def _download(self, url: str, partial: Path, size: int) -> None:
        """Fill `partial` with the image, resuming after cut connections.

        At most size + 1 bytes are kept: enough for the secure boot check to see an
        oversized image, without letting a server fill the device's storage.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        partial.touch()
        for _attempt in range(self.attempts):
            have = partial.stat().st_size
            if have > size:
                return
            headers = {"Authorization": f"Bearer {self.tokens.token()}"}
            if have:
                headers["Range"] = f"bytes={have}-"
            try:
                with self._http.stream("GET", url, headers=headers) as response:
                    if response.status_code == 416:
                        # Nothing past what we have: the file is complete (or the server's
                        # image is shorter, which secure boot reports as truncated).
                        return
                    response.raise_for_status()
                    mode = "ab" if response.status_code == 206 else "wb"
                    with partial.open(mode) as out:
                        written = have if mode == "ab" else 0
                        for chunk in response.iter_bytes(_CHUNK):
                            chunk = chunk[: size + 1 - written]
                            out.write(chunk)
                            written += len(chunk)
                            if written > size:
                                break
                return
            except httpx.TransportError:
                continue
        raise DownloadInterrupted(f"could not download {url} in {self.attempts} attempts")

    def _report(
        self, rollout: str, ok: bool, reason: str = "", message: str = ""
    ) -> dict[str, Any]:
        firmware = {
            **self.boot.state(),
            "rollout": rollout,
            "result": "ok" if ok else "refused",
            "reason": reason,
            "message": message,
        }
        return {"firmware": firmware}
