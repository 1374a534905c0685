"""The built-in ``trace`` plugin: the steps as a timeline file for Perfetto UI and chrome://tracing.

This module owns keeping the newest steps in bounded memory, turning them into
the Chrome Trace Event Format and writing that file atomically, at exit and, with
an interval, while the program runs. It does not build steps (``agent.events``),
run the writer thread (``agent.periodic``) or aggregate statistics
(``agent.plugins.timing``).

Options (attributes of ``<plugin name="trace" .../>``, all optional):

* ``file``, default ``trace-{pid}.json``: where the timeline goes. A relative path
  is taken from the working directory at start; ``{pid}`` becomes the process id
  (children that inherit ``AGENT_POINTCUTS`` write their own file).
* ``limit``, default 1,000,000: how many steps to keep, the newest ones. A kept
  step costs about 150 bytes (its nine fields and their integers), so the default
  holds about 150 MB at most, plus about 100 bytes a step while a write runs; the
  file takes about 200 bytes a step.
* ``interval``, seconds: also rewrite the file that often while the program runs.

Cost. The receiver is the bound ``extend`` of a ``deque(maxlen=9 * limit)``: a
woven call pays one C call on top of steps mode, no Python frame, and the step's
nine fields (strings, integers, ``None``) go into the deque one by one. Not
``append`` of the :class:`~agent.events.Step` itself: a named tuple stays tracked
by the cyclic garbage collector (CPython untracks only exact tuples of atoms), and
a million of them kept alive make every full collection walk them all, which
measured 270 to 600 ns per call (3.9 to 3.13); fields cost the collector nothing.
Counting the steps that fell out of the window would need a frame per call, so the
count comes from ``on_timings`` instead: the drain thread hands over the durations
of the same calls (which the probe records anyway), and their number is the number
of steps. Converting to JSON happens only when the file is written, at a few µs
per kept step (5 to 7 s for a million on a shared 2-core VM), on the writer thread
or at exit; a rewrite competes with the program for the GIL while it runs, so
choose ``interval`` and ``limit`` together.

The file. An object ``{"traceEvents": [...], "displayTimeUnit": "ms",
"otherData": {...}}``. A step of a function is a complete event (``"ph": "X"``):
``name`` the function, ``cat`` the step type, ``ts`` and ``dur`` in microseconds,
``pid``, ``tid`` and ``args`` (``message_id``, ``type``, ``aspect``, ``order``, and
``failed``, the exception type, when the call raised). Metadata events
(``"ph": "M"``) name the process and each thread, from ``threading.enumerate()``
(seen at start, at every write, and about once a second while calls are drained,
so a thread that ended before the write is usually still named). Events come in
the order the steps ended (a nested step before its parent); viewers sort them.
``otherData`` has the time origin, ``steps_seen``, ``steps_kept``,
``steps_dropped`` (the older steps left out because of ``limit``: exact in the
file written at exit; a rewrite while running counts the calls drained so far,
at most about 0.5 s behind), ``written_at`` and ``final``.

Time origin and precision. ``ts`` is relative to ``otherData.time_origin_unix_s``
(a whole second of the epoch just before the oldest step in the file), not
absolute: an absolute timestamp is about 1.8e15 µs, where a double (what
chrome://tracing, Python's and most JSON readers parse numbers into) is 0.25 µs
apart, which would blur the nesting of calls that last a few hundred ns. Relative
to the oldest kept step the numbers stay small however long the service runs.
``ts`` and ``dur`` are written as exact decimals of whole nanoseconds
(``12.345``): Perfetto reads them back to the very nanosecond and a double reader
to well under one, so a step nested in another (same ``tid``) lies inside it
exactly: both ends are taken from one monotonic clock, the child's start after
its parent's and its end before, and no rounding is involved. Add
``time_origin_unix_s * 1e6`` to a ``ts`` for wall-clock time.

Generators and coroutines. Their steps run from the first resume to the end,
with the caller running in between, so they may overlap the caller's steps
without nesting, which a thread's track cannot show (Perfetto truncates such
slices). They are written as async events instead (``"ph": "b"`` and ``"e"``, one
``id`` per step, same fields): Perfetto and chrome://tracing draw them on tracks
of their own under the process.

Threads. ``tid`` is the thread's native id (the one ``top -H`` and py-spy show)
when the thread was seen alive; for one that never was, a made-up id from
:data:`UNNAMED_TID` upwards, named after its Python ident (what logging's
``%(thread)d`` prints). Python's own ident is not used as the ``tid``: it is a
64-bit address, and Perfetto reads ``tid`` as a 32-bit number.
"""

from __future__ import annotations

import datetime
import itertools
import json
import logging
import os
import platform
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any, Callable

from agent.events import JoinPoint, Step
from agent.files import write_atomic
from agent.periodic import Periodic, parse_interval
from agent.plugins import AgentContext, Plugin, PluginError

log = logging.getLogger(__name__)

