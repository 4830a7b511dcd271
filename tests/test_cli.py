"""The gateway's flags and environment variables reach the Kafka client: without a broker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from socketio_kafka.adapter import AsyncKafkaManager, KafkaOptions, OutboxLimits
from socketio_kafka.gateway import cli, demo
from socketio_kafka.gateway.app import create_app
from socketio_kafka.gateway.cli import build_parser, settings_from
from socketio_kafka.gateway.errors import InvalidSettings
from socketio_kafka.gateway.settings import ENV_PREFIX, Settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``SOCKETIO_KAFKA_*`` variable of the shell running the tests leaks into them."""
    for name in os.environ:
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


@pytest.fixture
def nothing_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_service(*args: object) -> None:
        raise AssertionError("a service was started for settings that cannot run")

    def no_demo(*args: object) -> None:
        raise AssertionError("the demo started its nodes with settings that cannot run")

    monkeypatch.setattr(cli, "_service", no_service)
    monkeypatch.setattr(demo, "run_demo", no_demo)


def _settings(argv: list[str]) -> Settings:
    return settings_from(build_parser().parse_args(["serve", *argv]))


def _manager(argv: list[str]) -> AsyncKafkaManager:
    settings = settings_from(build_parser().parse_args(["serve", *argv]))
    manager = create_app(settings, kafka_url="kafka://127.0.0.1:1").state.node.manager
    assert isinstance(manager, AsyncKafkaManager)
    return manager


def test_latency_flags_set_the_kafka_client() -> None:
    options = _manager(["--linger-ms", "3", "--fetch-interval-ms", "0"]).options
    assert (options.linger_ms, options.fetch_interval_ms) == (3, 0.0)
    assert options.producer_kwargs(["b:1"])["linger_ms"] == 3


def test_latency_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOCKETIO_KAFKA_LINGER_MS", "1")
    monkeypatch.setenv("SOCKETIO_KAFKA_FETCH_INTERVAL_MS", "2.5")
    options = _manager([]).options
    assert (options.linger_ms, options.fetch_interval_ms) == (1, 2.5)


def test_a_busy_nodes_waits_from_flags_and_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    manager = _manager([])
    assert (manager.pacing.adaptive, manager.pacing.fetch_interval_s) == (True, 0.005)
    assert (manager.pacing.linger_ms, manager.options.max_linger_ms) == (0, 16)
    fixed = _manager(["--linger-max-ms", "0", "--fetch-interval-max-ms", "5"])
    assert not fixed.pacing.adaptive
    monkeypatch.setenv("SOCKETIO_KAFKA_LINGER_MAX_MS", "3")
    options = _manager(["--fetch-interval-max-ms", "7.5"]).options
    assert (options.max_linger_ms, options.max_fetch_interval_ms) == (3, 7.5)


def test_the_replay_history_from_flags_and_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    manager = _manager([])  # recovery is on by default: the node keeps its history
    assert manager.shared_replays.history is not None
    assert manager.shared_replays.history.budget == KafkaOptions().replay_history_bytes
    assert _manager(["--replay-history-mb", "1.5"]).options.replay_history_bytes == 1_572_864
    assert _manager(["--replay-history-mb", "0"]).shared_replays.history is None
    assert _manager(["--no-recovery"]).shared_replays.history is None
    monkeypatch.setenv("SOCKETIO_KAFKA_REPLAY_HISTORY_MB", "0")
    assert _manager([]).shared_replays.history is None


