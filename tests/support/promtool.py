"""Run Debian's promtool on a metrics exposition."""

from __future__ import annotations

import subprocess


def check_metrics(text: str) -> tuple[int, str]:
    """(exit code, everything promtool printed) of ``promtool check metrics``."""
    result = subprocess.run(
        ["promtool", "check", "metrics"],
        input=text,
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return result.returncode, result.stdout + result.stderr
