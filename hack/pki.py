"""The local control plane's certificates (openssl) and kubeconfigs.

One CA signs every component's certificate; each client's identity (user, groups) is its
certificate's subject, as on a kubeadm cluster.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

_EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


class PKIError(RuntimeError):
    """openssl failed; the message has its output."""


class ClusterPKI:
    """The CA and the certificates in ``certs``: ``<name>.crt``, ``<name>.key``."""

    def __init__(self, certs: Path, error: type[Exception] = PKIError) -> None:
        self.certs, self.error = certs, error

    @property
    def ca(self) -> Path:
        return self.certs / "ca.crt"

    def _openssl(self, *args: str) -> None:
        cmd = ["openssl", *args]
        done = subprocess.run(cmd, cwd=self.certs, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise self.error(f"openssl {' '.join(args)} failed: {done.stderr.strip()}")

    def make_all(self, api_sans: str) -> None:
        """The CA, the API server's serving certificate (for ``api_sans``), the clients'
        certificates and the ServiceAccount signing key pair."""
        self._openssl(
            "req", "-x509", *_EC_KEY, "-keyout", "ca.key", "-out", "ca.crt", "-days", "365",
            "-subj", "/CN=localcluster-ca",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        )  # fmt: skip
        leaves = {
            "apiserver": ("/CN=kube-apiserver", "serverAuth", api_sans),
            "admin": ("/O=system:masters/CN=admin", "clientAuth", None),
            "kcm": ("/CN=system:kube-controller-manager", "clientAuth", None),
            "scheduler": ("/CN=system:kube-scheduler", "clientAuth", None),
            "kwok": ("/O=system:masters/CN=kwok", "clientAuth", None),
            "kubelet-client": ("/O=system:masters/CN=kube-apiserver-kubelet-client",
                               "clientAuth", None),
        }  # fmt: skip
        for name, (subject, usage, alt) in leaves.items():
            self.issue(name, subject, usage, alt)
        self._openssl(
            "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "sa.key"
        )
        self._openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub")

    def issue(self, name: str, subject: str, usage: str, alt: str | None = None) -> Path:
        """``<name>.crt`` and ``.key``, signed by the CA; returns the .crt."""
        ext = self.certs / f"{name}.ext"
        lines = [
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature,keyEncipherment",
            f"extendedKeyUsage={usage}",
        ] + ([f"subjectAltName={alt}"] if alt else [])
        ext.write_text("\n".join(lines) + "\n")
        self._openssl(
            "req", "-new", *_EC_KEY, "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", subject,
        )  # fmt: skip
        self._openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "365", "-extfile", ext.name,
        )  # fmt: skip
        return self.certs / f"{name}.crt"

    def write_kubeconfig(self, path: Path, user: str, server: str) -> None:
        """A kubeconfig for ``server`` as ``<user>.crt``/``.key`` (see ``issue``)."""
        cluster = {"server": server, "certificate-authority": str(self.ca)}
        creds = {
            k: str(self.certs / f"{user}.{ext}")
            for k, ext in (("client-certificate", "crt"), ("client-key", "key"))
        }
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "local",
            "clusters": [{"name": "local", "cluster": cluster}],
            "users": [{"name": user, "user": creds}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
        }  # fmt: skip
        path.write_text(json.dumps(config, indent=2) + "\n")
