"""SASL and TLS settings, from KafkaOptions and from the gateway's flags: without a broker."""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from socketio_kafka.adapter import BrokerUnavailable, ConfigError, KafkaOptions
from socketio_kafka.adapter.security import check_access
from socketio_kafka.gateway import cli
from socketio_kafka.gateway.cli import build_parser, settings_from
from socketio_kafka.gateway.local_tls import TlsFiles, ensure_tls
from socketio_kafka.gateway.settings import ENV_PREFIX, Settings

from .support.cluster import REPO, free_port

SCRAM: dict[str, Any] = {
    "security_protocol": "SASL_SSL",
    "sasl_mechanism": "SCRAM-SHA-512",
    "sasl_username": "app",
    "sasl_password": "s3cret-pw",
}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in os.environ:
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return ensure_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def nothing_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_service(*args: object) -> None:
        raise AssertionError("a service was started for settings that cannot run")

    monkeypatch.setattr(cli, "_service", no_service)


# -- KafkaOptions ----------------------------------------------------------------------


def test_sasl_over_tls_reaches_every_aiokafka_client(tls: TlsFiles) -> None:
    options = KafkaOptions(**SCRAM, ssl_cafile=str(tls.ca))
    kwargs = options.common_kwargs(["b:1"])
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert (kwargs["sasl_mechanism"], kwargs["sasl_plain_username"]) == ("SCRAM-SHA-512", "app")
    assert kwargs["sasl_plain_password"] == "s3cret-pw"
    context = kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert (context.verify_mode, context.check_hostname) == (ssl.CERT_REQUIRED, True)
    assert context.cert_store_stats()["x509_ca"] == 1  # the CA file's, not the system's
    for kind in (options.producer_kwargs(["b:1"]), options.consumer_kwargs(["b:1"])):
        assert kind["ssl_context"] is context


async def test_the_local_ca_passes_strict_verification(tls: TlsFiles) -> None:
    """Python 3.13's default context verifies with ``VERIFY_X509_STRICT``, which refuses a
    certificate that does not name its issuer's key: the local broker's did not, and no
    client on 3.13 could reach it. A TLS handshake as strict as that, on any Python."""
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tls.broker_chain, tls.broker_key)
    client = ssl.create_default_context(cafile=str(tls.ca))
    client.verify_flags |= ssl.VERIFY_X509_STRICT | ssl.VERIFY_X509_PARTIAL_CHAIN

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readexactly(5))
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server)
    port = listener.sockets[0].getsockname()[1]
    try:
        async with asyncio.timeout(10):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
            writer.write(b"hello")
            assert await reader.readexactly(5) == b"hello"
            writer.close()
    finally:
        listener.close()
        await listener.wait_closed()


def test_a_set_made_without_key_identifiers_is_made_again(tmp_path: Path) -> None:
    files = ensure_tls(tmp_path)
    ca = files.ca.read_bytes()
    assert ensure_tls(tmp_path).ca.read_bytes() == ca  # kept while it serves
    old = x509.load_pem_x509_certificate(files.broker_chain.read_bytes())
    builder = (
        x509.CertificateBuilder()
        .subject_name(old.subject)
        .issuer_name(old.issuer)
        .public_key(old.public_key())  # type: ignore[arg-type]
        .serial_number(old.serial_number)
        .not_valid_before(old.not_valid_before_utc)
        .not_valid_after(old.not_valid_after_utc)
    )
    key = ec.generate_private_key(ec.SECP256R1())
    unidentified = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    files.broker_chain.write_bytes(unidentified + ca)
    assert ensure_tls(tmp_path).ca.read_bytes() != ca


def test_an_explicit_ssl_context_wins_over_the_files(tls: TlsFiles) -> None:
    context = ssl.create_default_context()
    options = KafkaOptions(security_protocol="SSL", ssl_context=context, ssl_cafile=str(tls.ca))
    assert options.common_kwargs(["b:1"])["ssl_context"] is context


def test_tls_without_a_ca_file_trusts_the_system_cas() -> None:
    context = KafkaOptions(security_protocol="SSL").common_kwargs(["b:1"])["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED


@pytest.fixture
def encrypted_key(tls: TlsFiles, tmp_path: Path) -> Path:
    """The broker's key again, encrypted with the password ``key-pw``."""
    key = serialization.load_pem_private_key(tls.broker_key.read_bytes(), None)
    encrypted = tmp_path / "key.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"key-pw"),
        )
    )
    return encrypted


def test_a_client_certificate_with_an_encrypted_key(tls: TlsFiles, encrypted_key: Path) -> None:
    files: dict[str, Any] = {
        "ssl_certfile": str(tls.broker_chain),
        "ssl_keyfile": str(encrypted_key),
    }
    KafkaOptions(security_protocol="SSL", **files, ssl_password="key-pw")
    with pytest.raises(ConfigError, match="cannot load TLS files"):
        KafkaOptions(security_protocol="SSL", **files, ssl_password="wrong")


