"""The scale bench's figures as tables: one per part, a baseline column and a scaled one.

Each run of the bench gives one `Row` per figure; with `--repeat`, the rows of every run are
put together and a cell shows the median and, after it, the range seen (min–max), so the
noise of a shared machine is in the table rather than hidden by it. A ratio is computed
within each run (both sides measured minutes apart at most) and only then summarised.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Row:
    label: str
    base: float | None
    scaled: float | None
    ratio: bool = True  # print scaled ÷ base
    target: str = ""
    passes: Callable[[float], bool] | None = None  # judged on the ratio where there is one


@dataclass
class Part:
    name: str
    about: str
    base: str  # the columns' names
    scaled: str
    notes: list[str]


def ratio_of(row: Row) -> float | None:
    if not row.ratio or row.base is None or row.scaled is None or not row.base:
        return None
    return row.scaled / row.base


def spread(values: list[float | None], fmt: Callable[[float], str]) -> str:
    seen = [v for v in values if v is not None]
    if not seen:
        return "-"
    middle = fmt(statistics.median(seen))
    if len(seen) == 1 or min(seen) == max(seen):
        return middle
    return f"{middle} ({fmt(min(seen))}–{fmt(max(seen))})"


def number(value: float) -> str:
    if value == int(value) and abs(value) < 1000:
        return str(int(value))
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) >= 1 else f"{value:.3f}"


def times(value: float) -> str:
    return f"×{value:.2f}"


def table(part: Part, runs: list[list[Row]]) -> str:
    labels = list(dict.fromkeys(row.label for rows in runs for row in rows))
    head = ("metric", part.base, part.scaled, "scaled/base", "target", "")
    lines: list[tuple[str, ...]] = [head]
    for label in labels:
        same = [row for rows in runs for row in rows if row.label == label]
        ratios = [ratio_of(row) for row in same]
        verdict = ""
        first = same[0]
        if first.passes is not None:
            # a ratio by its median over the runs; a plain figure (errors) in every cell
            if first.ratio:
                judged = [r for r in ratios if r is not None]
                good = bool(judged) and first.passes(statistics.median(judged))
            else:
                judged = [v for row in same for v in (row.base, row.scaled) if v is not None]
                good = all(first.passes(v) for v in judged)
            verdict = ("ok" if good else "MISS") if judged else ""
        lines.append(
            (
                label,
                spread([row.base for row in same], number),
                spread([row.scaled for row in same], number),
                spread(ratios, times) if first.ratio else "",
                first.target,
                verdict,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = [f"{part.name}: {part.about}"]
    for n, line in enumerate(lines):
        cells = [
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        out.append("  " + "  ".join(cells).rstrip())
        if n == 0:
            out.append("  " + "  ".join("-" * w for w in widths))
    out += [f"  note: {note}" for note in part.notes]
    return "\n".join(out)


def as_json(part: Part, runs: list[list[Row]]) -> dict[str, Any]:
    return {
        "about": part.about,
        "columns": [part.base, part.scaled],
        "notes": part.notes,
        "runs": [
            [
                {
                    "metric": r.label,
                    "base": r.base,
                    "scaled": r.scaled,
                    "ratio": ratio_of(r),
                    "target": r.target,
                }
                for r in rows
            ]
            for rows in runs
        ],
    }
