"""The gateway's flags and environment variables reach the Kafka client: without a broker."""

from __future__ import annotations

import pytest

from socketio_kafka.adapter import AsyncKafkaManager, KafkaOptions
from socketio_kafka.gateway import cli
from socketio_kafka.gateway.app import create_app
from socketio_kafka.gateway.cli import build_parser, settings_from


def _manager(argv: list[str]) -> AsyncKafkaManager:
    settings = settings_from(build_parser().parse_args(["serve", *argv]))
    manager = create_app(settings, kafka_url="kafka://127.0.0.1:1").state.node.manager
    assert isinstance(manager, AsyncKafkaManager)
    return manager


def test_latency_flags_set_the_kafka_client() -> None:
    options = _manager(["--linger-ms", "0", "--fetch-interval-ms", "0"]).options
    assert (options.linger_ms, options.fetch_interval_ms) == (0, 0.0)
    assert options.producer_kwargs(["b:1"])["linger_ms"] == 0


def test_latency_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOCKETIO_KAFKA_LINGER_MS", "1")
    monkeypatch.setenv("SOCKETIO_KAFKA_FETCH_INTERVAL_MS", "2.5")
    options = _manager([]).options
    assert (options.linger_ms, options.fetch_interval_ms) == (1, 2.5)


def test_defaults_are_the_adapter_defaults() -> None:
    options, defaults = _manager([]).options, KafkaOptions()
    assert (options.linger_ms, options.fetch_interval_ms) == (
        defaults.linger_ms,
        defaults.fetch_interval_ms,
    )


def test_negative_values_are_refused() -> None:
    with pytest.raises(ValueError, match="linger_ms must be >= 0"):
        settings_from(build_parser().parse_args(["serve", "--linger-ms", "-1"]))


def test_settings_out_of_range_are_one_line_and_start_nothing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_service(*args: object) -> None:
        raise AssertionError("a service was started for settings that cannot run")

    monkeypatch.setattr(cli, "_service", no_service)
    # Paced past 1 s, nodes would miss each other's heartbeats.
    assert cli.main(["serve", "--fetch-interval-ms", "2000"]) == 1
    assert capsys.readouterr().err == (
        "socketio-kafka: fetch_interval_ms must be between 0 and 1000\n"
    )
