"""Tokens, keys and room decisions, without a broker (tests/test_auth_gateway.py: on Kafka)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from socketio_kafka.gateway.auth import Refusal, TokenVerifier, token_from, user_room
from socketio_kafka.gateway.cli import build_parser, settings_from
from socketio_kafka.gateway.errors import InvalidSettings, TokenRefused
from socketio_kafka.gateway.permissions import Permissions, default_authorize
from socketio_kafka.gateway.settings import Settings

SECRET = "a-test-secret-" + "x" * 50  # 64 bytes: long enough for HS512 too


def _mint(key: Any = SECRET, algorithm: str = "HS256", **claims: Any) -> str:
    payload = {"sub": "alice", "exp": time.time() + 60} | claims
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, key, algorithm)


def _reason(verifier: TokenVerifier, token: object) -> str:
    with pytest.raises(TokenRefused) as refused:
        verifier.verify(token)
    return refused.value.reason


def _ec_pem() -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, pem


def test_every_refusal_has_its_reason() -> None:
    verifier = TokenVerifier.for_secret(SECRET, audience="chat", issuer="auth.example")
    good = {"aud": "chat", "iss": "auth.example"}
    assert verifier.verify(_mint(**good)).subject == "alice"
    cases = {
        Refusal.NO_TOKEN: None,
        Refusal.MALFORMED_TOKEN: "not.a.token",
        Refusal.BAD_SIGNATURE: _mint("another-" + SECRET, **good),
        Refusal.ALGORITHM_NOT_ALLOWED: _mint(SECRET, "HS512", **good),
        Refusal.TOKEN_EXPIRED: _mint(exp=time.time() - 5, **good),
        Refusal.TOKEN_NOT_YET_VALID: _mint(nbf=time.time() + 60, **good),
        Refusal.WRONG_AUDIENCE: _mint(aud="billing", iss="auth.example"),
        Refusal.WRONG_ISSUER: _mint(aud="chat", iss="evil.example"),
        Refusal.INVALID_CLAIMS: _mint(sub=None, **good),
    }
    for reason, token in cases.items():
        assert _reason(verifier, token) == reason, reason
    assert _reason(verifier, 42) == Refusal.MALFORMED_TOKEN
    assert _reason(verifier, _mint(rooms="chat:*", **good)) == Refusal.INVALID_CLAIMS
    assert _reason(verifier, _mint(aud="chat")) == Refusal.WRONG_ISSUER  # missing
    assert str(TokenRefused(Refusal.TOKEN_EXPIRED)) == "token expired"


def test_a_token_for_an_audience_is_refused_where_none_is_configured() -> None:
    assert _reason(TokenVerifier.for_secret(SECRET), _mint(aud="chat")) == Refusal.WRONG_AUDIENCE


def test_leeway_forgives_clock_skew() -> None:
    token = _mint(exp=time.time() - 2)
    assert TokenVerifier.for_secret(SECRET, leeway=30).verify(token).subject == "alice"


def test_an_exp_written_as_a_string_is_the_sockets_expiry_as_it_is_the_tokens() -> None:
    """PyJWT takes ``"exp": "1767225600"`` for a number: such a token was refused once
    expired, yet a socket connected with it had no expiry and stayed on for good."""
    exp = int(time.time()) + 60
    verifier = TokenVerifier.for_secret(SECRET)
    assert verifier.verify(_mint(exp=str(exp))).expires == exp
    assert verifier.verify(_mint(exp=exp + 0.5)).expires == exp + 0.5
    assert verifier.verify(_mint(exp=None)).expires is None  # no exp: it never expires


def test_an_unsigned_token_or_the_public_key_as_an_hmac_secret_is_refused() -> None:
    private, pem = _ec_pem()
    verifier = TokenVerifier.for_public_key(pem)
    assert verifier.algorithms == ("ES256",)
    assert verifier.verify(_mint(private, "ES256")).subject == "alice"
    unsigned = jwt.encode({"sub": "mallory"}, "", "none")
    assert _reason(verifier, unsigned) == Refusal.ALGORITHM_NOT_ALLOWED
    # Algorithm confusion: an HS256 "signature" made with the (public) key as the secret.
    head = _b64({"alg": "HS256", "typ": "JWT"}) + "." + _b64({"sub": "mallory"})
    mac = hmac.new(pem, head.encode(), hashlib.sha256).digest()
    forged = head + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    assert _reason(verifier, forged) == Refusal.ALGORITHM_NOT_ALLOWED


def _b64(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


def test_keys_accept_only_their_own_algorithms() -> None:
    _, pem = _ec_pem()
    with pytest.raises(InvalidSettings, match="HS256 cannot be verified"):
        TokenVerifier.for_public_key(pem, ["HS256"])
    with pytest.raises(InvalidSettings, match="none cannot be verified"):
        TokenVerifier.for_secret(SECRET, ["none"])
    with pytest.raises(InvalidSettings, match="RS256 cannot be verified"):
        TokenVerifier.for_secret(SECRET, ["RS256"])
    with pytest.raises(InvalidSettings, match="at least 32 bytes"):
        TokenVerifier.for_secret("short")
    with pytest.raises(InvalidSettings, match="not a PEM public key"):
        TokenVerifier.for_public_key(b"-----BEGIN PRIVATE KEY-----\n")
    rsa_pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert TokenVerifier.for_public_key(rsa_pem, ["RS256", "PS256"]).algorithms == (
        "RS256",
        "PS256",
    )


def test_serve_flags_and_variables_build_the_verifier(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    args = build_parser().parse_args(
        ["serve", "--jwt-secret-file", str(secret_file), "--jwt-audience", "chat"]
    )
    verifier = settings_from(args, {"SOCKETIO_KAFKA_JWT_LEEWAY": "5"}).token_verifier
    assert verifier is not None
    assert (verifier.audience, verifier.leeway) == ("chat", 5.0)
    assert verifier.verify(_mint(aud="chat")).subject == "alice"
    from_env = settings_from(
        build_parser().parse_args(["serve"]), {"SOCKETIO_KAFKA_JWT_SECRET": SECRET}
    )
    assert from_env.token_verifier is not None
    assert SECRET not in repr(from_env)
    assert Settings().token_verifier is None


@pytest.mark.parametrize(
    ("given", "error"),
    [
        ({"jwt_secret": SECRET, "jwt_public_key": "k.pem"}, "give one JWT key"),
        ({"authorize": "app:decide"}, "need a JWT key"),
        ({"jwt_secret": ""}, "at least 32 bytes"),  # set but empty: never open by accident
        ({"jwt_secret": SECRET, "jwt_leeway": -1.0}, "jwt_leeway"),
        ({"jwt_public_key": "/nonexistent.pem"}, "cannot be read"),
    ],
)
def test_settings_refuse_a_key_that_cannot_work(given: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        Settings(**given)


def test_token_from_auth_or_bearer_header() -> None:
    assert token_from({"token": "t1"}, {"HTTP_AUTHORIZATION": "Bearer t2"}) == "t1"
    assert token_from({"pid": "p"}, {"HTTP_AUTHORIZATION": "bearer t2"}) == "t2"
    assert token_from(None, {"HTTP_AUTHORIZATION": "Basic dTpw"}) is None


def test_default_decision_matches_patterns_and_the_own_room() -> None:
    claims = {"sub": "alice", "rooms": ["chat:*", "team-?"], "publish": ["chat:general"]}
    assert default_authorize(claims, "chat:random", "join")
    assert default_authorize(claims, "team-a", "join")
    assert default_authorize(claims, user_room("alice"), "join")
    assert not default_authorize(claims, user_room("bob"), "join")
    assert not default_authorize(claims, "Chat:random", "join")  # case counts
    assert default_authorize(claims, "chat:general", "publish")
    assert not default_authorize(claims, "chat:random", "publish")
    assert not default_authorize({"sub": "bob"}, "chat:general", "join")


async def test_a_hook_that_raises_or_answers_vaguely_refuses() -> None:
    claims = TokenVerifier.for_secret(SECRET).verify(_mint())

    def broken(_: Mapping[str, Any], room: str, action: str) -> bool:
        raise RuntimeError("database down")

    async def vague(_: Mapping[str, Any], room: str, action: str) -> Any:
        return "yes"

    async def sure(_: Mapping[str, Any], room: str, action: str) -> bool:
        return True

    assert not await Permissions(broken).allows(claims, "r", "join")
    assert not await Permissions(vague).allows(claims, "r", "join")
    assert await Permissions(sure).allows(claims, "r", "publish")
