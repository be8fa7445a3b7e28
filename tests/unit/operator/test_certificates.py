"""The webhook's certificates: real keys and signatures, a fixed ``now``, and a real TLS
handshake (Python's ``ssl``, OpenSSL underneath) to prove the certificates are usable."""

from __future__ import annotations

import base64
import ipaddress
import socket
import ssl
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from asgi_operator.certificates import (
    Bundle,
    from_secret_data,
    new_ca,
    not_after,
    renew,
    serial,
    sign_serving,
    to_secret_data,
    trusted_cas,
)

NOW = datetime(2030, 1, 1, tzinfo=UTC)
DNS = ["webhook.ops.svc", "webhook.ops.svc.cluster.local"]
IPS = ["127.0.0.1"]
DAYS = 365


def bundle_at(now: datetime = NOW, ca_days: int = 3650, cert_days: int = DAYS) -> Bundle:
    ca_cert, ca_key = new_ca(now, ca_days)
    cert, key = sign_serving(ca_cert, ca_key, DNS, IPS, now, cert_days)
    return Bundle(ca_cert=ca_cert, ca_key=ca_key, cert=cert, key=key)


def load(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def same_cert(a: bytes, b: bytes) -> bool:
    return load(a).fingerprint(hashes.SHA256()) == load(b).fingerprint(hashes.SHA256())


def fingerprints(bundle: bytes) -> list[bytes]:
    return [cert.fingerprint(hashes.SHA256()) for cert in x509.load_pem_x509_certificates(bundle)]


# What renew makes


def test_a_new_bundle_is_a_ca_and_a_serving_certificate_for_every_name():
    bundle = renew(None, DNS, IPS, NOW, DAYS)
    assert bundle is not None
    ca, leaf = load(bundle.ca_cert), load(bundle.cert)

    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert ca.not_valid_after_utc == NOW + timedelta(days=3650)

    leaf.verify_directly_issued_by(ca)
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == DNS
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert leaf.not_valid_before_utc <= NOW
    assert leaf.not_valid_after_utc == NOW + timedelta(days=DAYS)
    for cert in (ca, leaf):
        key = cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        assert key.curve.name == "secp256r1"
        assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)


def test_a_serving_certificate_never_outlives_its_ca():
    ca_cert, ca_key = new_ca(NOW, 30)
    cert, _ = sign_serving(ca_cert, ca_key, DNS, IPS, NOW, DAYS)
    assert not_after(cert) == not_after(ca_cert) == NOW + timedelta(days=30)


def test_two_cas_have_distinct_subjects():
    first, _ = new_ca(NOW, 3650)
    second, _ = new_ca(NOW + timedelta(seconds=1), 3650)
    assert load(first).subject != load(second).subject
    assert serial(first) != serial(second)


def test_the_ca_must_outlive_the_serving_certificate():
    with pytest.raises(ValueError, match="outlive"):
        renew(None, DNS, IPS, NOW, cert_days=400, ca_days=365)


# When renew keeps the bundle


@pytest.mark.parametrize("later", [0, 1, 243])
def test_a_healthy_bundle_is_kept(later):
    """Kept until less than a third of the lifetime is left: 122 days left out of 365."""
    assert renew(bundle_at(), DNS, IPS, NOW + timedelta(days=later), DAYS) is None


def test_names_are_covered_case_insensitively_and_extra_names_are_fine():
    bundle = bundle_at()
    assert renew(bundle, [DNS[0].upper()], [], NOW, DAYS) is None


# When renew renews


@pytest.mark.parametrize("later", [244, 364, 366, 3000])
def test_a_serving_certificate_near_or_past_expiry_is_renewed_and_the_ca_kept(later):
    bundle = bundle_at()
    now = NOW + timedelta(days=later)
    renewed = renew(bundle, DNS, IPS, now, DAYS)
    assert renewed is not None
    assert (renewed.ca_cert, renewed.ca_key) == (bundle.ca_cert, bundle.ca_key)
    assert serial(renewed.cert) != serial(bundle.cert)
    assert not_after(renewed.cert) == now + timedelta(days=DAYS)
    load(renewed.cert).verify_directly_issued_by(load(bundle.ca_cert))
    assert renew(renewed, DNS, IPS, now, DAYS) is None


