"""The benchmark chart: one panel per case, ratios on a log axis, goals marked.

``draw(directory)`` reads ``results.json`` (``bench/run.py``) and ``unpack.json``
(``bench/unpack.py``) from ``directory``, whichever are there, and writes
``results.png`` beside them.
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path
from typing import Any

GREEN, RED, GREY = "#3a9a4a", "#d04a3a", "#9a9a9a"


def _value(value: float, unit: str) -> str:
    if unit in ("s", "seconds"):
        return f"{value:.2f} s"
    if abs(value) >= 100:
        return f"{value:.0f} {unit}"
    return f"{value:.1f} {unit}"


def families(directory: Path) -> list[tuple[str, list[dict[str, Any]]]]:
    """The rows of both result files, grouped into panels in report order."""
    groups: dict[str, list[dict[str, Any]]] = {}
    results, unpack = directory / "results.json", directory / "unpack.json"
    if results.exists():
        for row in json.loads(results.read_text())["rows"]:
            groups.setdefault(row.get("family") or row["case"], []).append(row)
    if unpack.exists():
        for row in json.loads(unpack.read_text())["rows"]:
            row = dict(row, unit="s", higher_is_better=False)
            groups.setdefault(row.get("family") or row["case"], []).append(row)
    return list(groups.items())


def draw(directory: Path) -> Path | None:
    """Draw ``results.png`` in ``directory`` from the result files there."""
    groups = families(directory)
    if not groups:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heights = [len(rows) + 1.0 for _, rows in groups]
    fig = plt.figure(figsize=(13, 0.3 * sum(heights) + 0.45 * len(groups) + 1.0))
    grid = fig.add_gridspec(
        len(groups),
        1,
        height_ratios=heights,
        left=0.36,
        right=0.70,
        top=1 - 0.7 / fig.get_figheight(),
        bottom=0.5 / fig.get_figheight(),
        hspace=0.55,
    )
    for index, (title, rows) in enumerate(groups):
        ax = fig.add_subplot(grid[index])
        ratios = [max(r["ratio"], 1e-3) for r in rows]
        goals = [r["goal"] for r in rows if r["goal"] is not None]
        low = min([*ratios, *goals, 1.0]) / 1.5
        high = max([*ratios, *goals, 1.0]) * 1.8
        low, high = min(low, 0.5), max(high, 2.0)
        ax.set_xscale("log")
        ax.set_xlim(low, high)
        positions = range(len(rows))
        colors = [GREY if r["met"] is None else (GREEN if r["met"] else RED) for r in rows]
        ax.barh(positions, [r - low for r in ratios], left=low, height=0.62, color=colors)
        ax.axvline(1.0, color="black", linewidth=0.8, alpha=0.6)
        for i, row in enumerate(rows):
            if row["goal"] is not None:
                ax.plot([row["goal"]] * 2, [i - 0.42, i + 0.42], color="black", linewidth=2.2)
            # The ratio at the end of its bar: inside when the bar is long enough, so
            # that it does not collide with a goal mark just beyond.
            inside = math.log(ratios[i] / low) > 0.2 * math.log(high / low)
            ax.text(
                ratios[i] / 1.02 if inside else ratios[i] * 1.02,
                i,
                f"{row['ratio']:.2f}",
                va="center",
                ha="right" if inside else "left",
                color="white" if inside else "black",
                fontsize=8,
                weight="bold",
            )
            unit = row.get("unit", "s")
            ours, other = _value(row["ours"], unit), _value(row["other"], unit)
            goal = "" if row["goal"] is None else f"   goal {row['goal']:.2f}"
            ax.text(
                1.02,
                i,
                f"{ours}  vs  {other}{goal}",
                transform=ax.get_yaxis_transform(),
                va="center",
                fontsize=8,
            )
        labels = [
            "\n".join(textwrap.wrap(f"{r['ours_name']}  vs  {r['other_name']}", 58)) for r in rows
        ]
        ax.set_yticks(list(positions), labels, fontsize=8)
        ax.set_ylim(len(rows) - 0.45, -0.6)
        ax.tick_params(axis="x", labelsize=7)
        ticks = [t for t in (0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 50, 100) if low <= t <= high]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.text(
            -0.56,
            -0.75,
            "\n".join(textwrap.wrap(title, 120)),
            transform=ax.get_yaxis_transform(),
            fontsize=9,
            weight="bold",
            va="bottom",
        )
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        ax.grid(axis="x", which="major", alpha=0.25)
    fig.text(
        0.5,
        1 - 0.3 / fig.get_figheight(),
        "ratio, log scale: above 1 = ours better (time and memory: theirs / ours).  "
        "Black tick: goal;  green: met,  red: missed,  grey: no goal",
        ha="center",
        fontsize=9,
    )
    path = directory / "results.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
