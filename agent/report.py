"""``python -m agent.report FILE``: the timing report as a table, and optionally a chart.

This module owns reading a report file written by the ``timing`` plugin, checking
its shape, and rendering it: :func:`format_table` (also used by the plugin to log
the table when there is no report file) and, with ``--chart OUT.png``, a bar chart
through matplotlib when it is installed (it is not a dependency of twinweave). It
does not compute statistics: ``agent.stats`` does, and gives the fields a
component has and the totals of the header; of the agent it imports nothing else,
so it runs anywhere the JSON file is.

Usage::

    python -m agent.report stats.json [--sort total|count|mean|p99|name] [--chart out.png]
    python -m agent.report stats.json --watch [--every 1]

Exit status 0 on success, 2 when the file cannot be used or the chart cannot be
drawn (one line on stderr says why). ``--watch`` follows a report that a running
service rewrites (``interval``): it redraws the table each time the file changes,
waits while the file is missing or being replaced, and ends with Ctrl-C (status 0).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from agent.stats import COUNT_FIELDS, NS_FIELDS, TEXT_FIELDS, totals

_SortKey = Callable[[dict[str, Any]], Any]
SORT_KEYS: dict[str, _SortKey] = {
    "total": lambda c: (-c["total_ns"], c["name"]),
    "count": lambda c: (-c["count"], c["name"]),
    "mean": lambda c: (-c["mean_ns"], c["name"]),
    "p99": lambda c: (-c["p99_ns"], c["name"]),
    "name": lambda c: (c["name"], c["aspect"]),
}
"""``--sort`` choices: biggest first, except ``name`` (alphabetical)."""

CHART_LIMIT = 30
"""Most components drawn in a chart (the first ones in the chosen order)."""


class ReportError(Exception):
    """The report file cannot be used; the message says which file and why."""


def validate(report: Any, source: str = "report") -> dict[str, Any]:
    """Return ``report`` if it has the shape of a timing report, else raise :class:`ReportError`."""

    def bad(what: str) -> ReportError:
        return ReportError(f"{source} is not a twinweave timing report: {what}")

    if not isinstance(report, dict):
        raise bad(f"expected a JSON object, found {type(report).__name__}")
    for key in ("python", "backend"):
        if not isinstance(report.get(key), str):
            raise bad(f"{key!r} must be a string")
    components = report.get("components")
    if not isinstance(components, list):
        raise bad("'components' must be a list")
    for index, component in enumerate(components):
        where = f"components[{index}]"
        if not isinstance(component, dict):
            raise bad(f"{where} must be an object")
        for key in TEXT_FIELDS:
            if not isinstance(component.get(key), str):
                raise bad(f"{where}.{key} must be a string")
        for key in COUNT_FIELDS + NS_FIELDS:
            value = component.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise bad(f"{where}.{key} must be a non-negative integer")
    return report


def load_report(path: str) -> dict[str, Any]:
    """Read and validate a report file; :class:`ReportError` says what is wrong."""
    try:
        with open(path, encoding="utf-8") as stream:
            data = json.load(stream)
    except OSError as exc:
        raise ReportError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ReportError(f"{path} is not JSON (not UTF-8 text)") from exc
    except json.JSONDecodeError as exc:
        raise ReportError(
            f"{path} is not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        ) from exc
    return validate(data, path)


def format_duration(ns: int) -> str:
    """A duration in the unit that keeps it readable: ``812 ns``, ``12.3 µs``, ``4.56 ms``."""
    if ns < 1_000:
        return f"{ns} ns"
    value, unit = ns / 1e3, "µs"
    for bigger in ("ms", "s"):
        if value < 1_000:
            break
        value, unit = value / 1e3, bigger
    decimals = 2 if value < 10 else 1 if value < 100 else 0
    return f"{value:,.{decimals}f} {unit}"


def sorted_components(report: dict[str, Any], sort: str = "total") -> list[dict[str, Any]]:
    """The report's components in ``--sort`` order (see :data:`SORT_KEYS`)."""
    if sort not in SORT_KEYS:
        raise ValueError(f"unknown sort {sort!r}; choose one of {', '.join(SORT_KEYS)}")
    return sorted(report["components"], key=SORT_KEYS[sort])


