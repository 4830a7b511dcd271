"""What AsyncKafkaManager relies on inside python-socketio: fails loudly if a release moves it."""

from __future__ import annotations

import asyncio
import inspect
import re
from importlib.metadata import version
from pathlib import Path

import pytest
from socketio.async_manager import AsyncManager
from socketio.async_pubsub_manager import AsyncPubSubManager
from socketio.async_server import AsyncServer
from socketio.base_manager import BaseManager

# The releases whose internals the seams below were checked against (pyproject.toml pins
# the same ranges): python-socketio's managers and server, python-engineio's socket queue,
# uvicorn's sans-I/O WebSocket protocol (gateway/websocket.py) and its HTTP protocol
# (gateway/accept.py, gateway/reading.py), aiokafka's group requests
# (gateway/bridge/transactional.py).
TESTED = {
    "python-socketio": "5.18.",
    "python-engineio": "4.15.",
    "uvicorn": "0.55.",
    "aiokafka": "0.14.",
}


@pytest.mark.parametrize("package", sorted(TESTED))
def test_a_tested_release(package: str) -> None:
    assert version(package).startswith(TESTED[package]), (
        f"{package} {version(package)} is untested: check its seams in this file, "
        "then widen the range in pyproject.toml and here"
    )


def test_pubsub_handlers_we_dispatch_to_exist() -> None:
    for name in (
        "_handle_callback",
        "_handle_disconnect",
        "_handle_enter_room",
        "_handle_leave_room",
        "_handle_close_room",
        "_return_callback",
    ):
        assert inspect.iscoroutinefunction(getattr(AsyncPubSubManager, name)), name


def test_pubsub_manager_methods_we_override_keep_their_shape() -> None:
    """The manager waits in these for its own emits (a local disconnect, room change or
    close), forgets unanswered asks through ``trigger_callback`` and answers acks across
    nodes through ``_return_callback``: python-socketio's server calls each so."""
    shapes = {
        "can_disconnect": ["self", "sid", "namespace"],
        "enter_room": ["self", "sid", "namespace", "room", "eio_sid"],
        "leave_room": ["self", "sid", "namespace", "room"],
        "close_room": ["self", "room", "namespace"],
        "_return_callback": ["self", "host_id", "sid", "namespace", "callback_id", "args"],
        "_handle_callback": ["self", "message"],
    }
    for name, params in shapes.items():
        method = getattr(AsyncPubSubManager, name)
        assert list(inspect.signature(method).parameters) == params, name
    assert list(inspect.signature(AsyncManager.trigger_callback).parameters) == [
        "self",
        "sid",
        "id",
        "data",
    ]
    server = inspect.getsource(AsyncServer.disconnect)
    assert "self.manager.can_disconnect(" in server


def test_pubsub_message_shape_we_decode() -> None:
    """Our emit records must stay readable by the base class's `_handle_emit`."""
    source = inspect.getsource(AsyncPubSubManager._handle_emit)
    for field in (
        "'callback'",
        "'host_id'",
        "'data'",
        "'binary'",
        "'namespace'",
        "'room'",
        "'skip_sid'",
        "'event'",
    ):
        assert field in source, field


def test_manager_hooks_we_call() -> None:
    assert list(inspect.signature(AsyncManager.emit).parameters)[:8] == [
        "self",
        "event",
        "data",
        "namespace",
        "room",
        "skip_sid",
        "callback",
        "to",
    ]
    assert inspect.getsource(BaseManager.initialize).rstrip().endswith("pass")
    assert callable(BaseManager._generate_ack_id)


