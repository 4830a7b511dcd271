"""A real ``redis-server`` on 127.0.0.1, for development and tests: no persistence, no daemon.

It runs the system's binary (``apt-get install redis-server``) in the background with a
config written to its data dir::

    redis = LocalRedis()
    url = redis.start()  # "redis://127.0.0.1:<port>/0"; reuses the server already running
    ...
    redis.stop()
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from pathlib import Path

from ._process import HOST, LocalService, ServiceStatus, choose_port, state_root
from .errors import RedisNotFound

__all__ = ["LocalRedis", "ServiceStatus"]


class LocalRedis(LocalService):
    """One ``redis-server`` whose config and log live in ``data_dir``.

    ``start()`` reuses the server this data dir already runs (from any process); ``stop()``
    ends only that server.
    """

    name = "Redis"
    config_name = "redis.conf"
    log_name = "redis.log"

    def __init__(self, data_dir: Path | None = None, port: int | None = None) -> None:
        super().__init__(data_dir or state_root() / "redis", port)

    def start(self, timeout: float = 30.0) -> str:
        """Start the server (or reuse the running one); return ``redis://127.0.0.1:<port>/0``."""
        return super().start(timeout)

    def _launch(self, timeout: float) -> str:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisNotFound("no redis-server on PATH (e.g. apt-get install redis-server)")
        port = choose_port(self.port, _previous_port(self.config_path))
        self.config_path.write_text(_redis_conf(self.data_dir, self.log_path, port))
        argv = [binary, str(self.config_path)]
        url = f"redis://{HOST}:{port}/0"
        return self._run(argv, url, {"client": port}, _version(binary), timeout)

    def _answers(self, address: str) -> bool:
        return _pong(int(address.rpartition(":")[2].partition("/")[0]))


def _redis_conf(data_dir: Path, log: Path, port: int) -> str:
    settings = {
        "bind": HOST,
        "port": str(port),
        "protected-mode": "yes",
        "daemonize": "no",
        "dir": _quote(str(data_dir)),
        "logfile": _quote(str(log)),
        # A scratch server: nothing is written to disk, a restart starts empty.
        "save": '""',
        "appendonly": "no",
        # Redis rewrites its process title, which would hide the config path we find it by.
        "set-proc-title": "no",
    }
    return "".join(f"{key} {value}\n" for key, value in settings.items())


def _quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _previous_port(config: Path) -> int | None:
    try:
        found = re.search(r"^port (\d+)$", config.read_text(), re.MULTILINE)
    except FileNotFoundError:
        return None
    return int(found.group(1)) if found else None


def _version(binary: str) -> str:
    """``7.0.15`` from ``Redis server v=7.0.15 sha=...``."""
    output = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
    ).stdout
    found = re.search(r"v=(\S+)", output)
    return found.group(1) if found else "unknown"


def _pong(port: int) -> bool:
    """Whether a PING over a plain socket gets ``+PONG`` back."""
    try:
        with socket.create_connection((HOST, port), timeout=1.0) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(64)
                if not chunk:
                    return False
                reply += chunk
    except OSError:
        return False
    return reply == b"+PONG\r\n"
