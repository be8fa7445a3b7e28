"""Everything the project renders, through the validators and linters platform teams run.

Rendered here: the chart with each ``ci/*-values.yaml``, the samples, the CRDs, and what the
operator's builders make (an AsgiServer's ConfigMap, Service, Deployment and
PodDisruptionBudget, the webhook configuration, a Pod after injection), one object per
file, ``<source>/<Kind>_[<namespace>_]<name>.yaml``; a source is one install
(``chart/ha``, ``samples/production-api``, ``builders/init-container``...).

- kubectl-validate (Kubernetes' OpenAPI of the version the project targets, the CRDs of
  ``crds/`` with their CEL rules) and kubernetes-validate (strict): no error.
- kube-score: no CRITICAL finding beyond ``hack/validators/kube-score-exceptions.yaml``.
- checkov: offline (``--skip-download``) every check has severity None, so no failed check
  at all beyond ``hack/validators/checkov-exceptions.yaml``.

An exception names its check, the objects (globs over
``<source>/<Kind>[/<namespace>]/<name>``), the containers when the finding is about some,
and its reason; one that matches nothing fails the test, so the files cannot keep
exceptions for findings that are gone.  ``make validators`` (hack/validators/build.sh)
builds the tools.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
import yaml

from asgi_operator.admission import webhook_configuration
from asgi_operator.building import BuildOptions, Owner, build_children
from asgi_operator.injecting import INJECT_LABEL, inject
from asgi_operator.models import AsgiServerSpec
from asgi_operator.pods import PodOptions
from tests.support.processes import ROOT

pytestmark = pytest.mark.timeout(180)

Manifest = dict[str, Any]

CHART = ROOT / "charts" / "asgi-operator"
SAMPLES = ROOT / "samples"
CACHE = ROOT / ".cache"
TOOLS = ROOT / "hack" / "validators"
HELM = CACHE / "bin" / "helm"
KUBECTL_VALIDATE = CACHE / "bin" / "kubectl-validate"
KUBE_SCORE = CACHE / "bin" / "kube-score"
VENV = CACHE / "validators" / "venv" / "bin"
# The one place the targeted version is spelled: the local control plane's build.
KUBE_VERSION = re.findall(
    r'^K8S_VERSION="\$\{K8S_VERSION:-v([0-9.]+)\}"$',
    (ROOT / "hack" / "build-cluster.sh").read_text(),
    re.MULTILINE,
)[0]
OPENAPI = CACHE / "validators" / f"openapi-v{KUBE_VERSION}"
MINOR = ".".join(KUBE_VERSION.split(".")[:2])

# Custom resources of other projects that the chart renders. No schema of theirs can be had
# offline, so kubectl-validate gets CRDs that keep every field: only the group, version,
# kind and metadata of these objects are checked.
FOREIGN_KINDS = {
    "monitoring.coreos.com/v1": ("ServiceMonitor", "PodMonitor", "PrometheusRule"),
    "cert-manager.io/v1": ("Certificate", "Issuer"),
}
OWN_GROUPS = {"asgi.dev", "kopf.dev"}  # crds/
SIDECAR_IMAGE = "ghcr.io/asgi-dev/asgi-sidecar:0.1.0"
DIGEST = "@sha256:" + "0" * 64

# What a user who does everything the linters ask for sets in a template; so that in the
# cases using it every remaining finding is about what the operator adds.
HARDENED_TEMPLATE = {
    "spec": {
        "automountServiceAccountToken": False,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": "app",
                "imagePullPolicy": "Always",
                "securityContext": {
                    "runAsNonRoot": True,
                    "runAsUser": 10001,
                    "runAsGroup": 10001,
                    "readOnlyRootFilesystem": True,
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "resources": {
                    "requests": {"cpu": "250m", "memory": "256Mi", "ephemeral-storage": "64Mi"},
                    "limits": {"cpu": "1", "memory": "512Mi", "ephemeral-storage": "256Mi"},
                },
                "readinessProbe": {"httpGet": {"path": "/ready", "port": 8000}},
                "livenessProbe": {"httpGet": {"path": "/live", "port": 8000}},
            },
            {
                "name": "proxy",
                "imagePullPolicy": "Always",
                "resources": {
                    "requests": {"cpu": "50m", "memory": "64Mi", "ephemeral-storage": "16Mi"},
                    "limits": {"memory": "256Mi", "ephemeral-storage": "64Mi"},
                },
            },
        ],
    }
}


def _production_spec() -> Manifest:
    docs = yaml.safe_load_all((SAMPLES / "production-api.yaml").read_text())
    [server] = [d for d in docs if d["kind"] == "AsgiServer"]
    spec: Manifest = server["spec"]
    return spec


# Representative AsgiServers, from the least a user writes to all of it.
BUILDER_CASES: dict[str, Manifest] = {
    "minimal": {"image": "registry.example.com/shop/api:1.0"},
    "production": _production_spec(),  # podTemplate, 3 replicas, minAvailable 2
    "hardened": {
        "image": f"registry.example.com/shop/api{DIGEST}",
        "sidecarImage": f"ghcr.io/asgi-dev/asgi-sidecar{DIGEST}",
        "replicas": 3,
        "podTemplate": HARDENED_TEMPLATE,
    },
    "init-container": {
        "image": f"registry.example.com/shop/api{DIGEST}",
        "sidecarImage": f"ghcr.io/asgi-dev/asgi-sidecar{DIGEST}",
        "replicas": 3,
        "server": {"backlog": 8192},
        "sysctls": {"mode": "initContainer", "tcpMaxSynBacklog": 8192},
        "podTemplate": HARDENED_TEMPLATE,
    },
    "embedded": {
        "image": "registry.example.com/shop/api:1.0",
        "mode": "embedded",
        "app": "shop.main:app",
        "sysctls": {"mode": "none"},
    },
}

# A Pod as a plain Deployment of a FastAPI app makes it, opted in to injection.
USER_POD: Manifest = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {
        "name": "shop-7d9f8-x2x4q",
        "namespace": "shop",
        "labels": {"app": "shop", INJECT_LABEL: "api"},
    },
    "spec": {
        "containers": [
            {
                "name": "web",
                "image": "registry.example.com/shop/api:1.0",
                "ports": [{"name": "http", "containerPort": 8000, "protocol": "TCP"}],
                "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}},
            }
        ]
    },
}


@dataclass(frozen=True)
class Rendered:
    root: Path
    objects: dict[Path, Manifest]  # file -> the one object in it

    def name(self, path: Path | str) -> str:
        """``<source>/<Kind>[/<namespace>]/<name>``, as the exceptions' globs match it."""
        relative = Path(path).resolve().relative_to(self.root)
        return f"{relative.parent}/{relative.name.removesuffix('.yaml').replace('_', '/')}"

    def sources(self) -> list[Path]:
        return sorted({path.parent for path in self.objects})

    def files(self, *, builtin: bool | None = None) -> list[Path]:
        return sorted(
            path
            for path, obj in self.objects.items()
            if builtin is None or _is_builtin(obj["apiVersion"]) == builtin
        )