def test_server_seams_recovery_overrides() -> None:
    """RecoveringAsyncServer overrides these; their shape and what they do must not move."""

    expected = {
        "_handle_connect": ["self", "eio_sid", "namespace", "data"],
        "_handle_disconnect": ["self", "eio_sid", "namespace", "reason"],
        "_send_packet": ["self", "eio_sid", "pkt"],
        "disconnect": ["self", "sid", "namespace", "ignore_queue"],
        "save_session": ["self", "sid", "session", "namespace"],
        "_send_eio_packet": ["self", "eio_sid", "eio_pkt"],
        "_handle_eio_disconnect": ["self", "eio_sid", "reason"],
    }
    for name, params in expected.items():
        assert list(inspect.signature(getattr(AsyncServer, name)).parameters) == params, name
    connect = inspect.getsource(AsyncServer._handle_connect)
    # The fresh-session CONNECT reply is built inline and sent through _send_packet,
    # which is where the pid is added; the manager mints the sid in pre_connect.
    assert "packet.CONNECT, {'sid': sid}" in connect
    assert "self.manager.pre_connect(eio_sid, namespace)" in connect
    assert "self.manager.connect(sid, namespace)" in connect
    # An event's ACK goes out through _send_packet, where it waits for the session record.
    event = inspect.getsource(AsyncServer._handle_event_internal).replace("\n", "")
    assert "await server._send_packet(eio_sid, self.packet_class(" in event
    assert "packet.ACK, namespace=namespace, id=id, data=data" in event


def test_client_seams_recovering_client_overrides() -> None:
    from socketio.async_client import AsyncClient

    expected = {
        "_handle_eio_connect": ["self"],
        "_handle_connect": ["self", "namespace", "data"],
        "_handle_event": ["self", "namespace", "id", "data"],
        "_get_real_value": ["self", "value"],
    }
    for name, params in expected.items():
        assert list(inspect.signature(getattr(AsyncClient, name)).parameters) == params, name
    source = inspect.getsource(AsyncClient._handle_eio_connect)
    assert "packet.CONNECT, data=real_auth, namespace=n" in source


def test_base_manager_room_primitives() -> None:
    for name, params in {
        "basic_enter_room": ["self", "sid", "namespace", "room", "eio_sid"],
        "basic_leave_room": ["self", "sid", "namespace", "room"],
        "get_participants": ["self", "namespace", "room"],
    }.items():
        assert list(inspect.signature(getattr(BaseManager, name)).parameters) == params, name


def test_engineio_socket_queue_a_replay_fills() -> None:
    """A replay puts packets on the socket's queue itself; the writer must drain that queue."""
    from engineio.async_server import AsyncServer as EngineServer
    from engineio.async_socket import AsyncSocket

    server = EngineServer(async_mode="asgi")
    with pytest.raises(KeyError):
        server._get_socket("unknown")
    socket = AsyncSocket(server, "sid")
    assert isinstance(socket.queue, asyncio.Queue)
    assert "self.queue.get()" in inspect.getsource(AsyncSocket.poll)
    assert "await self.queue.put(pkt)" in inspect.getsource(AsyncSocket.send)


def test_uvicorn_protocol_writes_only_through_its_transport_attribute() -> None:
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    source = inspect.getsource(WebSocketsSansIOProtocol)
    assert "self.transport = transport" in inspect.getsource(
        WebSocketsSansIOProtocol.connection_made
    )
    assert "self.transport.write(" in inspect.getsource(WebSocketsSansIOProtocol.send)
    # Any other way out (writelines, a second transport) would pass our buffer by.
    assert "writelines" not in source
    assert source.count("self.transport = ") == 1


def test_uvicorn_makes_its_http_protocol_with_keywords_the_gate_passes_on() -> None:
    """gateway/accept.py is uvicorn's ``http`` protocol class: uvicorn calls it with
    keywords only, which it hands to uvicorn's own protocol for a connection let through."""
    from uvicorn.server import Server

    source = inspect.getsource(Server.startup)
    call = source[source.index("config.http_protocol_class(") :]
    call = call[: call.index(")")]
    assert "*" not in call  # keywords only: no positional argument to pass on
    assert re.findall(r"(\w+)=", call) == ["config", "server_state", "app_state", "_loop"]


