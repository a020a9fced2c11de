"""Serve a benchmark's callback receiver (an aiohttp app) on a free loopback port, in its own process."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiohttp import web


def serve(app: web.Application, port_queue: Any) -> None:
    """Run ``app`` on 127.0.0.1 until the process ends; put the port it got on ``port_queue``."""
    from aiohttp import web

    async def run() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        port_queue.put(runner.addresses[0][1])
        await asyncio.Event().wait()

    asyncio.run(run())
