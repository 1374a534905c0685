"""The Python face of the C timing accelerator (``agent/_speedups.c``), and the fallback switch.

Owns whether timing-mode probes run the C path, which clock it reads, and its
calibration (nanoseconds per tick), and hands a drain the summary of either path:
:func:`summary` from a C recorder, :func:`summarize` from raw durations. The
formulas (buckets, the tick-to-ns mapping, summaries) are ``agent.stats``'s. It
does not decide which probes use it (``agent.plugins.PluginSet.probe_for``).

Why C: a woven call in timing mode must cost no more than a do-nothing closure
decorator. In pure Python the two ``perf_counter_ns()`` calls alone cost that
much (each is a generic call plus an int allocation), before the duration is
stored and later folded into statistics. The C path reads the clock, keeps the
start in a per-thread slot (the token is a cached small int) and folds each
duration into its join point's counters and histogram, allocating nothing.

Clock: the time-stamp counter where the kernel trusts it as its own
clocksource (``/sys/devices/system/clocksource/clocksource0/current_clocksource``
is ``tsc``: invariant, synchronised across CPUs), else ``CLOCK_MONOTONIC``.
Ticks become nanoseconds through a calibration against ``CLOCK_MONOTONIC`` that
spans the whole run so far, so it gets more precise as the run goes on.

The same extension holds, from Python 3.12, the ``sys.monitoring`` callbacks of
the monitoring backend (:func:`monitor`): the interpreter calls them as C
functions, so a monitored call runs no Python code of ours.

``TWINWEAVE_PURE_PYTHON=1`` in the environment, or an install without a C
compiler, leaves everything on the pure-Python path.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

from agent.stats import TimingSummary, scale_ticks
from agent.stats import summarize as summarize  # the pure-Python path's summary, for the drain

log = logging.getLogger(__name__)

_CLOCKSOURCE = "/sys/devices/system/clocksource/clocksource0/current_clocksource"
_MIN_CALIBRATION_NS = 2_000_000

try:
    if os.environ.get("TWINWEAVE_PURE_PYTHON"):
        raise ImportError("TWINWEAVE_PURE_PYTHON is set")
    from agent import _speedups
except ImportError:
    _speedups = None
if _speedups is not None and not hasattr(_speedups, "ticks"):
    log.warning(
        "twinweave: %s was built from an older agent/_speedups.c; ignoring it (pure-Python "
        "path) until it is rebuilt (pip install -e . or setup.py build_ext --inplace)",
        getattr(_speedups, "__file__", "agent._speedups"),
    )
    _speedups = None


def _kernel_trusts_tsc() -> bool:
    try:
        with open(_CLOCKSOURCE, encoding="ascii") as handle:
            return handle.read().strip() == "tsc"
    except OSError:
        return False


CLOCK = "none"
"""What the C path reads: ``"tsc"``, ``"monotonic"``, or ``"none"`` without the extension."""
if _speedups is not None:
    CLOCK = "tsc" if _speedups.use_tsc(_speedups.HAVE_TSC and _kernel_trusts_tsc()) else "monotonic"
    _TICKS0, _NS0 = _speedups.ticks_and_ns()


def available() -> bool:
    """Whether timing-mode probes can use the C path."""
    return _speedups is not None


def recorder() -> Any:
    """A new C recorder (one per join point)."""
    if _speedups is None:
        raise RuntimeError("the C accelerator is not built; check speedups.available() first")
    return _speedups.Recorder()


def entry(generator: bool) -> Any:
    """The C function woven code calls at entry: ``enter_raw`` for generators and coroutines."""
    if _speedups is None:
        raise RuntimeError("the C accelerator is not built")
    return _speedups.enter_raw if generator else _speedups.enter


def monitor_available() -> bool:
    """Whether the ``sys.monitoring`` callbacks in C exist here (the extension, Python 3.12+)."""
    return _speedups is not None and bool(getattr(_speedups, "HAVE_MONITOR", 0))


def monitor(
    running: dict,
    yielded: dict,
    disable: Any,
    failed: Any,
    sweep: Any,
    track_yields: bool,
) -> Any:
    """A new C ``Monitor`` (``agent/_speedups.c``) for ``agent.weaving.monitoring``, or None.

    None when :func:`monitor_available` is false, or when another Monitor is live
    (its per-thread stacks are not shared); the caller then uses its Python
    callbacks. Its ``py_start``/``py_return``/``py_unwind``/``py_yield`` methods are
    the ``sys.monitoring`` callbacks; ``add(code, target)`` registers code;
    ``close()`` ends it.
    """
    if not monitor_available():
        return None
    try:
        return _speedups.Monitor(running, yielded, disable, failed, sweep, track_yields)
    except RuntimeError as exc:
        log.debug("C monitor callbacks not used: %s", exc)
        return None


def _no_ticks() -> int:
    raise RuntimeError("the C accelerator is not built")


ticks: Callable[[], int] = _speedups.ticks if _speedups is not None else _no_ticks
"""The C clock now, in ticks (the unit of a recorder's ``add``); the C function itself."""


def ns_per_tick() -> float:
    """Nanoseconds per clock tick, calibrated over the run so far."""
    if CLOCK != "tsc":
        return 1.0
    ticks, ns = _speedups.ticks_and_ns()
    while ns - _NS0 < _MIN_CALIBRATION_NS:  # only right after start-up: spin ~2 ms once
        ticks, ns = _speedups.ticks_and_ns()
    return (ns - _NS0) / (ticks - _TICKS0)


def summary(rec: Any) -> TimingSummary | None:
    """Take a recorder's statistics (resetting them) in nanoseconds; None if no call."""
    taken = rec.take()
    if not taken[0] and not taken[1]:  # no ok and no failed call: no calibration either
        return None
    return scale_ticks(taken, ns_per_tick())
