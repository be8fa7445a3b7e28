"""The webhook's certificates at the edges: the Secret, the served files, the ``caBundle``.

``CertKeeper`` is the self-managed mode: the CA and the serving certificate live in one Secret
that every operator replica shares, each replica serves the Secret's certificate from files in
its own directory, and the MutatingWebhookConfiguration trusts the Secret's CA.  What to renew
and what to trust is decided by the pure ``certificates`` module; this one only reads and
writes.  ``CertFiles`` is the cert-manager mode: the files are mounted and only watched.

Both are plain and synchronous (the official client blocks): the operator runs them in a
thread.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from asgi_operator.certificates import (
    Bundle,
    from_secret_data,
    not_after,
    renew,
    to_secret_data,
    trusted_cas,
)

log = logging.getLogger("asgi_operator")

CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"
# Two replicas that race settle in two rounds (one writes, the other reads what it wrote);
# more than a few rounds means something keeps rewriting the object, which is worth an error.
ATTEMPTS = 5
JSON_PATCH = "application/json-patch+json"

Manifest = dict[str, Any]


def _json(response: Any) -> Manifest:
    data: Manifest = json.loads(response.data)
    return data


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` with ``data`` so a reader sees the old file or the new, never a part.

    The temporary file is made 0600 (``mkstemp``) and only then filled, so a key is never
    readable by others, not even for a moment.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _ca_bundle_of(webhook: Manifest) -> bytes:
    """The PEM a webhook trusts now; nothing when unset or not base64."""
    value = (webhook.get("clientConfig") or {}).get("caBundle") or ""
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return b""


class CertKeeper:
    """Keeps the Secret ``secret_namespace/secret_name``, the files in ``workdir`` and the
    ``caBundle`` of the MutatingWebhookConfiguration ``configuration`` in step.

    ``dns_names`` and ``ip_addresses`` are what the serving certificate must be valid for;
    ``cert_days`` its lifetime (the CA's is ``certificates.CA_DAYS``).
    """

    def __init__(
        self,
        api_client: client.ApiClient,
        secret_namespace: str,
        secret_name: str,
        configuration: str,
        dns_names: list[str],
        ip_addresses: list[str],
        workdir: Path,
        cert_days: int = 365,
    ) -> None:
        self.core = client.CoreV1Api(api_client)
        self.admission = client.AdmissionregistrationV1Api(api_client)
        self.secret_namespace = secret_namespace
        self.secret_name = secret_name
        self.configuration = configuration
        self.dns_names = list(dns_names)
        self.ip_addresses = list(ip_addresses)
        self.workdir = workdir
        self.cert_days = cert_days
        self._ca_bundle: bytes | None = None

    @property
    def cert_file(self) -> Path:
        return self.workdir / CERT_FILE

    @property
    def key_file(self) -> Path:
        return self.workdir / KEY_FILE

    @property
    def ca_bundle(self) -> bytes:
        """The PEM the webhook configuration trusts (or should, when it does not exist yet).

        What an operator that creates the configuration puts into its ``caBundle``; known
        only after the first ``sync``.
        """
        if self._ca_bundle is None:
            raise RuntimeError("no certificates yet: call sync() first")
        return self._ca_bundle

    def sync(self) -> bool:
        """Renew what needs renewing, serve the Secret's certificate, trust the Secret's CA.

        True when the served files changed (the server should load them again).  A missing
        webhook configuration is no error: the operator may create it right afterwards,
        with ``ca_bundle``.
        """
        bundle = self._settled_bundle()
        changed = self._serve(bundle)
        self._ca_bundle = self._trust(bundle)
        return changed

    def _read_secret(self) -> Manifest | None:
        try:
            response = self.core.read_namespaced_secret(
                self.secret_name, self.secret_namespace, _preload_content=False
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return _json(response)

    def _settled_bundle(self) -> Bundle:
        """The Secret's bundle, renewed and written first if it needs to be.

        Another replica may write between our read and our write: then the create fails
        with AlreadyExists or the update with Conflict (the update carries the resourceVersion
        read), and the next round reads and adopts what it wrote, so every replica serves
        the one certificate in the Secret.
        """
        for _ in range(ATTEMPTS):
            secret = self._read_secret()
            current = from_secret_data(secret.get("data") if secret else None)
            renewed = renew(
                current, self.dns_names, self.ip_addresses, datetime.now(UTC), self.cert_days
            )
            if renewed is None and current is not None:
                return current
            assert renewed is not None  # renew(None, ...) always makes a bundle
            try:
                self._write_secret(secret, renewed)
            except ApiException as exc:
                if exc.status != 409:
                    raise
                log.debug(
                    "Secret %s changed meanwhile (%s); reading it again",
                    self._secret_ref,
                    exc.reason,
                )
                continue
            self._log_rotation(current, renewed)
            return renewed
        raise RuntimeError(f"Secret {self._secret_ref} kept changing; gave up after {ATTEMPTS}")

    @property
    def _secret_ref(self) -> str:
        return f"{self.secret_namespace}/{self.secret_name}"

    def _write_secret(self, secret: Manifest | None, bundle: Bundle) -> None:
        data = to_secret_data(bundle)
        if secret is None:
            body = client.V1Secret.model_validate(
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {
                        "name": self.secret_name,
                        "namespace": self.secret_namespace,
                        "labels": {"app.kubernetes.io/managed-by": "asgi-operator"},
                    },
                    "type": "kubernetes.io/tls",
                    "data": data,
                }
            )
            self.core.create_namespaced_secret(self.secret_namespace, body, _preload_content=False)
            return
        # An update (the RBAC grants update, not patch) of the object as read: its
        # resourceVersion makes a concurrent write fail with Conflict; its labels,
        # annotations, type and any other keys stay as they were.
        metadata = {k: v for k, v in secret["metadata"].items() if k != "managedFields"}
        merged = {**(secret.get("data") or {}), **data}
        body = client.V1Secret.model_validate({**secret, "metadata": metadata, "data": merged})
        self.core.replace_namespaced_secret(
            self.secret_name, self.secret_namespace, body, _preload_content=False
        )

    def _log_rotation(self, old: Bundle | None, new: Bundle) -> None:
        until = not_after(new.cert).isoformat()
        if old is not None and old.ca_cert == new.ca_cert:
            log.info(
                "Renewed the webhook's serving certificate in Secret %s, valid until %s",
                self._secret_ref,
                until,
            )
        else:
            log.info(
                "%s the webhook's CA (valid until %s) and serving certificate"
                " (valid until %s) in Secret %s",
                "Issued" if old is None else "Renewed",
                not_after(new.ca_cert).isoformat(),
                until,
                self._secret_ref,
            )

    def _serve(self, bundle: Bundle) -> bool:
        """Write the files the server loads, when they differ from the bundle's."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        changed = False
        # The key first: a reader that sees the new certificate then finds its key.
        files = ((self.key_file, bundle.key, 0o600), (self.cert_file, bundle.cert, 0o644))
        for path, data, mode in files:
            if _read(path) != data:
                _write_atomically(path, data, mode)
                changed = True
        return changed

    def _read_configuration(self) -> Manifest | None:
        try:
            response = self.admission.read_mutating_webhook_configuration(
                self.configuration, _preload_content=False
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return _json(response)

    def _trust(self, bundle: Bundle) -> bytes:
        """Make every webhook of the configuration trust the bundle's CA; the PEM it trusts.

        The CAs the webhooks trusted before stay in while valid (``trusted_cas``).  The patch
        replaces only each webhook's caBundle (JSON patch ops by index), and its first op
        tests the resourceVersion read, so the indices cannot point into a list that someone
        changed meanwhile; such a patch fails and the next round reads the list again.
        """
        for _ in range(ATTEMPTS):
            config = self._read_configuration()
            if config is None:
                return trusted_cas(bundle, None, datetime.now(UTC))
            webhooks: list[Manifest] = config.get("webhooks") or []
            previous = b"".join(_ca_bundle_of(webhook) for webhook in webhooks)
            pem = trusted_cas(bundle, previous, datetime.now(UTC))
            wanted = base64.b64encode(pem).decode()
            ops = [
                {"op": "add", "path": f"/webhooks/{index}/clientConfig/caBundle", "value": wanted}
                for index, webhook in enumerate(webhooks)
                if (webhook.get("clientConfig") or {}).get("caBundle") != wanted
            ]
            if not ops:
                return pem
            version = config["metadata"]["resourceVersion"]
            test = {"op": "test", "path": "/metadata/resourceVersion", "value": version}
            try:
                self.admission.patch_mutating_webhook_configuration(
                    self.configuration,
                    [test, *ops],
                    _content_type=JSON_PATCH,
                    _preload_content=False,
                )
            except ApiException as exc:
                # A failed test op is 422 Unprocessable; a concurrent write, 409 Conflict.
                if exc.status not in (409, 422):
                    raise
                log.debug(
                    "%s changed meanwhile (%s %s); reading it again",
                    self.configuration,
                    exc.status,
                    exc.reason,
                )
                continue
            log.info("Set the caBundle of %d webhook(s) in %s", len(ops), self.configuration)
            return pem
        raise RuntimeError(f"{self.configuration} kept changing; gave up after {ATTEMPTS}")


class CertFiles:
    """The cert-manager mode: tls.crt and tls.key in ``directory`` (its Secret, mounted),
    watched for changes; cert-manager renews them and its ca-injector sets the caBundle."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._seen: tuple[bytes, bytes] | None = None

    @property
    def cert_file(self) -> Path:
        return self.directory / CERT_FILE

    @property
    def key_file(self) -> Path:
        return self.directory / KEY_FILE

    def changed(self) -> bool:
        """True when the files differ from the last call's (the first call: True).

        The kubelet swaps a mounted Secret's files at once, but two reads can straddle a
        swap: reading the certificate again after the key catches that, and the pair is
        read again next time rather than reported half new.  While the files cannot be read
        the answer is False, unless they never could (then the caller's load reports why).
        """
        try:
            cert = self.cert_file.read_bytes()
            key = self.key_file.read_bytes()
            if self.cert_file.read_bytes() != cert:
                return False
        except OSError:
            return self._seen is None
        if (cert, key) == self._seen:
            return False
        self._seen = (cert, key)
        return True