def test_a_ca_near_expiry_is_replaced_and_so_is_the_serving_certificate():
    bundle = bundle_at(ca_days=400)
    now = NOW + timedelta(days=40)  # the CA has 360 days left: less than one serving lifetime
    renewed = renew(bundle, DNS, IPS, now, DAYS)
    assert renewed is not None
    assert not same_cert(renewed.ca_cert, bundle.ca_cert)
    assert not_after(renewed.ca_cert) == now + timedelta(days=3650)
    load(renewed.cert).verify_directly_issued_by(load(renewed.ca_cert))
    assert not_after(renewed.cert) == now + timedelta(days=DAYS)
    assert renew(renewed, DNS, IPS, now, DAYS) is None


def test_a_serving_certificate_from_another_ca_is_replaced():
    bundle = bundle_at()
    foreign = bundle_at()
    mixed = Bundle(bundle.ca_cert, bundle.ca_key, foreign.cert, foreign.key)
    renewed = renew(mixed, DNS, IPS, NOW, DAYS)
    assert renewed is not None
    assert renewed.ca_cert == bundle.ca_cert
    load(renewed.cert).verify_directly_issued_by(load(bundle.ca_cert))


@pytest.mark.parametrize(
    ("dns", "ips"),
    [
        ([*DNS, "webhook.other.svc"], IPS),
        (DNS, [*IPS, "10.0.0.1"]),
        (DNS, ["::1"]),
    ],
    ids=["name", "address", "ipv6"],
)
def test_a_missing_name_or_address_renews_the_serving_certificate(dns, ips):
    bundle = bundle_at()
    renewed = renew(bundle, dns, ips, NOW, DAYS)
    assert renewed is not None
    assert renewed.ca_cert == bundle.ca_cert
    sans = load(renewed.cert).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert sans.value.get_values_for_type(x509.DNSName) == dns
    assert [str(ip) for ip in sans.value.get_values_for_type(x509.IPAddress)] == ips


def test_a_broken_serving_part_renews_only_the_serving_certificate():
    bundle = bundle_at()
    other = bundle_at()
    cases = [
        Bundle(bundle.ca_cert, bundle.ca_key, b"garbage", bundle.key),
        Bundle(bundle.ca_cert, bundle.ca_key, bundle.cert, b"garbage"),
        Bundle(bundle.ca_cert, bundle.ca_key, bundle.cert, other.key),  # not its key
        Bundle(bundle.ca_cert, bundle.ca_key, b"", b""),
    ]
    for broken in cases:
        renewed = renew(broken, DNS, IPS, NOW, DAYS)
        assert renewed is not None
        assert renewed.ca_cert == bundle.ca_cert
        load(renewed.cert).verify_directly_issued_by(load(bundle.ca_cert))


def test_a_broken_ca_is_replaced():
    bundle = bundle_at()
    other = bundle_at()
    cases = [
        Bundle(b"garbage", bundle.ca_key, bundle.cert, bundle.key),
        Bundle(bundle.ca_cert, other.ca_key, bundle.cert, bundle.key),  # not its key
        Bundle(bundle.cert, bundle.key, bundle.cert, bundle.key),  # not a CA
    ]
    for broken in cases:
        renewed = renew(broken, DNS, IPS, NOW, DAYS)
        assert renewed is not None
        assert not same_cert(renewed.ca_cert, bundle.ca_cert)
        load(renewed.cert).verify_directly_issued_by(load(renewed.ca_cert))


# What the API server should trust


def test_trusted_cas_is_the_ca_alone_without_a_previous_bundle():
    bundle = bundle_at()
    for previous in (None, b"", b"not pem at all"):
        assert fingerprints(trusted_cas(bundle, previous, NOW)) == fingerprints(bundle.ca_cert)


def test_trusted_cas_keeps_the_old_valid_ca_after_the_new_one():
    old = bundle_at(ca_days=400)
    now = NOW + timedelta(days=40)
    new = renew(old, DNS, IPS, now, DAYS)
    assert new is not None
    trusted = trusted_cas(new, trusted_cas(old, None, NOW), now)
    assert fingerprints(trusted) == fingerprints(new.ca_cert) + fingerprints(old.ca_cert)
    # The same inputs give the same bytes, so an unchanged caBundle is not patched again.
    assert trusted_cas(new, trusted, now) == trusted


def test_trusted_cas_drops_expired_cas_and_duplicates():
    expired = bundle_at(ca_days=30)
    valid = bundle_at(ca_days=3650)
    current = bundle_at(now=NOW + timedelta(days=60))
    previous = current.ca_cert + expired.ca_cert + valid.ca_cert + valid.ca_cert + expired.ca_cert
    trusted = trusted_cas(current, previous, NOW + timedelta(days=60))
    assert fingerprints(trusted) == fingerprints(current.ca_cert) + fingerprints(valid.ca_cert)


