"""A throwaway certificate authority and broker certificate for the local Kafka's TLS listener.

Made once per data dir, so a client that trusts ``ca.pem`` keeps trusting a restarted broker.
Nothing here is for production: the keys are unencrypted files next to the broker's data.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ._process import write_private

__all__ = ["TlsFiles", "ensure_tls"]

_VALIDITY = datetime.timedelta(days=825)


@dataclass(frozen=True)
class TlsFiles:
    """Where the PEM files are: what clients trust, and what the broker presents."""

    ca: Path
    broker_chain: Path
    broker_key: Path


def ensure_tls(directory: Path) -> TlsFiles:
    """The CA and broker files in ``directory``, generated on first use."""
    files = TlsFiles(
        directory / "ca.pem", directory / "broker-chain.pem", directory / "broker-key.pem"
    )
    made = files.ca.exists() and files.broker_chain.exists() and files.broker_key.exists()
    if made and _identified(files.broker_chain):
        return files
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "socketio-kafka local CA")])
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    broker_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        _builder(broker_name, ca_name, key.public_key(), now)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    write_private(
        files.broker_key,
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    write_private(files.broker_chain, cert.public_bytes(pem) + ca_cert.public_bytes(pem))
    write_private(files.ca, ca_cert.public_bytes(pem))  # last: its presence marks a complete set
    return files


def _identified(chain: Path) -> bool:
    """Whether the broker's certificate names its issuer's key: Python 3.13's default TLS
    context (``VERIFY_X509_STRICT``) refuses one that does not, as this module made them
    before; such a set is made again."""
    broker = x509.load_pem_x509_certificate(chain.read_bytes())
    try:
        broker.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    except x509.ExtensionNotFound:
        return False
    return True


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    now: datetime.datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
    )
