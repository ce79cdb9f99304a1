"""The force's statement signing certificate, PAdES signing and validation (pyHanko).

A force configures its own certificate (``statement_cert``: the signing certificate
followed by any intermediates, PEM; ``statement_key``: its private key, PEM, with
``statement_key_password`` when encrypted; ``statement_trust_roots``: the root(s) a
signature must chain to). When none is configured, a self-signed CA and a signing
certificate it issued are generated at first start under ``DATA/keys/`` (the CA's
private key is discarded once it has issued the signing certificate: nothing more can
be issued from it). Verification trusts only ``statement_trust_roots`` (by default
that generated CA), never the certificates a PDF carries.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from asn1crypto import keys as asn1_keys
from asn1crypto import pem as asn1_pem
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign import fields, signers
from pyhanko.sign.validation import async_validate_pdf_signature
from pyhanko.sign.validation.settings import KeyUsageConstraints
from pyhanko.sign.validation.status import SignatureCoverageLevel
from pyhanko_certvalidator import ValidationContext
from pyhanko_certvalidator.registry import SimpleCertificateStore

from evr.config import Settings
from evr.keys import write_private

CA_FILE = "keys/statement-ca.pem"
CERT_FILE = "keys/statement-signing-cert.pem"
KEY_FILE = "keys/statement-signing-key.pem"
FIELD_NAME = "EVRStatementSeal"
#: Document signing (RFC 9336); also what the generated certificate carries.
DOCUMENT_SIGNING = "1.3.6.1.5.5.7.3.36"


class SigningSetupError(Exception):
    """The configured certificate, key or trust roots cannot be used."""


@dataclass(frozen=True)
class Identity:
    signer: signers.SimpleSigner
    certificate: asn1_x509.Certificate
    trust_roots: tuple[asn1_x509.Certificate, ...]

    @property
    def subject(self) -> str:
        return self.certificate.subject.human_friendly


def _pem_certs(data: bytes) -> list[asn1_x509.Certificate]:
    if not asn1_pem.detect(data):
        return [asn1_x509.Certificate.load(data)]
    return [asn1_x509.Certificate.load(der) for kind, _, der in asn1_pem.unarmor(data, multiple=True)
            if kind == "CERTIFICATE"]


def load_certs(paths: Iterable[Path]) -> list[asn1_x509.Certificate]:
    certs: list[asn1_x509.Certificate] = []
    for path in paths:
        try:
            found = _pem_certs(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise SigningSetupError(f"{path}: {exc}") from None
        if not found:
            raise SigningSetupError(f"{path} holds no certificate")
        certs.extend(found)
    return certs


def trust_root_paths(settings: Settings) -> list[Path]:
    configured = [Path(p.strip()) for p in settings.statement_trust_roots.split(",") if p.strip()]
    return configured or [settings.data_dir / CA_FILE]


def trust_roots(settings: Settings) -> list[asn1_x509.Certificate]:
    return load_certs(trust_root_paths(settings))


def load_identity(settings: Settings, create: bool = True) -> Identity:
    """The signer and the roots it chains to; generated at first use when none is configured."""
    if bool(settings.statement_cert) != bool(settings.statement_key):
        raise SigningSetupError("set both statement_cert and statement_key (or neither)")
    if settings.statement_cert:
        cert_path, key_path = Path(settings.statement_cert), Path(settings.statement_key)
        password = settings.statement_key_password.encode() or None
        if not settings.statement_trust_roots:
            raise SigningSetupError("statement_trust_roots must name the root(s) of the configured statement_cert")
    else:
        cert_path, key_path = settings.data_dir / CERT_FILE, settings.data_dir / KEY_FILE
        password = None
        if not cert_path.exists():
            if not create:
                raise SigningSetupError(f"no statement signing certificate at {cert_path}")
            generate(settings.data_dir, settings.force_name)
    chain = load_certs([cert_path])
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=password)
    except (OSError, ValueError, TypeError) as exc:
        raise SigningSetupError(f"statement key {key_path}: {exc}") from None
    key_info = asn1_keys.PrivateKeyInfo.load(key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    certificate = chain[0]
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*spki) != certificate.public_key.dump():
        raise SigningSetupError(f"statement key {key_path} does not belong to the certificate in {cert_path}")
    roots = trust_roots(settings)
    signer = signers.SimpleSigner(
        signing_cert=certificate, signing_key=key_info,
        cert_registry=SimpleCertificateStore.from_certs(chain[1:] + roots),
    )
    return Identity(signer, certificate, tuple(roots))


def _key_usage(*allowed: str) -> x509.KeyUsage:
    names = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
             "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
    return x509.KeyUsage(**{name: name in allowed for name in names})


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, now: dt.datetime,
             years: int) -> x509.CertificateBuilder:
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=365 * years)))


def generate(data_dir: Path, force_name: str, now: Optional[dt.datetime] = None) -> None:
    """A self-signed CA (its key thrown away) and a P-256 signing certificate it issues."""
    now = now or dt.datetime.now(dt.timezone.utc)
    org = force_name or "EVR"
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                         x509.NameAttribute(NameOID.COMMON_NAME, f"{org} EVR statement root (self-signed)")])
    ca = (
        _builder(ca_name, ca_name, ca_key.public_key(), now, years=20)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage("key_cert_sign", "crl_sign"), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"{org} EVR statement sealing")])
    cert = (
        _builder(name, ca_name, key.public_key(), now, years=10)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage("digital_signature", "content_commitment"), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.ObjectIdentifier(DOCUMENT_SIGNING),
                                              ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    keys = data_dir / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    (data_dir / KEY_FILE).unlink(missing_ok=True)  # left by a generation torn before its certificate
    write_private(data_dir / KEY_FILE, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    pem = serialization.Encoding.PEM
    (data_dir / CA_FILE).write_bytes(ca.public_bytes(pem))
    # The certificate last: its presence means the set is complete.
    tmp = data_dir / (CERT_FILE + ".tmp")
    tmp.write_bytes(cert.public_bytes(pem) + ca.public_bytes(pem))
    os.replace(tmp, data_dir / CERT_FILE)


async def seal(pdf: bytes, identity: Identity, *, reason: str, location: str, name: str) -> bytes:
    """The PDF signed as PAdES (B-B, SHA-256) by the force's certificate, covering every byte."""
    meta = signers.PdfSignatureMetadata(
        field_name=FIELD_NAME, md_algorithm="sha256", subfilter=fields.SigSeedSubFilter.PADES,
        reason=reason, location=location, name=name, certify=True,
        docmdp_permissions=fields.MDPPerm.NO_CHANGES,
    )
    writer = IncrementalPdfFileWriter(io.BytesIO(pdf))
    out = await signers.async_sign_pdf(writer, meta, signer=identity.signer, output=io.BytesIO())
    return out.getvalue()


