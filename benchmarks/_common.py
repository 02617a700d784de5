"""Small helpers shared by the benchmark scripts: statistics and a plain-text table.

Kept free of any system under test so that importing it never starts or loads one.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def median(values: Sequence[float]) -> float:
    """The median; repeats are summarised by it so one disturbed run does not move a row."""
    return statistics.median(values)


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (fraction in [0, 1]) of raw samples, as reported, not smoothed."""
    if not values:
        raise ValueError("percentile of no samples")
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def format_value(value: object, unit: str) -> str:
    """A measured value as a short string; strings (n/a, ERR, skip) pass through."""
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    number = float(value)
    if unit == "s":
        return f"{number:.2f}"
    if unit.startswith("ms"):
        return f"{number:.3f}" if number < 1 else f"{number:.1f}" if number < 100 else (
            f"{number:,.0f}")
    if number >= 100:
        return f"{number:,.0f}"
    return f"{number:.1f}"


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A fixed-width table: first column left-aligned, the others right-aligned."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        parts = [str(cells[0]).ljust(widths[0])]
        parts += [str(cell).rjust(width) for cell, width in zip(cells[1:], widths[1:],
                                                                 strict=True)]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(header), rule, *(line(row) for row in rows)])
