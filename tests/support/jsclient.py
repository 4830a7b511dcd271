"""The official socket.io JS client in a Node process, driven from the tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from pathlib import Path
from typing import Any

from .waiting import wait_until

JS_DIR = Path(__file__).resolve().parents[1] / "js"


class JsClient:
    """One ``socket.io-client`` socket; every report it prints is kept, in order."""

    def __init__(self) -> None:
        self.reports: list[dict[str, Any]] = []
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._calls = 0

    async def start(self) -> JsClient:
        node = shutil.which("node")
        assert node, "Node.js is required for the JS client tests"
        assert (JS_DIR / "node_modules" / "socket.io-client").is_dir(), (
            f"run: npm ci --prefix {JS_DIR}"
        )
        self._process = await asyncio.create_subprocess_exec(
            node,
            str(JS_DIR / "client.mjs"),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=JS_DIR,
        )
        self._reader = asyncio.create_task(self._read())
        return self

    @property
    def pid(self) -> int:
        """The Node process's pid: to pause it (SIGSTOP) as a client that stops reading."""
        assert self._process is not None
        return self._process.pid

    async def _read(self) -> None:
        assert self._process is not None
        assert self._process.stdout is not None
        async for line in self._process.stdout:
            self.reports.append(json.loads(line))

    async def send(self, cmd: str, **args: Any) -> None:
        assert self._process is not None
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        await self._process.stdin.drain()

    async def connect(self, url: str, **options: Any) -> dict[str, Any]:
        before = len(self.connects())
        await self.send("connect", url=url, **options)
        await self.wait_connects(before + 1)
        return self.connects()[-1]

    async def call(self, event: str, data: Any) -> Any:
        self._calls += 1
        call_id = self._calls
        await self.send("call", id=call_id, event=event, data=data)
        await wait_until(lambda: self._reply(call_id) is not None, 20, f"reply to {event}")
        return self._reply(call_id)

    def _reply(self, call_id: int) -> Any:
        for report in self.reports:
            if report["type"] == "reply" and report["id"] == call_id:
                return report["reply"]
        return None

    def connects(self) -> list[dict[str, Any]]:
        return [r for r in self.reports if r["type"] == "connect"]

    async def wait_connects(self, count: int, timeout: float = 30) -> None:
        await wait_until(lambda: len(self.connects()) >= count, timeout, f"{count} connects")

    def event_args(self, event: str) -> list[list[Any]]:
        return [r["args"] for r in self.reports if r["type"] == "event" and r["event"] == event]

    def payloads(self, event: str) -> list[Any]:
        return [args[0] for args in self.event_args(event)]

    async def wait_count(self, event: str, count: int, timeout: float = 60) -> list[Any]:
        await wait_until(
            lambda: len(self.event_args(event)) >= count,
            timeout,
            f"{count} {event!r} events in the JS client (got {len(self.event_args(event))})",
        )
        return self.payloads(event)

    async def close(self) -> None:
        if self._process is None:
            return
        with contextlib.suppress(ConnectionError):
            await self.send("close")
        try:
            await asyncio.wait_for(self._process.wait(), 10)
        except TimeoutError:
            self._process.kill()
            await self._process.wait()
        if self._reader is not None:
            await self._reader
