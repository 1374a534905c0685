"""What the pyperf scripts of the suite (overhead.py, workload.py, live.py, weaving.py) share.

Each script keeps its own rows and summary; this module holds what they have in
common: the command-line conventions (``--quick`` standing for a few pyperf options,
``--summary FILE``), the hook protocol of a row and the timed loop that honours it,
the per-worker cache of set-up rows, pyperf's statistics in the unit a summary wants,
the profiler baselines (a no-op ``sys.setprofile``, ``cProfile``, no-op
``sys.monitoring`` callbacks) and the last step of a run (print the summary, write it
as JSON). It does not own any row, figure or claim.
"""

from __future__ import annotations

import atexit
import cProfile
import functools
import itertools
import json
import math
import os
import sys
import textwrap
import time
from collections.abc import Mapping, Sequence
from typing import Any, Callable, NamedTuple, Protocol


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


SCALE = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}
"""Seconds (pyperf's unit) -> the unit a summary reports in."""


def bench_stats(bench: Any, unit: str = "s", stdev: bool = False) -> dict[str, Any]:
    """pyperf's mean of a benchmark's values and their standard error (stdev / sqrt(n)).

    In ``unit`` (a key of :data:`SCALE`): keys ``mean_<unit>``, ``stdev_<unit>`` (if
    ``stdev``), ``sem_<unit>`` and ``values`` (n); seconds have no suffix (``mean``).
    """
    values = bench.get_values()
    spread = bench.stdev() if len(values) > 1 else 0.0
    scale = SCALE[unit]
    suffix = "" if unit == "s" else f"_{unit}"
    figures = {f"mean{suffix}": bench.mean() * scale}
    if stdev:
        figures[f"stdev{suffix}"] = spread * scale
    figures[f"sem{suffix}"] = spread / math.sqrt(len(values)) * scale
    figures["values"] = len(values)
    return figures


def run_script(
    description: str,
    setups: Mapping[str, Any],
    time_row: Callable[..., float],
    inner_loops: int | Mapping[str, int],
    descriptions: dict[str, str],
    quick_args: Sequence[str],
    argv: Sequence[str] | None,
    summarize: Callable[[dict[str, dict[str, Any]]], dict[str, Any]],
    format_summary: Callable[[dict], str],
    unit: str,
    stdev: bool = False,
    quick_note: str = "",
) -> int:
    """A pyperf script's whole run: time every row of ``setups``, then report.

    In the process that reports, each row's :func:`bench_stats` (in ``unit``) go to
    ``summarize``, and :func:`finish` prints and writes the summary. Returns the exit
    status (0, also in a worker).
    """
    measured = run_rows(
        description, list(setups), time_row, inner_loops, descriptions, quick_args, argv, quick_note
    )
    if measured is None:
        return 0
    results, args = measured
    rows = {name: bench_stats(bench, unit, stdev) for name, bench in results.items()}
    return finish(summarize(rows), args, format_summary)


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


# -- the hook protocol of a row and the timed loop ---------------------------------------------


def nothing() -> None:
    """The hook of a row that has nothing to do there."""


class Hooked(Protocol):
    """What a row (a script's ``Variant``) gives the timed loop, and when the loop calls it.

    ``before`` runs right before the timed window opens and ``after`` right after it
    closes (the profiler rows switch their profiler on and off there, so it is active
    around the timed loop and nowhere else); ``on_clock`` runs at the end of each timed
    value *inside* the window (the agent rows drain there, so every recorded duration
    is drained, and paid for, within the value that recorded it); ``off_clock`` runs
    after the window; ``close`` ends the row (stops its plugins, frees its profiler).
    """

    before: Callable[[], Any]
    after: Callable[[], Any]
    on_clock: Callable[[], Any]
    off_clock: Callable[[], Any]
    close: Callable[[], Any]


_LOOP_SOURCE = """\
def timed_loop(loops, fn, arg, on_clock, off_clock, before, after):
    it = _repeat(None, loops)
    before()
    t0 = _clock()
    for _ in it:
{body}
    on_clock()
    elapsed = _clock() - t0
    after()
    off_clock()
    return elapsed
"""