DEFAULT_FILE = "trace-{pid}.json"
DEFAULT_LIMIT = 1_000_000
UNNAMED_TID = 0x7F000000
"""First ``tid`` given to threads never seen alive: above any Linux thread id
(at most 2**22) and below 2**31, so no reader takes it for a negative number."""
THREAD_MEMORY = 10_000
"""Most threads remembered (ident -> native id and name), the oldest forgotten first."""
LEARN_EVERY = 1.0
"""Seconds between looks at the living threads from the drain thread."""
BATCH = 4096
"""Events joined into one string per write to the file."""

FIELDS = len(Step._fields)
"""Values kept per step: the fields of :class:`~agent.events.Step`, in their order."""
_START = Step._fields.index("start_ns")
_THREAD = Step._fields.index("thread")
_encode = json.dumps


class TracePlugin(Plugin):
    """The newest ``limit`` steps, written as a Chrome trace file (see the module docstring)."""

    name = "trace"

    def __init__(
        self,
        file: str = DEFAULT_FILE,
        limit: str | int = DEFAULT_LIMIT,
        interval: str | None = None,
    ) -> None:
        if not str(file).strip():
            raise PluginError(
                f'trace plugin option file="{file}" is empty; name the timeline file, for '
                f'example file="{DEFAULT_FILE}"'
            )
        self.file = str(file)
        self.limit = _limit(limit)
        try:
            self.interval = parse_interval(interval, f'trace plugin option interval="{interval}"')
        except ValueError as exc:
            raise PluginError(str(exc)) from None
        self.path: str | None = None
        """Where the file is written, decided at :meth:`start`."""
        self._fields: deque[Any] = deque(maxlen=FIELDS * self.limit)
        # The whole per-call cost: one C call, no Python frame (see the module docstring).
        # receivers() takes any callable attribute, so the deque's own method is the receiver.
        self.on_step: Callable[[Step], None] = self._fields.extend
        self._seen = 0
        self._resumable: set[tuple[str, str]] = set()
        self._threads: dict[int, tuple[int | None, str]] = {}
        self._learned_at = 0.0
        self._threads_lock = threading.Lock()
        self._python = platform.python_version()
        self._backend = "unknown"
        self._writer: Periodic | None = None
        self._write_lock = threading.Lock()
        self._write_failed = False

    def start(self, context: AgentContext) -> None:
        self._python = context.python
        self._backend = context.backend
        path = os.path.abspath(self.file.replace("{pid}", str(os.getpid())))
        folder = os.path.dirname(path)
        if not os.path.isdir(folder):
            raise PluginError(
                f'trace plugin option file="{self.file}": the folder {folder} does not exist; '
                "create it or choose another file"
            )
        if os.path.isdir(path):
            raise PluginError(
                f'trace plugin option file="{self.file}": {path} is a folder; name a file'
            )
        self.path = path
        self._learn_threads()
        if self.interval is not None:
            self._writer = Periodic(self.interval, self.write, "twinweave-trace")
            self._writer.start()

    def accepts(self, joinpoint: JoinPoint) -> bool:
        """Every join point; remembers the generators and coroutines (written as async events)."""
        if joinpoint.kind != "function":
            self._resumable.add((joinpoint.aspect, joinpoint.name))
        return True

    def on_timings(self, joinpoint: JoinPoint, ok: list[int], failed: list[int]) -> None:
        """Count the steps (one duration per step) and now and then note the living threads."""
        self._seen += len(ok) + len(failed)
        now = time.monotonic()
        if now - self._learned_at >= LEARN_EVERY:
            self._learned_at = now
            self._learn_threads()

    def stop(self) -> None:
        """Write the file one last time; never raises (a failure is logged)."""
        if self._writer is not None:
            self._writer.stop()
        if self.path is not None:
            self.write(final=True)

    def write(self, final: bool = False) -> bool:
        """Write the file now; ``False`` (and logged) when it could not be written."""
        assert self.path is not None, "write() before start()"
        with self._write_lock:  # the writer thread and stop() never write at once
            seen = self._seen  # read before the copy: the count never runs ahead of it
            # One C-level copy, atomic under the GIL. Whole steps only: each extend adds
            # nine fields at once and the length is a multiple of nine, so the oldest
            # step falls out whole.
            fields = list(self._fields)
            kept = len(fields) // FIELDS
            self._learn_threads()
            try:
                write_atomic(self.path, self._document(fields, seen, final))
            except OSError as exc:
                if final or not self._write_failed:
                    log.error(
                        "twinweave trace: could not write the timeline to %s (%s: %s); check "
                        "that the folder exists and is writable%s",
                        self.path,
                        type(exc).__name__,
                        exc,
                        "" if final else ", retrying at every interval and at exit",
                    )
                self._write_failed = True
                return False
            self._write_failed = False
        if final:
            log.info("twinweave trace: %d steps written to %s", kept, self.path)
        return True

    def _learn_threads(self) -> None:
        """Note the native id and name of every living thread (drain and writer threads)."""
        with self._threads_lock:
            threads = self._threads
            for thread in threading.enumerate():
                ident = thread.ident
                if ident is not None:
                    threads.pop(ident, None)  # re-inserted last: the living are forgotten last
                    threads[ident] = (getattr(thread, "native_id", None), thread.name)
            for ident in list(itertools.islice(threads, max(0, len(threads) - THREAD_MEMORY))):
                del threads[ident]

    def _document(self, fields: list[Any], seen: int, final: bool) -> Iterator[str]:
        """The file's text, in pieces, from the kept steps' fields."""
        pid = os.getpid()
        kept = len(fields) // FIELDS
        origin_s = min(fields[_START::FIELDS]) // 1_000_000_000 if kept else 0
        with self._threads_lock:
            known = dict(self._threads)
        tids: dict[int, int] = {}
        names: dict[int, str] = {}
        unnamed = itertools.count(UNNAMED_TID)
        for ident in dict.fromkeys(fields[_THREAD::FIELDS]):
            native_id, name = known.get(ident, (None, f"Python thread {ident}"))
            if native_id is None:
                native_id = next(unnamed)
            tids[ident] = native_id
            names[native_id] = name
        yield '{"traceEvents":[\n'
        program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
        metadata = [_metadata("process_name", pid, pid, program)]
        metadata += [_metadata("thread_name", pid, tid, name) for tid, name in names.items()]
        yield ",\n".join(metadata)
        steps = zip(*[iter(fields)] * FIELDS)
        events = _events(steps, origin_s * 1_000_000_000, pid, tids, self._resumable)
        for batch in _batches(events, BATCH):
            yield ",\n"
            yield ",\n".join(batch)
        other = {
            "tool": "twinweave trace plugin",
            "python": self._python,
            "backend": self._backend,
            "pid": pid,
            "time_origin_unix_s": origin_s,
            "time_origin": _iso(origin_s),
            "limit": self.limit,
            "steps_seen": max(seen, kept),
            "steps_kept": kept,
            "steps_dropped": max(0, seen - kept),
            "written_at": _iso(time.time()),
            "final": final,
        }
        yield f'\n],\n"displayTimeUnit":"ms",\n"otherData":{_encode(other)}}}\n'


