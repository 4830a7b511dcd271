"""SASL over TLS against a real broker's SASL_SSL listener: delivery, and refusals in one line.

One private broker for the module (the launcher's ``secure=True``: a throwaway CA, one user
for PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512). Gateway nodes and a write-only manager reach
it with real credentials; wrong ones make ``serve`` and ``bridge`` exit with one line, not a
retry loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from socketio_kafka.adapter import AsyncKafkaManager, KafkaOptions, SecurityError
from socketio_kafka.adapter.security import check_access
from socketio_kafka.gateway.local_kafka import LocalKafka
from socketio_kafka.gateway.local_tls import ensure_tls

from .support.bridges import BridgeProcess
from .support.cluster import REPO, gateway_cluster
from .support.harness import Harness
from .support.sockets import all_closed

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]

# A refusal must end `serve` long before this; a hang or a retry loop would not.
_EXIT_BOUND_S = 30


@pytest.fixture(scope="module")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    kafka = LocalKafka(tmp_path_factory.mktemp("secure-kafka"), secure=True)
    kafka.start()
    try:
        yield kafka
    finally:
        kafka.stop()


@pytest.fixture(scope="module")
def untrusted_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA that did not sign the broker's certificate."""
    return ensure_tls(tmp_path_factory.mktemp("other-ca")).ca


def _url(kafka: LocalKafka) -> str:
    assert kafka.secure_address is not None
    return f"kafka://{kafka.secure_address}"


def _options(kafka: LocalKafka, mechanism: str, **changes: Any) -> KafkaOptions:
    options = KafkaOptions(
        security_protocol="SASL_SSL",
        sasl_mechanism=mechanism,
        sasl_username=kafka.sasl_username,
        sasl_password=kafka.sasl_password,
        ssl_cafile=str(kafka.ca_file),
    )
    return dataclasses.replace(options, **changes)


def _serve_flags(
    kafka: LocalKafka, password_file: Path, ca_file: Path, username: str | None = None
) -> list[str]:
    return [
        "--kafka-security-protocol", "SASL_SSL",
        "--kafka-sasl-mechanism", "SCRAM-SHA-512",
        "--kafka-username", username or kafka.sasl_username,
        "--kafka-password-file", str(password_file),
        "--kafka-ca-file", str(ca_file),
    ]  # fmt: skip


async def test_nodes_and_a_write_only_manager_deliver_over_sasl_and_tls(
    secure_kafka: LocalKafka, channel: str
) -> None:
    flags = _serve_flags(secure_kafka, secure_kafka.password_path, secure_kafka.ca_file)
    url = _url(secure_kafka)
    async with (
        gateway_cluster(url, channel, nodes=3, extra_args=flags) as gateways,
        Harness(gateways) as harness,
    ):
        sender, *receivers = await harness.clients_on([0, 1, 2])
        for client in (sender, *receivers):
            assert await client.ask("join", {"room": "lobby"}) == {"ok": True}
        publish = {"room": "lobby", "event": "chat", "data": {"text": "hi"}}
        assert (await sender.ask("publish", publish))["ok"] is True
        for receiver in receivers:
            assert await receiver.wait_for("chat", 1) == [{"text": "hi"}]

        # Another process emitting to the nodes' clients: SCRAM-SHA-256, then PLAIN.
        for n, mechanism in enumerate(("SCRAM-SHA-256", "PLAIN"), start=1):
            options = _options(secure_kafka, mechanism)
            async with AsyncKafkaManager(
                url, channel=channel, write_only=True, options=options
            ) as manager:
                await manager.emit("news", {"via": mechanism}, room="lobby")
            for client in (sender, *receivers):
                await client.wait_for("news", n)
        expected = [{"via": "SCRAM-SHA-256"}, {"via": "PLAIN"}]
        assert [c.events("news") for c in (sender, *receivers)] == [expected] * 3


@pytest.fixture
def wrong_password(tmp_path: Path) -> Path:
    path = tmp_path / "password"
    path.write_text("not-the-password\n")
    return path


