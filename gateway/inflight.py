"""What a node holds of events it has read and not finished handling, bounded.

python-socketio starts a task for each event and reads on; nothing waits for the handlers.
A ``publish`` holds its payload, decoded and encoded, while it waits for Kafka (up to
``--kafka-timeout-ms``): at its event rate one client pinned 240 MiB of a node while Kafka
stalled for 10 s, and many honest ones during a broker failover could take all of it.
Here each event is charged its message's bytes as it is read, and refused at once (an
error ack, nothing started) past its connection's bound, in events or bytes, or past what
the node's unfinished messages leave of their budget (`InboundBudget`): events are
refused, never cut, and never make an unfinished message's connection cut.
docs/decisions.md.
"""

from __future__ import annotations

from .inbound import InboundBudget

__all__ = ["EVENT_OVERHEAD", "InFlight"]

#: What an event costs beside its message's bytes while it is handled: its task and its
#: coroutines' frames (a small publish waiting on Kafka: 5.6 kB of RSS each).
EVENT_OVERHEAD = 4096


class InFlight:
    """Events being handled, by connection: at most ``max_events`` and ``max_bytes`` each,
    and together no more than ``node`` leaves of its limit."""

    def __init__(self, max_events: int, max_bytes: int, node: InboundBudget) -> None:
        if max_events < 1 or max_bytes < 1:
            raise ValueError("max_events and max_bytes must be >= 1")
        self.max_events, self.max_bytes = max_events, max_bytes
        self._node = node
        #: What all connections' events being handled hold now.
        self.bytes = 0
        #: By connection: its events being handled, and their bytes (gone at none).
        self._held: dict[str, tuple[int, int]] = {}

    def held(self, eio_sid: str) -> tuple[int, int]:
        """``eio_sid``'s events being handled, and their bytes."""
        return self._held.get(eio_sid, (0, 0))

    def admit(self, eio_sid: str, nbytes: int) -> bool:
        """Whether one more event of ``nbytes`` may be handled (then counted until its
        `release`); False past a bound, nothing counted."""
        events, held = self._held.get(eio_sid, (0, 0))
        node = self._node
        if (
            events >= self.max_events
            or held + nbytes > self.max_bytes
            or node.bytes + self.bytes + nbytes > node.limit
        ):
            return False
        self._held[eio_sid] = (events + 1, held + nbytes)
        self.bytes += nbytes
        return True

    def release(self, eio_sid: str, nbytes: int) -> None:
        """An event `admit` took, of ``nbytes``, is handled (its connection may be gone)."""
        events, held = self._held[eio_sid]
        if events == 1:
            del self._held[eio_sid]
        else:
            self._held[eio_sid] = (events - 1, held - nbytes)
        self.bytes -= nbytes