def _is_builtin(api_version: str) -> bool:
    group = api_version.rpartition("/")[0]
    return group not in OWN_GROUPS and api_version not in FOREIGN_KINDS


def _need(path: Path) -> Path:
    if not path.exists():
        raise RuntimeError(f"{path} missing: run `make validators` (hack/validators/build.sh)")
    return path


def _helm_template(values: Path) -> str:
    args = ["template", "asgi", str(CHART), "-n", "asgi-system", "--kube-version", KUBE_VERSION]
    result = subprocess.run(
        [str(_need(HELM)), *args, "-f", str(values)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"helm template -f {values.name}:\n{result.stderr}"
    return result.stdout


def _builder_outputs() -> Iterator[tuple[str, Manifest]]:
    options = BuildOptions(sidecar_image=SIDECAR_IMAGE)
    for case, fields in BUILDER_CASES.items():
        owner = Owner(name=f"api-{case}", namespace="shop", uid="0f5c1a9e-7d1b-4c1e-9f0a-1b2c3d")
        for child in build_children(owner, AsgiServerSpec.model_validate(fields), options):
            yield f"builders/{case}", child
    yield (
        "builders/webhook",
        webhook_configuration(
            "asgi-asgi-operator",
            "asgi-system",
            service=("asgi-system", "asgi-asgi-operator-webhook"),
            ca_bundle=b"-----BEGIN CERTIFICATE-----\n",
        ),
    )
    target = AsgiServerSpec.model_validate({"targetRef": {"kind": "Deployment", "name": "shop"}})
    pod_options = PodOptions(SIDECAR_IMAGE, native_sidecars=True, somaxconn=4096, drain_token="t")
    injected = inject(copy.deepcopy(USER_POD), target, "api", "api-sidecar", pod_options)
    yield "builders/injected", injected.pod


def _everything() -> Iterator[tuple[str, Manifest]]:
    for values in sorted((CHART / "ci").glob("*-values.yaml")):
        source = "chart/" + values.name.removesuffix("-values.yaml")
        for doc in yaml.safe_load_all(_helm_template(values)):
            if doc:
                yield source, doc
    for sample in sorted(SAMPLES.rglob("*.yaml")):
        if "invalid" not in sample.relative_to(SAMPLES).parts:
            source = "samples/" + str(sample.relative_to(SAMPLES).with_suffix(""))
            yield from ((source, doc) for doc in yaml.safe_load_all(sample.read_text()) if doc)
    for crd in sorted((ROOT / "crds").glob("*.yaml")):
        yield from (("crds/" + crd.stem, doc) for doc in yaml.safe_load_all(crd.read_text()) if doc)
    yield from _builder_outputs()


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    root = tmp_path_factory.mktemp("rendered").resolve()
    objects: dict[Path, Manifest] = {}
    for source, obj in _everything():
        # "_" is in no kind, namespace or name.
        meta = obj["metadata"]
        parts = [obj["kind"], *([meta["namespace"]] if "namespace" in meta else []), meta["name"]]
        path = root / source / ("_".join(parts) + ".yaml")
        assert path not in objects, f"{source}: two objects {'/'.join(parts)}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(obj, sort_keys=False))
        objects[path] = obj
    return Rendered(root, objects)


def _run(
    cmd: list[str | Path], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a tool; its exit status is not checked (failures are read from its report)."""
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, env=env, check=False
    )


def test_the_builders_render_every_kind_of_child(rendered: Rendered) -> None:
    kinds = {obj["kind"] for path, obj in rendered.objects.items() if "/builders/" in str(path)}
    assert kinds == {
        "ConfigMap",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
        "MutatingWebhookConfiguration",
        "Pod",
    }


# --- kubectl-validate ----------------------------------------------------------------------


def _foreign_crds(folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    for api_version, kinds in FOREIGN_KINDS.items():
        group, version = api_version.split("/")
        for kind in kinds:
            plural = kind.lower() + "s"
            crd = {
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {"name": f"{plural}.{group}"},
                "spec": {
                    "group": group,
                    "scope": "Namespaced",
                    "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
                    "versions": [
                        {
                            "name": version,
                            "served": True,
                            "storage": True,
                            "schema": {
                                "openAPIV3Schema": {
                                    "type": "object",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                }
                            },
                        }
                    ],
                },
            }
            (folder / f"{plural}.{group}.yaml").write_text(yaml.safe_dump(crd))
    return folder


def _kubectl_validate(files: Iterable[Path], work: Path) -> dict[str, list[Manifest]]:
    """{file: [status of each document]} (kubectl-validate's JSON output)."""
    cmd: list[str | Path] = [_need(KUBECTL_VALIDATE), "--local-schemas", _need(OPENAPI)]
    cmd += ["--local-crds", ROOT / "crds", "--local-crds", _foreign_crds(work / "foreign-crds")]
    # No kubeconfig: never a live cluster's schemas, and no fetch of missing ones.
    env = {**os.environ, "KUBECONFIG": str(work / "no-kubeconfig")}
    result = _run([*cmd, "-o", "json", *files], env=env)
    assert result.stdout.strip(), f"kubectl-validate printed nothing:\n{result.stderr}"
    statuses: dict[str, list[Manifest]] = json.loads(result.stdout)
    return statuses


def test_kubectl_validate_accepts_everything(rendered: Rendered, tmp_path: Path) -> None:
    statuses = _kubectl_validate(rendered.files(), tmp_path)
    assert len(statuses) == len(rendered.objects)
    errors = [
        f"{rendered.name(path)}: {status.get('message')}"
        for path, results in statuses.items()
        for status in results
        if status["status"] != "Success"
    ]
    assert errors == [], "\n".join(errors)


def test_kubectl_validate_refuses_each_invalid_sample_for_its_reason(tmp_path: Path) -> None:
    """The CRD's schema and CEL rules, checked offline as the API server checks them."""
    invalid = sorted((SAMPLES / "invalid").glob("*.yaml"))
    statuses = _kubectl_validate(invalid, tmp_path)
    for path in invalid:
        [status] = statuses[str(path)]
        assert status["status"] == "Failure", f"{path.name}: accepted"
        assert status["reason"] == "Invalid", f"{path.name}: {status.get('message')}"


# --- kubernetes-validate -------------------------------------------------------------------


def test_kubernetes_validate_accepts_every_builtin_object_strictly(rendered: Rendered) -> None:
    builtin = rendered.files(builtin=True)
    cmd = [_need(VENV / "kubernetes-validate"), "-k", KUBE_VERSION, "--strict", *builtin]
    result = _run(cmd)
    lines = result.stdout.splitlines()
    passed = [line for line in lines if line.startswith("INFO ") and " passed for " in line]
    problems = [
        f"{rendered.name(line.split()[1])}: {line.split(' ', 2)[2]}"
        for line in lines
        if not line.startswith("INFO ")
    ]
    assert problems == [], "\n".join(problems)
    assert all(f"against version {MINOR}" in line for line in passed), lines[:3]
    assert (len(passed), result.returncode) == (len(builtin), 0), result.stderr


# --- the exceptions files ------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    obj: str  # <source>/<Kind>[/<namespace>]/<name>
    check: str
    container: str | None
    text: str

    def __str__(self) -> str:
        where = f" ({self.container})" if self.container else ""
        return f"{self.obj}{where}: {self.check}: {self.text}"


@dataclass(frozen=True)
class ExceptionEntry:
    check: str
    objects: tuple[str, ...]
    containers: tuple[str, ...] | None
    texts: tuple[str, ...] | None
    reason: str

    def matches(self, finding: Finding) -> bool:
        return (
            finding.check == self.check
            and any(fnmatch(finding.obj, glob) for glob in self.objects)
            and (self.containers is None or finding.container in self.containers)
            and (self.texts is None or finding.text in self.texts)
        )


def _exceptions(name: str) -> list[ExceptionEntry]:
    entries = yaml.safe_load((TOOLS / name).read_text())
    result = []
    for entry in entries:
        assert set(entry) <= {"check", "objects", "containers", "texts", "reason"}, entry
        assert entry.get("reason", "").strip(), f"{name}: {entry['check']} gives no reason"
        result.append(
            ExceptionEntry(
                check=entry["check"],
                objects=tuple(entry["objects"]),
                containers=tuple(entry["containers"]) if "containers" in entry else None,
                texts=tuple(entry["texts"]) if "texts" in entry else None,
                reason=entry["reason"],
            )
        )
    return result


def _unexcepted(findings: list[Finding], name: str) -> list[str]:
    """The findings no exception covers, then the exceptions that cover no finding."""
    exceptions = _exceptions(name)
    used: set[int] = set()
    left = []
    for finding in findings:
        matching = [i for i, exc in enumerate(exceptions) if exc.matches(finding)]
        used.update(matching)
        if not matching:
            left.append(str(finding))
    stale = [
        f"{name}: {exc.check} {list(exc.objects)}: matches no finding; remove it"
        for i, exc in enumerate(exceptions)
        if i not in used
    ]
    return left + stale


# --- kube-score ----------------------------------------------------------------------------

CRITICAL = 1  # kube-score's grades: 1 critical, 5 warning, 7 almost OK, 10 OK


def _kube_score(rendered: Rendered, source: Path) -> list[Finding]:
    files = sorted(source.glob("*.yaml"))
    cmd: list[str | Path] = [_need(KUBE_SCORE), "score", "--kubernetes-version", f"v{MINOR}"]
    result = _run([*cmd, "-o", "json", *files])
    assert result.stderr == "", f"kube-score on {source.name}: {result.stderr}"
    findings = []
    for obj in json.loads(result.stdout) or []:
        name = rendered.name(obj["file_name"])
        for check in obj["checks"]:
            if check["skipped"] or check["grade"] != CRITICAL:
                continue
            for comment in check["comments"] or [{"path": "", "summary": ""}]:
                container = comment.get("path") or None
                findings.append(Finding(name, check["check"]["id"], container, comment["summary"]))
    return findings


def test_kube_score_finds_nothing_critical_beyond_the_exceptions(rendered: Rendered) -> None:
    # One run per source: each is one install, where kube-score matches Services, budgets
    # and policies to the Pods they select.
    findings = [f for source in rendered.sources() for f in _kube_score(rendered, source)]
    problems = _unexcepted(findings, "kube-score-exceptions.yaml")
    assert problems == [], "critical kube-score findings:\n" + "\n".join(problems)


# --- checkov -------------------------------------------------------------------------------


WORKLOADS = {"Deployment", "StatefulSet", "Pod", "ClusterRole", "Role"}


def _container(obj: Manifest, keys: list[str]) -> str | None:
    """The container checkov's evaluated key points at (it reports the first failing one)."""
    for key in keys:
        found = re.search(r"(.*)/(containers|initContainers)/\[(\d+)\]", key)
        if found:
            spec: Any = obj
            for part in found[1].split("/"):
                spec = spec[part]
            return str(spec[found[2]][int(found[3])]["name"])
    return None


def test_checkov_fails_no_check_beyond_the_exceptions(rendered: Rendered) -> None:
    cmd: list[str | Path] = [_need(VENV / "checkov"), "--directory", rendered.root]
    cmd += ["--framework", "kubernetes", "--output", "json", "--compact"]
    # Offline: no policy metadata (severities, guidelines) from the vendor's platform.
    result = _run([*cmd, "--skip-download"])
    report = json.loads(result.stdout)
    assert report["summary"]["parsing_errors"] == 0, report["results"].get("parsing_errors")
    results = report["results"]
    checked = {
        Path(r["file_abs_path"]) for r in results["passed_checks"] + results["failed_checks"]
    }
    workloads = {p for p, obj in rendered.objects.items() if obj["kind"] in WORKLOADS}
    assert sorted(map(rendered.name, workloads - checked)) == [], "checkov checked none of these"
    findings = []
    for failed in report["results"]["failed_checks"]:
        path = Path(failed["file_abs_path"])
        keys = failed["check_result"]["evaluated_keys"]
        container = _container(rendered.objects[path.resolve()], keys)
        name = failed["check_name"]
        findings.append(Finding(rendered.name(path), failed["check_id"], container, name))
    problems = _unexcepted(findings, "checkov-exceptions.yaml")
    assert problems == [], "failed checkov checks:\n" + "\n".join(problems)
