"""Chart.yaml as Artifact Hub reads it: the annotations parse (the YAML-in-a-string ones too)
and hold Artifact Hub's rules, and each says what the chart really has: the CRDs of crds/,
an example the operator's own model accepts, the images the chart renders by default."""

from __future__ import annotations

import re
import tomllib
from typing import Any

import pytest
import yaml

from asgi_operator.models import AsgiServerSpec
from tests.support.helm import CHART, KUBE_VERSION, helm, package
from tests.support.processes import ROOT

# Artifact Hub's own lists (internal/tracker/source/helm and internal/pkg of artifacthub/hub):
# other values make it refuse the annotation.
CAPABILITIES = (
    "Basic Install",
    "Seamless Upgrades",
    "Full Lifecycle",
    "Deep Insights",
    "Auto Pilot",
)
CHANGE_KINDS = ("added", "changed", "deprecated", "removed", "fixed", "security")
BOOLEAN_STRINGS = ("true", "false")
# Every URL of Chart.yaml is the project's own (its organisation and repository): none
# points at a host the project does not own.
PROJECT = "https://github.com/asgi-dev"


@pytest.fixture(scope="module")
def chart() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CHART / "Chart.yaml").read_text())
    return loaded


def annotation(chart: dict[str, Any], name: str) -> Any:
    """An ``artifacthub.io/`` annotation; the list ones parsed from their YAML string."""
    value = chart["annotations"][f"artifacthub.io/{name}"]
    assert isinstance(value, str), f"{name}: annotations are strings"
    return value


def listed(chart: dict[str, Any], name: str) -> list[dict[str, Any]]:
    entries = yaml.safe_load(annotation(chart, name))
    assert isinstance(entries, list), f"{name}: a YAML list in a string"
    assert entries, f"{name}: empty"
    assert all(isinstance(entry, dict) for entry in entries), name
    return entries


def crds() -> list[dict[str, Any]]:
    return [doc for path in sorted((CHART / "crds").glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]  # fmt: skip


def storage_version(crd: dict[str, Any]) -> dict[str, Any]:
    [version] = [v for v in crd["spec"]["versions"] if v["storage"]]
    assert isinstance(version, dict)
    return version


def words(text: str) -> str:
    return " ".join(text.split())


def test_chart_fields_artifact_hub_and_helm_expect(chart: dict[str, Any]) -> None:
    assert chart["apiVersion"] == "v2"
    assert chart["type"] == "application"
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"]), "a SemVer chart version"
    assert chart["kubeVersion"] == ">=1.29.0-0"
    assert chart["keywords"]
    assert chart["maintainers"]
    assert all(m["name"] for m in chart["maintainers"])
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]
    # An SPDX expression (PEP 639), or the older table form.
    spdx = declared if isinstance(declared, str) else declared["text"]
    assert annotation(chart, "license") == spdx
    assert annotation(chart, "operator") == "true"
    # A pre-release while the version is 0.x.
    assert annotation(chart, "prerelease") in BOOLEAN_STRINGS
    assert (annotation(chart, "prerelease") == "true") == chart["version"].startswith("0.")
    assert annotation(chart, "operatorCapabilities") in CAPABILITIES


def test_every_url_is_the_projects_own(chart: dict[str, Any]) -> None:
    urls = [chart["home"], *chart["sources"], *(m["url"] for m in chart["maintainers"])]
    urls += [link["url"] for link in listed(chart, "links")]
    assert all(link["name"] for link in listed(chart, "links"))
    for url in urls:
        assert url == PROJECT or url.startswith(f"{PROJECT}/"), url


def test_changes_are_structured_with_artifact_hubs_kinds(chart: dict[str, Any]) -> None:
    for change in listed(chart, "changes"):
        assert set(change) <= {"kind", "description", "links"}, change
        assert change["kind"] in CHANGE_KINDS, change
        assert isinstance(change["description"], str)
        assert change["description"].strip(), change


def test_crds_annotation_lists_the_charts_crds(chart: dict[str, Any]) -> None:
    listed_crds = {entry["name"]: entry for entry in listed(chart, "crds")}
    installed = {crd["metadata"]["name"]: crd for crd in crds()}
    assert sorted(listed_crds) == sorted(installed)
    for name, entry in listed_crds.items():
        crd = installed[name]
        version = storage_version(crd)
        assert entry["kind"] == crd["spec"]["names"]["kind"]
        assert entry["version"] == version["name"]
        assert entry["displayName"]
        described = version["schema"]["openAPIV3Schema"]["description"]
        assert words(entry["description"]) == words(described), f"{name}: the CRD's own"


def test_crds_example_is_the_sample_and_the_operator_accepts_it(chart: dict[str, Any]) -> None:
    [example] = listed(chart, "crdsExamples")
    assert example == yaml.safe_load((ROOT / "samples" / "asgiserver.yaml").read_text())
    [crd] = [crd for crd in crds() if crd["spec"]["names"]["kind"] == example["kind"]]
    assert example["apiVersion"] == f"{crd['spec']['group']}/{storage_version(crd)['name']}"
    AsgiServerSpec.model_validate(example["spec"])


def test_images_are_what_the_chart_runs_by_default(chart: dict[str, Any]) -> None:
    args = ["template", "asgi", str(CHART), "-n", "asgi-system", "--kube-version", KUBE_VERSION]
    docs = [doc for doc in yaml.safe_load_all(helm(*args)) if doc]
    [deployment] = [doc for doc in docs if doc["kind"] == "Deployment"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    [sidecar] = [a.split("=", 1)[1] for a in container["args"] if a.startswith("--sidecar-image=")]
    images = {entry["name"]: entry["image"] for entry in listed(chart, "images")}
    assert images == {"asgi-operator": container["image"], "asgi-sidecar": sidecar}
    for image in images.values():
        assert image.rsplit(":", 1)[1] == chart["appVersion"], image


def test_helm_lint_strict_passes() -> None:
    out = helm("lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION)
    assert "0 chart(s) failed" in out
    assert "[WARNING]" not in out
    assert "[ERROR]" not in out


def test_helm_show_crds_gives_every_crd_of_the_chart(tmp_path):
    """`helm show crds` joins the files without separators: each must start a document."""
    shown = helm("show", "crds", str(package(CHART, tmp_path)))
    names = [d["metadata"]["name"] for d in yaml.safe_load_all(shown) if d]
    files = sorted((CHART / "crds").glob("*.yaml"))
    expected = [
        d["metadata"]["name"] for f in files for d in yaml.safe_load_all(f.read_text()) if d
    ]
    assert names == expected
    assert len(names) == 3
