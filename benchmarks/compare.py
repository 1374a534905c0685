"""What changed between two runs: ``python -m benchmarks.compare A.json B.json``.

For every row both results files have (matched by section and name): A's value, B's
value, B / A, and whether that is better or worse. Lower is better for times and CPU
shares, higher for throughputs (unit ``/s``). A change is called out only when it is
larger than the noise: twice the combined standard error where both rows carry one
(pyperf rows), else ``--threshold`` (default 5 %). The rows' ratios to their baselines are
compared too: they are what a claim rests on, and they survive a change of machine far
better than absolute figures. Claims whose verdict changed, and rows only one file has,
are listed. Exit status 0 (a report, not a gate), 2 when a file cannot be read.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from typing import Any

from benchmarks.suite import ResultsError, load_results

HIGHER_IS_BETTER = {"/s"}
SHOW_ONLY = 4
"""How many names of rows only one file has are listed per section."""


def _num(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value:.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"


def _rows(results: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for section_name, section in results.get("sections", {}).items():
        for row in section.get("rows", []) if section.get("status") == "ok" else []:
            out[(section_name, row["name"])] = row
    return out


def _claims(results: dict[str, Any]) -> dict[tuple[str, str], bool]:
    out = {}
    for section_name, section in results.get("sections", {}).items():
        for claim in section.get("claims", []):
            # a claim's text carries its figure: compare by the part before the figure
            key = claim["text"].split(" = ")[0].split(": ")[0]
            out[(section_name, key)] = bool(claim["holds"])
    return out


def _figures(name: str, a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """The row itself, then each latency it carries (``p99_ms``...) as a row of its own."""
    out = [(name, a, b)]
    for key in sorted(k for k in a.keys() & b.keys() if k.endswith("_ms")):
        out.append(
            (f"{name} {key[:-3]}", {"value": a[key], "unit": "ms"}, {"value": b[key], "unit": "ms"})
        )
    return out


def judge(a: dict[str, Any], b: dict[str, Any], threshold: float) -> str:
    """``better``, ``worse`` or ``same`` (within the noise) for B against A."""
    va, vb = a["value"], b["value"]
    if a.get("sem") is not None and b.get("sem") is not None:
        noise = 2 * math.hypot(a["sem"], b["sem"])
    else:
        noise = threshold * abs(va)
    if abs(vb - va) <= noise:
        return "same"
    lower_wins = a.get("unit") not in HIGHER_IS_BETTER
    return "better" if (vb < va) == lower_wins else "worse"


def compare(a: dict[str, Any], b: dict[str, Any], threshold: float = 0.05) -> str:
    rows_a, rows_b = _rows(a), _rows(b)
    out = [
        f"A: {a['_path']}: {a['implementation']} {a['python']} ({a['mode']}), {a['started']}",
        f"B: {b['_path']}: {b['implementation']} {b['python']} ({b['mode']}), {b['started']}",
    ]
    if (a["python"], a["machine"].get("host")) != (b["python"], b["machine"].get("host")):
        out.append("note: different Pythons or machines: compare the ratios, not the values")
    out.append("")
    width = max([len(name) + 4 for _, name in rows_a] + [24])
    out.append(
        f"{'row':<{width}} {'A':>11} {'B':>11} {'B/A':>6} {'':<7} {'ratio A':>8} {'ratio B':>8}"
    )
    section = None
    counts = {"better": 0, "worse": 0, "same": 0}
    for key, row_a in rows_a.items():
        if key not in rows_b:
            continue
        if key[0] != section:
            section = key[0]
            out.append(f"-- {section}")
        for name, a_row, b_row in _figures(key[1], row_a, rows_b[key]):
            verdict = judge(a_row, b_row, threshold)
            counts[verdict] += 1
            change = f"{b_row['value'] / a_row['value']:.2f}" if a_row["value"] else "-"
            ratios = ""
            if a_row.get("ratio") is not None and b_row.get("ratio") is not None:
                ratios = f" {a_row['ratio']:>7.2f}x {b_row['ratio']:>7.2f}x"
            unit = a_row["unit"]
            out.append(
                f"{name:<{width}} {_num(a_row['value']):>8} {unit:<2} {_num(b_row['value']):>8} "
                f"{unit:<2} {change:>6} {'' if verdict == 'same' else verdict:<7}{ratios}"
            )
    only_a = sorted(set(rows_a) - set(rows_b))
    only_b = sorted(set(rows_b) - set(rows_a))
    out.append("")
    out.append(
        f"{counts['better']} better, {counts['worse']} worse, {counts['same']} within the noise "
        f"(2 x combined sem for pyperf rows, else {threshold:.0%})"
    )
    for label, keys in (("only in A", only_a), ("only in B", only_b)):
        for section_name in sorted({s for s, _ in keys}):
            names = [n for s, n in keys if s == section_name]
            shown = ", ".join(names[:SHOW_ONLY]) + (", ..." if len(names) > SHOW_ONLY else "")
            out.append(f"{label}: {section_name}: {len(names)} rows ({shown})")
    claims_a, claims_b = _claims(a), _claims(b)
    for key in claims_a.keys() & claims_b.keys():
        if claims_a[key] != claims_b[key]:
            word = {True: "holds", False: "FAILS"}
            out.append(f"claim {key[0]}: {key[1]}: {word[claims_a[key]]} -> {word[claims_b[key]]}")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__)
    parser.add_argument("a", help="the earlier results file")
    parser.add_argument("b", help="the later results file")
    parser.add_argument(
        "--threshold", type=float, default=0.05, help="noise threshold for rows without sem"
    )
    options = parser.parse_args(argv)
    try:
        a, b = load_results(options.a), load_results(options.b)
    except ResultsError as exc:
        print(f"compare: {exc}", file=sys.stderr)
        return 2
    print(compare(a, b, options.threshold))
    return 0


if __name__ == "__main__":
    sys.exit(main())
