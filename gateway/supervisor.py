"""The app's supervisor: background tasks owned by the lifespan, restarted if they fail, cancelled on shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

_log = logging.getLogger(__name__)


class Supervisor:
    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []
        self._one_offs: set[asyncio.Task[None]] = set()

    def spawn(self, name: str, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run a one-off job (e.g. a settlement from a stream's `finally`); shutdown waits for it."""
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._one_offs.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._one_offs.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.error("one-off task %s failed", task.get_name(), exc_info=task.exception())

    def start(self, name: str, factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `factory()` until shutdown; an unexpected failure is logged and the task restarted after 1 s."""

        async def guarded() -> None:
            while True:
                try:
                    await factory()
                    return
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001  # the supervisor is the one place a background failure is caught
                    _log.exception("background task %s failed; restarting", name)
                    await asyncio.sleep(1.0)

        self._tasks.append(asyncio.get_running_loop().create_task(guarded(), name=name))

    async def stop(self, one_off_deadline_s: float = 10.0) -> None:
        if self._one_offs:
            await asyncio.wait(self._one_offs, timeout=one_off_deadline_s)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
