"""Pure certificate keeping for the admission webhook: a small CA and one serving certificate.

The operator signs its webhook's serving certificate with a CA of its own, kept in a Secret, so
the API server can be told what to trust (the webhook configuration's ``caBundle``) without
cert-manager.  Everything here is a function of PEM bytes and a ``now`` passed in: no clock, no
files, no API.  ``certkeeping`` reads and writes the Secret, the files and the configuration.

The CA outlives many serving certificates (10 years against 1), so a renewal of the serving
certificate never changes the ``caBundle``; only a CA rotation does, and then the old CA stays
trusted beside the new one until it expires (``trusted_cas``), because replicas that have not
reloaded yet still serve a certificate it signed.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
# Issued certificates start this long before ``now``: an API server whose clock runs a little
# behind the operator's must not see a certificate that is not valid yet.
BACKDATE = timedelta(hours=1)
SERVING_NAME = "asgi-operator-webhook"
SECRET_KEYS = ("ca.crt", "ca.key", "tls.crt", "tls.key")


@dataclass(frozen=True)
class Bundle:
    """What the Secret holds, all PEM: the CA and the serving certificate it signed."""

    ca_cert: bytes
    ca_key: bytes
    cert: bytes
    key: bytes


def _new_key() -> ec.EllipticCurvePrivateKey:
    # P-256: every TLS stack the API server and the tests use speaks it, and keys are quick to
    # make, so a replica that loses a race has wasted almost nothing.
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def new_ca(now: datetime, days: int) -> tuple[bytes, bytes]:
    """A self-signed CA valid ``days`` from ``now``: (certificate, key) as PEM.

    The name carries the issue time, as Kubernetes' own self-signed CAs do
    (``<name>-ca@<unix time>``), so an old and a new CA in one ``caBundle`` have distinct
    subjects and no chain builder mistakes one for the other.
    """
    key = _new_key()
    name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"asgi-operator-ca@{int(now.timestamp())}")]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _cert_pem(cert), _key_pem(key)


def sign_serving(
    ca_cert: bytes,
    ca_key: bytes,
    dns_names: list[str],
    ip_addresses: list[str],
    now: datetime,
    days: int,
) -> tuple[bytes, bytes]:
    """A serving certificate for ``dns_names`` and ``ip_addresses``, signed by the CA.

    Clients check only the SANs (Go has ignored the common name since 1.15), so the common
    name is a fixed label and the names, however long, go into the SANs.  The certificate
    never outlives its CA: a chain with an expired CA fails however long the leaf has left.
    """
    issuer = x509.load_pem_x509_certificate(ca_cert)
    signer = serialization.load_pem_private_key(ca_key, password=None)
    if not isinstance(signer, ec.EllipticCurvePrivateKey):
        raise TypeError("the CA key is not an ECDSA key")
    key = _new_key()
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVING_NAME)]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + timedelta(days=days), issuer.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
            critical=False,
        )
        .sign(signer, hashes.SHA256())
    )
    return _cert_pem(cert), _key_pem(key)


def not_after(cert_pem: bytes) -> datetime:
    """When the (first) certificate in ``cert_pem`` expires, in UTC."""
    return x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc


def serial(cert_pem: bytes) -> int:
    return x509.load_pem_x509_certificate(cert_pem).serial_number


def _pair(cert_pem: bytes, key_pem: bytes) -> x509.Certificate | None:
    """The certificate if it parses and ``key_pem`` is its private key, else None."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        return None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, public) != cert.public_key().public_bytes(der, public):
        return None
    return cert


def _usable_ca(bundle: Bundle, now: datetime, cert_days: int) -> x509.Certificate | None:
    """The bundle's CA, unless it is unreadable, not a CA, or expires within ``cert_days``.

    Rotating it a whole serving lifetime early means every serving certificate it signs
    can be issued for the full ``cert_days``.
    """
    ca = _pair(bundle.ca_cert, bundle.ca_key)
    if ca is None:
        return None
    try:
        is_ca = ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return None
    if not is_ca or ca.not_valid_after_utc - now < timedelta(days=cert_days):
        return None
    return ca


def _covers(cert: x509.Certificate, dns_names: list[str], ip_addresses: list[str]) -> bool:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    names = {name.lower() for name in sans.get_values_for_type(x509.DNSName)}
    ips = set(sans.get_values_for_type(x509.IPAddress))
    return {name.lower() for name in dns_names} <= names and {
        ipaddress.ip_address(ip) for ip in ip_addresses
    } <= ips