def test_uvicorn_httptools_protocol_parses_in_the_callbacks_reading_bounds() -> None:
    """gateway/reading.py times a request from ``on_message_begin`` to
    ``on_message_complete`` and counts its head until ``on_headers_complete``: uvicorn's
    httptools protocol must be the parser's callback object, and parse in
    ``data_received``, answering a parser error with a 400 that closes the connection."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    init = inspect.getsource(HttpToolsProtocol.__init__)
    assert "httptools.HttpRequestParser(self)" in init
    received = inspect.getsource(HttpToolsProtocol.data_received)
    assert "self.parser.feed_data(data)" in received
    assert "self.send_400_response(" in received
    callbacks = ("on_message_begin", "on_headers_complete", "on_body", "on_message_complete")
    for callback in callbacks:
        assert callable(getattr(HttpToolsProtocol, callback))


def test_websockets_parser_buffers_an_unfinished_frame_where_the_inbound_count_reads_it() -> None:
    """gateway/websocket.py counts what a connection holds of a message not yet whole as
    the bytes websockets' parser waits on (``conn.reader.buffer``) and the frames of a
    fragmented message uvicorn gathered (``frames``)."""
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    from websockets.frames import Frame, Opcode
    from websockets.protocol import State
    from websockets.server import ServerProtocol

    conn = ServerProtocol(max_size=1_000_000)
    conn.receive_data(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    (request,) = conn.events_received()
    conn.send_response(conn.accept(request))  # type: ignore[arg-type]
    assert conn.state is State.OPEN
    frame = Frame(Opcode.TEXT, b"4" * 1000).serialize(mask=True)
    conn.receive_data(frame[:-1])
    assert (len(conn.reader.buffer), conn.events_received()) == (999, [])
    conn.receive_data(frame[-1:])
    assert (len(conn.reader.buffer), len(conn.events_received())) == (0, 1)
    assert "self.frames.append(event.data)" in inspect.getsource(
        WebSocketsSansIOProtocol.handle_cont
    )


def test_aiokafka_group_requests_the_bridge_sends() -> None:
    """A bridge restarted with other topics describes its group and leaves it
    (`TransactionalPump._leave_if_resubscribed`) with aiokafka's protocol classes."""
    from aiokafka.coordinator.protocol import ConsumerProtocol
    from aiokafka.protocol.admin import DescribeGroupsRequest
    from aiokafka.protocol.group import LeaveGroupRequest

    assert DescribeGroupsRequest(["g"]) is not None
    assert LeaveGroupRequest("g", "member-1") is not None
    metadata = ConsumerProtocol.METADATA(0, ["a", "b"], b"").encode()
    assert ConsumerProtocol.METADATA.decode(metadata).subscription == ["a", "b"]


