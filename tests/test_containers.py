"""Where a Docker engine answers, the test session's Kafka and Redis come from containers.

No engine runs on our CI machine, so the engine here is a small HTTP server on a Unix
socket answering as Docker's API does: what is checked is the detection, on both sides.
"""

from __future__ import annotations

import contextlib
import http.server
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from .support.containers import docker_engine_answers


class _Engine(http.server.BaseHTTPRequestHandler):
    ping_status = 200

    def do_GET(self) -> None:
        if self.path.endswith("/version"):
            self._reply(200, b'{"ApiVersion": "1.43", "Version": "24.0.0"}', "application/json")
        elif self.path.endswith("/_ping"):
            self._reply(
                self.ping_status, b"OK" if self.ping_status == 200 else b"down", "text/plain"
            )
        else:
            self._reply(404, b"{}", "application/json")

    def _reply(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self):  # type: ignore[no-untyped-def]
        request, _ = super().get_request()
        return request, ("local", 0)  # BaseHTTPRequestHandler wants a (host, port)


@contextlib.contextmanager
def _serve(path: Path, ping_status: int) -> Iterator[None]:
    handler = type("Engine", (_Engine,), {"ping_status": ping_status})
    server = _UnixServer(str(path), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def docker_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    socket_path = tmp_path / "docker.sock"
    monkeypatch.setenv("DOCKER_HOST", f"unix://{socket_path}")
    return socket_path


def test_an_engine_that_answers_provides_the_services(docker_host: Path) -> None:
    with _serve(docker_host, 200):
        assert docker_engine_answers() is True


def test_an_engine_that_fails_its_ping_is_not_used(docker_host: Path) -> None:
    with _serve(docker_host, 500):
        assert docker_engine_answers() is False


def test_no_engine_at_docker_host_is_not_used(docker_host: Path) -> None:
    assert not docker_host.exists()
    assert docker_engine_answers(timeout=1.0) is False
