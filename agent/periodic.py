"""Background work every N seconds for plugins: the live report and timeline rewrites.

Owns one thing: a daemon thread that calls a function every ``interval`` seconds
until it is stopped, survives the function raising (logged once, then counted),
and stops promptly (the wait is an :class:`threading.Event`, not a sleep). It does
not know what the function writes (``agent.plugins.timing``, ``agent.plugins.trace``)
and is not the drain thread (``agent.drain``), whose timing follows the load.

The thread runs with profiling off for itself: it is marked as dispatching
(``agent.events``), so woven code it calls (a JSON encoder a pointcut matched)
reports nothing, as for every plugin receiver.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from agent import events

log = logging.getLogger(__name__)


def parse_interval(text: str | None, source: str) -> float | None:
    """Seconds from ``text`` (``None`` or blank: no interval); ``ValueError`` otherwise.

    ``source`` names where the text came from (``--report-interval``,
    ``$AGENT_REPORT_INTERVAL``, a plugin option) for the message.
    """
    if text is None or not str(text).strip():
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise ValueError(
            f"{source}: {text!r} is not a number of seconds above 0 (for example 10, or 0.5)"
        )
    return seconds


class Periodic:
    """Call ``target()`` every ``interval`` seconds in a thread named ``name``.

    Usage::

        writer = Periodic(10.0, plugin.write, "twinweave-report")
        writer.start()
        ...
        writer.stop()        # wakes the thread and joins it (bounded)
    """

    def __init__(self, interval: float, target: Callable[[], object], name: str) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be above 0 seconds, not {interval!r}")
        self.interval = interval
        self.target = target
        self.name = name
        self.runs = 0
        """Calls of ``target`` that returned."""
        self.errors = 0
        """Calls of ``target`` that raised (the first one is logged with its traceback)."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread (a call under way finishes first, within ``timeout``)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        ident = threading.get_ident()
        events._dispatching.add(ident)  # never profile what a plugin's writer calls
        try:
            while not self._stop.wait(self.interval):
                try:
                    self.target()
                except Exception:
                    self.errors += 1
                    if self.errors == 1:
                        log.exception(
                            "twinweave: %s failed; it keeps running and further errors are "
                            "only counted",
                            self.name,
                        )
                else:
                    self.runs += 1
        finally:
            events._dispatching.discard(ident)