def _events(
    steps: Iterable[tuple[Any, ...]],
    origin_ns: int,
    pid: int,
    tids: dict[int, int],
    resumable: set[tuple[str, str]],
) -> Iterator[str]:
    """One JSON event per step (two for a generator's or coroutine's), as text.

    Written by hand rather than through ``json.dumps`` of a dict per event (two to
    three times faster: a write of a million steps is what the writer thread does
    every interval); every string still goes through ``json.dumps``, once (cached). Times
    are exact decimals of whole ns in µs, ``12345`` ns -> ``12.345``.
    """
    fixed: dict[tuple[str, str], tuple[str, str, bool]] = {}
    text: dict[str | None, str] = {}
    where = {ident: f'"pid":{pid},"tid":{tid}' for ident, tid in tids.items()}
    async_id = 0
    for aspect, type_, name, message_id, start_ns, duration_ns, failed, thread, order in steps:
        key = (aspect, name)
        parts = fixed.get(key)
        if parts is None:
            head = f'{{"name":{_encode(name)},"cat":{_encode(type_)},"ph":'
            labels = f',"type":{_encode(type_)},"aspect":{_encode(aspect)}'
            parts = fixed[key] = (head, labels, key in resumable)
        head, labels, is_async = parts
        mid = text.get(message_id)
        if mid is None:
            mid = text[message_id] = _encode(message_id)
        args = f'"args":{{"message_id":{mid}{labels},"order":{order}'
        if failed is not None:
            args += f',"failed":{_encode(failed)}'
        start = start_ns - origin_ns
        ts = f"{start // 1000}.{start % 1000:03d}"
        if is_async:
            async_id += 1
            end = start + duration_ns
            yield f'{head}"b","id":"0x{async_id:x}","ts":{ts},{where[thread]},{args}}}}}'
            yield (
                f'{head}"e","id":"0x{async_id:x}","ts":{end // 1000}.{end % 1000:03d},'
                f"{where[thread]}}}"
            )
        else:
            dur = f"{duration_ns // 1000}.{duration_ns % 1000:03d}"
            yield f'{head}"X","ts":{ts},"dur":{dur},{where[thread]},{args}}}}}'


def _metadata(kind: str, pid: int, tid: int, name: str) -> str:
    return _encode(
        {"name": kind, "ph": "M", "pid": pid, "tid": tid, "args": {"name": name}},
        separators=(",", ":"),
    )


def _iso(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds")


def _batches(items: Iterable[str], size: int) -> Iterator[list[str]]:
    iterator = iter(items)
    while True:
        batch = list(itertools.islice(iterator, size))
        if not batch:
            return
        yield batch


def _limit(text: Any) -> int:
    try:
        limit = int(str(text).strip())
    except ValueError:
        limit = 0
    if limit < 1:
        raise PluginError(
            f'trace plugin option limit="{text}" is not a whole number of steps above 0 '
            f'(for example limit="{DEFAULT_LIMIT}")'
        )
    return limit