def test_aiokafka_internals_a_stop_finishes_with() -> None:
    """adapter/stopping.py finishes a stop aiokafka left half done: a consumer's pending
    fetches and client, a producer's sender, accumulator and client."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.client import AIOKafkaClient
    from aiokafka.consumer.fetcher import Fetcher
    from aiokafka.producer.message_accumulator import MessageAccumulator
    from aiokafka.producer.sender import Sender

    consumer = inspect.getsource(AIOKafkaConsumer)
    assert "self._client = AIOKafkaClient(" in consumer
    assert "self._fetcher = Fetcher(" in consumer
    assert "self._pending_tasks" in inspect.getsource(Fetcher.__init__)
    assert "await x" in inspect.getsource(Fetcher.close)  # the CancelledError let out
    producer = inspect.getsource(AIOKafkaProducer.__init__)
    for made in ("self.client = AIOKafkaClient(", "self._sender = Sender(", "MessageAccumulator("):
        assert made in producer, made
    assert "self._message_accumulator" in producer
    assert inspect.iscoroutinefunction(Sender.close)
    assert "task.cancelled()" in inspect.getsource(Sender._fail_all)  # fails nothing then
    assert "self._pending_batches.remove(batch)" in inspect.getsource(MessageAccumulator.reenqueue)
    assert "self._batches = " in inspect.getsource(MessageAccumulator.__init__)
    assert list(inspect.signature(MessageAccumulator.fail_all).parameters) == [
        "self",
        "exception",
    ]
    assert inspect.iscoroutinefunction(AIOKafkaClient.close)


def test_aiokafka_internals_a_publisher_watches() -> None:
    """adapter/publisher.py replaces a producer whose sender task ended: it reads the task
    where aiokafka keeps it, and aiokafka fails every record after that task raised."""
    from aiokafka.producer.message_accumulator import MessageAccumulator
    from aiokafka.producer.sender import Sender

    assert isinstance(Sender.sender_task, property)
    assert "self._sender_task.add_done_callback(self._fail_all)" in inspect.getsource(Sender.start)
    assert "raise copy.copy(self._exception)" in inspect.getsource(MessageAccumulator.add_message)


def test_server_seams_the_gateway_guard_overrides() -> None:
    """gateway/guard.py reads the half-received binary packet python-socketio keeps, and
    filters events before python-socketio dispatches them."""

    expected = {
        "_handle_eio_message": ["self", "eio_sid", "data"],
        "_handle_event": ["self", "eio_sid", "namespace", "id", "data"],
        "_handle_event_internal": ["self", "server", "sid", "eio_sid", "data", "namespace", "id"],
    }
    for name, params in expected.items():
        assert list(inspect.signature(getattr(AsyncServer, name)).parameters) == params, name
    # An event in flight is charged as it is read and released as its handler ends: its
    # handler is started, with the same data list, only for a connected socket.
    event = inspect.getsource(AsyncServer._handle_event)
    assert "if not self.manager.is_connected(sid, namespace):" in event
    assert "self._handle_event_internal, self, sid, eio_sid, data," in event
    message = inspect.getsource(AsyncServer._handle_eio_message)
    assert "self._binary_packet[eio_sid]" in message
    assert "pkt.add_attachment(data)" in message
    assert (
        "self._binary_packet.get(eio_sid)" in message or "eio_sid in self._binary_packet" in message
    )


def test_server_seams_the_outbox_replaces_engineio_queues() -> None:
    """adapter/outbox.py: engineio builds every socket's queue through create_queue."""
    from engineio.async_server import AsyncServer as EngineServer
    from engineio.async_socket import AsyncSocket

    assert "self.queue = self.server.create_queue()" in inspect.getsource(AsyncSocket.__init__)
    assert callable(EngineServer.create_queue)


def test_uvicorn_protocol_attributes_have_our_slots_and_its_request_is_read_at_handshake() -> None:
    """gateway/websocket.py gives each attribute uvicorn's protocol sets a slot (one it adds
    later lands in an instance dict: still right, but a connection's dict again), and
    empties the handshake request's headers after ``start_keepalive``: uvicorn reads the
    request only in ``handle_connect``, and websockets' parser keeps it in its frame. A
    closed connection ends that parser, and drops its error (a traceback through it)."""
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    from websockets.protocol import Protocol
    from websockets.server import ServerProtocol

    from socketio_kafka.gateway.websocket import CoalescingWebSocketProtocol

    source = inspect.getsource(WebSocketsSansIOProtocol)
    assigned = set(re.findall(r"self\.(\w+)(?:: [^=\n]+)? = ", source))
    assert "pending_ping_payload" in assigned  # the pattern finds annotated ones too
    assert assigned <= set(CoalescingWebSocketProtocol.__slots__)
    assert re.findall(r"self\.request\b", source) == ["self.request"]
    assert "self.request = event" in inspect.getsource(WebSocketsSansIOProtocol.handle_connect)
    assert "self.start_keepalive()" in inspect.getsource(WebSocketsSansIOProtocol.send)
    assert "request = yield from Request.parse(" in inspect.getsource(ServerProtocol.parse)
    # A closed connection ends its parser (a generator holding it) and drops its error.
    made = inspect.getsource(Protocol.__init__)
    assert "self.parser = self.parse()" in made
    assert "self.parser_exc: Exception | None = None" in made