def make_loop(body: str, inner: int) -> Callable[..., float]:
    """A fresh timed loop (its own code object) running ``body`` ``inner`` times per iteration.

    The loop is called as ``loop(loops, fn, arg, *hooks)`` (see :func:`run_hooked`);
    ``body`` sees ``fn`` and ``arg`` and may span several lines (a ``try``/``except``).
    The body is unrolled so the loop's own cost per call is small and the same for
    every row that runs the same body.
    """
    lines = "\n".join(textwrap.indent(body, " " * 8) for _ in range(inner))
    namespace: dict[str, Any] = {"_repeat": itertools.repeat, "_clock": time.perf_counter}
    exec(compile(_LOOP_SOURCE.format(body=lines), f"<timed loop: {body}>", "exec"), namespace)
    return namespace["timed_loop"]


def run_hooked(loop: Callable[..., float], loops: int, fn: Any, arg: Any, hooks: Hooked) -> float:
    """Seconds for ``loops`` iterations of ``loop`` (from :func:`make_loop`) on ``fn(arg)``."""
    return loop(loops, fn, arg, hooks.on_clock, hooks.off_clock, hooks.before, hooks.after)


def row_timer(
    prepare: Callable[[str], tuple[Hooked, Callable[[int], float]]],
) -> Callable[..., float]:
    """pyperf's time function ``time_row(loops, name)`` over rows set up on first use.

    ``prepare(name)`` sets a row up and returns it with its ``timed(loops)``; a worker
    sets up only the rows it measures, once, and closes each at exit.
    """
    prepared: dict[str, tuple[Hooked, Callable[[int], float]]] = {}

    def time_row(loops: int, name: str) -> float:
        if name not in prepared:
            prepared[name] = prepare(name)
            atexit.register(prepared[name][0].close)
        return prepared[name][1](loops)

    return time_row


# -- the profiler baselines --------------------------------------------------------------------


def monitoring_missing(*rows: str) -> dict[str, str]:
    """``rows`` (those that need ``sys.monitoring``) -> why they are missing, before 3.12."""
    if sys.version_info >= (3, 12):
        return {}
    return {row: "sys.monitoring exists from Python 3.12" for row in rows}


class Instrument(NamedTuple):
    """A profiler of a baseline row: the hooks that switch it and what the row notes about it.

    ``Variant(name, ..., **instrument._asdict())`` gives a row these hooks.
    """

    before: Callable[[], Any]
    after: Callable[[], Any]
    close: Callable[[], Any]
    notes: dict[str, Any]


def noop_profile(frame: Any, event: str, arg: Any) -> None:
    """A ``sys.setprofile`` function that does nothing."""


def setprofile_noop() -> Instrument:
    """``sys.setprofile(noop_profile)`` on around the timed window only."""
    off = functools.partial(sys.setprofile, None)
    return Instrument(functools.partial(sys.setprofile, noop_profile), off, off, {})


def cprofile() -> Instrument:
    """A ``cProfile.Profile`` enabled around the timed window only."""
    profiler = cProfile.Profile()
    return Instrument(profiler.enable, profiler.disable, profiler.disable, {"profiler": profiler})


def monitoring_noop(name: str, code: Any = None) -> Instrument:
    """No-op ``sys.monitoring`` PY_START and PY_RETURN callbacks (3.12+), under tool ``name``.

    With ``code``: local events on that code object only, on from now until ``close``
    (the timed loop itself is not instrumented). Without: global events (every code
    object that runs), switched on right before the timed window and off right after.
    """
    mon = sys.monitoring  # type: ignore[attr-defined]
    both = mon.events.PY_START | mon.events.PY_RETURN
    tool, release = noop_monitoring(name)
    before: Callable[[], Any] = nothing
    after: Callable[[], Any] = nothing
    if code is None:
        before = functools.partial(mon.set_events, tool, both)
        off = after = functools.partial(mon.set_events, tool, 0)
    else:
        mon.set_local_events(tool, code, both)
        off = functools.partial(mon.set_local_events, tool, code, 0)

    def close() -> None:
        if mon.get_tool(tool) == name:
            off()
            release()

    return Instrument(before, after, close, {"tool_id": tool})