def test_a_recovery_window_past_a_day_is_kept_by_the_events_topic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The topic was made to keep 24 h whatever the window: a longer one stopped serve at
    start (``retention_ms`` shorter than the recovery window)."""
    day_ms = KafkaOptions().retention_ms
    assert _manager([]).options.retention_ms == day_ms
    manager = _manager(["--recovery-window", "172800"])
    assert (manager.recovery_window, manager.options.retention_ms) == (172_800, 176_400_000)
    monkeypatch.setenv("SOCKETIO_KAFKA_RECOVERY_WINDOW", "86400.0005")
    assert _manager([]).options.retention_ms == 86_400_001 + 3_600_000
    assert _manager(["--no-recovery"]).options.retention_ms == day_ms


def test_queue_bounds_from_flags_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    manager = _manager(["--max-queued-bytes", "1000"])
    assert manager.outboxes.limits == OutboxLimits(max_bytes=1000)
    assert manager.budget.limit == OutboxLimits().node_max_bytes
    monkeypatch.setenv("SOCKETIO_KAFKA_MAX_NODE_QUEUED_BYTES", "5000000")
    manager = _manager([])
    assert (manager.budget.limit, manager.outboxes.budget, manager.holds.budget) == (
        5_000_000,
        manager.budget,
        manager.budget,
    )


@pytest.mark.parametrize(
    ("name", "default", "error"),
    [
        ("keep_alive_timeout", 65, "must be >= 1"),
        ("read_timeout", 30, "must be > 0"),
        ("connect_timeout", 45, "must be > 0"),
    ],
)
def test_the_connection_timeouts_from_flags_and_the_environment(
    monkeypatch: pytest.MonkeyPatch, name: str, default: float, error: str
) -> None:
    flag = "--" + name.replace("_", "-")

    def value(*flags: str) -> float:
        settings = settings_from(build_parser().parse_args(["serve", *flags]))
        return getattr(settings, name)  # type: ignore[no-any-return]

    assert value() == default
    monkeypatch.setenv("SOCKETIO_KAFKA_" + name.upper(), "620")
    assert value() == 620
    assert value(flag, "30") == 30
    with pytest.raises(ValueError, match=f"{name} {error}"):
        value(flag, "0")


def test_the_inbound_bound_from_flags_and_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def limit(*flags: str) -> int:
        return settings_from(build_parser().parse_args(["serve", *flags])).limits.max_inbound_bytes

    assert limit() == 64 * 2**20
    monkeypatch.setenv("SOCKETIO_KAFKA_MAX_NODE_INBOUND_BYTES", "2000000")
    assert limit() == 2_000_000
    assert limit("--max-node-inbound-bytes", "3000000") == 3_000_000
    # One message of the largest size must fit, or a client sending it at once is cut.
    with pytest.raises(ValueError, match="max_node_inbound_bytes must be >= max_payload_bytes"):
        limit("--max-payload-bytes", "2000001")


def test_the_in_flight_bounds_from_flags_and_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def limits(*flags: str) -> tuple[int, int]:
        got = settings_from(build_parser().parse_args(["serve", *flags])).limits
        return got.max_in_flight_events, got.max_in_flight_bytes

    assert limits() == (400, 32 * 2**20)  # twice the default burst of 200
    # A node that raises its rate takes its clients' bursts in flight: a pipelining client
    # (the benchmarks' load generator) was answered busy.
    assert limits("--event-rate", "100000") == (400_000, 32 * 2**20)
    monkeypatch.setenv("SOCKETIO_KAFKA_MAX_IN_FLIGHT_EVENTS", "50")
    assert limits("--max-in-flight-bytes", "3000000") == (50, 3_000_000)
    # An event of the largest size must fit, or it is refused on a node doing nothing.
    with pytest.raises(ValueError, match="max_in_flight_bytes must be >= max_payload_bytes"):
        limits("--max-in-flight-bytes", "1000000")
    # Unset, it takes one: a node of 48 MiB payloads stopped starting when the bound came.
    monkeypatch.setenv("SOCKETIO_KAFKA_MAX_NODE_INBOUND_BYTES", str(2**30))
    assert limits("--max-payload-bytes", str(48 * 2**20)) == (50, 48 * 2**20 + 4096)


@pytest.mark.usefixtures("nothing_starts")
def test_a_busy_wait_under_the_idle_one_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--linger-ms", "4", "--linger-max-ms", "3"]) == 1
    assert capsys.readouterr().err == "socketio-kafka: linger_max_ms must be >= linger_ms\n"


def test_replication_from_flags_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (_manager([]).options.replication_factor, _manager([]).options.min_insync_replicas) == (
        None,
        None,
    )
    monkeypatch.setenv("SOCKETIO_KAFKA_MIN_INSYNC_REPLICAS", "2")
    options = _manager(["--replication-factor", "3"]).options
    assert (options.replication_factor, options.min_insync_replicas) == (3, 2)


def test_the_sessions_topics_partitions_from_flags_and_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert _manager([]).options.sessions_partitions == KafkaOptions().sessions_partitions == 1
    monkeypatch.setenv("SOCKETIO_KAFKA_SESSIONS_PARTITIONS", "6")
    assert _manager([]).options.sessions_partitions == 6
    assert _manager(["--sessions-partitions", "3"]).options.sessions_partitions == 3
    with pytest.raises(ValueError, match="sessions_partitions must be >= 1"):
        settings_from(build_parser().parse_args(["serve", "--sessions-partitions", "0"]))


@pytest.mark.usefixtures("nothing_starts")
def test_more_in_sync_than_replicas_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--replication-factor", "1", "--min-insync-replicas", "2"]) == 1
    assert "min_insync_replicas must not exceed replication_factor" in capsys.readouterr().err


def test_defaults_are_the_adapter_defaults() -> None:
    options, defaults = _manager([]).options, KafkaOptions()
    assert (options.linger_ms, options.fetch_interval_ms) == (
        defaults.linger_ms,
        defaults.fetch_interval_ms,
    )


def test_negative_values_are_refused() -> None:
    with pytest.raises(ValueError, match="linger_ms must be >= 0"):
        settings_from(build_parser().parse_args(["serve", "--linger-ms", "-1"]))


@pytest.mark.usefixtures("nothing_starts")
def test_settings_out_of_range_are_one_line_and_start_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Paced past 1 s, nodes would miss each other's heartbeats.
    assert cli.main(["serve", "--fetch-interval-ms", "2000"]) == 1
    assert capsys.readouterr().err == (
        "socketio-kafka: fetch_interval_ms must be between 0 and 1000\n"
    )


@pytest.mark.parametrize(("service", "port"), [("redis", "70000"), ("kafka", "0")])
def test_a_service_port_out_of_range_is_one_line(
    service: str, port: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([service, "start", "--port", port, "--data-dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err == f"socketio-kafka: port out of range: {port}\n"
    assert list(tmp_path.iterdir()) == []  # nothing started


def _cli(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The installed CLI in a process of its own, as a shell runs it."""
    return subprocess.run(
        [sys.executable, "-m", "socketio_kafka.gateway", *argv],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_malformed_variable_stops_serve_in_one_line(tmp_path: Path) -> None:
    run = _cli("serve", SOCKETIO_KAFKA_PORT="abc", SOCKETIO_KAFKA_DATA_DIR=str(tmp_path))
    assert (run.returncode, run.stdout) == (1, "")
    assert run.stderr == "socketio-kafka: SOCKETIO_KAFKA_PORT='abc' is not an integer\n"


def test_a_variable_of_serve_does_not_concern_the_service_commands(tmp_path: Path) -> None:
    run = _cli("kafka", "status", SOCKETIO_KAFKA_PORT="abc", SOCKETIO_KAFKA_DATA_DIR=str(tmp_path))
    assert (run.returncode, run.stdout, run.stderr) == (3, "not running\n", "")


@pytest.mark.usefixtures("nothing_starts")
@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        ("PORT", "abc", "is not an integer"),
        ("PARTITIONS", "6.5", "is not an integer"),
        ("LINGER_MS", "", "is not an integer"),
        ("FETCH_INTERVAL_MS", "fast", "is not a finite number"),
        ("RECOVERY_WINDOW", "nan", "is not a finite number"),
        ("RECOVERY", "maybe", "is not a boolean (1/0, true/false, yes/no, on/off)"),
        ("WS_COMPRESSION", "enabled", "is not a boolean (1/0, true/false, yes/no, on/off)"),
    ],
)
@pytest.mark.parametrize("command", [["serve"], ["demo", "--kafka", "kafka://127.0.0.1:1"]])
def test_a_malformed_variable_is_one_line_and_starts_nothing(
    command: list[str],
    variable: str,
    value: str,
    problem: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV_PREFIX + variable, value)
    assert cli.main(command) == 1
    assert (
        capsys.readouterr().err == f"socketio-kafka: {ENV_PREFIX}{variable}={value!r} {problem}\n"
    )


