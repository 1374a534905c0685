"""The built-in ``timing`` plugin: per-component statistics and the JSON report.

This module owns the plugin that keeps each component's statistics (one aspect's
join point: count, failed, total, min, mean, p50, p99, max, in ns) from the drains
and writes them at stop as the report of DESIGN.md, atomically. It does not
compute the statistics (``agent.stats``), collect durations (woven code and
``agent.events.Probe`` do), schedule drains (``agent.drain``) or render tables
(``agent.report``, whose :func:`~agent.report.format_table` it reuses when there
is no report file and the table goes to the log).

What is exact in a report, and how close its p50/p99 estimates are, is said in
``agent.stats``.

Options (attributes of ``<plugin name="timing" .../>``):

* ``report``, the JSON file to write at stop. It wins over ``--report FILE``;
  without either, the table goes to stderr at exit (it is the profile the user
  asked for, so it is shown whatever the logging level). A relative path is taken
  from the working directory at start; ``{pid}`` in it becomes the process id
  (child processes that inherit ``AGENT_POINTCUTS`` would otherwise overwrite
  each other's report).
* ``interval``, seconds: also rewrite the report that often while the program
  runs (it wins over ``--report-interval`` and ``$AGENT_REPORT_INTERVAL``). Each
  write is atomic and carries ``written_at`` (ISO 8601, UTC), ``uptime_s`` (since
  the agent started) and ``final`` (true for the write at exit), so
  ``python -m agent.report stats.json --watch`` can follow a service that runs for
  weeks. A rewrite holds what the drain thread delivered, at most about 0.5 s old.
"""

from __future__ import annotations

import datetime
import itertools
import json
import logging
import os
import platform
import sys
import time
from typing import Any

from agent.events import JoinPoint
from agent.files import write_atomic
from agent.periodic import Periodic, parse_interval
from agent.plugins import AgentContext, Plugin, PluginError
from agent.report import format_table
from agent.stats import Components, TimingSummary

log = logging.getLogger(__name__)


def write_report(report: dict[str, Any], path: str) -> None:
    """Write ``report`` as indented JSON to ``path`` atomically (:func:`agent.files.write_atomic`).

    Readers see the old file or the new one, never half of one. Raises ``OSError``.
    """
    write_atomic(path, itertools.chain(json.JSONEncoder(indent=2).iterencode(report), "\n"))


class TimingPlugin(Plugin):
    """Per-component timing statistics, written as a JSON report (or shown) at stop.

    With an interval, the report is also rewritten every that many seconds.
    """

    name = "timing"

    def __init__(self, report: str | None = None, interval: str | None = None) -> None:
        self.report = report or None
        self.interval = _interval(interval, "interval")
        self.path: str | None = None
        """Where :meth:`stop` writes the report, decided at :meth:`start`."""
        self._python = platform.python_version()
        self._backend = "unknown"
        self.components = Components()
        self._started_at = time.monotonic()
        self._writer: Periodic | None = None
        self._write_failed = False

    def start(self, context: AgentContext) -> None:
        self._python = context.python
        self._backend = context.backend
        self._started_at = time.monotonic()
        chosen = self.report or context.report
        # "{pid}" in the name keeps the reports of processes sharing a pointcut file apart.
        self.path = os.path.abspath(chosen.replace("{pid}", str(os.getpid()))) if chosen else None
        interval = self.interval or getattr(context, "report_interval", None)
        if interval is None:
            return
        if self.path is None:
            log.warning(
                "twinweave timing: a report interval (%g s) needs a report file "
                '(report="stats.json" or --report); the table is shown at exit only',
                interval,
            )
            return
        self._writer = Periodic(interval, self._rewrite, "twinweave-report")
        self._writer.start()

    def on_timings(self, joinpoint: JoinPoint, ok: list[int], failed: list[int]) -> None:
        self.components.add(joinpoint, ok, failed)

    def on_summary(self, joinpoint: JoinPoint, summary: TimingSummary) -> None:
        self.components.add_summary(joinpoint, summary)

    def build_report(self, final: bool = True) -> dict[str, Any]:
        """The report so far: DESIGN.md's fields, and when and how long into the run."""
        return {
            "python": self._python,
            "backend": self._backend,
            "components": self.components.as_dicts(),
            "written_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "uptime_s": round(time.monotonic() - self._started_at, 3),
            "final": final,
        }

    def _rewrite(self) -> None:
        """One live rewrite (the writer thread); a failure is logged once, then retried."""
        assert self.path is not None
        try:
            write_report(self.build_report(final=False), self.path)
        except OSError as exc:
            if not self._write_failed:
                self._write_failed = True
                log.error(
                    "twinweave timing: could not rewrite the report %s (%s: %s); retrying "
                    "every %g s, and once more at exit",
                    self.path,
                    type(exc).__name__,
                    exc,
                    self._writer.interval if self._writer else 0,
                )
        else:
            self._write_failed = False

    def stop(self) -> None:
        """Write the report to :attr:`path`, or show it on stderr as a table; never raises."""
        if self._writer is not None:
            self._writer.stop()
        report = self.build_report(final=True)
        if self.path is None:
            _show(format_table(report))
            return
        try:
            write_report(report, self.path)
        except Exception as exc:
            log.error(
                "twinweave timing: could not write the report to %s (%s: %s); check that "
                "the folder exists and is writable. The report was:\n%s",
                self.path,
                type(exc).__name__,
                exc,
                format_table(report),
            )
        else:
            log.info("twinweave timing: report written to %s", self.path)


def _interval(text: str | None, option: str) -> float | None:
    try:
        return parse_interval(text, f'timing plugin option {option}="{text}"')
    except ValueError as exc:
        raise PluginError(str(exc)) from None


def _show(table: str) -> None:
    """The table on stderr, at exit: the user's profile, shown without asking."""
    stream = sys.stderr
    if stream is None:  # pythonw, or a closed stderr: nowhere to show it
        return
    try:
        stream.write(table + "\n")
        stream.flush()
    except UnicodeEncodeError:
        stream.write(table.replace("µ", "u") + "\n")
    except (OSError, ValueError):
        pass
