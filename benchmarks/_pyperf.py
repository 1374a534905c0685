"""What the pyperf scripts of the suite (overhead.py, workload.py, weaving.py) share.

Each script keeps its own rows, timing and summary; this module holds the command-line
conventions they have in common (``--quick`` standing for a few pyperf options,
``--summary FILE``), the last step of a run (print the summary, write it as JSON), and
the no-op ``sys.monitoring`` tool their baseline rows use.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Callable


def expand_quick(argv: Sequence[str], quick_args: Sequence[str]) -> list[str]:
    """``argv`` with ``--quick`` replaced by ``quick_args`` (options given after it still win)."""
    if "--quick" not in argv:
        return list(argv)
    return [*quick_args, *[arg for arg in argv if arg != "--quick"]]


def add_options(runner: Any, quick_args: Sequence[str], quick_note: str = "") -> None:
    """Add the suite's ``--summary FILE`` and ``--quick`` to a ``pyperf.Runner``."""
    runner.argparser.add_argument(
        "--summary",
        metavar="FILE",
        help="write the figures, ratios and claims of this run as JSON to FILE",
    )
    runner.argparser.add_argument(
        "--quick",
        action="store_true",
        help=f"a quick look: same as {' '.join(quick_args)}{quick_note}",
    )


def run_rows(
    description: str,
    names: Sequence[str],
    time_row: Callable[..., float],
    inner_loops: int | Mapping[str, int],
    descriptions: dict[str, str],
    quick_args: Sequence[str],
    argv: Sequence[str] | None,
    quick_note: str = "",
) -> tuple[dict[str, Any], Any] | None:
    """Parse the command line and time each row with ``time_row(loops, name)`` under pyperf.

    ``inner_loops`` is the operations per loop iteration, of every row or by row name.
    Returns the benchmarks by row and pyperf's arguments in the process that reports, and
    None in a worker (or in a pyperf mode that measured nothing here, e.g. --compare-to).
    """
    import pyperf  # only the benchmarks themselves need it (their smoke tests do not)

    runner = pyperf.Runner()
    runner.metadata["description"] = description
    add_options(runner, quick_args, quick_note)
    runner.parse_args(expand_quick(sys.argv[1:] if argv is None else argv, quick_args))
    results = {
        name: runner.bench_time_func(
            name,
            time_row,
            name,
            inner_loops=inner_loops if isinstance(inner_loops, int) else inner_loops[name],
            metadata={"description": descriptions[name]},
        )
        for name in names
    }
    if runner.args.worker or any(bench is None for bench in results.values()):
        return None
    return results, runner.args


def mean_sem(bench: Any) -> tuple[float, float, int]:
    """pyperf's mean of a benchmark's values, their standard error (stdev / sqrt(n)), and n."""
    values = bench.get_values()
    stdev = bench.stdev() if len(values) > 1 else 0.0
    return bench.mean(), stdev / math.sqrt(len(values)), len(values)


def finish(summary: dict[str, Any], args: Any, format_summary: Callable[[dict], str]) -> int:
    """Print ``summary`` as a table and, with ``--summary FILE``, write it as JSON."""
    summary["pyperf_output"] = os.path.abspath(args.output) if args.output else None
    print()
    print(format_summary(summary))
    if args.summary:
        with open(args.summary, "w", encoding="utf-8") as stream:
            json.dump(summary, stream, indent=2)
            stream.write("\n")
        print(f"summary written to {args.summary}")
    return 0


def noop_monitoring(name: str) -> tuple[int, Callable[[], None]]:
    """Claim a free ``sys.monitoring`` tool id as ``name``, with do-nothing PY_START and
    PY_RETURN callbacks (3.12+); the caller switches the events on and off.

    The callbacks return ``None``, not ``DISABLE``, so they run on every call. Returns
    the tool id and ``release``, which unregisters the callbacks and frees the id.
    """
    mon = sys.monitoring  # type: ignore[attr-defined]
    events = mon.events
    free = [i for i in (5, 4, 3, 1, 0, 2) if mon.get_tool(i) is None]
    if not free:
        raise RuntimeError("every sys.monitoring tool id is taken")
    tool = free[0]
    mon.use_tool_id(tool, name)

    def on_start(code: Any, offset: int) -> None:
        pass

    def on_return(code: Any, offset: int, value: Any) -> None:
        pass

    mon.register_callback(tool, events.PY_START, on_start)
    mon.register_callback(tool, events.PY_RETURN, on_return)

    def release() -> None:
        mon.register_callback(tool, events.PY_START, None)
        mon.register_callback(tool, events.PY_RETURN, None)
        mon.free_tool_id(tool)

    return tool, release
