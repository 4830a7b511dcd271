"""Ports for services a test starts, and the TCP connections this test process holds.

The connections are read from ``/proc``.

aiokafka closes a connection that failed its TLS or SASL handshake without waiting for
it: the TLS shutdown finishes on later turns of the event loop. A test that ends first
closes its loop with the socket still open, and whichever test runs when the garbage
collector finds it fails with an unraisable ``ResourceWarning``.
"""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

from .waiting import wait_until


def connections_to(port: int) -> int:
    """How many sockets of this process have a peer on ``port``."""
    return _sockets(port, 2)


def served_on(port: int) -> int:
    """How many connections this process serves on ``port`` (its listener left out)."""
    return _sockets(port, 1, but_state="0A")


def _sockets(port: int, end: int, but_state: str = "") -> int:
    """This process's sockets whose local (``end`` 1) or remote (2) port is ``port``."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            mine = fields[9] in inodes and fields[3] != but_state
            if mine and int(fields[end].rpartition(":")[2], 16) == port:
                count += 1
    return count


async def all_closed(port: int) -> None:
    """Wait for this process's connections to ``port`` to close (TLS allows 30 s)."""
    await wait_until(lambda: connections_to(port) == 0, 40, f"connections to port {port} closed")


def free_run(count: int) -> int:
    """The first of ``count`` consecutive free ports, for a command that takes a base port:
    below the ephemeral range (32768 up on Linux), where outgoing connections (a node's own
    to Kafka) could take one of them between this check and the bind."""
    for _ in range(100):
        base = random.randrange(20_000, 32_000 - count)
        if all(_bindable(port) for port in range(base, base + count)):
            return base
    raise AssertionError(f"no {count} consecutive free ports in 20000-32000")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
