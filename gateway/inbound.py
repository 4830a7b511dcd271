"""What a node holds of messages its clients have begun and not finished sending, bounded.

A WebSocket message is read whole before the app sees it, and so is an HTTP request's head,
a polling POST's body and a binary event's attachments (`GuardedServer`). Each is bounded
on its own (``--max-payload-bytes``, 64 kB of
head), but not in all: a client that sends a message but for its last byte, then waits,
held that much of the node as long as its connection lived (200 such WebSockets: 191 MiB
of RSS), and ``--max-connections`` such clients many GiB. Engine.IO's heartbeat does not
end them (a pong waits behind the unfinished message, and a message finished at the last
moment starts the next). Here every connection reports what it holds of an unfinished
message; past the node's bound the ones that began theirs longest ago are closed first, as
the slowest senders (a quick upload is young), until the rest fit. docs/decisions.md.
"""

from __future__ import annotations

from typing import Protocol

from .limits import INBOUND_BYTES
from .reading import Refused

__all__ = ["Holder", "InboundBudget"]


class Holder(Protocol):
    """A connection holding part of a message: uvicorn's ``client``, and a way to close it."""

    client: tuple[str, int] | None

    def cut_inbound(self) -> None:
        """Close the connection, reading nothing more and dropping what it held."""


class InboundBudget:
    """The bytes of unfinished messages a node holds for all its connections, at most
    ``limit``: past it, holders are cut oldest first and told to ``refused``."""

    def __init__(self, limit: int, refused: Refused) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.limit = limit
        #: What all holders hold now.
        self.bytes = 0
        self._refused = refused
        #: By holder, in the order they began holding: the oldest first.
        self._held: dict[Holder, int] = {}

    def __len__(self) -> int:
        return len(self._held)

    def held(self, holder: Holder) -> int:
        """What ``holder`` holds in the count now (0 once cut)."""
        return self._held.get(holder, 0)

    def hold(self, holder: Holder, nbytes: int) -> None:
        """``holder`` now holds ``nbytes`` of a message not yet whole (0: none, or done)."""
        before = self._held.get(holder, 0)
        if nbytes:
            self._held[holder] = nbytes  # an update keeps its place
        elif before:
            del self._held[holder]
        self.bytes += nbytes - before
        while self.bytes > self.limit:
            oldest = next(iter(self._held))
            self.bytes -= self._held.pop(oldest)
            self._refused(INBOUND_BYTES, oldest.client[0] if oldest.client else None)
            oldest.cut_inbound()
