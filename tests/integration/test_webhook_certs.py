"""The self-managed webhook certificates against the real control plane: the Secret, the
served files and the caBundle of a real MutatingWebhookConfiguration, with replicas racing."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from cryptography import x509

from asgi_operator import certkeeping
from asgi_operator.certificates import (
    Bundle,
    from_secret_data,
    new_ca,
    not_after,
    serial,
    sign_serving,
    to_secret_data,
)
from asgi_operator.certkeeping import CertFiles, CertKeeper

pytestmark = pytest.mark.timeout(300)

SECRET = "webhook-tls"
DNS = ["asgi-operator-webhook.ops.svc", "asgi-operator-webhook.ops.svc.cluster.local"]
IPS = ["127.0.0.1"]
WEBHOOKS = ["inject.asgi.dev", "second.asgi.dev"]


def webhook(name: str, namespace: str) -> dict[str, Any]:
    """A webhook that admits nothing: no Pod has the label, only the test's namespace, and
    nothing listens at the URL (failurePolicy Ignore, should it ever be called)."""
    return {
        "name": name,
        "admissionReviewVersions": ["v1"],
        "clientConfig": {"url": "https://127.0.0.1:1/x"},
        "rules": [
            {
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "operations": ["CREATE"],
                "resources": ["pods"],
                "scope": "Namespaced",
            }
        ],
        "objectSelector": {"matchLabels": {"asgi.dev/no-pod-has-this": "true"}},
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
        "failurePolicy": "Ignore",
        "sideEffects": "None",
        "timeoutSeconds": 1,
    }


@pytest.fixture
def configuration(cluster, namespace) -> Iterator[str]:
    """A MutatingWebhookConfiguration of the test's own (named as its namespace, which is
    unique per test), with two webhooks and no caBundle; deleted afterwards."""
    manifest = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": namespace},
        "webhooks": [webhook(name, namespace) for name in WEBHOOKS],
    }
    cluster.kubectl("create", "-f", "-", input=json.dumps(manifest))
    try:
        yield namespace
    finally:
        cluster.kubectl(
            "delete", "mutatingwebhookconfiguration", namespace, "--ignore-not-found", check=False
        )


@pytest.fixture
def new_api(cluster) -> Iterator[Any]:
    """Makes API clients (one per replica) and closes them afterwards."""
    made: list[Any] = []

    def make() -> Any:
        api = kubernetes.config.new_client_from_config(str(cluster.kubeconfig))
        made.append(api)
        return api

    yield make
    for api in made:
        api.close()


@pytest.fixture
def keeper(new_api, namespace, configuration, tmp_path) -> Any:
    """Makes CertKeepers for the test's Secret and configuration, each in a directory of its
    own (``name``), as replicas in their own Pods."""

    def make(name: str = "replica", cert_days: int = 365) -> CertKeeper:
        return CertKeeper(
            new_api(), namespace, SECRET, configuration, DNS, IPS, tmp_path / name, cert_days
        )

    return make


def secret(cluster, namespace: str) -> dict[str, Any]:
    result: dict[str, Any] = cluster.get_json("secret", SECRET, "-n", namespace)
    return result


def stored(cluster, namespace: str) -> Bundle:
    bundle = from_secret_data(secret(cluster, namespace)["data"])
    assert bundle is not None
    return bundle


def config(cluster, name: str) -> dict[str, Any]:
    result: dict[str, Any] = cluster.get_json("mutatingwebhookconfiguration", name)
    return result


def ca_bundles(cluster, name: str) -> list[list[x509.Certificate]]:
    """The CAs each webhook of the configuration trusts, in order."""
    return [
        x509.load_pem_x509_certificates(base64.b64decode(hook["clientConfig"]["caBundle"]))
        for hook in config(cluster, name)["webhooks"]
    ]


def load(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def write_secret(cluster, namespace: str, bundle: Bundle) -> None:
    """The Secret as an earlier operator (or a test) left it."""
    manifest = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET, "namespace": namespace},
        "type": "kubernetes.io/tls",
        "data": to_secret_data(bundle),
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))


def trust(cluster, name: str, pem: bytes) -> None:
    """Set every webhook's caBundle, as an earlier operator left it."""
    value = base64.b64encode(pem).decode()
    ops = [
        {"op": "add", "path": f"/webhooks/{index}/clientConfig/caBundle", "value": value}
        for index in range(len(WEBHOOKS))
    ]
    cluster.kubectl(
        "patch", "mutatingwebhookconfiguration", name, "--type=json", "-p", json.dumps(ops)
    )


