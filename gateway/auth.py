"""JSON Web Tokens: who a client is, checked with PyJWT before it is served.

A token is signed with a shared secret (HS256/384/512) or a private key whose public half
the gateway holds (RS*, PS*, ES*, EdDSA). The algorithms a node accepts follow from its key:
never ``none``, and never an HMAC algorithm with a public key (algorithm confusion: the
public key is no secret, so a token "signed" with it as an HMAC secret proves nothing).

Example::

    verifier = TokenVerifier.for_secret(secret, audience="chat")
    claims = verifier.verify(token)  # or TokenRefused, whose reason says why
    claims.subject, claims.expires
"""

from __future__ import annotations

import enum
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from .errors import InvalidSettings, TokenRefused

__all__ = ["Claims", "Refusal", "TokenVerifier", "token_from", "user_room"]

#: Secret bytes per HMAC algorithm (RFC 7518 3.2: at least the hash's size).
_HMAC = {"HS256": 32, "HS384": 48, "HS512": 64}
_RSA = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_CURVES = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512", "secp256k1": "ES256K"}
_BEARER = "bearer "


class Refusal(enum.StrEnum):
    """Why a token was refused: the metric's label; its words (``token expired``) go to
    the client, as `TokenRefused`'s message."""

    NO_TOKEN = "no_token"
    MALFORMED_TOKEN = "malformed_token"
    BAD_SIGNATURE = "bad_signature"
    ALGORITHM_NOT_ALLOWED = "algorithm_not_allowed"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_NOT_YET_VALID = "token_not_yet_valid"
    WRONG_AUDIENCE = "wrong_audience"
    WRONG_ISSUER = "wrong_issuer"
    INVALID_CLAIMS = "invalid_claims"


@dataclass(frozen=True, slots=True)
class Claims:
    """A verified token's claims; ``raw`` is what an ``--authorize`` hook is given."""

    subject: str
    #: The ``exp`` claim (seconds since the epoch), or None: the token does not expire.
    expires: float | None
    raw: Mapping[str, Any]


def user_room(subject: str) -> str:
    """The room every socket of ``subject`` joins on connect, for messages to that user."""
    return f"user:{subject}"


def token_from(auth: Any, environ: Mapping[str, Any]) -> object:
    """The token of a CONNECT: ``{"token": ...}`` in its auth, else the ``Authorization:
    Bearer`` header of its HTTP request (for clients that can set one); None if neither."""
    if isinstance(auth, dict) and "token" in auth:
        return auth["token"]
    header = environ.get("HTTP_AUTHORIZATION")
    if isinstance(header, str) and header[: len(_BEARER)].lower() == _BEARER:
        return header[len(_BEARER) :].strip()
    return None


class TokenVerifier:
    """Verifies tokens against one key; build it with `for_secret` or `for_public_key`."""

    def __init__(
        self,
        key: Any,
        algorithms: Sequence[str],
        *,
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float = 0.0,
    ) -> None:
        if leeway < 0:
            raise InvalidSettings("jwt_leeway must be >= 0")
        self._key = key
        self.algorithms = tuple(algorithms)
        self.audience = audience
        self.issuer = issuer
        #: Seconds of clock skew forgiven on ``exp``/``nbf``/``iat``; a socket is cut at
        #: ``exp`` plus this, as its token stays valid until then.
        self.leeway = leeway

    @classmethod
    def for_secret(
        cls, secret: str, algorithms: Sequence[str] | None = None, **checks: Any
    ) -> TokenVerifier:
        """HMAC tokens (default HS256); the secret must be as long as the hash (RFC 7518)."""
        chosen = _chosen(algorithms, ("HS256",), tuple(_HMAC), "a secret")
        need = max(_HMAC[a] for a in chosen)
        if len(secret.encode()) < need:
            raise InvalidSettings(f"the JWT secret must be at least {need} bytes for {chosen}")
        return cls(secret.encode(), chosen, **checks)

    @classmethod
    def for_public_key(
        cls, pem: bytes, algorithms: Sequence[str] | None = None, **checks: Any
    ) -> TokenVerifier:
        """Tokens signed with the private half of a PEM public key (or certificate)."""
        key = _public_key(pem)
        if isinstance(key, rsa.RSAPublicKey):
            usable: tuple[str, ...] = _RSA
        elif isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _CURVES:
            usable = (_CURVES[key.curve.name],)
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            usable = ("EdDSA",)
        else:
            raise InvalidSettings("the JWT public key is not an RSA, EC or Ed25519/448 key")
        return cls(key, _chosen(algorithms, usable[:1], usable, "this public key"), **checks)

    def verify(self, token: object) -> Claims:
        """The token's claims, checked; raises `TokenRefused` with the reason otherwise."""
        if token is None or token == "":
            raise TokenRefused(Refusal.NO_TOKEN)
        if not isinstance(token, str):
            raise TokenRefused(Refusal.MALFORMED_TOKEN)
        try:
            raw = jwt.decode(
                token,
                self._key,
                algorithms=list(self.algorithms),
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["sub"]},
            )
        except jwt.PyJWTError as exc:
            raise TokenRefused(_reason(exc)) from None
        return _claims(raw)