# The Secret's data


def test_secret_data_round_trip():
    bundle = bundle_at()
    data = to_secret_data(bundle)
    assert sorted(data) == ["ca.crt", "ca.key", "tls.crt", "tls.key"]
    assert base64.b64decode(data["tls.crt"]) == bundle.cert
    assert from_secret_data(data) == bundle


@pytest.mark.parametrize(
    "data",
    [
        None,
        {},
        {"ca.crt": "QQ==", "ca.key": "QQ==", "tls.crt": "QQ=="},
        {"ca.crt": "QQ==", "ca.key": "QQ==", "tls.crt": "QQ==", "tls.key": "not base64!"},
        {"ca.crt": "QQ==", "ca.key": "QQ==", "tls.crt": "QQ==", "tls.key": "QQ="},
    ],
    ids=["none", "empty", "missing", "not-base64", "bad-padding"],
)
def test_garbage_secret_data_is_no_bundle(data):
    assert from_secret_data(data) is None


def test_readable_base64_of_garbage_is_a_bundle_that_renew_replaces():
    garbage = from_secret_data(dict.fromkeys(["ca.crt", "ca.key", "tls.crt", "tls.key"], "QQ=="))
    assert garbage == Bundle(b"A", b"A", b"A", b"A")
    assert renew(garbage, DNS, IPS, NOW, DAYS) is not None


# Real TLS: the certificates load into OpenSSL and a client that trusts the caBundle connects.
# OpenSSL checks validity against the real clock, so these certificates are made for it.


def handshake(tmp_path: Path, cert: bytes, key: bytes, trusted: bytes, server_name: str) -> str:
    """A TLS handshake over a socket pair; the server's ``ssl.SSLContext`` loads the files.

    Returns what the client read; raises the client's error when it does not trust the server.
    """
    (tmp_path / "tls.crt").write_bytes(cert)
    (tmp_path / "tls.key").write_bytes(key)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the name
    client.verify_flags |= ssl.VERIFY_X509_STRICT
    client.load_verify_locations(cadata=trusted.decode())
    ours, theirs = socket.socketpair()
    ours.settimeout(10)
    theirs.settimeout(10)

    def serve() -> None:
        try:
            with server.wrap_socket(theirs, server_side=True) as tls:
                tls.sendall(b"hello")
        except (ssl.SSLError, OSError):
            pass  # the client refused us; the client's side reports why

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client.wrap_socket(ours, server_hostname=server_name) as tls:
            return tls.recv(5).decode()
    finally:
        ours.close()
        thread.join(timeout=10)
        theirs.close()


@pytest.mark.parametrize("server_name", [*DNS, "127.0.0.1"])
def test_a_client_trusting_the_ca_bundle_completes_a_handshake(tmp_path, server_name):
    bundle = renew(None, DNS, IPS, datetime.now(UTC), DAYS)
    assert bundle is not None
    trusted = trusted_cas(bundle, None, datetime.now(UTC))
    assert handshake(tmp_path, bundle.cert, bundle.key, trusted, server_name) == "hello"


def test_a_name_not_in_the_certificate_fails_the_handshake(tmp_path):
    bundle = renew(None, DNS, IPS, datetime.now(UTC), DAYS)
    assert bundle is not None
    trusted = trusted_cas(bundle, None, datetime.now(UTC))
    with pytest.raises(ssl.SSLCertVerificationError, match="match"):
        handshake(tmp_path, bundle.cert, bundle.key, trusted, "webhook.elsewhere.svc")


def test_during_a_ca_rotation_a_replica_still_serving_the_old_certificate_is_trusted(tmp_path):
    now = datetime.now(UTC)
    old = bundle_at(now=now - timedelta(days=40), ca_days=400)  # 360 days left: rotated
    new = renew(old, DNS, IPS, now, DAYS)
    assert new is not None
    assert not same_cert(new.ca_cert, old.ca_cert)
    trusted = trusted_cas(new, trusted_cas(old, None, now), now)
    assert handshake(tmp_path, old.cert, old.key, trusted, DNS[0]) == "hello"
    # Only because the old CA stayed in: the new CA alone does not trust the old certificate.
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(tmp_path, old.cert, old.key, new.ca_cert, DNS[0])