def serves(keeper: CertKeeper, bundle: Bundle) -> bool:
    """Whether the keeper's files hold the bundle's serving certificate and key."""
    files = (keeper.cert_file.read_bytes(), keeper.key_file.read_bytes())
    return files == (bundle.cert, bundle.key)


def test_a_first_sync_creates_the_secret_the_files_and_the_ca_bundle(
    cluster, namespace, configuration, keeper
):
    replica = keeper()
    assert replica.sync() is True

    body = secret(cluster, namespace)
    assert body["type"] == "kubernetes.io/tls"
    bundle = stored(cluster, namespace)
    assert serves(replica, bundle)
    assert replica.key_file.stat().st_mode & 0o777 == 0o600
    leaf, ca = load(bundle.cert), load(bundle.ca_cert)
    leaf.verify_directly_issued_by(ca)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == DNS
    assert ca_bundles(cluster, configuration) == [[ca], [ca]]  # every webhook
    assert x509.load_pem_x509_certificates(replica.ca_bundle) == [ca]
    # Only the caBundle was touched: the webhooks are otherwise as the test made them.
    hooks = config(cluster, configuration)["webhooks"]
    assert [hook["name"] for hook in hooks] == WEBHOOKS
    assert all(hook["clientConfig"]["url"] == "https://127.0.0.1:1/x" for hook in hooks)


def test_a_second_sync_changes_nothing_and_a_new_replica_adopts_the_secret(
    cluster, namespace, configuration, keeper
):
    first = keeper("first")
    first.sync()
    secret_version = secret(cluster, namespace)["metadata"]["resourceVersion"]
    config_version = config(cluster, configuration)["metadata"]["resourceVersion"]
    written = first.cert_file.stat().st_mtime_ns

    assert first.sync() is False
    assert first.cert_file.stat().st_mtime_ns == written
    second = keeper("second")
    assert second.sync() is True  # its own files are new, the certificate is not
    assert serves(second, stored(cluster, namespace))
    assert second.cert_file.read_bytes() == first.cert_file.read_bytes()
    assert secret(cluster, namespace)["metadata"]["resourceVersion"] == secret_version
    assert config(cluster, configuration)["metadata"]["resourceVersion"] == config_version


def test_a_serving_certificate_near_expiry_is_renewed_with_the_ca_and_ca_bundle_kept(
    cluster, namespace, configuration, keeper
):
    replica = keeper()
    replica.sync()
    before = stored(cluster, namespace)
    config_version = config(cluster, configuration)["metadata"]["resourceVersion"]
    now = datetime.now(UTC)
    cert, key = sign_serving(before.ca_cert, before.ca_key, DNS, IPS, now, days=1)
    write_secret(cluster, namespace, Bundle(before.ca_cert, before.ca_key, cert, key))

    assert replica.sync() is True
    after = stored(cluster, namespace)
    assert (after.ca_cert, after.ca_key) == (before.ca_cert, before.ca_key)
    assert serial(after.cert) not in (serial(cert), serial(before.cert))
    assert not_after(after.cert) > now + timedelta(days=364)
    assert serves(replica, after)
    assert config(cluster, configuration)["metadata"]["resourceVersion"] == config_version
    assert ca_bundles(cluster, configuration) == [[load(before.ca_cert)]] * 2


def test_a_ca_near_expiry_gives_a_ca_bundle_holding_both_cas(
    cluster, namespace, configuration, keeper
):
    now = datetime.now(UTC)
    old_ca, old_ca_key = new_ca(now, 100)  # fewer days left than a serving lifetime
    cert, key = sign_serving(old_ca, old_ca_key, DNS, IPS, now, 100)
    write_secret(cluster, namespace, Bundle(old_ca, old_ca_key, cert, key))
    trust(cluster, configuration, old_ca)

    replica = keeper()
    assert replica.sync() is True
    new = stored(cluster, namespace)
    assert new.ca_cert != old_ca
    load(new.cert).verify_directly_issued_by(load(new.ca_cert))
    assert serves(replica, new)
    both = [load(new.ca_cert), load(old_ca)]
    assert ca_bundles(cluster, configuration) == [both, both]
    assert x509.load_pem_x509_certificates(replica.ca_bundle) == both
    # The next round keeps both: the old CA still signs what unreloaded replicas serve.
    config_version = config(cluster, configuration)["metadata"]["resourceVersion"]
    assert replica.sync() is False
    assert config(cluster, configuration)["metadata"]["resourceVersion"] == config_version