@pytest.mark.timeout(60)
def test_an_encrypted_key_without_its_password_is_one_line_not_a_prompt(
    tls: TlsFiles, encrypted_key: Path
) -> None:
    """OpenSSL asked a terminal for the pass phrase (``serve`` hung at start) or, without
    one, failed as "[Errno 22] Invalid argument". Run in a session of its own: no
    terminal to ask, and a timeout should it wait for one anyway."""
    run = subprocess.run(
        [
            sys.executable, "-m", "socketio_kafka.gateway", "serve", "--port", "0",
            "--kafka", "kafka://127.0.0.1:1", "--kafka-security-protocol", "SSL",
            "--kafka-cert-file", str(tls.broker_chain), "--kafka-key-file", str(encrypted_key),
        ],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        start_new_session=True,
        timeout=30,
        check=False,
    )  # fmt: skip
    assert run.returncode == 1, run.stderr
    assert run.stderr == (
        f"socketio-kafka: ssl_keyfile '{encrypted_key}' is encrypted: give ssl_password"
        " (--kafka-key-password-file)\n"
    )


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"security_protocol": "TLS"}, "security_protocol must be one of PLAINTEXT, SSL, "),
        ({**SCRAM, "sasl_mechanism": None}, "SASL_SSL needs sasl_mechanism, one of PLAIN, "),
        ({**SCRAM, "sasl_mechanism": "GSSAPI"}, "SASL_SSL needs sasl_mechanism"),
        ({**SCRAM, "sasl_username": None}, "SASL_SSL needs sasl_username"),
        ({**SCRAM, "sasl_password": ""}, "SASL_SSL needs sasl_password"),
        # A setting the protocol would ignore is said, not silently dropped.
        ({"sasl_username": "app"}, "sasl_username given, but security_protocol='PLAINTEXT'"),
        (
            {**SCRAM, "security_protocol": "SSL"},
            "sasl_mechanism, sasl_username, sasl_password given, but security_protocol='SSL'",
        ),
        (
            {**SCRAM, "security_protocol": "SASL_PLAINTEXT", "ssl_cafile": "ca.pem"},
            "ssl_cafile given, but security_protocol='SASL_PLAINTEXT' does not use TLS",
        ),
        ({"security_protocol": "SSL", "ssl_keyfile": "k.pem"}, "ssl_keyfile needs ssl_certfile"),
        ({"security_protocol": "SSL", "ssl_password": "pw"}, "ssl_password .* needs ssl_certfile"),
    ],
)
def test_incomplete_or_contradictory_security_is_a_config_error(
    kwargs: dict[str, str | None], error: str
) -> None:
    with pytest.raises(ConfigError, match=error):
        KafkaOptions(**kwargs)  # type: ignore[arg-type]


def test_a_tls_file_that_cannot_be_read_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(ConfigError) as missing_error:
        KafkaOptions(security_protocol="SSL", ssl_cafile=str(missing))
    assert str(missing_error.value) == (
        f"ssl_cafile '{missing}' cannot be read: No such file or directory"
    )
    with pytest.raises(ConfigError, match=f"ssl_certfile '{tmp_path}' cannot be read"):
        KafkaOptions(security_protocol="SSL", ssl_certfile=str(tmp_path))
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=f"cannot load TLS files \\(ssl_cafile='{not_pem}'\\)"):
        KafkaOptions(security_protocol="SSL", ssl_cafile=str(not_pem))


def test_passwords_stay_out_of_repr(tls: TlsFiles) -> None:
    options = KafkaOptions(
        **SCRAM,
        ssl_certfile=str(tls.broker_chain),
        ssl_keyfile=str(tls.broker_key),
        ssl_password="key-pw",
    )
    assert "app" in repr(options)
    assert "s3cret-pw" not in repr(options)
    assert "key-pw" not in repr(options)


# -- the gateway's flags and variables ---------------------------------------------------


def _settings(argv: list[str]) -> Settings:
    return settings_from(build_parser().parse_args(["serve", *argv]))


