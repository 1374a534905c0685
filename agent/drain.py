"""The drain thread: moves recorded durations from probes to timing plugins, periodically.

This module owns *when* draining happens and that it survives ``fork``: one daemon
thread per :class:`Drainer` (named ``twinweave-drain``) calls a drain function every
0.5 s, faster while batches are big, and a lock makes sure two drains never run at
once. It does not know what a drain does (that is ``agent.plugins.PluginSet.drain``)
nor what plugins make of the samples.

Theory of operation. Timing-mode probes append durations to plain lists without a
lock; the lists grow until someone drains them. For a hot function (millions of
calls per second) the interval shrinks, halving down to 50 ms while a drain returns
more than 100k samples, and doubles back to 0.5 s when the load drops, so memory
stays bounded by roughly "calls per 50 ms". In a child process made by ``fork`` the
thread does not exist any more (only the forking thread survives): an
``os.register_at_fork`` hook gives each drainer a fresh lock (the parent's may have
been held by its drain thread at the moment of the fork) and restarts its thread
if it was running.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable

log = logging.getLogger(__name__)

THREAD_NAME = "twinweave-drain"
INTERVAL = 0.5
"""Seconds between drains when the load is light."""
MIN_INTERVAL = 0.05
"""Shortest interval, reached while drains keep returning more than ``BUSY_SAMPLES``."""
BUSY_SAMPLES = 100_000
"""A drain returning more samples than this makes the next one come sooner."""

_drainers: weakref.WeakSet[Drainer] = weakref.WeakSet()


class Drainer:
    """Runs ``target`` (which returns the number of samples it moved) now and then.

    Usage::

        drainer = Drainer(plugin_set.drain)
        drainer.start()     # background thread, every 0.5 s
        drainer.drain()     # one drain now, from this thread
        drainer.stop()      # wake the thread and join it

    ``drain`` and the thread share one lock, so a drain never overlaps another.
    """

    def __init__(
        self,
        target: Callable[[], int],
        interval: float = INTERVAL,
        min_interval: float = MIN_INTERVAL,
        busy_samples: int = BUSY_SAMPLES,
    ) -> None:
        self._target = target
        self.interval = interval
        self.min_interval = min_interval
        self.busy_samples = busy_samples
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed_logged = False
        _drainers.add(self)

    @property
    def running(self) -> bool:
        """Whether the background thread is alive in this process."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def drain(self, timeout: float = -1) -> int | None:
        """Run the target once, now; ``None`` if another drain held the lock past ``timeout``.

        ``timeout`` is in seconds; the default ``-1`` waits as long as it takes.
        """
        lock = self._lock  # the one to release, even if a fork in the target replaces it
        if not lock.acquire(timeout=timeout):
            return None
        try:
            return self._target()
        except Exception:
            if not self._failed_logged:
                self._failed_logged = True
                log.exception("twinweave: draining timings failed; the drain thread goes on")
            return 0
        finally:
            lock.release()

    def start(self) -> None:
        """Start the background thread (does nothing if it already runs)."""
        if self.running:
            return
        self._wake = threading.Event()
        thread = threading.Thread(target=self._run, args=(self._wake,), name=THREAD_NAME)
        thread.daemon = True
        self._thread = thread
        thread.start()

    def stop(self, timeout: float = 2.0) -> bool:
        """Wake the thread and wait up to ``timeout`` s for it; True when it has ended.

        The caller does the final drain (the thread does not, so that a plugin stuck
        in a drain cannot hold up the exit for longer than ``timeout``).
        """
        thread = self._thread
        self._thread = None
        self._wake.set()
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout)
        if thread.is_alive():
            log.warning(
                "twinweave: the drain thread did not stop within %.1f s (a timing plugin is slow)",
                timeout,
            )
            return False
        return True

    def next_interval(self, interval: float, moved: int | None) -> float:
        """The wait before the next drain: halved after a busy drain, else doubled back."""
        if moved is not None and moved > self.busy_samples:
            return max(self.min_interval, interval / 2)
        return min(self.interval, interval * 2)

    def _run(self, wake: threading.Event) -> None:
        interval = self.interval
        while not wake.wait(interval):
            interval = self.next_interval(interval, self.drain())

    def _after_fork_in_child(self) -> None:
        # Only the forking thread exists in the child: the parent's lock may be held
        # for ever by a drain thread that is gone, and that thread must be replaced.
        was_running = self._thread is not None
        self._lock = threading.Lock()
        self._thread = None
        if was_running:
            self.start()


def _after_fork_in_child() -> None:
    for drainer in list(_drainers):
        drainer._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
