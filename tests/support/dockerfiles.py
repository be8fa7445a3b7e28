"""Dockerfiles read as the tests need them: global ARGs, stages and their instructions
(continuation lines joined), the final stage's ENV, ENTRYPOINT and EXPOSEd ports.  Used by
tests/unit/test_images.py (the Dockerfiles against the manifests) and
tests/unit/test_nodeparts.py (the engine-built images against the Dockerfiles)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.processes import ROOT

IMAGES = ROOT / "images"
SIDECAR = IMAGES / "sidecar.Dockerfile"
OPERATOR = IMAGES / "operator.Dockerfile"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        values = self.all(keyword)
        assert values, f"no {keyword}"
        return values[-1]


def stages(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """Global ARGs and the stages of a Dockerfile (continuation lines joined)."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    args: dict[str, str] = {}
    result: list[Stage] = []
    for line in lines:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            parts = rest.split()
            base = parts[0]
            for name, value in args.items():
                base = base.replace(f"${{{name}}}", value)
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            result.append(Stage(base, name))
        elif not result and keyword == "ARG":
            name, _, value = rest.partition("=")
            args[name] = value
        else:
            result[-1].instructions.append((keyword, rest))
    return args, result


def final(path: Path) -> Stage:
    return stages(path)[1][-1]


def env(stage: Stage) -> dict[str, str]:
    values: dict[str, str] = {}
    for args in stage.all("ENV"):
        for pair in args.split():
            name, _, value = pair.partition("=")
            values[name] = value
    return values


def entrypoint(stage: Stage) -> list[str]:
    value = json.loads(stage.last("ENTRYPOINT"))  # exec form: no shell in between
    assert isinstance(value, list)
    return value


def exposed(stage: Stage) -> set[int]:
    return {int(port.split("/")[0]) for args in stage.all("EXPOSE") for port in args.split()}
