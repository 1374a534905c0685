"""What the pyperf scripts of the suite (overhead.py, workload.py, weaving.py) share.

Each script keeps its own rows, timing and summary; this module holds the command-line
conventions they have in common (``--quick`` standing for a few pyperf options,
``--summary FILE``) and the last step of a run (print the summary, write it as JSON).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
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