def _chosen(
    given: Sequence[str] | None, default: tuple[str, ...], usable: tuple[str, ...], key: str
) -> tuple[str, ...]:
    chosen = tuple(given) if given else default
    refused = [a for a in chosen if a not in usable]
    if refused:
        raise InvalidSettings(
            f"JWT algorithm(s) {', '.join(refused)} cannot be verified with {key};"
            f" use {', '.join(usable)}"
        )
    return chosen


def _public_key(pem: bytes) -> Any:
    try:
        if b"-----BEGIN CERTIFICATE-----" in pem:
            return x509.load_pem_x509_certificate(pem).public_key()
        return load_pem_public_key(pem)
    except ValueError:
        raise InvalidSettings("the JWT public key file is not a PEM public key") from None


def _reason(exc: jwt.PyJWTError) -> Refusal:
    # Subclasses before their bases: InvalidSignatureError is a DecodeError, and the
    # claim errors are InvalidTokenErrors.
    if isinstance(exc, jwt.ExpiredSignatureError):
        return Refusal.TOKEN_EXPIRED
    if isinstance(exc, jwt.ImmatureSignatureError):
        return Refusal.TOKEN_NOT_YET_VALID
    if isinstance(exc, jwt.InvalidAudienceError):
        return Refusal.WRONG_AUDIENCE
    if isinstance(exc, jwt.InvalidIssuerError):
        return Refusal.WRONG_ISSUER
    if isinstance(exc, jwt.MissingRequiredClaimError):
        missing = {"aud": Refusal.WRONG_AUDIENCE, "iss": Refusal.WRONG_ISSUER}
        return missing.get(exc.claim, Refusal.INVALID_CLAIMS)
    if isinstance(exc, jwt.InvalidSignatureError):
        return Refusal.BAD_SIGNATURE
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return Refusal.ALGORITHM_NOT_ALLOWED
    if isinstance(exc, jwt.DecodeError):
        return Refusal.MALFORMED_TOKEN
    return Refusal.INVALID_CLAIMS


def _claims(raw: dict[str, Any]) -> Claims:
    subject, expires = raw.get("sub"), raw.get("exp")
    if not isinstance(subject, str) or not subject:
        raise TokenRefused(Refusal.INVALID_CLAIMS)
    for name in ("rooms", "publish"):
        patterns = raw.get(name, [])
        if not (isinstance(patterns, list) and all(isinstance(p, str) for p in patterns)):
            raise TokenRefused(Refusal.INVALID_CLAIMS)
    # PyJWT checked it as ``int(exp)``: a number, or a string of one.
    when = (
        None if expires is None else float(expires if isinstance(expires, float) else int(expires))
    )
    return Claims(subject, when, types.MappingProxyType(raw))