def _usable_leaf(
    bundle: Bundle,
    ca: x509.Certificate,
    dns_names: list[str],
    ip_addresses: list[str],
    now: datetime,
    cert_days: int,
) -> bool:
    """Whether the serving certificate can stay: readable, the CA's, fresh, for every name.

    Renewing with a third of the lifetime left leaves two thirds of it to retry in, whatever
    goes wrong (the API server down, the operator not running) before it expires.
    """
    leaf = _pair(bundle.cert, bundle.key)
    if leaf is None:
        return False
    try:
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    if leaf.not_valid_after_utc - now < timedelta(days=cert_days) / 3:
        return False
    return _covers(leaf, dns_names, ip_addresses)


def renew(
    bundle: Bundle | None,
    dns_names: list[str],
    ip_addresses: list[str],
    now: datetime,
    cert_days: int,
    ca_days: int = CA_DAYS,
) -> Bundle | None:
    """The bundle to store instead of ``bundle``, or None to keep ``bundle`` as it is.

    A new CA when there is none, it is unreadable, or it has less than ``cert_days`` left; a
    new serving certificate when there is none, it is unreadable, another CA signed it, it has
    less than a third of ``cert_days`` left, or it lacks one of the names.  A new CA always
    means a new serving certificate.  A kept CA is returned byte for byte.
    """
    if ca_days <= cert_days:
        # A fresh CA would already count as expiring: every call would rotate it.
        raise ValueError(f"the CA must outlive the serving certificate ({ca_days} <= {cert_days})")
    ca = _usable_ca(bundle, now, cert_days) if bundle is not None else None
    if bundle is not None and ca is not None:
        if _usable_leaf(bundle, ca, dns_names, ip_addresses, now, cert_days):
            return None
        ca_cert, ca_key = bundle.ca_cert, bundle.ca_key
    else:
        ca_cert, ca_key = new_ca(now, ca_days)
    cert, key = sign_serving(ca_cert, ca_key, dns_names, ip_addresses, now, cert_days)
    return Bundle(ca_cert=ca_cert, ca_key=ca_key, cert=cert, key=key)


def _certificates(pem: bytes | None) -> list[x509.Certificate]:
    """Every certificate in ``pem``; none when it is empty or does not parse."""
    if not pem or not pem.strip():
        return []
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError:
        return []


def trusted_cas(bundle: Bundle, previous_ca_bundle: bytes | None, now: datetime) -> bytes:
    """The ``caBundle`` for the webhook configuration: the bundle's CA, then the old ones.

    The old ones are the certificates of ``previous_ca_bundle`` (what the configuration
    trusts now) that have not expired: during a CA rotation the replicas that still serve a
    certificate from the old CA must stay trusted until they reload.  Expired ones are dropped,
    so the list does not grow; duplicates are dropped, so the same input gives the same bytes.
    An unreadable ``previous_ca_bundle`` counts as empty.
    """
    current = x509.load_pem_x509_certificate(bundle.ca_cert)
    kept = [current]
    seen = {current.fingerprint(hashes.SHA256())}
    for cert in _certificates(previous_ca_bundle):
        fingerprint = cert.fingerprint(hashes.SHA256())
        if fingerprint in seen or cert.not_valid_after_utc <= now:
            continue
        seen.add(fingerprint)
        kept.append(cert)
    return b"".join(_cert_pem(cert) for cert in kept)


def to_secret_data(bundle: Bundle) -> dict[str, str]:
    """The Secret's ``data``: base64 of each PEM under ca.crt, ca.key, tls.crt and tls.key.

    tls.crt and tls.key are the names of a ``kubernetes.io/tls`` Secret, so the same Secret
    also serves anything that mounts one.
    """
    values = (bundle.ca_cert, bundle.ca_key, bundle.cert, bundle.key)
    pairs = zip(SECRET_KEYS, values, strict=True)
    return {key: base64.b64encode(value).decode() for key, value in pairs}


def from_secret_data(data: dict[str, str] | None) -> Bundle | None:
    """The bundle in a Secret's ``data``; None when a key is missing or not base64.

    Whether the PEM inside is any good is ``renew``'s question, not this one's.
    """
    if not data:
        return None
    values: list[bytes] = []
    for name in SECRET_KEYS:
        value = data.get(name)
        if not isinstance(value, str):
            return None
        try:
            values.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            return None
    ca_cert, ca_key, cert, key = values
    return Bundle(ca_cert=ca_cert, ca_key=ca_key, cert=cert, key=key)
