"""Background tasks that cannot die silently.

A node's consume loop, heartbeat, expiry sweep, broker watch and session writers each run
under a `Supervisor`: an exception that escapes one is logged with its traceback, counted, and
the task restarts after a capped backoff. While a task waits to restart it is *down*,
with the error as the reason, and the node's health (and ``/readyz``) says so.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

__all__ = ["Supervisor"]

_FIRST_BACKOFF_S = 0.1
#: A task that ran this long before failing restarts at the first backoff again.
_HEALTHY_RUN_S = 30.0

TaskFactory = Callable[[], Awaitable[None]]


class Supervisor:
    """Named background tasks, restarted with capped backoff when they raise.

    Example::

        supervisor = Supervisor(logger, max_backoff_s=10)
        supervisor.start("heartbeat", self._heartbeat)
        supervisor.down  # {"heartbeat": "ValueError('...')"} while it waits to restart
        await supervisor.stop()
    """

    def __init__(self, logger: logging.Logger, max_backoff_s: float = 10.0) -> None:
        self._logger = logger
        self._max_backoff_s = max_backoff_s
        self._tasks: dict[str, asyncio.Task[None]] = {}
        #: Tasks waiting to restart, with the error that stopped them.
        self.down: dict[str, str] = {}
        #: How many times any task raised and was restarted.
        self.restarts = 0

    def start(self, name: str, factory: TaskFactory) -> None:
        """Run ``factory()`` as ``name`` until it returns or the supervisor stops."""
        if name in self._tasks and not self._tasks[name].done():
            raise RuntimeError(f"task {name!r} is already running")
        self.ensure(name, factory)

    def ensure(self, name: str, factory: TaskFactory) -> None:
        """Start ``name`` unless it runs (or waits to restart): for tasks started on demand."""
        task = self._tasks.get(name)
        if task is None or task.done():
            self._tasks[name] = asyncio.create_task(self._run(name, factory), name=name)

    @property
    def running(self) -> list[str]:
        return [name for name, task in self._tasks.items() if not task.done()]

    async def stop(self) -> None:
        """Cancel every task and wait for them. Safe to call twice."""
        tasks, self._tasks = list(self._tasks.values()), {}
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.down.clear()

    async def _run(self, name: str, factory: TaskFactory) -> None:
        loop = asyncio.get_running_loop()
        backoff = _FIRST_BACKOFF_S
        while True:
            began = loop.time()
            try:
                await factory()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.restarts += 1
                if loop.time() - began > _HEALTHY_RUN_S:
                    backoff = _FIRST_BACKOFF_S
                self.down[name] = f"{type(exc).__name__}: {exc}"[:200]
                self._logger.exception(
                    "background task %r failed; restarting in %.1fs", name, backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff_s)
                self.down.pop(name, None)
                continue
            return