def test_engineio_reads_the_handshake_headers_only_as_a_request_starts() -> None:
    """gateway/guard.py drops Connection, Upgrade and Sec-WebSocket-* from a connection's
    environ and scope at its Socket.IO CONNECT: engineio reads them only when a request
    comes in (its handshake, an upgrade), python-socketio never."""
    import engineio
    import socketio as socketio_package
    from engineio.async_drivers import asgi
    from engineio.async_server import AsyncServer as EngineServer
    from engineio.async_socket import AsyncSocket

    for package in (engineio, socketio_package):
        for module in Path(inspect.getfile(package)).parent.rglob("*.py"):
            assert "SEC_WEBSOCKET" not in module.read_text(), module
    readers = {
        (cls.__name__, name)
        for cls in (EngineServer, AsyncSocket)
        for name, member in inspect.getmembers(cls, inspect.isfunction)
        if re.search(r"HTTP_(UPGRADE|CONNECTION)", inspect.getsource(member))
    }
    assert readers == {("AsyncServer", "handle_request"), ("AsyncSocket", "handle_get_request")}
    assert "scope['headers']" in inspect.getsource(asgi.translate_request)


def test_python_socketio_keeps_namespace_sessions_in_the_engineio_session() -> None:
    """adapter/recovery.py reads a socket's session data as get_session does, without
    storing an empty one."""

    source = inspect.getsource(AsyncServer.get_session)
    assert "await self.eio.get_session(eio_sid)" in source
    assert "eio_session.setdefault(namespace, {})" in source


def test_engineio_makes_each_websocket_from_its_driver_table_for_the_socket() -> None:
    """adapter/frames.py: engineio makes a socket's WebSocket from ``_async['websocket']``
    with the socket's own handler, which marks it upgraded before it receives again, and
    the ASGI driver's environ carries the scope (where the connection offers `FRAMES`)."""
    from engineio.async_drivers import asgi
    from engineio.async_socket import AsyncSocket

    upgrade = inspect.getsource(AsyncSocket._upgrade_websocket)
    assert "self.server._async['websocket'](\n            self._websocket_handler" in upgrade
    handler = inspect.getsource(AsyncSocket._websocket_handler)
    assert handler.index("self.upgraded = True") < handler.index("writer_task = ")
    assert "await ws.wait()" in handler
    assert "await self.handler(self)" in inspect.getsource(asgi.WebSocket.__call__)
    assert "'asgi.scope': scope" in inspect.getsource(asgi.translate_request)
    assert asgi._async["websocket"] is asgi.WebSocket


def test_engineio_websocket_loop_is_the_one_ours_follows() -> None:
    """adapter/websocket_loop.py serves a socket as python-engineio 4.15's
    ``AsyncSocket._websocket_handler`` does, with its receive loop lighter; its ASGI
    WebSocket's ``__call__`` accepts, then runs that handler. A release that changes
    either is to be read again, and `serve` brought in line with it."""
    import hashlib

    from engineio.async_drivers import asgi
    from engineio.async_socket import AsyncSocket

    followed = {
        AsyncSocket._websocket_handler: "27f120df4d717a24",
        asgi.WebSocket.__call__: "abbf7a49b2256d37",
    }
    for function, digest in followed.items():
        source = inspect.getsource(function)
        assert hashlib.sha256(source.encode()).hexdigest()[:16] == digest, function.__qualname__


def test_engineio_handlers_the_lanes_stand_in_for() -> None:
    """adapter/lanes.py replaces python-socketio's Engine.IO ``message`` and ``disconnect``
    handlers, and relies on Engine.IO calling the disconnect while its socket is closing,
    not yet closed: what the connection sent before is handled then (the guard lets it)."""
    from engineio.async_socket import AsyncSocket
    from socketio.base_server import BaseServer

    init = inspect.getsource(BaseServer.__init__)
    assert "self.eio.on('message', self._handle_eio_message)" in init
    assert "self.eio.on('disconnect', self._handle_eio_disconnect)" in init
    close = inspect.getsource(AsyncSocket.close)
    assert (
        close.index("self.closing = True")
        < close.index("'disconnect'")
        < close.index("self.closed = True")
    )
