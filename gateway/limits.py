"""What one client may take of a node: connections, connection rate, event rate, rooms.

Every limit is checked where it costs least: connections at the Engine.IO handshake
(before a Socket.IO session exists), events before their handler runs, rooms in ``join``.
A refusal is counted by limit and logged once per client per limit per minute; other
clients see nothing of it.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CONNECTIONS",
    "CONNECT_RATE",
    "CONNECT_TIMEOUT",
    "EVENT_RATE",
    "INBOUND_BYTES",
    "IN_FLIGHT",
    "LIMITS",
    "READ_TIMEOUT",
    "REQUEST_HEAD",
    "ROOMS",
    "Limits",
    "LogEvery",
    "NodeLimits",
    "TokenBuckets",
    "client_address",
    "peer_address",
]

logger = logging.getLogger("socketio_kafka.gateway")

#: The ``limit`` label of ``socketio_kafka_limit_refusals_total``.
CONNECTIONS = "connections"
CONNECT_RATE = "connect_rate"
EVENT_RATE = "event_rate"
ROOMS = "rooms"
READ_TIMEOUT = "read_timeout"
REQUEST_HEAD = "request_head"
INBOUND_BYTES = "inbound_bytes"
CONNECT_TIMEOUT = "connect_timeout"
IN_FLIGHT = "in_flight"
LIMITS = (
    CONNECTIONS, CONNECT_RATE, EVENT_RATE, ROOMS, READ_TIMEOUT, REQUEST_HEAD, INBOUND_BYTES,
    CONNECT_TIMEOUT, IN_FLIGHT,
)  # fmt: skip
#: Refusals within a window that make a connection (or an address) a flood, at the least.
_FLOOD_FLOOR = 100
#: Refusals are counted per window of this many seconds, from the first.
_FLOOD_WINDOW_S = 1.0

#: The message a refused client gets, per limit.
_MESSAGES = {
    CONNECTIONS: "too many connections",
    CONNECT_RATE: "connection rate limited",
    EVENT_RATE: "rate limited",
    ROOMS: "too many rooms",
    READ_TIMEOUT: "request not sent in time; connection closed",
    REQUEST_HEAD: "request head too large; connection closed",
    INBOUND_BYTES: "node holds too much of unfinished messages; the oldest's connection closed",
    CONNECT_TIMEOUT: "no namespace connected in time; connection closed",
    IN_FLIGHT: "busy: too many events still being handled; retry later",
}
_LOG_EVERY_S = 60.0
#: Buckets kept at most (per-address state a flood of addresses cannot grow past).
_MAX_BUCKETS = 100_000

Clock = Callable[[], float]


class LogEvery:
    """Whether a line about a key is due: once a key per ``every_s``. At most ``max_keys``
    keys are remembered; past them (a flood of addresses) some log again sooner, and the
    table is never rebuilt at each line."""

    def __init__(self, every_s: float, max_keys: int, clock: Clock = time.monotonic) -> None:
        self.every_s, self.max_keys = every_s, max_keys
        self._clock = clock
        self._logged: dict[object, float] = {}

    def due(self, key: object) -> bool:
        now = self._clock()
        if now - self._logged.get(key, -self.every_s) < self.every_s:
            return False
        if len(self._logged) >= self.max_keys:
            recent = {k: t for k, t in self._logged.items() if now - t < self.every_s}
            self._logged = recent if len(recent) < self.max_keys * 9 // 10 else {}
        self._logged[key] = now
        return True


@dataclass(frozen=True, slots=True)
class Limits:
    """A node's limits; each bucket's burst is twice its rate per second."""

    max_connections: int = 10_000
    # Each admitted handshake costs the node 0.6-1.3 ms whatever the client does next: at 50
    # a second, one flooding address took the other clients' p99 past 2x their quiet one
    # (benchmarks/flood.py); at 10, 1.5x. A crowd behind one NAT address (or many clients
    # reconnecting after a node died) gets in over seconds, within the recovery window;
    # a deployment that expects such crowds raises it (docs/decisions.md).
    connect_rate: float = 10.0
    # Ten times what a chat client or a 60 Hz game input sends; a socket publishing faster
    # is a firehose, and one node's firehose costs every other client's latency (the flood
    # benchmark: 666 accepted a second from one socket took the others' p99 past 3x).
    event_rate: float = 100.0
    max_rooms_per_socket: int = 100
    #: Take the client's address from X-Forwarded-For's last hop (behind nginx only:
    #: a client reaching the node directly could name any address).
    trust_forwarded_for: bool = False
    # Seconds a connection has to send a whole HTTP request: from the connection, or the
    # request's first byte, to its last. uvicorn has no such bound: a connection that sent
    # nothing, or half a request, was held (an open file, 7.5 kB) for as long as its client
    # liked. nginx's own header and body timeouts are 60 s; a Socket.IO client sends at once.
    read_timeout: float = 30.0
    # Bytes of messages begun and not finished (WebSocket messages, request heads, POST
    # bodies, binary events' attachments) the node holds for all connections
    # (gateway/inbound.py): 64 of the largest messages at the default payload limit,
    # where a connection that never finished one held it for its life.
    max_inbound_bytes: int = 64 * 2**20
    # Seconds an Engine.IO connection may go without a Socket.IO namespace connected: from
    # its handshake, or from its last namespace's disconnect. Node's socket.io closes it at
    # 45 s (``connectTimeout``); python-socketio never did, so a client that answered the
    # heartbeat and connected nothing held its connection, and a slot of max_connections,
    # for as long as it liked.
    connect_timeout: float = 45.0
    # Events one connection may have read and not finished handling (gateway/inflight.py):
    # a publish waits for Kafka up to kafka_timeout_ms holding its payload. A client
    # pipelining at its rate has 1 or 2 in flight on a healthy broker; one that sends its
    # whole burst at once (200) about all of it, 17 MiB of 100 kB publishes.
    max_in_flight_events: int = 256
    max_in_flight_bytes: int = 32 * 2**20

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        if self.connect_rate <= 0 or self.event_rate <= 0:
            raise ValueError("connect_rate and event_rate must be > 0")
        if self.max_rooms_per_socket < 1:
            raise ValueError("max_rooms_per_socket must be >= 1")
        if self.read_timeout <= 0:
            raise ValueError("read_timeout must be > 0")
        if self.connect_timeout <= 0:
            raise ValueError("connect_timeout must be > 0")
        if self.max_inbound_bytes < 1:
            raise ValueError("max_inbound_bytes must be >= 1")
        if self.max_in_flight_events < 1 or self.max_in_flight_bytes < 1:
            raise ValueError("max_in_flight_events and max_in_flight_bytes must be >= 1")


class TokenBuckets:
    """One token bucket per key, ``burst`` tokens refilled at ``rate`` per second.

    A bucket full again is dropped (a new one starts full: same answer), and past
    ``max_buckets`` the least recently used one goes, so memory stays bounded.
    """

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        max_buckets: int = _MAX_BUCKETS,
        clock: Clock = time.monotonic,
    ) -> None:
        self.rate, self.burst, self.max_buckets = rate, burst, max_buckets
        self._clock = clock
        # key -> (tokens, when); dict order is least recently used first.
        self._buckets: dict[str, tuple[float, float]] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> bool:
        """Take a token for ``key``; False when its bucket is empty."""
        now = self._clock()
        tokens, then = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        allowed = tokens >= 1
        self._buckets[key] = (tokens - 1 if allowed else tokens, now)
        if len(self._buckets) > self.max_buckets:
            self._evict(now)
        return allowed

    def peek(self, key: str) -> bool:
        """Whether `take` would allow ``key`` now; nothing is taken."""
        now = self._clock()
        tokens, then = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - then) * self.rate) >= 1

    def forget(self, key: str) -> None:
        self._buckets.pop(key, None)

    def _evict(self, now: float) -> None:
        # Down to 90% in one scan, idle buckets first, then the least recently used: a
        # flood of new addresses pays one scan per tenth of the cap, not one per address.
        keep = self.max_buckets * 9 // 10
        rate, burst = self.rate, self.burst
        idle = [k for k, (t, then) in self._buckets.items() if t + (now - then) * rate >= burst]
        for key in idle:
            del self._buckets[key]
        for key in list(itertools.islice(self._buckets, max(0, len(self._buckets) - keep))):
            del self._buckets[key]


class NodeLimits:
    """The limits of one node, the buckets they need, and their refusals by limit."""

    def __init__(self, limits: Limits, *, clock: Clock = time.monotonic) -> None:
        self.limits = limits
        self.refusals: Counter[str] = Counter(dict.fromkeys(LIMITS, 0))
        self._clock = clock
        self._connects = TokenBuckets(limits.connect_rate, 2 * limits.connect_rate, clock=clock)
        self._events = TokenBuckets(limits.event_rate, 2 * limits.event_rate, clock=clock)
        #: Refusals within a second, per connection (events) and per address (connections):
        #: when the window began, and how many.
        self._overdrafts: dict[str, tuple[float, int]] = {}
        self._address_overdrafts: dict[str, tuple[float, int]] = {}
        self._logged = LogEvery(_LOG_EVERY_S, _MAX_BUCKETS, clock)

    def admit(self, environ: Mapping[str, Any], connected: int) -> str | None:
        """None when a new connection may go on beside ``connected`` others, else the
        message its client gets."""
        address = client_address(environ, trust_forwarded_for=self.limits.trust_forwarded_for)
        if connected >= self.limits.max_connections:
            return self.refuse(CONNECTIONS, address)
        if not self._connects.take(address):
            return self._refuse_connect(address)
        return None

    def refuses_early(self, address: str) -> bool:
        """Whether a new connection from ``address`` is refused by its rate before any work
        is done for it (its bucket is empty; the refusal counted and logged here). Else
        `admit` decides, and takes the token, at the Engine.IO handshake."""
        if self._connects.peek(address):
            return False
        self._refuse_connect(address)
        return True

    def floods_connections(self, address: str) -> bool:
        """Whether a new TCP connection from ``address`` is reset as it is accepted, its
        request never read: the address was refused more times within this second than its
        rate (and 100), so it ignores what it is told. A refusal parsed and answered costs
        the node about 0.2 ms; at 4,000 handshakes a second that was most of a core
        (benchmarks/flood.py). Each second the first refusals are answered again, so a
        client behind the same address learns why."""
        window = self._address_overdrafts.get(address)
        if window is None or self._clock() - window[0] >= _FLOOD_WINDOW_S:
            return False  # no refusal this second
        if window[1] <= max(self._connects.rate, _FLOOD_FLOOR):
            return False
        self.refuse(CONNECT_RATE, address)
        return True

    def _refuse_connect(self, address: str) -> str:
        self._overdraw(self._address_overdrafts, address)
        return self.refuse(CONNECT_RATE, address)

    def check_event(self, eio_sid: str) -> str | None:
        """None when one more event of this connection may be handled, else the error
        its ack gets."""
        return None if self._events.take(eio_sid) else self.refuse(EVENT_RATE, eio_sid)

    def flooding(self, eio_sid: str) -> bool:
        """Called on each refused event: whether this connection's refusals within a
        second now pass its rate (and 100): it sends at twice its rate or more, whatever
        the error acks say. Refusing each event (reading it, answering it) costs the node
        what the limit is there to save: one socket's flood, all of it past the limit,
        made the other clients' p99 4-5x their quiet one (benchmarks/flood.py)."""
        return self._overdraw(self._overdrafts, eio_sid) > max(self._events.rate, _FLOOD_FLOOR)

    def _overdraw(self, table: dict[str, tuple[float, int]], key: str) -> int:
        """One more refusal of ``key`` in its window of a second: how many now."""
        now = self._clock()
        began, count = table.get(key, (now, 0))
        if now - began >= _FLOOD_WINDOW_S:
            began, count = now, 0
        elif key not in table and len(table) >= _MAX_BUCKETS:  # bounded: old windows go
            stale = [k for k, (at, _) in table.items() if now - at >= _FLOOD_WINDOW_S]
            for k in stale if len(stale) > _MAX_BUCKETS // 10 else list(table):
                del table[k]
        table[key] = (began, count + 1)
        return count + 1

    def allow_room(self, joined: int) -> bool:
        """Whether a socket in ``joined`` rooms (its own sid room not counted) may join one more."""
        return joined < self.limits.max_rooms_per_socket

    def forget(self, eio_sid: str) -> None:
        """A connection closed: its event bucket goes with it."""
        self._events.forget(eio_sid)
        self._overdrafts.pop(eio_sid, None)

    def refuse(self, limit: str, client: str) -> str:
        """Count a refusal, log it unless this client's was logged within a minute, and
        return the message the client gets."""
        self.refusals[limit] += 1
        if self._logged.due((limit, client)):
            logger.warning(
                "refused %s: %s (limit %s; logged once a minute per client)",
                client,
                _MESSAGES[limit],
                limit,
            )
        return _MESSAGES[limit]