_COLUMNS: tuple[tuple[str, bool, Callable[[dict[str, Any]], str]], ...] = (
    # header, right-aligned, cell
    ("component", False, lambda c: f"{c['name']} [{c['aspect']}]"),
    ("type", False, lambda c: c["type"]),
    ("count", True, lambda c: f"{c['count']:,}"),
    ("failed", True, lambda c: f"{c['failed']:,}"),
    ("total ms", True, lambda c: f"{c['total_ns'] / 1e6:,.3f}"),
    ("mean µs", True, lambda c: f"{c['mean_ns'] / 1e3:,.2f}"),
    ("p50", True, lambda c: format_duration(c["p50_ns"])),
    ("p99", True, lambda c: format_duration(c["p99_ns"])),
    ("min", True, lambda c: format_duration(c["min_ns"])),
    ("max", True, lambda c: format_duration(c["max_ns"])),
)


def format_table(report: dict[str, Any], sort: str = "total") -> str:
    """The report as an aligned text table under a header line (no trailing newline)."""
    components = sorted_components(report, sort)
    calls, failed = totals(components)
    header = (
        f"twinweave timing report: python {report['python']}, backend {report['backend']}, "
        f"{len(components)} components, {calls:,} calls, {failed:,} failed"
    )
    if not components:
        return f"{header}\n(no woven call was recorded)"
    rows = [[header_text for header_text, _, _ in _COLUMNS]]
    rows.extend([cell(c) for _, _, cell in _COLUMNS] for c in components)
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = [header]
    for number, row in enumerate(rows):
        cells = [
            text.rjust(width) if right else text.ljust(width)
            for text, width, (_, right, _) in zip(row, widths, _COLUMNS)
        ]
        lines.append("  ".join(cells).rstrip())
        if number == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def report_age(report: dict[str, Any]) -> str:
    """When a live report was written and how long into the run (empty for an old file)."""
    written_at = report.get("written_at")
    uptime = report.get("uptime_s")
    if not isinstance(written_at, str):
        return ""
    parts = [f"written at {written_at}"]
    if isinstance(uptime, (int, float)) and not isinstance(uptime, bool):
        parts.append(f"{uptime:,.1f} s after the agent started")
    if report.get("final") is True:
        parts.append("final (the process has ended)")
    return ", ".join(parts)


