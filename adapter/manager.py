"""`AsyncKafkaManager`: python-socketio's pub/sub client manager on Apache Kafka."""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError
from engineio.async_drivers import asgi
from socketio import packet as sio_packet
from socketio.async_manager import AsyncManager
from socketio.async_pubsub_manager import AsyncPubSubManager

from . import codec, offsets, routing
from .barriers import HOLD_MAX_S, Barriers
from .budget import MemoryBudget
from .cursor import Replay, SharedReplays
from .deadlines import Deadlines
from .errors import (
    BrokerUnavailable,
    ConfigError,
    PublishError,
    RecordDecodeError,
    SecurityError,
    SocketIOKafkaError,
)
from .fanout import HoldBuffer, event_packets
from .frames import FramesWebSocket
from .histogram import LatencyHistogram
from .history import LiveHistory
from .metadata import pace_metadata_updates
from .options import KafkaOptions, parse_kafka_urls
from .outage import BrokerWatch, fold_kafka_client_logs
from .outbox import Outbox, Outboxes, OutboxLimits
from .pacing import Pacing
from .publisher import Headers, Publisher
from .publishes import PublishLedger
from .replay import Bounds, ConsumerPool, topic_bounds
from .rooms import RoomIndex
from .security import check_access
from .sightings import Sightings
from .skips import (
    UNREADABLE,
    log_skipped,
    log_unexpected,
    log_unreadable,
    read_past_unreadable,
)
from .stopping import stop_consumer
from .store import SessionStore
from .supervisor import Supervisor
from .topics import (
    ClusterDefaults,
    Replication,
    TopicSpec,
    cluster_defaults,
    ensure_topic,
    replication_for,
)
from .turns import Turns
from .watermarks import Watermarks

__all__ = ["AsyncKafkaManager", "Health", "ManagerStats"]

_FIRST_RETRY_S = 0.25
_POLL_TIMEOUT_MS = 1000
#: A consume loop that has not begun a fetch for this long is stuck: in an app's handler
#: it runs (a disconnect or an ack from another node), delivering nothing meanwhile.
_STUCK_S = 30.0
#: The connection (``eio_sid``) whose event the running task handles, set as its handler
#: starts (`set_server`).
_CALLER: ContextVar[str | None] = ContextVar("socketio_kafka_caller", default=None)
#: Past what that handler emitted that may reach its connection, per partition: its ACK
#: waits for those to be delivered here, as python-socketio's managers deliver an emit
#: locally before it returns. One dict an event, filled in place: the tasks the handler
#: starts (``gather``, ``wait_for``) copy the context, and their emits count too.
_TASK_EMITTED: ContextVar[dict[int, int] | None] = ContextVar(
    "socketio_kafka_task_emitted", default=None
)
#: How long an ACK waits at most for its handler's emits (and ``request_timeout_ms`` at
#: most): a consume loop that restarts or is held up delays replies no longer than this.
_ACK_WAIT_S = 2.0
#: How old a partition's last emit may be for a room operation or disconnect to name it in
#: ``sio.after`` (`_recent_emits`).
_AFTER_RECENT_S = 60.0
_ACKS = (sio_packet.ACK, sio_packet.BINARY_ACK)
#: Waits for the consume loop kept at most, past which those given up are dropped.
_MAX_WAITERS_KEPT = 1024
_REPLAY_FETCH_BYTES = 8 * 1024 * 1024
_REPLAY_RETRY_BACKOFF_MS = 10
_METADATA_BACKOFF_S = 0.1  # aiokafka's (and Kafka's) default retry backoff
#: How long an ack asked of a client on another node is awaited: nothing else tells this
#: node that the client left or will never answer.
REMOTE_ACK_S = 300.0


#: What Kafka takes in a topic name; a channel's topics add ``.sessions`` at most.
_TOPIC_CHARS = re.compile(r"[A-Za-z0-9._-]+")
_MAX_CHANNEL = 249 - len(".sessions")


def _check_channel(channel: str) -> None:
    """`ConfigError` for a channel whose topics Kafka would refuse: told at construction,
    not at the first start ("" made the topics ``.events`` and ``.sessions``)."""
    if not isinstance(channel, str) or not _TOPIC_CHARS.fullmatch(channel):
        raise ConfigError(f"channel {channel!r} must be letters, digits, '.', '_' or '-'")
    if len(channel) > _MAX_CHANNEL:
        raise ConfigError(f"channel must be {_MAX_CHANNEL} characters at most, not {len(channel)}")


@dataclass(slots=True)
class ManagerStats:
    """Counters a node exports as metrics."""

    published: int = 0
    publish_errors: int = 0
    #: Records of the events topic read and taken (delivered, applied, or passed).
    records_consumed: int = 0
    #: Of those, records passed over undecoded: their headers named no local recipient.
    records_passed: int = 0
    records_skipped: int = 0
    handler_errors: int = 0
    #: Other nodes' room operations and disconnects held until the emits their node wrote
    #: before them were taken here (`Barriers`), and those taken after `HOLD_MAX_S` without.
    barriers_held: int = 0
    barriers_expired: int = 0
    connect_failures: int = 0
    session_records_skipped: int = 0
    sessions_expired: int = 0
    #: Session data not kept for recovery (not JSON, or too large), and sessions ended
    #: because their record was too large for Kafka even without it (`SessionStore`).
    session_data_dropped: int = 0
    sessions_too_large: int = 0
    slow_consumers_cut: int = 0
    #: Holds outrun and sockets cut because the node's sockets together kept more than its
    #: budget (`MemoryBudget`); the cuts are among ``slow_consumers_cut`` too.
    over_node_budget: int = 0
    #: Records replays read, and of those the records they decoded (not passed by header).
    replay_records_read: int = 0
    replay_records_decoded: int = 0
    #: Records replays took from a window of what an earlier pass read, not read again.
    replay_records_reused: int = 0
    #: Passes replay cursors began over a partition: recoveries at once share a pass.
    replay_passes: int = 0
    #: Replays read on past their end: more live events came for the socket meanwhile
    #: than its hold keeps (`HoldBuffer`).
    replays_outrun: int = 0
    #: Partitions of recoveries' ranges not read, and records past the last one that
    #: could concern the session not read either: the live consumer saw where its rooms
    #: were written (`Sightings`). The second counts offsets, not records.
    replay_partitions_skipped: int = 0
    replay_records_spared: int = 0
    #: Events queued on local sockets: live, and replayed to recovering ones.
    events_delivered: int = 0
    events_replayed: int = 0
    #: Of the live ones, those written to their WebSocket at once (`adapter/frames.py`).
    events_written: int = 0
    #: Seconds from a record handed to the producer to Kafka's acknowledgement.
    produce_latency: LatencyHistogram = field(default_factory=LatencyHistogram)


@dataclass(frozen=True, slots=True)
class Health:
    """Whether a node can do its work now, and if not why: what ``/readyz`` reports.

    Computed from state the node already holds, so asking costs no Kafka round trip.
    """

    ready: bool
    reasons: tuple[str, ...]
    #: Background tasks that raised and were restarted, since start.
    task_restarts: int
    #: Producers replaced after they wedged or their sender ended, since start.
    producers_replaced: int


