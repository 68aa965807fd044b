"""Assembles an ironcore process from its settings and runs it until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from contextlib import suppress

import uvicorn

from ironcore import logs
from ironcore.api.app import create_app
from ironcore.registry.service import DeviceManager
from ironcore.registry.store import Store
from ironcore.settings import Settings

log = logging.getLogger("ironcore")
# Time an in-flight request gets to finish after SIGTERM before its connection is cut.
DRAIN_SECONDS = 30


async def ensure_admin_token(manager: DeviceManager, settings: Settings) -> None:
    """On an empty database, create the first owner token and leave it in the data directory."""
    if await manager.store.count_tokens():
        return
    token = await manager.create_token("owner", "created by the first `ironcore serve`")
    path = settings.admin_token_file
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(token + "\n")
    log.warning("created the first owner admin token in %s (mode 0600)", path)


async def serve(settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = await Store.open(settings.effective_database_url, settings.database_schema or None)
    try:
        manager = DeviceManager(store)
        await ensure_admin_token(manager, settings)
        app = create_app(manager)
        config = uvicorn.Config(
            app,
            host=settings.api_host,
            port=settings.api_port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=DRAIN_SECONDS,
            server_header=False,
        )
        server = uvicorn.Server(config)
        log.info(
            "ironcore serving the admin API on http://%s:%d (database: %s)",
            settings.api_host,
            settings.api_port,
            store.engine.dialect.name,
        )
        await server.serve()
    finally:
        await store.close()
    log.info("ironcore stopped")


def run(settings: Settings) -> None:
    logs.configure(settings.log_format, settings.log_level)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(serve(settings))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    with suppress(ImportError):
        import uvloop

        return uvloop.new_event_loop
    return None