@pytest.mark.parametrize(
    ("flag", "value", "kind"),
    [
        ("--port", "abc", "integer"),
        ("--linger-ms", "1.5", "integer"),
        ("--recovery-window", "inf", "number"),
    ],
)
def test_a_malformed_flag_is_a_usage_error(
    flag: str, value: str, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["serve", flag, value])
    assert exited.value.code == 2
    assert capsys.readouterr().err.endswith(
        f"socketio-kafka serve: error: argument {flag}: invalid {kind} value: {value!r}\n"
    )


@pytest.mark.usefixtures("nothing_starts")
def test_an_unknown_log_level_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOCKETIO_KAFKA_LOG_LEVEL", "loud")
    assert cli.main(["serve"]) == 1
    assert capsys.readouterr().err == (
        "socketio-kafka: log_level must be one of critical, error, warning, info, debug, trace\n"
    )


_TRUE = ["1", "true", "True", "TRUE", "yes", "Yes", "on", "ON"]
_FALSE = ["0", "false", "False", "no", "NO", "off", "Off"]


@pytest.mark.parametrize("name", ["recovery", "ws_compression"])
@pytest.mark.parametrize(
    ("text", "expected"), [(t, True) for t in _TRUE] + [(t, False) for t in _FALSE]
)
def test_booleans_from_the_environment_in_any_usual_spelling(
    name: str, text: str, expected: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_PREFIX + name.upper(), text)
    assert getattr(_settings([]), name) is expected


