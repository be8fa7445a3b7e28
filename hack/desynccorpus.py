"""The HTTP desync corpus of AWS's ``http_desync_guardian`` crate, fetched with cargo.

The crate (0.1.3, Apache-2.0) ships labelled request cases as YAML under ``tests/``,
each with an expected tier: Severe, Ambiguous, Acceptable or Compliant.  They are
never copied into this repository: ``fetch`` runs ``cargo fetch`` on a throwaway
manifest in ``.cache/desync/`` (cargo keeps the crate in its registry source cache,
``$CARGO_HOME/registry/src``), and ``cargo metadata`` says where the sources are.

Each case becomes request bytes exactly as the crate's own test (``run_test_case``
in ``src/request_analyzer.rs``) builds them: ``{method} {uri} {version}\\r\\n``, one
``{name}: {value}\\r\\n`` per header, then ``\\r\\n``, after its ``unescape_value``
(a second pass of backslash escapes over every YAML string).  One departure: the
crate writes its Rust strings as UTF-8, so ``\\xff`` becomes two bytes; here a
string whose characters all fit in a byte is written one byte per character
(``\\xff`` is the obs-text byte 0xFF the case means), any other string as UTF-8.

    python -m hack.desynccorpus      # prints the cases per file and tier
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from hack import cache

CRATE: Final = "http_desync_guardian"  # crates.io refuses the hyphenated spelling
VERSION: Final = "0.1.3"
TIERS: Final = ("Severe", "Ambiguous", "Acceptable", "Compliant")
# The files the crate's file_tests() reads, in its order.
FILES: Final = (
    "single-case.yaml",
    "edge-cases.yaml",
    "rfc-compliant.yaml",
    "acceptable.yaml",
    "ambiguous.yaml",
    "bad-header-characters.yaml",
    "more-compliant-tests.yaml",
    "severe.yaml",
    "uri-specific-test-cases.yaml",
    "real-life-test-cases.yaml",
)
WORKDIR: Final = cache.LOCAL / "desync"
_ESCAPES: Final = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


@dataclass(frozen=True)
class Header:
    name: str
    value: str
    tier: str  # the crate's verdict on this one field: Compliant, NonCompliant or Bad


@dataclass(frozen=True)
class Case:
    """One labelled request of the corpus."""

    file: str
    name: str
    method: str
    uri: str
    version: str  # "HTTP/1.1", or "" for an HTTP/0.9 request line
    headers: tuple[Header, ...]
    tier: str  # the expected tier of the whole request
    reason: str  # the crate's ClassificationReason, e.g. BothTeClPresent

    @property
    def ident(self) -> str:
        return f"{self.file}:{self.name}"

    def head(self) -> bytes:
        """The request head, as the crate's test writes it."""
        lines = [f"{self.method} {self.uri} {self.version}\r\n"]
        lines += [f"{h.name}: {h.value}\r\n" for h in self.headers]
        lines.append("\r\n")
        return b"".join(_encode(line) for line in lines)


def _encode(text: str) -> bytes:
    """One byte per character where they all fit in one, else UTF-8 (see the docstring)."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")


def unescape(text: str) -> str:
    """The crate's ``unescape_value``: ``\\xNN``, ``\\b \\f \\n \\r \\t``; ``\\c`` is ``c``."""
    out: list[str] = []
    chars = iter(text)
    for ch in chars:
        if ch != "\\":
            out.append(ch)
            continue
        escaped = next(chars, None)
        if escaped is None:
            raise ValueError(f"malformed escape at the end of {text!r}")
        if escaped == "x":
            digits = next(chars, "") + next(chars, "")
            out.append(chr(int(digits, 16)))
        else:
            out.append(_ESCAPES.get(escaped, escaped))
    return "".join(out)


def _field(entry: dict[str, Any], key: str) -> str:
    # The crate reads strings, or integers formatted back; BaseLoader keeps every scalar
    # as its text, so "1000" stays "1000" and no YAML 1.1 "yes"/"0x10" is reinterpreted.
    value = entry[key]
    if not isinstance(value, str):
        raise ValueError(f"{key} of {entry.get('name')!r} is not a scalar: {value!r}")
    return unescape(value)


def parse(file: str, text: str) -> list[Case]:
    """The cases of one YAML file of the corpus."""
    loaded = yaml.load(text, Loader=yaml.BaseLoader)  # BaseLoader builds no objects
    if not isinstance(loaded, list):
        raise ValueError(f"{file}: expected a list of cases")
    cases = []
    for entry in loaded:
        expected = entry["expected"]
        headers = tuple(
            Header(_field(h, "name"), _field(h, "value"), _field(h, "tier"))
            for h in entry.get("headers") or ()
        )
        case = Case(
            file=file,
            name=entry["name"],
            method=_field(entry, "method"),
            uri=_field(entry, "uri"),
            version=_field(entry, "version"),
            headers=headers,
            tier=_field(expected, "tier"),
            reason=_field(expected, "reason"),
        )
        if case.tier not in TIERS:
            raise ValueError(f"{case.ident}: unknown tier {case.tier!r}")
        cases.append(case)
    return cases


MANIFEST: Final = (
    "# A throwaway manifest: cargo fetches the desync corpus for hack/desynccorpus.py.\n"
    '[package]\nname = "desync-corpus"\nversion = "0.0.0"\nedition = "2021"\n'
    f'\n[dependencies]\n{CRATE} = "={VERSION}"\n'
)


def _run(*args: str) -> str:
    command = ["cargo", *args, "--manifest-path", str(WORKDIR / "Cargo.toml")]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr}")
    return done.stdout


def fetch() -> Path:
    """The crate's ``tests/`` folder in cargo's source cache, fetched if need be."""
    manifest = WORKDIR / "Cargo.toml"
    if not manifest.is_file() or manifest.read_text() != MANIFEST:
        (WORKDIR / "src").mkdir(parents=True, exist_ok=True)
        (WORKDIR / "src" / "lib.rs").write_text("")  # cargo wants a target to read the manifest
        manifest.write_text(MANIFEST)
    _run("fetch", "--quiet")  # no network if Cargo.lock and the sources are already there
    metadata = json.loads(_run("metadata", "--format-version", "1", "--offline"))
    for package in metadata["packages"]:
        if package["name"] == CRATE and package["version"] == VERSION:
            return Path(package["manifest_path"]).parent / "tests"
    raise RuntimeError(f"cargo metadata does not list {CRATE} {VERSION}")


def cases() -> list[Case]:
    """Every case of the corpus, file by file in the crate's order."""
    folder = fetch()
    return [case for file in FILES for case in parse(file, (folder / file).read_text("utf-8"))]


def _table(found: list[Case]) -> Iterator[str]:
    per_file: dict[str, Counter[str]] = {}
    for case in found:
        per_file.setdefault(case.file, Counter())[case.tier] += 1
    yield f"{'file':32}" + "".join(f"{tier:>12}" for tier in TIERS)
    for file, counts in per_file.items():
        yield f"{file:32}" + "".join(f"{counts[tier]:12}" for tier in TIERS)
    totals = Counter(case.tier for case in found)
    yield f"{'total':32}" + "".join(f"{totals[tier]:12}" for tier in TIERS)


def main(argv: list[str]) -> int:
    if argv:
        print("usage: python -m hack.desynccorpus", file=sys.stderr)
        return 2
    for line in _table(cases()):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