def client_address(environ: Mapping[str, Any], *, trust_forwarded_for: bool = False) -> str:
    """The client's address: the ASGI scope's peer, or X-Forwarded-For's last hop when
    the node sits behind a proxy that sets it (engineio's REMOTE_ADDR is a constant)."""
    client = environ.get("asgi.scope", {}).get("client")
    return peer_address(
        client[0] if client else None,
        environ.get("HTTP_X_FORWARDED_FOR"),
        trust_forwarded_for=trust_forwarded_for,
    )


def peer_address(
    peer: str | None, forwarded_for: str | None, *, trust_forwarded_for: bool = False
) -> str:
    """`client_address` from the connection's peer and its X-Forwarded-For header: its
    last hop, the address the proxy in front of the node saw. The first is the client's
    to write (nginx appends to what the client sent): keyed on it, a client that named a
    new address on each handshake passed every per-address limit, or used up a victim's."""
    if trust_forwarded_for and forwarded_for:
        forwarded = forwarded_for.rsplit(",", 1)[-1].strip()
        if forwarded:
            return _host(forwarded)
    return _host(str(peer)) if peer else "unknown"


def _host(address: str) -> str:
    """An IPv6 address as its /64: a host holds one, and may take a new address of it for
    each connection; keyed on the whole address, each came with a new client's limits.
    (An IPv4-mapped one as its IPv4 address.)"""
    if ":" not in address:
        return address
    try:
        ip = ipaddress.IPv6Address(address)
    except ValueError:
        return address
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((ip, 64), strict=False))