@pytest.mark.parametrize("name", ["recovery", "ws_compression"])
def test_a_boolean_flag_wins_over_its_variable(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    flag = "--" + name.replace("_", "-")
    monkeypatch.setenv(ENV_PREFIX + name.upper(), "off")
    assert getattr(_settings([flag]), name) is True
    monkeypatch.setenv(ENV_PREFIX + name.upper(), "on")
    assert getattr(_settings(["--no-" + flag[2:]]), name) is False


def test_unset_variables_leave_the_defaults() -> None:
    assert _settings([]) == Settings()


def test_a_malformed_variable_is_refused_even_under_its_flag(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A deployment with a typo in its environment is wrong whichever node reads it.
    monkeypatch.setenv("SOCKETIO_KAFKA_PORT", "abc")
    with pytest.raises(InvalidSettings, match="SOCKETIO_KAFKA_PORT='abc' is not an integer"):
        _settings(["--port", "8001"])


@pytest.mark.parametrize(
    ("setting", "spec", "message"),
    [
        ("extension", "nosuchmod:f", "extension 'nosuchmod:f': no module named 'nosuchmod'"),
        ("extension", "json:nosuch", "extension 'json:nosuch': json has no function 'nosuch'"),
        ("authorize", "json.nosuch:f", "authorize 'json.nosuch:f': no module named 'json.nosuch'"),
        ("authorize", "json:decoder", "authorize 'json:decoder': json has no function 'decoder'"),
    ],
)
def test_a_hook_that_is_not_there_is_one_line(setting: str, spec: str, message: str) -> None:
    """They ended ``serve`` in an import's traceback."""
    jwt = {"jwt_secret": "s" * 32} if setting == "authorize" else {}
    with pytest.raises(InvalidSettings) as refused:
        create_app(Settings(**{setting: spec}, **jwt), "kafka://127.0.0.1:1")
    assert str(refused.value) == message


def test_the_bridge_reads_only_the_kafka_security_of_serves_variables(tmp_path: Path) -> None:
    """A bridge sharing the gateways' environment need not have their JWT key or share
    their limits to start; it takes their Kafka security, and says what is wrong there."""
    password = tmp_path / "password"
    password.write_text("secret\n")
    env = {
        ENV_PREFIX + "JWT_SECRET_FILE": "/nowhere/jwt",
        ENV_PREFIX + "PORT": "80000",
        ENV_PREFIX + "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        ENV_PREFIX + "KAFKA_SASL_MECHANISM": "PLAIN",
        ENV_PREFIX + "KAFKA_USERNAME": "bridge",
        ENV_PREFIX + "KAFKA_PASSWORD_FILE": str(password),
    }
    args = build_parser().parse_args(["bridge", "b.toml", "--kafka-username", "flagged"])
    options = cli._secured(args, env)
    assert (options.security_protocol, options.sasl_mechanism) == ("SASL_PLAINTEXT", "PLAIN")
    assert (options.sasl_username, options.sasl_password) == ("flagged", "secret")
    with pytest.raises(InvalidSettings, match="SASL_PLAINTEXT needs sasl_mechanism"):
        cli._secured(args, {k: v for k, v in env.items() if "MECHANISM" not in k})


def test_a_bridge_at_an_unknown_log_level_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "b.toml"
    config.write_text('[[inbound]]\nname = "b"\ntopics = ["t"]\nroom = "r"\nevent = "e"\n')
    run = _cli("bridge", str(config), "--log-level", "loud")
    assert (run.returncode, run.stdout) == (1, "")
    assert run.stderr.startswith("socketio-kafka: log_level must be one of"), run.stderr


@pytest.mark.usefixtures("nothing_starts")
@pytest.mark.parametrize("nodes", ["1", "0"])
def test_a_demo_of_fewer_than_two_nodes_is_refused_before_it_starts(
    nodes: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """One node left the client nowhere to recover on: an IndexError's traceback."""
    assert cli.main(["demo", "--nodes", nodes, "--kafka", "kafka://127.0.0.1:1"]) == 1
    assert capsys.readouterr().err == (
        f"socketio-kafka: --nodes must be >= 2 (one to recover on), not {nodes}\n"
    )


def test_the_command_without_the_gateway_extra_says_what_to_install() -> None:
    """Installed with the adapter alone, it ended in a ModuleNotFoundError traceback."""
    script = (
        "import sys; sys.modules['uvicorn'] = None\n"  # as if not installed
        "from socketio_kafka.gateway.cli import main\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr == (
        "socketio-kafka: the gateway's dependencies are not installed (uvicorn is missing):"
        " pip install 'socketio-kafka[gateway]'\n"
    )
