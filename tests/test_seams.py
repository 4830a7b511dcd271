"""What AsyncKafkaManager relies on inside python-socketio: fails loudly if a release moves it."""

from __future__ import annotations

import inspect
from importlib.metadata import version

from socketio.async_manager import AsyncManager
from socketio.async_pubsub_manager import AsyncPubSubManager
from socketio.base_manager import BaseManager

TESTED = ("5.18",)


def test_python_socketio_is_a_tested_release() -> None:
    assert version("python-socketio").startswith(TESTED), (
        f"python-socketio {version('python-socketio')} is untested: check the seams below, "
        "then widen the range in pyproject.toml and here"
    )


def test_pubsub_handlers_we_dispatch_to_exist() -> None:
    for name in (
        "_handle_emit",
        "_handle_callback",
        "_handle_disconnect",
        "_handle_enter_room",
        "_handle_leave_room",
        "_handle_close_room",
        "_return_callback",
    ):
        assert inspect.iscoroutinefunction(getattr(AsyncPubSubManager, name)), name


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