@dataclass(frozen=True)
class Validation:
    ok: bool
    #: What failed, or a summary of what was checked.
    message: str
    signer: str = ""
    signed_at: Optional[dt.datetime] = None
    sha256: str = ""


async def validate(pdf: bytes, roots: Iterable[asn1_x509.Certificate]) -> Validation:
    """Check the PDF's one signature: intact, made by a certificate that chains to one of
    ``roots``, and covering the whole file (nothing added or changed after signing)."""
    digest = hashlib.sha256(pdf).hexdigest()
    try:
        reader = PdfFileReader(io.BytesIO(pdf), strict=False)
        signatures = reader.embedded_signatures
    except Exception as exc:  # noqa: BLE001 - pyHanko raises many kinds on a damaged file
        return Validation(False, f"not a readable PDF ({type(exc).__name__}: {exc})", sha256=digest)
    if len(signatures) != 1:
        return Validation(False, f"expected exactly one signature, found {len(signatures)}", sha256=digest)
    context = ValidationContext(trust_roots=list(roots), allow_fetching=False)
    try:
        status = await async_validate_pdf_signature(
            signatures[0], signer_validation_context=context,
            key_usage_settings=KeyUsageConstraints(key_usage={"non_repudiation"}, match_all_key_usages=False),
        )
    except Exception as exc:  # noqa: BLE001
        return Validation(False, f"the signature cannot be checked ({type(exc).__name__}: {exc})", sha256=digest)
    signer = status.signing_cert.subject.human_friendly if status.signing_cert else ""
    when = status.signer_reported_dt
    if not status.intact:
        return Validation(False, "the document was changed after it was signed (its digest does not match)",
                          signer, when, digest)
    if not status.valid:
        return Validation(False, "the signature itself is invalid", signer, when, digest)
    if not status.trusted:
        return Validation(False, f"the signing certificate ({signer}) does not chain to a trusted root",
                          signer, when, digest)
    if status.coverage != SignatureCoverageLevel.ENTIRE_FILE:
        return Validation(False, "bytes were added to the file after it was signed", signer, when, digest)
    return Validation(True, "signature intact, trusted and covering the whole file", signer, when, digest)