@pytest.mark.parametrize(
    "case", ["wrong password", "unknown user", "untrusted CA", "TLS to a plaintext port"]
)
def test_serve_exits_at_once_with_one_line_when_kafka_refuses_it(
    case: str, secure_kafka: LocalKafka, wrong_password: Path, untrusted_ca: Path, channel: str
) -> None:
    password, ca, user = secure_kafka.password_path, secure_kafka.ca_file, None
    kafka_url, address = _url(secure_kafka), re.escape(secure_kafka.secure_address or "")
    if case == "wrong password":
        password = wrong_password
        expected = (
            rf"Kafka at {address} refused the credentials of user 'socketio' \(SCRAM-SHA-512\):"
            " Authentication failed .+"
        )
    elif case == "unknown user":
        user = "nobody"
        expected = rf"Kafka at {address} refused the credentials of user 'nobody' .+"
    elif case == "untrusted CA":
        ca = untrusted_ca
        expected = (
            rf"TLS handshake with {address} failed: certificate verify failed: .+"
            rf" \(trusting {re.escape(str(ca))}\)"
        )
    else:
        plaintext = secure_kafka.start()  # the running broker's PLAINTEXT listener
        kafka_url = f"kafka://{plaintext}"
        expected = (
            rf"TLS handshake with {re.escape(plaintext)} failed: the port speaks plaintext Kafka"
            r" \(security_protocol='SASL_SSL' needs a TLS listener\)"
        )
    _exits_with_one_line(
        [
            "serve", "--port", "0", "--kafka", kafka_url, "--channel", channel,
            *_serve_flags(secure_kafka, password, ca, user),
        ],
        expected,
    )  # fmt: skip


@pytest.mark.parametrize("case", ["wrong password", "untrusted CA"])
def test_a_bridge_exits_at_once_with_one_line_when_kafka_refuses_it(
    case: str,
    secure_kafka: LocalKafka,
    wrong_password: Path,
    untrusted_ca: Path,
    channel: str,
    tmp_path: Path,
) -> None:
    """Its pumps' supervisor retried the refusal as an outage, a traceback a try, for good."""
    password, ca = secure_kafka.password_path, secure_kafka.ca_file
    address = re.escape(secure_kafka.secure_address or "")
    if case == "wrong password":
        password = wrong_password
        expected = rf"Kafka at {address} refused the credentials of user 'socketio' .+"
    else:
        ca = untrusted_ca
        expected = rf"TLS handshake with {address} failed: certificate verify failed: .+"
    config = tmp_path / "bridges.toml"
    config.write_text(
        f'[kafka]\nchannel = "{channel}"\n\n[[inbound]]\nname = "orders"\n'
        f'topics = ["{channel}.orders"]\nroom = "lobby"\nevent = "order"\n'
    )
    _exits_with_one_line(
        ["bridge", str(config), "--kafka", _url(secure_kafka),
         *_serve_flags(secure_kafka, password, ca)],
        expected,
    )  # fmt: skip


def _exits_with_one_line(argv: list[str], expected: str) -> None:
    """``socketio-kafka <argv>`` exits 1 in time, its one line of ours matching ``expected``."""
    run = subprocess.run(
        [sys.executable, "-m", "socketio_kafka.gateway", *argv],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=_EXIT_BOUND_S,
        check=False,
    )
    ours = [line for line in run.stderr.splitlines() if line.startswith("socketio-kafka:")]
    assert run.returncode == 1, run.stderr
    assert len(ours) == 1, run.stderr
    assert re.fullmatch("socketio-kafka: " + expected, ours[0]), ours[0]
    assert "Traceback" not in run.stdout + run.stderr


@pytest.mark.parametrize("case", ["wrong password", "untrusted CA"])
async def test_the_manager_raises_one_security_error(
    case: str, secure_kafka: LocalKafka, untrusted_ca: Path, channel: str
) -> None:
    if case == "wrong password":
        options = _options(secure_kafka, "SCRAM-SHA-256", sasl_password="not-the-password")
        match = "refused the credentials of user 'socketio' \\(SCRAM-SHA-256\\)"
    else:
        options = _options(secure_kafka, "SCRAM-SHA-256", ssl_cafile=str(untrusted_ca))
        match = "certificate verify failed"
    manager = AsyncKafkaManager(_url(secure_kafka), channel=channel, options=options)
    with pytest.raises(SecurityError, match=match):
        await asyncio.wait_for(manager.start(), _EXIT_BOUND_S)
    assert not manager.ready
    await all_closed(int(_url(secure_kafka).rpartition(":")[2]))


