"""Markdown tables and the small statistics the scenarios share."""

from __future__ import annotations

import statistics
from collections.abc import Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(value: object) -> str:
        return "—" if value is None else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float]) -> str:
    """``median`` with the min-max range of the rounds, for throughput cells."""
    if len(values) == 1:
        return f"{values[0]:,.0f}"
    return f"{median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def in_turn(items: Sequence[T], rounds: int) -> Iterator[T]:
    """Each of ``items`` once per round, the order flipped every other round (A B, B A, ...):
    a machine whose speed drifts during the benchmark favours neither the first nor the last."""
    for n in range(rounds):
        yield from items if n % 2 == 0 else reversed(items)


def paired_ratios(values: Sequence[float], bases: Sequence[float]) -> list[float]:
    """``values[i] / bases[i]``: each round's ratio of two runs made one right after the
    other, so a machine whose speed drifts over the benchmark moves both alike."""
    if len(values) != len(bases) or not values:
        raise ValueError(f"need as many rounds of each, got {len(values)} and {len(bases)}")
    return [value / base for value, base in zip(values, bases, strict=True)]


def ms(value: float | None) -> str | None:
    return None if value is None else f"{value:.2f}"


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base else "—"


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


class Timing:
    """How long each wrk run lasts; BENCH_SECONDS / BENCH_ROUNDS override for quick checks."""

    def __init__(self, seconds: float = 5.0, warmup: float = 1.0, rounds: int = 3) -> None:
        self.seconds = seconds
        self.warmup = warmup
        self.rounds = rounds