def _signature(path: str) -> tuple[int, int, int] | None:
    """What changes when the file is rewritten (``os.replace`` gives a new inode)."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_ino, info.st_mtime_ns, info.st_size)


def watch(
    path: str,
    sort: str = "total",
    every: float = 1.0,
    write: Callable[[str], None] | None = None,
    clear: bool | None = None,
) -> None:
    """Redraw the table of ``path`` whenever the file changes, until Ctrl-C.

    ``clear`` (default: when stdout is a terminal) redraws in place; otherwise each
    table follows the previous one. A file that is missing or not (yet) a report is
    reported once, then waited for.
    """
    write = write or _write_stdout
    if clear is None:
        clear = sys.stdout.isatty()
    seen: tuple[int, int, int] | None = None
    problem = ""
    while True:
        signature = _signature(path)
        if signature is None:
            message = f"waiting for {path} (no such file yet)"
            if message != problem:
                problem = message
                write(message + "\n")
        elif signature != seen:
            seen = signature
            try:
                report = load_report(path)
            except ReportError as exc:
                problem = str(exc)
                write(f"agent.report: {exc}; watching for the next write\n")
            else:
                problem = ""
                age = report_age(report)
                heading = f"{path}" + (f": {age}" if age else "")
                table = format_table(report, sort)
                prefix = "\x1b[H\x1b[2J" if clear else ""
                write(f"{prefix}{heading}  (Ctrl-C ends)\n{table}\n\n")
        time.sleep(every)


def _load_pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise ReportError(
            "--chart needs matplotlib, which is not installed in this interpreter "
            "(pip install matplotlib); run without --chart for the table"
        ) from exc
    matplotlib.use("Agg")  # files only: never open a window or need a display
    from matplotlib import pyplot

    return pyplot


def write_chart(report: dict[str, Any], out: str, sort: str = "total", pyplot: Any = None) -> None:
    """Draw total time and p50/p99 per component (first :data:`CHART_LIMIT`) into ``out``."""
    pyplot = pyplot if pyplot is not None else _load_pyplot()
    components = sorted_components(report, sort)[:CHART_LIMIT]
    labels = [f"{c['name']} [{c['aspect']}]" for c in components]
    positions = list(range(len(components)))
    figure, (total_axes, latency_axes) = pyplot.subplots(
        1, 2, figsize=(14, 1.5 + 0.35 * max(len(components), 1)), sharey=True
    )
    total_axes.barh(positions, [c["total_ns"] / 1e6 for c in components])
    total_axes.set_xlabel("total time (ms)")
    total_axes.set_yticks(positions)
    total_axes.set_yticklabels(labels)
    total_axes.invert_yaxis()
    height = 0.4
    latency_axes.barh(
        [p - height / 2 for p in positions],
        [c["p50_ns"] / 1e3 for c in components],
        height,
        label="p50",
    )
    latency_axes.barh(
        [p + height / 2 for p in positions],
        [c["p99_ns"] / 1e3 for c in components],
        height,
        label="p99",
    )
    latency_axes.set_xlabel("latency (µs)")
    latency_axes.legend()
    figure.suptitle(f"twinweave: python {report['python']}, backend {report['backend']}")
    figure.tight_layout()
    try:
        figure.savefig(out)
    except (OSError, ValueError) as exc:
        raise ReportError(f"cannot write the chart to {out}: {exc}") from exc
    finally:
        pyplot.close(figure)


def _write_stdout(text: str) -> None:
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        text = text.replace("µ", "u")
    sys.stdout.write(text)
    sys.stdout.flush()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m agent.report",
        description="Show a twinweave timing report (the JSON file of the timing plugin).",
    )
    parser.add_argument("file", help="report file, e.g. stats.json")
    parser.add_argument(
        "--sort",
        choices=list(SORT_KEYS),
        default="total",
        help="row order: biggest first, or by name (default: total)",
    )
    parser.add_argument("--chart", metavar="OUT.png", help="also draw a chart (needs matplotlib)")
    parser.add_argument(
        "--watch",
        action="store_true",
        help="redraw the table each time the file changes (a live report); Ctrl-C ends",
    )
    parser.add_argument(
        "--every",
        type=float,
        default=1.0,
        metavar="S",
        help="with --watch: seconds between looks at the file (default: 1)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.watch:
        if args.chart:
            parser.error("--watch and --chart do not go together")
        if not args.every > 0:
            parser.error("--every must be above 0 seconds")
        try:
            watch(args.file, args.sort, args.every)
        except KeyboardInterrupt:
            return 0
        except BrokenPipeError:
            return _reader_gone()
    try:
        pyplot = _load_pyplot() if args.chart else None
        report = load_report(args.file)
        _write_stdout(format_table(report, args.sort) + "\n")
        if args.chart:
            write_chart(report, args.chart, args.sort, pyplot)
            sys.stderr.write(f"chart written to {args.chart}\n")
    except ReportError as exc:
        sys.stderr.write(f"agent.report: {exc}\n")
        return 2
    except BrokenPipeError:
        return _reader_gone()
    return 0


def _reader_gone() -> int:
    """The reader of stdout (e.g. `| head`) went away: stop quietly, exit status 1.

    stdout now points at the null device, so flushing it at exit raises no second
    ``BrokenPipeError`` traceback.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 1


if __name__ == "__main__":
    sys.exit(main())