@pytest.mark.parametrize(
    ("protocol", "expected"),
    [
        ("SSL", "closed the connection at its first request: the listener likely requires"
         " SASL (security_protocol='SSL' has none)"),
        ("SASL_PLAINTEXT", "closed the connection: the port speaks TLS"
         " (security_protocol='SASL_PLAINTEXT' needs a plaintext listener)"),
        ("PLAINTEXT", "closed the connection: the port speaks TLS"
         " (security_protocol='PLAINTEXT' needs a plaintext listener)"),
    ],
)  # fmt: skip
async def test_a_client_speaking_less_than_the_listener_is_refused_in_one_line(
    protocol: str, expected: str, secure_kafka: LocalKafka
) -> None:
    """The listener closed such a client's connection, which was retried as an outage for
    good; TLS without SASL even passed the check."""
    changes: dict[str, Any] = {"security_protocol": protocol}
    if not protocol.startswith("SASL_"):
        changes |= {"sasl_mechanism": None, "sasl_username": None, "sasl_password": None}
    if not protocol.endswith("SSL"):
        changes["ssl_cafile"] = None
    options = _options(secure_kafka, "SCRAM-SHA-512", **changes)
    address = secure_kafka.secure_address
    assert address is not None
    with pytest.raises(SecurityError) as refused:
        await asyncio.wait_for(check_access([address], options), _EXIT_BOUND_S)
    assert str(refused.value) == f"Kafka at {address} {expected}"


async def test_a_node_without_security_settings_at_a_tls_listener_stops_at_start(
    secure_kafka: LocalKafka, channel: str
) -> None:
    """The security settings forgotten: the node retried "Unable to bootstrap" for good."""
    address = secure_kafka.secure_address
    assert address is not None
    manager = AsyncKafkaManager(f"kafka://{address}", channel)
    try:
        with pytest.raises(SecurityError, match="the port speaks TLS"):
            await asyncio.wait_for(manager.start(), _EXIT_BOUND_S)
        assert not manager.ready
    finally:
        await manager.stop()


async def test_a_bridge_reads_and_writes_over_sasl_and_tls(
    secure_kafka: LocalKafka, channel: str, tmp_path: Path
) -> None:
    """``socketio-kafka bridge`` took no security settings: on a secured cluster it spoke
    PLAINTEXT, and its supervisor retried for good."""
    flags = _serve_flags(secure_kafka, secure_kafka.password_path, secure_kafka.ca_file)
    url = _url(secure_kafka)
    assert secure_kafka.secure_address is not None
    bootstrap = [secure_kafka.secure_address]
    options = _options(secure_kafka, "SCRAM-SHA-512")
    source = f"{channel}.orders"
    admin = AIOKafkaAdminClient(**options.common_kwargs(bootstrap))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(source, 1, 1)])
    finally:
        await admin.close()
    config = tmp_path / "bridges.toml"
    config.write_text(
        f'[kafka]\nchannel = "{channel}"\n\n[[inbound]]\nname = "orders"\n'
        f'topics = ["{source}"]\nroom = "lobby"\nevent = "order"\n'
    )
    async with (
        gateway_cluster(url, channel, nodes=1, extra_args=flags) as gateways,
        Harness(gateways) as harness,
    ):
        (client,) = await harness.clients_on([0])
        assert await client.ask("join", {"room": "lobby"}) == {"ok": True}
        with BridgeProcess(config, url, extra_args=flags).running():
            producer = AIOKafkaProducer(**options.common_kwargs(bootstrap))
            await producer.start()
            try:
                await producer.send_and_wait(source, b'{"n": 1}')
            finally:
                await producer.stop()
            assert await client.wait_for("order", 1, timeout=60) == [{"n": 1}]
