"""The overhead comparison at a glance: ``python -m benchmarks.chart RESULTS.json... -o FILE.png``.

One horizontal bar per mechanism (twinweave's probe, a closure decorator, wrapt,
``sys.setprofile``, cProfile, ``sys.monitoring`` callbacks, the clock itself), its length
the cost it adds to a call of ``def f(x): return x + 1`` (row minus the bare call of the
same run, in ns); one bar colour per results file, so several Python versions sit side by
side. A mechanism a Python cannot run (``sys.monitoring`` before 3.12) gets no bar and the
label ``n/a``. Needs matplotlib (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.suite import ResultsError, load_results

MECHANISMS: tuple[tuple[str, str], ...] = (
    ("twinweave_timing_hook", "twinweave, timing plugin"),
    ("twinweave_events", "twinweave, Python plugin on every event"),
    ("twinweave_monitoring", "twinweave, sys.monitoring backend"),
    ("closure_decorator", "do-nothing closure decorator"),
    ("wrapt_decorator", "wrapt decorator"),
    ("setprofile_noop", "sys.setprofile, no-op"),
    ("cprofile", "cProfile"),
    ("monitoring_noop", "sys.monitoring callbacks, no-op"),
    ("clock_floor", "floor: two perf_counter_ns() calls"),
)
"""overhead.py rows drawn, top to bottom, with their labels."""


class ChartError(Exception):
    """The chart cannot be drawn (no matplotlib, no overhead figures, a bad file)."""


def added_ns(results: dict[str, Any]) -> dict[str, float]:
    """Mechanism row -> ns it adds to a call, from one results file ({} if not measured)."""
    section = results.get("sections", {}).get("overhead", {})
    if section.get("status") != "ok":
        return {}
    out: dict[str, float] = {}
    for row in section["rows"]:
        if row["name"] == "clock_floor":
            out[row["name"]] = row["value"]
        elif row.get("added") is not None and row.get("group", "function") == "function":
            out[row["name"]] = row["added"]
    return out


def draw(runs: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Draw the chart of ``runs`` (results files, one bar colour each) to ``path``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ChartError('matplotlib is not installed (pip install -e ".[bench]")') from exc
    figures = [(run, added_ns(run)) for run in runs]
    figures = [(run, fig) for run, fig in figures if fig]
    if not figures:
        raise ChartError("no results file has overhead figures")
    count = len(figures)
    height = 0.8 / count
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(MECHANISMS) * max(1, count * 0.7) + 1.6))
    top = max(value for _, fig_ in figures for value in fig_.values())
    for index, (run, values) in enumerate(figures):
        label: str | None = f"{run['implementation']} {run['python']} ({run['mode']})"
        for position, (name, _) in enumerate(MECHANISMS):
            y = position + index * height - 0.4 + height / 2
            if name in values:
                ax.barh(y, values[name], height=height * 0.92, color=f"C{index}", label=label)
                label = None  # one legend entry per run
                text = f"{values[name]:.0f} ns"
                ax.text(values[name] + top * 0.01, y, text, va="center", fontsize=7)
            else:
                ax.text(top * 0.01, y, "n/a", va="center", fontsize=7, color="grey")
    ax.set_yticks(range(len(MECHANISMS)))
    ax.set_yticklabels([label for _, label in MECHANISMS])
    ax.invert_yaxis()
    ax.set_xlim(0, top * 1.15)
    ax.set_xlabel("ns added to a call of def f(x): return x + 1 (pyperf mean, minus the bare call)")
    machine = figures[0][0].get("machine", {})
    ax.set_title(
        f"Per-call overhead on {machine.get('cpus', '?')} CPUs"
        + (f", {machine['cpu']}" if machine.get("cpu") else ""),
        fontsize=10,
    )
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    target = Path(path)
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chart", description=__doc__)
    parser.add_argument("results", nargs="+", help="results-*.json files of python -m benchmarks")
    parser.add_argument("-o", "--output", default="overhead.png", help="PNG to write")
    options = parser.parse_args(argv)
    try:
        drawn = draw([load_results(path) for path in options.results], options.output)
    except (ChartError, ResultsError) as exc:
        print(f"chart: {exc}", file=sys.stderr)
        return 1
    print(drawn)
    return 0


if __name__ == "__main__":
    sys.exit(main())