def test_flags_set_sasl_and_tls_with_secrets_from_files(tls: TlsFiles, tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text("s3cret-pw\n")  # as `echo` writes it: the line end is not the password
    options = _settings(
        [
            "--kafka-security-protocol", "SASL_SSL",
            "--kafka-sasl-mechanism", "SCRAM-SHA-256",
            "--kafka-username", "app",
            "--kafka-password-file", str(password),
            "--kafka-ca-file", str(tls.ca),
        ]
    ).kafka_options  # fmt: skip
    assert (options.security_protocol, options.sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-256")
    assert (options.sasl_username, options.sasl_password) == ("app", "s3cret-pw")
    assert options.ssl_cafile == str(tls.ca)


def test_every_security_setting_from_the_environment(
    tls: TlsFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_password = tmp_path / "key-password"
    key_password.write_text("key-pw")
    key = serialization.load_pem_private_key(tls.broker_key.read_bytes(), None)
    encrypted = tmp_path / "key.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"key-pw"),
        )
    )
    env = {
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "PLAIN",
        "KAFKA_USERNAME": "app",
        "KAFKA_PASSWORD": "s3cret-pw",  # as platforms that inject secrets as variables do
        "KAFKA_CA_FILE": str(tls.ca),
        "KAFKA_CERT_FILE": str(tls.broker_chain),
        "KAFKA_KEY_FILE": str(encrypted),
        "KAFKA_KEY_PASSWORD_FILE": str(key_password),
    }
    for name, value in env.items():
        monkeypatch.setenv(ENV_PREFIX + name, value)
    settings = _settings([])
    options = settings.kafka_options
    assert (options.sasl_mechanism, options.sasl_password) == ("PLAIN", "s3cret-pw")
    assert (options.ssl_keyfile, options.ssl_password) == (str(encrypted), "key-pw")
    assert "s3cret-pw" not in repr(settings)


def test_there_is_no_password_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["serve", "--kafka-password", "s3cret-pw"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "use --kafka-password-file or SOCKETIO_KAFKA_KAFKA_PASSWORD" in err
    assert "s3cret-pw" not in err  # argparse would have echoed an unknown flag's value


@pytest.mark.usefixtures("nothing_starts")
def test_a_password_file_that_cannot_be_read_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "password"
    argv = ["serve", "--kafka", "kafka://127.0.0.1:1", "--kafka-security-protocol", "SASL_SSL"]
    argv += ["--kafka-sasl-mechanism", "PLAIN", "--kafka-username", "app"]
    assert cli.main([*argv, "--kafka-password-file", str(missing)]) == 1
    assert capsys.readouterr().err == (
        f"socketio-kafka: kafka_password_file '{missing}' cannot be read:"
        " No such file or directory\n"
    )
    missing.write_text("\n")
    assert cli.main([*argv, "--kafka-password-file", str(missing)]) == 1
    assert capsys.readouterr().err == f"socketio-kafka: kafka_password_file '{missing}' is empty\n"


@pytest.mark.usefixtures("nothing_starts")
def test_a_password_from_both_a_file_and_the_environment_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    password = tmp_path / "password"
    password.write_text("one")
    monkeypatch.setenv(ENV_PREFIX + "KAFKA_PASSWORD", "other")
    assert cli.main(["serve", "--kafka-password-file", str(password)]) == 1
    assert capsys.readouterr().err == (
        "socketio-kafka: both SOCKETIO_KAFKA_KAFKA_PASSWORD and kafka_password_file are set:"
        " give one\n"
    )


@pytest.mark.usefixtures("nothing_starts")
def test_a_missing_ca_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "ca.pem"
    argv = ["serve", "--kafka-security-protocol", "SSL", "--kafka-ca-file", str(missing)]
    assert cli.main(argv) == 1
    assert capsys.readouterr().err == (
        f"socketio-kafka: ssl_cafile '{missing}' cannot be read: No such file or directory\n"
    )


# -- what a secured manager checks first --------------------------------------------------


async def test_a_secured_kafka_that_does_not_answer_is_an_outage_not_a_refusal(
    tls: TlsFiles,
) -> None:
    options = KafkaOptions(**SCRAM, ssl_cafile=str(tls.ca))
    # Retriable: the manager keeps retrying, as for a plaintext broker that is down.
    with pytest.raises(BrokerUnavailable, match="no bootstrap server answered"):
        await check_access([f"127.0.0.1:{free_port()}"], options)


@pytest.mark.kafka
@pytest.mark.parametrize("closes", [True, False], ids=["closes", "stalls"])
async def test_a_server_that_fails_its_first_request_is_passed_for_the_next(
    kafka_bootstrap: str, closes: bool
) -> None:
    """A broker going down, or a proxy, that answers ApiVersions, then closes at the next
    request or never answers it: a plain node took the first for a SASL listener and
    stopped for good, the healthy broker after it in the list untried; the second's
    TimeoutError escaped the check."""
    stalled = asyncio.Event()

    async def failing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = kafka_bootstrap.rsplit(":", 1)
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        await _relay_one(reader, upstream_writer)  # ApiVersions, and its answer
        await _relay_one(upstream_reader, writer)
        await reader.readexactly(4)
        if not closes:
            await stalled.wait()
        writer.close()
        upstream_writer.close()

    server = await asyncio.start_server(failing, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await asyncio.wait_for(check_access([f"127.0.0.1:{port}", kafka_bootstrap], _PLAIN), 15)
    finally:
        stalled.set()
        server.close()


_PLAIN = KafkaOptions(request_timeout_ms=3000)


async def _relay_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One Kafka frame: its 4-byte size, then its body."""
    head = await reader.readexactly(4)
    writer.write(head + await reader.readexactly(int.from_bytes(head, "big", signed=True)))
    await writer.drain()