class AsyncKafkaManager(RoomIndex, AsyncPubSubManager):  # type: ignore[misc]  # python-socketio is untyped
    """A client manager that shares every cross-node operation through a Kafka topic.

    Each node writes ``<channel>.events`` keyed by namespace and room, so one room's
    events keep their order, and reads every partition of it as an independent reader
    (no consumer group), fanning each record out to its own sockets. Emits are
    delivered through Kafka on every node, the emitting one included, so all nodes
    see one room's events in the same order.

    Example::

        mgr = AsyncKafkaManager("kafka://localhost:9092", channel="chat")
        sio = socketio.AsyncServer(async_mode="asgi", client_manager=mgr)
        await mgr.start()  # optional: otherwise it starts with the first connection

    A ``write_only=True`` manager only produces: any process can emit to clients with it.
    """

    name = "kafka"

    def __init__(
        self,
        url: str | Iterable[str] = "kafka://localhost:9092",
        channel: str = "socketio",
        write_only: bool = False,
        logger: logging.Logger | None = None,
        json: Any = None,
        *,
        options: KafkaOptions | None = None,
        limits: OutboxLimits | None = None,
    ) -> None:
        _check_channel(channel)
        super().__init__(channel=channel, write_only=write_only, logger=logger, json=json)
        self.bootstrap_servers = parse_kafka_urls(url)
        self.options = options or KafkaOptions()
        self.events_topic = f"{channel}.events"
        self.stats = ManagerStats()
        self._publisher: Publisher | None = None
        self._turns = Turns()
        self._deadlines = Deadlines(self.options.request_timeout_ms / 1000)
        options = self.options
        #: The fetch interval and linger for this node's load (`adapter/pacing.py`).
        self.pacing = Pacing(
            options.fetch_interval_ms,
            options.max_fetch_interval_ms,
            options.linger_ms,
            options.max_linger_ms,
            self._set_linger,
        )
        self._supervisor: Supervisor | None = None
        self._watch: BrokerWatch | None = None
        self._consumer: AIOKafkaConsumer | None = None
        #: Asks for offsets only. Kafka answers a connection's requests in order, so the
        #: live consumer's would wait behind its long-poll fetch (up to fetch_max_wait_ms).
        self._offsets: AIOKafkaConsumer | None = None
        #: Asked through this, recoveries at once share each request for offsets.
        self.watermarks = Watermarks(lambda: self._offsets, lambda: self.pacing.widened_s)
        self._replays = ConsumerPool(self._replay_consumer)
        #: Every replay of this node reads through these cursors (`adapter/cursor.py`).
        self.shared_replays = SharedReplays(self._replays, self.events_topic, self.stats)
        self._partitions = 0
        #: Next offset to consume, per partition: the watermark every delivery carries.
        self.positions: list[int] = []
        #: Acks asked of clients on other nodes, each forgotten at its timer.
        self._remote_acks: dict[tuple[str, int], asyncio.TimerHandle] = {}
        #: Past the last emit this node wrote, per partition (`_emits_delivered`), and the
        #: task of the consume loop that delivers them.
        self._emitted: dict[int, int] = {}
        #: When this node last emitted to each partition (`time.monotonic`).
        self._emitted_at: dict[int, float] = {}
        self._consuming: asyncio.Task[Any] | None = None
        #: Waits for the positions to reach offsets, woken by the consume loop (`_delivered`).
        self._reaching: list[tuple[dict[int, int], asyncio.Future[None]]] = []
        #: Partitions held at another node's operation until its earlier emits are read.
        self.barriers = Barriers()
        self._marker: offsets.Marker | None = None
        #: The sessions topic (connection state recovery), read by the consume loop too.
        self.store = SessionStore(
            f"{channel}.sessions",
            self.host_id,
            self.stats,
            self._ready_publisher,
            self.watermarks,
            self._get_logger,
            self.options.max_record_bytes,
        )
        self.store.on_rejected = self._session_rejected
        self.sessions_topic = self.store.topic
        #: Client publish ids accepted in the window (`adapter/publishes.py`).
        self.publishes = PublishLedger(self.consumed_to_end)
        #: Recovery window in seconds, once a recovering server has switched recovery on.
        self.recovery_window: float | None = None
        #: Sockets that asked for no offset argument (plain python-socketio clients).
        self.plain_sids: set[str] = set()
        #: Bounds every socket's outgoing queue (`OutboxLimits`): a client that does not
        #: read is cut off, its session kept; and what all queues and holds keep together.
        limits = limits or OutboxLimits()
        self.budget = MemoryBudget(limits.node_max_bytes)
        self.budget.on_over = self._relieve_memory
        self.outboxes = Outboxes(limits, self.budget)
        self.holds = HoldBuffer(limits, self.budget)
        self.on_rooms_changed: Callable[[str, str], None] | None = None
        self._consume_runs = 0
        #: When the consume loop last began a turn (`time.monotonic`).
        self._turned: float | None = None
        self._start_task: asyncio.Task[None] | None = None
        #: Why the last start in the background failed, for `health`; None once started.
        self._start_failure: str | None = None
        #: Why the last step of a start that retries failed, for `health` meanwhile.
        self._retried: str | None = None
        self._ready = asyncio.Event()
        self._start_lock = asyncio.Lock()
        #: Set by `stop`, cleared by `start`: nothing else starts the manager meanwhile.
        self._stopped = False

    # -- lifecycle -------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True once the producer is connected and the consumer is positioned."""
        return self._ready.is_set()

    def enable_recovery(self, window_s: float) -> None:
        """Keep session state and offsets for connection state recovery (call before start)."""
        retention = self.options.retention_ms
        if retention != -1 and retention < window_s * 1000:
            raise ConfigError(
                f"retention_ms={retention} is shorter than the recovery window ({window_s}s): "
                "events a client missed could be deleted before it returns"
            )
        self.recovery_window = self.store.window = window_s
        # What the live consumer saw where, for replays to skip, and what it read lately,
        # for replays to take without reading Kafka.
        self.shared_replays.sightings = Sightings()
        if budget := self.options.replay_history_bytes:
            self.shared_replays.history = LiveHistory(budget)
        # A resend comes within a recovery window of the drop, for a publish made before.
        floor = window_s + self.options.request_timeout_ms / 1000
        self.publishes.window_s = max(self.publishes.window_s, floor)

    @property
    def epoch(self) -> str:
        """The events topic's epoch: every offset string a client holds names it."""
        return self.store.epoch

    async def wait_ready(self) -> bool:
        """Start if needed and wait up to ``request_timeout_ms`` for `ready`; False if not,
        at once if the start failed (the next call starts it again).

        Before ready the sessions table is not read yet: a node that just started must
        not judge a recovery claim (nor hand out a session) until it is.
        """
        if self._stopped:
            return False
        if not self._ready.is_set():
            self._start_in_background()
            if (task := self._start_task) is not None:  # a start that fails ends the wait
                await asyncio.wait({task}, timeout=self.options.request_timeout_ms / 1000)
        return self._ready.is_set()

    def health(self) -> Health:
        """Ready, or the reasons not: not connected yet, a background task down or stuck,
        Kafka unreachable, the producer being replaced or not sending. Answers at once, whatever
        Kafka does."""
        reasons: list[str] = []
        if not self._ready.is_set():
            failure = self._start_failure
            if failure:
                reasons.append(f"start failed ({failure})")
            elif retried := self._retried:
                reasons.append(f"not connected to Kafka yet (last try: {retried})")
            else:
                reasons.append("not connected to Kafka yet")
        supervisor, watch, publisher = self._supervisor, self._watch, self._publisher
        if supervisor is not None:
            reasons += [f"background task {n!r} down ({why})" for n, why in supervisor.down.items()]
        if watch is not None and not watch.reachable:
            reasons.append(f"kafka unreachable ({watch.cause})")
        turned = self._turned
        idle = 0.0 if turned is None else time.monotonic() - turned
        if self._ready.is_set() and idle > _STUCK_S:
            reasons.append(
                f"the consume loop has not turned for {idle:.0f}s: stuck in a handler it"
                " runs (an app's disconnect or ack handler), delivering nothing"
            )
        if publisher is not None and publisher.replacing:
            reasons.append("the kafka producer is being replaced")
        elif publisher is not None and not publisher.sending:
            reasons.append("the kafka producer's sender task has ended")
        return Health(
            not reasons,
            tuple(reasons),
            supervisor.restarts if supervisor is not None else 0,
            publisher.replaced if publisher is not None else 0,
        )

    def supervise(self, name: str, factory: Callable[[], Awaitable[None]]) -> bool:
        """Run ``factory()`` as this node's background task ``name`` unless it runs already:
        an exception that escapes it is logged, counted and shown by `health`, and it
        restarts. False (nothing started) while the manager is not started."""
        if self._supervisor is None:
            return False
        self._supervisor.ensure(name, factory)
        return True

    async def start(self) -> None:
        """Connect and position the consumer; returns once ready.

        Retries with capped backoff while Kafka is unreachable; a topic whose layout
        would lose events raises `TopicLayoutError`, refused credentials or a failed TLS
        handshake `SecurityError`. Safe to call twice.
        """
        self._stopped = False
        try:
            await self._start()
        except Exception as exc:  # `health` says why, not "not connected yet", for good
            self._start_failure = str(exc) if isinstance(exc, SocketIOKafkaError) else repr(exc)
            raise

    async def _start(self) -> None:
        async with self._start_lock:
            if self._ready.is_set() or self._stopped:
                return
            fold_kafka_client_logs()
            logger = self._get_logger()
            await self._retry(self._connect, "connect")
            if self._stopped:  # stopped while it connected: nothing may run on
                await self._close_clients()
                return
            supervisor = self._supervisor = Supervisor(logger, self.options.retry_backoff_max_s)
            self._watch = BrokerWatch(self._probe, lambda: self.stats.publish_errors, logger)
            supervisor.start("broker-watch", self._watch.run)
            if self.pacing.adaptive:
                supervisor.start("pacing", self.pacing.run)
            if not self.write_only:
                supervisor.start("consume", self._consume_loop)
            if self.recovery_window is not None:
                supervisor.start("heartbeat", self.store.heartbeat)
                supervisor.start("session-expiry", self.store.expire)
            self._start_failure = self._retried = None
            self._ready.set()
            logger.info(
                "kafka manager ready on %s (%s)",
                self.events_topic,
                ",".join(self.bootstrap_servers),
            )

    async def stop(self) -> None:
        """Stop consuming, flush what was produced, close every connection. Safe to call
        twice. Nothing starts it again but `start`: a publish or a claim while it stopped
        once started it anew in the background, heartbeat and all, after stop returned."""
        self._stopped = True
        self._ready.clear()
        task, self._start_task = self._start_task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        supervisor, self._supervisor, self._watch = self._supervisor, None, None
        if supervisor is not None:
            await supervisor.stop()
        # Nothing passes them now: each wait for the loop ends as not delivered, at once.
        for _, future in self._reaching:
            if not future.done():
                future.set_exception(TimeoutError("the manager stopped"))
        self._reaching = []
        await self._close_clients()

    async def __aenter__(self) -> AsyncKafkaManager:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def initialize(self) -> None:
        """Called by the server on its first connection: start, unless already started.

        Replaces `AsyncPubSubManager.initialize`, whose listener thread this class does
        not use (the consumer loop starts with `start`).
        """
        AsyncManager.initialize(self)
        if not self.write_only:
            self._start_in_background()

    # -- python-socketio's pub/sub seam ------------------------------------------------

    async def emit(
        self,
        event: str,
        data: Any,
        namespace: str | None = None,
        room: str | Sequence[str] | None = None,
        skip_sid: str | list[str] | None = None,
        callback: Callable[..., Any] | None = None,
        to: str | Sequence[str] | None = None,
        correlation_id: str | None = None,
        publisher: str | None = None,
        subject: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Publish an emit; every node, this one included, delivers it when consumed.

        ``correlation_id`` goes on the record as its ``sio.cid`` header, to trace it;
        ``publisher``, as ``sio.pub``, when it is a client's own publish id (`publishes.py`);
        ``subject``, as ``sio.sub``, the publishing socket's (outbound topics).
        """
        rooms = to or room
        if isinstance(rooms, Iterable) and not isinstance(rooms, str | list):
            rooms = list(rooms)  # rooms in any sequence, as python-socketio takes them
        if rooms == []:
            return  # to nobody, as python-socketio's own manager sends it
        if kwargs.get("ignore_queue"):
            await AsyncManager.emit(
                self, event, data, namespace, room=rooms, skip_sid=skip_sid, callback=callback
            )
            return
        namespace = namespace or "/"
        ack = None
        if callback is not None:
            if self.server is None:
                raise RuntimeError("Callbacks can only be issued from the context of a server.")
            if not isinstance(rooms, str):
                raise ValueError("Cannot use callback without one sid as its room.")
            ack = (rooms, namespace, self._generate_ack_id(rooms, callback))
            if not self._here(rooms, namespace):
                key = (rooms, ack[2])
                forget = functools.partial(self._forget_ack, *key)
                self._remote_acks[key] = asyncio.get_running_loop().call_later(REMOTE_ACK_S, forget)
        message = codec.emit_message(
            event,
            data,
            namespace=namespace,
            room=rooms,
            skip_sid=skip_sid,
            callback=ack,
            host_id=self.host_id,
        )
        await self._publish(message, correlation_id, publisher, subject)

    async def disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        """Disconnect a socket of any node. A write-only manager (no server, no sockets)
        only publishes it: python-socketio's applies it here first, on a server it lacks."""
        if self.server is None and not kwargs.get("ignore_queue"):
            await self._publish(
                {
                    "method": "disconnect",
                    "sid": sid,
                    "namespace": namespace or "/",
                    "host_id": self.host_id,
                }
            )
            return
        await super().disconnect(sid, namespace, **kwargs)

    async def can_disconnect(self, sid: str, namespace: str) -> Any:
        if self._here(sid, namespace):
            await self._emits_delivered()
        return await super().can_disconnect(sid, namespace)

    async def enter_room(
        self, sid: str, namespace: str, room: str, eio_sid: str | None = None
    ) -> None:
        if self._here(sid, namespace):
            await self._emits_delivered()
        await super().enter_room(sid, namespace, room, eio_sid=eio_sid)

    async def leave_room(self, sid: str, namespace: str, room: str) -> None:
        if self._here(sid, namespace):
            await self._emits_delivered()
        await super().leave_room(sid, namespace, room)

    async def close_room(self, room: str, namespace: str | None = None) -> None:
        await self._emits_delivered()
        await super().close_room(room, namespace)

    async def trigger_callback(self, sid: str, id: int, data: Any) -> None:
        if (timer := self._remote_acks.pop((sid, id), None)) is not None:
            timer.cancel()
        await super().trigger_callback(sid, id, data)

    def _forget_ack(self, sid: str, ack_id: int) -> None:
        """An ack a client on another node has not answered within `REMOTE_ACK_S`: kept,
        it stayed for good (a local socket's go when it disconnects)."""
        self._remote_acks.pop((sid, ack_id), None)
        acks = self.callbacks.get(sid)
        if acks is not None and acks.pop(ack_id, None) is not None and len(acks) == 1:
            del self.callbacks[sid]  # only its id counter is left
        self._get_logger().debug("ack %d of sid %s not answered: forgotten", ack_id, sid)

    async def _return_callback(
        self, host_id: str | None, sid: str, namespace: str, callback_id: int, *args: Any
    ) -> None:
        """A client answered an ack asked by node ``host_id`` (None: a record that named
        no node, so none waits); its bytes travel as an emit's (python-socketio's encoding
        failed on them: the asker timed out)."""
        if host_id == self.host_id:
            await self.trigger_callback(sid, callback_id, args)
        elif host_id is not None:
            await self._publish(
                codec.callback_message(host_id, sid, namespace, callback_id, list(args))
            )

    async def _handle_callback(self, message: codec.Message) -> None:
        if message["host_id"] == self.host_id:
            args = message["args"]
            if message.get("binary"):
                args = codec.unpacked(args)
            await self.trigger_callback(message["sid"], message["id"], args)

    def _here(self, sid: str, namespace: str) -> bool:
        return bool(self.is_connected(sid, namespace) or self.is_pre_connected(sid, namespace))

    async def _emits_delivered(
        self, emitted: dict[int, int] | None = None, timeout_s: float | None = None
    ) -> None:
        """Wait (up to a request's timeout) until this node's emits written so far (or
        those of ``emitted``) are delivered here. python-socketio's managers deliver an
        emit here before it returns; this one, once read back from Kafka: a disconnect,
        room change or room close here acted at once, and the emit just written before it
        ("tell the client why, then kick it") reached nobody, or reached a socket that
        joined after it; a handler's ACK overtook what it emitted."""
        positions = self.positions
        # Partitions this node reads (one added since it started is not: it never would).
        emitted = {
            p: offset
            for p, offset in (self._emitted if emitted is None else emitted).items()
            if p < len(positions)
        }
        if (
            self._consumer is not None
            # Called by what the consume loop runs (an ack's callback, an app's disconnect
            # handler): waiting for the loop would wait for itself.
            and asyncio.current_task() is not self._consuming
            and not self._reached(emitted)
        ):
            await self._delivered_within(emitted, timeout_s)

    async def _publish(
        self,
        data: codec.Message,
        correlation_id: str | None = None,
        publisher: str | None = None,
        subject: str | None = None,
    ) -> None:
        codec.plain_targets(data)
        value = codec.encode(data)
        if len(value) > self.options.max_record_bytes:
            self.stats.publish_errors += 1
            raise PublishError(
                f"record of {len(value)} bytes exceeds max_record_bytes="
                f"{self.options.max_record_bytes}"
            )
        # What another node applies it after (`adapter/barriers.py`); emits wait for nothing.
        after = self._recent_emits() if data["method"] in routing.AFTER_EMITS else None
        try:
            written = await self._produce(
                self.events_topic,
                codec.record_key(data),
                value,
                routing.headers_for(data, correlation_id, publisher, subject, after),
            )
        except PublishError:
            self.stats.publish_errors += 1
            raise
        self.stats.published += 1
        if data["method"] == "emit":
            emitted = self._emitted
            emitted[written.partition] = max(emitted.get(written.partition, 0), written.offset + 1)
            self._emitted_at[written.partition] = time.monotonic()
            caller, held = _CALLER.get(), _TASK_EMITTED.get()
            if caller is not None and held is not None and self._reaches(data, caller):
                held[written.partition] = max(held.get(written.partition, 0), written.offset + 1)

    def _recent_emits(self) -> dict[int, int]:
        """`_emitted` of the partitions emitted to within `_AFTER_RECENT_S`: what another
        node's barrier waits for (`sio.after`). An emit older than that, another node has
        delivered unless it lags by as much, and a record naming every partition ever
        written to grew with them (2-3 KB at 192)."""
        now = time.monotonic()
        at = self._emitted_at
        return {p: o for p, o in self._emitted.items() if now - at[p] < _AFTER_RECENT_S}

    def _reaches(self, data: codec.Message, eio_sid: str) -> bool:
        """Whether an emit may reach connection ``eio_sid`` of this node: its socket of the
        emit's namespace, in its rooms as they are."""
        namespace = data["namespace"]
        sid = self.sid_from_eio_sid(eio_sid, namespace)
        if sid is None:
            return False
        skip = data.get("skip_sid")
        if skip is not None and (sid == skip if isinstance(skip, str) else sid in skip):
            return False
        room = data.get("room")
        if room is None:
            return True
        table = self.rooms.get(namespace, {})
        return any(sid in table.get(r, ()) for r in ([room] if isinstance(room, str) else room))

    async def _produce(
        self, topic: str, key: bytes, value: bytes | None, headers: Headers = ()
    ) -> Any:
        """Produce one record, and return its metadata (partition, offset); those of a key
        are produced in the order this was called.

        One deadline bounds all of it, on a timer shared by every publish
        (`adapter/deadlines.py`): the record handed to the producer, in its key's turn,
        then Kafka's acknowledgement.
        """
        timeout_s = self._deadlines.timeout_s
        delivery = None
        try:
            async with self._deadlines.bound():
                # Entered before the first await: see adapter/turns.py.
                async with self._turns.turn(key):
                    publisher = await self._ready_publisher()
                    delivery = await publisher.enqueue(topic, [(key, value, headers)], None)
                (written,) = await publisher.confirm(delivery)
                return written
        except TimeoutError:
            if delivery is None:
                raise PublishError(
                    f"Kafka did not take the record within {timeout_s}s (not written)"
                ) from None
            raise PublishError(
                f"Kafka did not confirm the record within {timeout_s}s (it may still be written)"
            ) from None

    # -- internals ---------------------------------------------------------------------

    def _start_in_background(self) -> None:
        """Start unless a start runs: one that failed (refused credentials since mended,
        say) is tried again by the next publish or claim, not left failed for good."""
        task = self._start_task
        if (task is None or task.done()) and not self._ready.is_set() and not self._stopped:
            self._start_task = asyncio.create_task(self._start_logged())

    async def _start_logged(self) -> None:
        try:
            await self._start()
        except asyncio.CancelledError:
            raise
        except SocketIOKafkaError as exc:  # its message names the cause; no traceback
            self._start_failure = str(exc)
            self._get_logger().error("kafka manager failed to start: %s", exc)
        except Exception as exc:
            self._start_failure = repr(exc)
            self._get_logger().exception("kafka manager failed to start")

    async def _ready_publisher(self) -> Publisher:
        if self._stopped:
            raise BrokerUnavailable("the Kafka manager is stopped")
        if not await self.wait_ready():
            if failure := self._start_failure:
                raise BrokerUnavailable(f"the Kafka manager failed to start: {failure}")
            raise BrokerUnavailable(
                f"Kafka at {','.join(self.bootstrap_servers)} not reachable within "
                f"{self.options.request_timeout_ms / 1000}s"
            )
        assert self._publisher is not None
        return self._publisher

    async def _retry(self, step: Callable[[], Awaitable[None]], what: str) -> None:
        delay = _FIRST_RETRY_S
        while True:
            try:
                await step()
            except SocketIOKafkaError as exc:  # unreachable, or a write not confirmed in time
                if not exc.retriable:
                    raise
                self.stats.connect_failures += 1
                self._retried = f"{what} failed ({exc})"
                self._get_logger().warning(
                    "kafka %s failed (%s); retrying in %.2fs", what, exc, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.options.retry_backoff_max_s)
            else:
                return

    def _set_linger(self, ms: float) -> None:
        if self._publisher is not None:
            self._publisher.set_linger(ms)

    async def _connect(self) -> None:
        try:
            # aiokafka would hide a refusal, or a listener that wants TLS or SASL this client
            # does not speak, behind "Unable to bootstrap", retried forever.
            await check_access(self.bootstrap_servers, self.options)
            await self._ensure_topics()
            self._publisher = Publisher(
                self._new_producer,
                self.options.request_timeout_ms / 1000,
                self._get_logger(),
                self.stats.produce_latency,
                # Asked of Kafka only with recovery on: a broker that makes topics on demand
                # would make it with its own defaults, which no recovering node can use.
                topics=(self.events_topic, self.sessions_topic)
                if self.recovery_window is not None
                else (self.events_topic,),
                handed=self.pacing.handed,
            )
            self._publisher.set_linger(self.pacing.linger_ms)
            await self._publisher.start()
            if not self.write_only:
                self._consumer = await self._positioned_consumer()
            if self._consumer is not None and self.recovery_window is not None:
                self._offsets = self._replay_consumer()
                await self._offsets.start()
                await self.bounds()  # fetches the topic's metadata now, not at the first claim
                await self._replays.fill(self.events_topic)
                self.shared_replays.reopen()
        except (KafkaConnectionError, KafkaTimeoutError, TimeoutError) as exc:
            await self._close_clients()
            raise BrokerUnavailable(repr(exc)) from exc
        except KafkaError as exc:
            await self._close_clients()
            # A broker not ready yet, a request timed out (a rolling restart, a broker that
            # stalls): retried as an unreachable one. It left the node unready for good.
            if exc.retriable:
                raise BrokerUnavailable(repr(exc)) from exc
            if "Authorization" in type(exc).__name__:
                raise SecurityError(f"Kafka refused this client ({exc!r})") from exc
            raise
        except BaseException:
            await self._close_clients()
            raise

    def _new_producer(self) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(**self.options.producer_kwargs(self.bootstrap_servers))
        pace_metadata_updates(producer.client, _METADATA_BACKOFF_S)
        return producer

    async def _probe(self) -> None:
        """One metadata round trip on the producer's connection: Kafka answers.

        It asks of the topics the producer writes, not of the whole cluster: every node
        probes every second, and a cluster's thousands of topics cost a node a third of
        its event loop to decode (a flood run on a broker of 2,445 topics).
        """
        publisher = self._publisher
        producer: Any = publisher.producer if publisher is not None else None
        if producer is None:
            raise BrokerUnavailable("not connected")
        client = producer.client
        client.add_topic(self.events_topic)  # else the request names no topic: all of them
        if not await client.force_metadata_update():
            raise BrokerUnavailable("Unable to get cluster metadata over all known brokers")

    async def _ensure_topics(self) -> None:
        admin = AIOKafkaAdminClient(**self.options.common_kwargs(self.bootstrap_servers))
        await admin.start()
        try:
            brokers = [b["node_id"] for b in (await admin.describe_cluster())["brokers"]]
            defaults = await cluster_defaults(admin, brokers[0]) if brokers else ClusterDefaults()
            replication = replication_for(
                self.options.replication_factor,
                self.options.min_insync_replicas,
                len(brokers),
                defaults,
            )
            logger = self._get_logger()
            spec = self._topic_spec(self.events_topic, "delete", replication)
            self._partitions = (await ensure_topic(admin, spec, logger)).partitions
            if self.recovery_window is not None:
                # Made with sessions_partitions, read with the count it has (docs/decisions.md).
                spec = self._topic_spec(self.sessions_topic, "compact", replication, sessions=True)
                sessions = await ensure_topic(admin, spec, logger)
                self.store.partitions, self.store.created = sessions.partitions, sessions.created
        finally:
            await admin.close()

    def _topic_spec(
        self, name: str, cleanup_policy: str, replication: Replication, sessions: bool = False
    ) -> TopicSpec:
        options = self.options
        return TopicSpec(
            name,
            options.sessions_partitions if sessions else options.partitions,
            replication,
            cleanup_policy,
            options.retention_ms,
            options.max_message_bytes,
            any_partitions=sessions,
        )

    async def _positioned_consumer(self) -> AIOKafkaConsumer:
        consumer = AIOKafkaConsumer(**self.options.consumer_kwargs(self.bootstrap_servers))
        pace_metadata_updates(consumer._client, _METADATA_BACKOFF_S)
        await consumer.start()
        try:
            events = [TopicPartition(self.events_topic, p) for p in range(self._partitions)]
            sessions = [
                TopicPartition(self.sessions_topic, p) for p in range(self.store.partitions)
            ]
            consumer.assign(events + sessions if self.recovery_window is not None else events)
            # Fetched from once the consume loop starts (it resumes every partition): a
            # fetch in flight holds every seek below until the broker answers it, after up
            # to fetch_max_wait_ms on a quiet topic (a node was ready 1 s later for it).
            consumer.pause(*consumer.assignment())
            await consumer.seek_to_end(*events)
            # Resolve the lazy seek now: readiness means positioned.
            self.positions = [await consumer.position(tp) for tp in events]
            self._emitted = {}  # a new start's positions are past them, or a new topic's
            if (sightings := self.shared_replays.sightings) is not None:
                sightings.reset(self.positions)
            if (history := self.shared_replays.history) is not None:
                history.reset(self.positions)
            if self.recovery_window is not None:
                assert self._publisher is not None
                await self.store.load(consumer, self._publisher)
        except BaseException:
            await stop_consumer(consumer)
            raise
        return consumer

    async def _close_clients(self) -> None:
        consumers, publisher = (self._consumer, self._offsets), self._publisher
        self._consumer = self._offsets = self._publisher = None
        for consumer in consumers:
            if consumer is not None:
                await stop_consumer(consumer)
        await self.shared_replays.close()
        await self._replays.close()
        if publisher is not None:
            await publisher.stop()

    async def _consume_loop(self) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        self._consuming = asyncio.current_task()
        self._consume_runs += 1
        if self._consume_runs > 1:
            self._resume_where_delivery_stopped(consumer)
        delay = _FIRST_RETRY_S
        loop = asyncio.get_running_loop()
        pacing = self.pacing
        next_fetch = 0.0
        task = self._consuming
        while True:
            if task is not None and task.cancelling():
                # A stop's cancel that an app handler run here swallowed (python-socketio's
                # _trigger_event does: a disconnect from another node's kick): the loop
                # read on, and the stop waited for it for good.
                raise asyncio.CancelledError
            self._turned = time.monotonic()
            # Paced fetching (KafkaOptions.fetch_interval_ms): aiokafka fetches again as
            # soon as getmany drains its buffer, so the partitions stay paused until the
            # interval is over; the next fetch then returns all that arrived meanwhile.
            if (pause := next_fetch - loop.time()) > 0:
                await asyncio.sleep(pause)
            self._resume(consumer)
            try:
                batches = await consumer.getmany(timeout_ms=_POLL_TIMEOUT_MS)
                pacing.read += sum(map(len, batches.values()))
                if interval := pacing.fetch_interval_s:
                    consumer.pause(*consumer.assignment())
                    next_fetch = loop.time() + interval
            except UNREADABLE:
                await self._step_past_unreadable(consumer)
                self._wake_reached()
                continue
            except KafkaError as exc:
                self._get_logger().warning("kafka fetch failed (%r); retrying in %.2fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.options.retry_backoff_max_s)
                continue
            delay = _FIRST_RETRY_S
            for tp, records in batches.items():
                await self._take(tp, records)
                self._wake_reached()  # a slow handler in the next one holds no one up
            await self._past_markers(consumer)
            self._wake_reached()

    async def _past_markers(self, consumer: AIOKafkaConsumer) -> None:
        """Move each position on to the consumer's, past what it hands nobody: a
        transaction's marker (bridges write in transactions), an aborted transaction's
        records. Else a position stayed on the marker, one short of Kafka's end and of a
        node started since (`seek_to_end`): a claim waiting for this node to read as far as
        its client's offsets (`delivered_to`) waited until another record came there.

        Every record handed out is delivered by now; the consumer's position does not
        suspend once known, so nothing delivers in between."""
        positions = self.positions
        topic = self.events_topic
        for partition, position in enumerate(positions):
            read = await consumer.position(TopicPartition(topic, partition))
            if read > position:
                positions[partition] = read

    def _resume(self, consumer: AIOKafkaConsumer) -> None:
        """Fetch every partition again but those held at an operation (`Barriers`)."""
        assignment = consumer.assignment()
        if not self.barriers:
            consumer.resume(*assignment)
            return
        held, expired = self.barriers.release(self._reached)
        for partition in expired:
            self.stats.barriers_expired += 1
            self._get_logger().warning(
                "%s[%d]: the emits a held operation was written after not read here within"
                " %.0fs: applied without them",
                self.events_topic,
                partition,
                HOLD_MAX_S,
            )
        topic = self.events_topic
        consumer.resume(*(tp for tp in assignment if tp.topic != topic or tp.partition not in held))

    async def _take(self, tp: TopicPartition, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        if tp.topic == self.sessions_topic:
            for record in records:
                self.store.apply(record)
            await self.store.applied()
            return
        for record in records:
            if not await self._dispatch(record):
                # Held at an operation: the rest is read again once the hold is over.
                assert self._consumer is not None
                self._consumer.seek(tp, record.offset)
                self._consumer.pause(tp)
                return

    async def _step_past_unreadable(self, consumer: AIOKafkaConsumer) -> None:
        """Skip a record aiokafka cannot parse (a header key that is not UTF-8, a batch
        whose CRC fails), counted and logged as any bad record: aiokafka refused the fetch
        that held it at every retry (with the records parsed before it), and delivery
        stopped on every node. Read again from where delivery stopped, one at a time."""
        self._resume_where_delivery_stopped(consumer)
        await read_past_unreadable(consumer, consumer.assignment(), self._take, self._unreadable)

    def _unreadable(self, tp: TopicPartition, offset: int, exc: Exception) -> None:
        if tp.topic == self.sessions_topic:
            self.store.skipped(tp, offset, exc)
            return
        self.positions[tp.partition] = offset + 1
        self.stats.records_skipped += 1
        log_unreadable(self._get_logger(), tp, offset, exc)

    def _resume_where_delivery_stopped(self, consumer: AIOKafkaConsumer) -> None:
        """After a restart, read on from the record after the last one handled: the rest
        of the batch the failed loop held is read again, the record it failed on is not."""
        for p, position in enumerate(self.positions):
            consumer.seek(TopicPartition(self.events_topic, p), position)
        if self.recovery_window is not None:
            self.store.resume(consumer)

    async def _dispatch(self, record: ConsumerRecord[bytes, bytes]) -> bool:
        """Deliver or apply one record of the events topic; False when it is an operation
        held until earlier emits are delivered here (`Barriers`): not taken."""
        # The watermark moves before delivery: a socket registered for recovery while
        # this record is being delivered gets it from the replay, not live.
        self.positions[record.partition] = record.offset + 1
        if not self.publishes.first(record.partition, record.offset, record.headers):
            self.stats.records_consumed += 1  # a client's publish written twice: once here
            return True
        try:
            route = routing.read_route(record.headers)
            wanted = route is None or self._wanted_here(route)
            if wanted and route is not None and route.after is not None:
                # Partitions this node does not read (added since it started) never reach.
                read = len(self.positions)
                after = {p: o for p, o in routing.parse_after(route.after).items() if p < read}
                if self.barriers.holds(record.partition, record.offset, after, self._reached):
                    self.positions[record.partition] = record.offset
                    self.stats.barriers_held += 1
                    return False
            if (sightings := self.shared_replays.sightings) is not None:
                sightings.note(record.partition, record.offset, route)
            if (history := self.shared_replays.history) is not None:
                history.note(record.partition, record, route)
            if not wanted:
                self.stats.records_consumed += 1
                self.stats.records_passed += 1
                return True
            message = codec.decode(record.value)
        except RecordDecodeError as exc:
            self.stats.records_skipped += 1
            log_skipped(self._get_logger(), record, exc)
            return True
        except Exception:  # a bug, not bad input: still one record, never the loop
            self.stats.records_skipped += 1
            log_unexpected(self._get_logger(), record)
            return True
        self.stats.records_consumed += 1
        if route is not None and self._get_logger().isEnabledFor(logging.DEBUG):
            self._log_delivery(record)
        try:
            await self._handle(message, record.partition, record.offset)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.stats.handler_errors += 1
            self._get_logger().exception(
                "error handling %s record %s[%d]@%d",
                message["method"],
                record.topic,
                record.partition,
                record.offset,
            )
        return True

    def _log_delivery(self, record: ConsumerRecord[bytes, bytes]) -> None:
        """At debug level: a record taken here, by its correlation id, to trace it."""
        cid = routing.correlation_id(record.headers)
        if cid is not None:
            self._get_logger().debug(
                "delivering %s[%d]@%d here, correlation id %s",
                record.topic,
                record.partition,
                record.offset,
                cid,
            )

    def _wanted_here(self, route: routing.Route) -> bool:
        """Whether a record so routed can concern this node, decided as `_handle` would
        once it had decoded the record: a socket of the namespace in its rooms, its sid
        connected (or connecting, or leaving) here, a callback this node waits for."""
        method = route.method
        mine: bool = route.host == self.host_id  # host_id is untyped python-socketio's
        if method == "callback":
            return mine
        if method != "emit" and mine:
            return False  # applied here before publishing
        rooms = self.rooms.get(route.namespace)
        if not rooms:
            return False
        if method == "emit":
            return None in rooms if not route.rooms else any(r in rooms for r in route.rooms)
        if method == "close_room":
            return route.rooms[0] in rooms
        return route.sid in rooms.get(None, ())  # disconnect, enter_room, leave_room

    async def _handle(self, message: codec.Message, partition: int, offset: int) -> None:
        method = message["method"]
        if method == "emit":
            await self._deliver(message, partition, offset)
        elif method == "callback":
            await self._handle_callback(message)
        elif message.get("host_id") == self.host_id:
            return  # disconnect and close_room were already applied here before publishing
        elif method == "disconnect":
            await self._handle_disconnect(message)
        elif method == "enter_room":
            await self._handle_enter_room(message)
        elif method == "leave_room":
            await self._handle_leave_room(message)
        elif method == "close_room":
            await self._handle_close_room(message)

    async def _deliver(self, message: codec.Message, partition: int, offset: int) -> None:
        recipients = self._recipients(message)
        if not recipients or self.server is None:
            return
        if message.get("callback"):
            self._emit_with_ack(message, recipients, partition, offset)
            return
        recovering = self.recovery_window is not None
        mark = self._live_mark() if recovering else None
        variants: dict[bool, list[Any]] = {}
        namespace = message["namespace"]
        holds = self.holds if self.holds.holding else None
        for sid, eio_sid in recipients:
            with_offset = recovering and sid not in self.plain_sids
            packets = variants.get(with_offset)
            if packets is None:
                packets = variants[with_offset] = event_packets(
                    self.server.packet_class, message, mark if with_offset else None
                )
            if holds is None or not holds.add((sid, namespace), partition, offset, packets):
                self.send_packets(eio_sid, packets)

    def _live_mark(self) -> str:
        """The offset string of `positions`, what every live delivery carries."""
        marker = self._marker
        if marker is None or marker.epoch != self.epoch or len(self.positions) != marker.size:
            marker = self._marker = offsets.Marker(self.epoch, tuple(self.positions))
        return marker.at(self.positions)

    def set_server(self, server: Any) -> None:
        """Called by the server when it is made: its sockets' queues become `Outbox`es, and
        an ACK waits for what its handler emitted to be delivered here first."""
        super().set_server(server)
        handle_event = server._handle_event_internal
        send_packet = server._send_packet

        async def handle_as_caller(
            server_: Any, sid: str, eio_sid: str, data: Any, namespace: str, id: int | None
        ) -> None:
            # The event's task (python-socketio starts one per event, or runs it inline in
            # the reader's), its ACK sent in it; reset after, for the inline case.
            caller = _CALLER.set(eio_sid)
            held = _TASK_EMITTED.set({})
            try:
                await handle_event(server_, sid, eio_sid, data, namespace, id)
            finally:
                _TASK_EMITTED.reset(held)
                _CALLER.reset(caller)

        async def send_after_emits(eio_sid: str, pkt: Any) -> None:
            if pkt.packet_type in _ACKS and (emitted := _TASK_EMITTED.get()):
                await self._emits_delivered(emitted, _ACK_WAIT_S)
            await send_packet(eio_sid, pkt)

        server._handle_event_internal = handle_as_caller
        server._send_packet = send_after_emits
        # Engine.IO's documented queue factory; each socket's queue is made by it.
        server.eio.create_queue = self.outboxes.create_queue
        # Its ASGI WebSocket, made for each connection: the one that hands a connection
        # able to write frames to the socket's queue (a copy: the table is Engine.IO's).
        drivers = server.eio._async
        if drivers is not None and drivers.get("websocket") is asgi.WebSocket:
            server.eio._async = {**drivers, "websocket": FramesWebSocket}

    def _recipients(self, message: codec.Message) -> list[tuple[str, str]]:
        """The ``(sid, eio_sid)`` of this node's sockets an emit is for."""
        skip = message.get("skip_sid") or ()
        skip = {skip} if isinstance(skip, str) else set(skip)
        return [
            (sid, eio_sid)
            for sid, eio_sid in self.get_participants(message["namespace"], message.get("room"))
            if sid not in skip
        ]

    def _emit_with_ack(
        self,
        message: codec.Message,
        recipients: list[tuple[str, str]],
        partition: int,
        offset: int,
    ) -> None:
        """One packet per recipient, each with its own ack id, answered to the origin node;
        held for a socket under recovery as any live event is, or it would overtake what
        the socket's replay brings. (Not python-socketio's ``_handle_emit``: it sends a
        lone None argument as none, and each packet from a task of its own.)"""
        assert self.server is not None
        room, namespace, ack_id = message["callback"]
        callback = functools.partial(
            self._return_callback, message.get("host_id"), room, namespace, ack_id
        )
        packet_class = self.server.packet_class
        for sid, eio_sid in recipients:
            ack = self._generate_ack_id(sid, callback)
            packets = event_packets(packet_class, message, None, ack_id=ack)
            if not self.holds.add((sid, namespace), partition, offset, packets, ask=True):
                self.send_packets(eio_sid, packets)

    def send_packets(self, eio_sid: str, packets: list[Any]) -> None:
        """Queue encoded packets on one socket; a socket gone meanwhile is not an error,
        one whose client does not read what is queued is cut (`Outbox.offer`)."""
        queue = self.packet_queue(eio_sid)
        if queue is not None:
            self.stats.events_delivered += 1
            if queue.offer(packets, self.cut_slow_consumer, eio_sid):
                self.stats.events_written += 1

    def cut_slow_consumer(self, eio_sid: str, over: object = None) -> bool:
        """Drop what waits for a socket whose client does not read, and close it with the
        `SLOW_CONSUMER` reason: recovery keeps its session, and its client, reading
        again, recovers from its offset what it did not process. ``over``: the bound it
        passed (its own limits by default). False when it was gone or cut already."""
        if self.server is None:
            return False
        socket = self.server.eio.sockets.get(eio_sid)
        if socket is None or not self.outboxes.cut(socket, self.server.environ.get(eio_sid)):
            return False
        self.stats.slow_consumers_cut += 1
        self._get_logger().warning(
            "socket %s cut: its client is not reading (over %s)",
            eio_sid,
            over or self.outboxes.limits,
        )
        return True

    def _relieve_memory(self) -> None:
        """The node's sockets keep more than its budget: outrun the largest holds (their
        replays read on later, from the history or Kafka), then cut the sockets with the
        most queued, until they do not."""
        budget = self.budget
        kept = budget.bytes
        outrun = 0
        for socket in self.holds.largest():
            if not budget.over:
                break
            self.holds.outrun(socket)
            outrun += 1
        self.stats.over_node_budget += outrun
        if outrun:
            self._get_logger().warning(
                "node over its budget of %d bytes for sockets (%d kept): %d replays' holds "
                "outrun, to read on later",
                budget.limit,
                kept,
                outrun,
            )
        for eio_sid in self._largest_queues():
            if not budget.over:
                break
            if self.cut_slow_consumer(eio_sid, f"the node's budget of {budget.limit} bytes"):
                self.stats.over_node_budget += 1

    def _largest_queues(self) -> list[str]:
        """The Engine.IO sockets with packets queued, the most bytes first (a look at every
        socket, made only when the node is over its budget)."""
        sockets = self.server.eio.sockets if self.server is not None else {}
        queued = [
            (queue.bytes, eio_sid)
            for eio_sid, socket in sockets.items()
            if isinstance(queue := socket.queue, Outbox) and queue.qsize() and not queue.shed
        ]
        return [eio_sid for _, eio_sid in sorted(queued, reverse=True)]

    async def close_transport(self, eio_sid: str, reason: str) -> None:
        """Close a socket's connection so that its client sees it, at once.

        engineio's own close sends a CLOSE packet, which the JS client ignores on a
        WebSocket: it noticed only at its ping timeout, 45 s later. None on the socket's
        queue ends engineio's writer, which then closes the WebSocket itself.
        """
        socket = self.server.eio.sockets.get(eio_sid) if self.server is not None else None
        if socket is None:
            return
        await socket.close(wait=False, reason=reason)
        socket.queue.put_nowait(None)
        self.server.eio.sockets.pop(eio_sid, None)

    def packet_queue(self, eio_sid: str) -> Outbox | None:
        """The Engine.IO socket's outgoing queue, or None once the socket is gone or cut.

        Packets go on it directly: engineio's ``send`` awaits a ping check and formats a
        log line per packet, a tenth of a 100,000-event replay. The `Outbox` bounds it.
        """
        if self.server is None:
            return None
        try:
            queue = self.server.eio._get_socket(eio_sid).queue
        except KeyError:  # unknown, or closed (engineio then forgets it)
            return None
        return queue if isinstance(queue, Outbox) and not (queue.shed or queue.closed) else None

    # -- connection state recovery: what RecoveringAsyncServer builds on ----------------

    def basic_enter_room(
        self, sid: str, namespace: str, room: str | None, eio_sid: str | None = None
    ) -> None:
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        if self.on_rooms_changed is not None and room is not None and room != sid:
            self.on_rooms_changed(sid, namespace)

    def basic_leave_room(self, sid: str, namespace: str, room: str | None) -> None:
        super().basic_leave_room(sid, namespace, room)
        if self.on_rooms_changed is not None and room is not None and room != sid:
            self.on_rooms_changed(sid, namespace)

    def _session_rejected(self, sid: str, namespace: str) -> None:
        # Another node's claim followed this live session's record: written again.
        if self.on_rooms_changed is not None:
            self.on_rooms_changed(sid, namespace)

    async def consumed_to_end(self, partitions: Sequence[int] | None = None) -> None:
        """Return once the live consumer has read these partitions of the events topic
        (None: all) as far as they end now; `PublishError` when it does not in time."""
        if not self.watermarks.available:
            raise PublishError("the manager is not connected")
        wanted = range(self._partitions) if partitions is None else partitions
        tps = [TopicPartition(self.events_topic, p) for p in wanted]
        timeout_s = self.options.request_timeout_ms / 1000
        try:
            async with asyncio.timeout(timeout_s):
                ends = await self.watermarks.end(tps)
                await self._delivered({tp.partition: end for tp, end in ends.items()})
        except (KafkaError, TimeoutError) as exc:
            raise PublishError(f"could not read the events topic to its end ({exc!r})") from exc

    async def delivered_to(self, offsets: Sequence[int]) -> bool:
        """Whether the live consumer has delivered every record before ``offsets`` (one per
        partition of the events topic), waiting up to ``request_timeout_ms`` for it.

        A recovering client's offsets are those of the node it left: one behind them would
        hand it again, live, what it had already had.
        """
        return await self._delivered_within(dict(enumerate(offsets)))

    async def _delivered_within(
        self, offsets: dict[int, int], timeout_s: float | None = None
    ) -> bool:
        """Whether the consume loop passed ``offsets`` within ``timeout_s`` (at most, and by
        default, ``request_timeout_ms``)."""
        limit_s = self.options.request_timeout_ms / 1000
        try:
            async with asyncio.timeout(limit_s if timeout_s is None else min(timeout_s, limit_s)):
                await self._delivered(offsets)
        except TimeoutError:
            return False
        return True

    async def _delivered(self, offsets: dict[int, int]) -> None:
        if self._reached(offsets):
            return
        if len(self._reaching) >= _MAX_WAITERS_KEPT:  # the loop not turning: drop the done
            self._reaching = [(o, f) for o, f in self._reaching if not f.done()]
        future = asyncio.get_running_loop().create_future()
        self._reaching.append((offsets, future))
        await future  # cancelled with its waiter (a timeout), then dropped at the next wake

    def _reached(self, offsets: dict[int, int]) -> bool:
        positions = self.positions
        return all(p < len(positions) and positions[p] >= o for p, o in offsets.items())

    def _wake_reached(self) -> None:
        """After each turn of the consume loop: wake the waits its positions now pass."""
        if not self._reaching:
            return
        waiting = []
        for wanted, future in self._reaching:
            if future.done():
                continue
            if self._reached(wanted):
                future.set_result(None)
            else:
                waiting.append((wanted, future))
        self._reaching = waiting

    async def bounds(self) -> Bounds:
        """The events topic's bounds, from a consumer kept for it (a new one would first
        wait for the topic's metadata: 15 ms of a 35 ms recovery of 10 events)."""
        return await topic_bounds(self.watermarks, self.events_topic, self._partitions)

    def replay(
        self, start: tuple[int, ...], stop: tuple[int, ...], audience: routing.Audience
    ) -> Replay:
        """What ``audience`` receives in ``[start, stop)``, read back with every other
        replay of this node that reads the same partitions (`SharedReplays`)."""
        return self.shared_replays.open(start, stop, audience)

    @property
    def partitions(self) -> int:
        return self._partitions

    def lag(self) -> dict[int, int]:
        """Per partition of the events topic, the records Kafka holds past those this node
        took, as of the live consumer's last fetch: no round trip, so a scrape may ask.

        A partition is left out until a fetch has told its end.
        """
        consumer = self._consumer
        if consumer is None:
            return {}
        lag = {}
        for partition, position in enumerate(self.positions):
            end = consumer.highwater(TopicPartition(self.events_topic, partition))
            if end is not None:
                lag[partition] = end - position
        return lag

    def _replay_consumer(self) -> AIOKafkaConsumer:
        kwargs = self.options.consumer_kwargs(self.bootstrap_servers)
        # A replay reads a backlog: large fetches, no waiting for more to arrive. A new
        # consumer waits one retry backoff for the topic's metadata before its first
        # request: 100 ms by default, a third of a 10,000-event recovery.
        bulk = {
            "fetch_min_bytes": 1,
            "max_partition_fetch_bytes": _REPLAY_FETCH_BYTES,
            "retry_backoff_ms": _REPLAY_RETRY_BACKOFF_MS,
        }
        # No reset: a range deleted since it was judged whole fails the replays needing it
        # (`ReplayGap`), where "earliest" read on from the oldest record left, silently.
        return AIOKafkaConsumer(**{**kwargs, **bulk, "auto_offset_reset": "none"})