def test_two_keepers_racing_from_an_empty_secret_end_on_one_certificate(
    cluster, namespace, configuration, keeper
):
    replicas = [keeper("a"), keeper("b")]
    start = threading.Barrier(len(replicas))
    errors: list[BaseException] = []

    def run(replica: CertKeeper) -> None:
        start.wait()
        try:
            replica.sync()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(replica,)) for replica in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    bundle = stored(cluster, namespace)
    assert all(serves(replica, bundle) for replica in replicas)
    assert ca_bundles(cluster, configuration) == [[load(bundle.ca_cert)]] * 2


@pytest.mark.parametrize("initially", ["absent", "expiring"])
def test_the_replica_that_loses_the_write_adopts_the_winners_certificate(
    cluster, namespace, configuration, keeper, monkeypatch, initially
):
    """The race made certain: the other replica writes between this one's read and write."""
    if initially == "expiring":
        now = datetime.now(UTC)
        ca_cert, ca_key = new_ca(now, 3650)
        write_secret(
            cluster,
            namespace,
            Bundle(ca_cert, ca_key, *sign_serving(ca_cert, ca_key, DNS, IPS, now, 1)),
        )
    loser, winner = keeper("loser"), keeper("winner")
    real_renew = certkeeping.renew
    interleaved = threading.Event()

    def renew_while_the_winner_writes(*args: Any, **kwargs: Any) -> Bundle | None:
        if not interleaved.is_set():
            interleaved.set()
            winner.sync()  # reads, renews and writes first
        return real_renew(*args, **kwargs)

    monkeypatch.setattr(certkeeping, "renew", renew_while_the_winner_writes)
    assert loser.sync() is True
    bundle = stored(cluster, namespace)
    assert serves(winner, bundle)
    assert serves(loser, bundle)
    assert ca_bundles(cluster, configuration) == [[load(bundle.ca_cert)]] * 2


def test_a_configuration_changed_between_read_and_patch_is_read_again(
    cluster, namespace, configuration, keeper, monkeypatch
):
    """A webhook inserted at the front meanwhile: patches by index must not miss one."""
    replica = keeper()
    real_patch = replica.admission.patch_mutating_webhook_configuration
    inserted = threading.Event()

    def patch_after_someone_else(*args: Any, **kwargs: Any) -> Any:
        if not inserted.is_set():
            inserted.set()
            op = [
                {"op": "add", "path": "/webhooks/0", "value": webhook("first.asgi.dev", namespace)}
            ]
            cluster.kubectl(
                "patch", "mutatingwebhookconfiguration", configuration, "--type=json",
                "-p", json.dumps(op),
            )  # fmt: skip
        return real_patch(*args, **kwargs)

    monkeypatch.setattr(
        replica.admission, "patch_mutating_webhook_configuration", patch_after_someone_else
    )
    replica.sync()
    assert inserted.is_set()
    hooks = config(cluster, configuration)["webhooks"]
    assert [hook["name"] for hook in hooks] == ["first.asgi.dev", *WEBHOOKS]
    ca = load(stored(cluster, namespace).ca_cert)
    assert ca_bundles(cluster, configuration) == [[ca]] * 3


def test_a_missing_configuration_is_no_error(cluster, namespace, new_api, tmp_path):
    replica = CertKeeper(
        new_api(), namespace, SECRET, f"{namespace}-absent", DNS, IPS, tmp_path / "r"
    )
    assert replica.sync() is True
    ca = load(stored(cluster, namespace).ca_cert)
    assert x509.load_pem_x509_certificates(replica.ca_bundle) == [ca]


# The cert-manager mode: files only (no control plane needed).


def test_cert_files_report_a_change_once(tmp_path: Path):
    files = CertFiles(tmp_path)
    assert files.changed() is True  # nothing yet: the caller's load will say why
    files.cert_file.write_bytes(b"cert 1")
    files.key_file.write_bytes(b"key 1")
    assert files.changed() is True
    assert files.changed() is False
    files.key_file.write_bytes(b"key 2")
    assert files.changed() is True
    assert files.changed() is False
    files.cert_file.unlink()  # gone for a moment: keep serving what was loaded
    assert files.changed() is False
    files.cert_file.write_bytes(b"cert 1")
    assert files.changed() is False  # back as it was
