"""A gate at accept, before uvicorn's HTTP protocol: a flooding address gets a reset.

A refused handshake is cheap (`CoalescingWebSocketProtocol.gated`), but it is still an HTTP
request parsed, a WebSocket handshake parsed and a 403 written: about 0.2 ms of the node's
only core, and a flooder that is answered quickly asks again. Here the gate is asked as the
connection is made, from its peer address alone. A connection it refuses is reset before
uvicorn's protocol is even made (its parser, its bookkeeping: 18.5-20 µs a connection with
them, 13-14.5 without, at 13,000 connections a second); one it lets through is handed to
uvicorn's protocol as if that had been made for it.

A reset, however cheap, is answered at once, and a flooder asks again at once: 64 loops
got 6,400-10,000 resets a second, and with them most of a core between the flooder, the
node and the kernel (benchmarks/flood.py). So a refused connection is first held, unread,
for `Holds.seconds`, then reset: each of the flooder's loops waits that long for its answer.
The holds are bounded per address and in all (each is an open file); past either bound a
refused connection is reset at once, as before. A held connection is not read, so a peer
that leaves first is noticed only when its hold ends.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

from .inbound import InboundBudget
from .limits import peer_address
from .reading import BoundedHTTPProtocol, Refused

__all__ = ["AcceptGate", "Holds", "gated_http"]

#: ``gate(peer_host)``: False refuses the connection as it is accepted.
AcceptGate = Callable[[str | None], bool]


class Holds:
    """Refused connections held unread before their reset: at most ``per_address`` from one
    address and ``total`` in all, each for ``seconds``."""

    def __init__(self, seconds: float = 1.0, per_address: int = 128, total: int = 512) -> None:
        if seconds < 0 or per_address < 0 or total < 0:
            raise ValueError("seconds, per_address and total must be >= 0")
        self.seconds, self.per_address, self.total = seconds, per_address, total
        #: Connections held now, by address, and in all.
        self.held: Counter[str] = Counter()
        self.held_total = 0

    def delay(self) -> float:
        """How long the next refused connection is held: `seconds`, give or take half, so
        that a flooder's loops, held together, do not come back together (a burst of
        connections admitted at once, each a full handshake, stalls the node's other work)."""
        return self.seconds * random.uniform(0.5, 1.5)

    def take(self, peer: str) -> bool:
        """One more held connection from ``peer``, unless holds are off (``seconds`` 0) or
        a bound is reached."""
        full = self.held[peer] >= self.per_address or self.held_total >= self.total
        if not self.seconds or full:
            return False
        self.held[peer] += 1
        self.held_total += 1
        return True

    def release(self, peer: str) -> None:
        self.held_total -= 1
        self.held[peer] -= 1
        if self.held[peer] <= 0:
            del self.held[peer]


def gated_http(
    gate: AcceptGate,
    holds: Holds,
    read_timeout: float,
    refused: Refused,
    inbound: InboundBudget | None = None,
) -> type[asyncio.Protocol]:
    """A protocol factory for uvicorn's ``http``: ``gate`` asked first, then uvicorn's own
    HTTP protocol takes the connection, with its bounds on each request
    (`BoundedHTTPProtocol`, its unfinished requests counted in ``inbound``). A refused
    connection is held as ``holds`` allows, else reset at once."""

    class GatedHTTPProtocol(asyncio.Protocol):
        __slots__ = ("_held", "_reset", "_uvicorn")

        def __init__(self, **uvicorn: Any) -> None:
            self._uvicorn = uvicorn  # config, server state, app state: uvicorn's own
            self._held: str | None = None
            self._reset: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            peer = transport.get_extra_info("peername")
            host = peer[0] if peer else None
            if gate(host):
                http = BoundedHTTPProtocol(read_timeout, refused, inbound, **self._uvicorn)
                transport.set_protocol(http)
                http.connection_made(transport)
            elif host is not None and holds.take(address := peer_address(host, None)):
                self._held = address
                transport.pause_reading()
                loop = asyncio.get_running_loop()
                self._reset = loop.call_later(holds.delay(), transport.abort)
            else:
                transport.abort()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._reset is not None:
                self._reset.cancel()
            if self._held is not None:
                holds.release(self._held)
                self._held = None

    return GatedHTTPProtocol
