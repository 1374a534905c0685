"""The site hook: ``python -X agent=aop.xml app.py`` or ``AGENT_POINTCUTS=aop.xml`` start the agent.

Owns activation from the ``twinweave.pth`` file that the package installs into
site-packages. The ``.pth`` line itself only looks at ``sys._xoptions`` and
``os.environ`` and imports this module when one of them asks for the agent, so
an interpreter that does not ask pays for two dictionary lookups.

When the interpreter is about to run a script, the script must be woven before
it runs, and the interpreter compiles and runs it straight after ``site`` with no
hook in between. So the hook runs the script itself, exactly as the bootstrap
does (``__main__``, ``sys.argv``, ``sys.path[0]``), then finishes the process the
way the interpreter would (wait for non-daemon threads, run ``atexit``
callbacks, flush) and leaves with the script's exit status. ``-m``, ``-c`` and
interactive sessions are left to the interpreter: the import hook weaves modules
as they load. The agent starts at most once per process (``agent.runtime``), so
the bootstrap and this hook never weave twice.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import Any, Callable

_activated = False


def requested() -> str | None:
    """The pointcut file asked for by ``-X agent=FILE`` or ``$AGENT_POINTCUTS``, if any."""
    value: Any = sys._xoptions.get("agent") or os.environ.get("AGENT_POINTCUTS")
    if value is True:
        return ""
    return value or None


def _exit_status(code: Any) -> int:
    """What the interpreter makes of ``SystemExit(code)``."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    try:
        sys.stderr.write(f"{code}\n")
    except (OSError, ValueError):
        pass
    return 1


def finish_process(run: Callable[[], None]) -> None:
    """Run ``run``, then end the process as the interpreter ends one, with its status."""
    status = 0
    try:
        run()
    except SystemExit as exc:
        status = _exit_status(exc.code)
    threading._shutdown()  # type: ignore[attr-defined]  # join non-daemon threads, as Py_Finalize does
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    os._exit(status)


def _original_argv() -> list[str]:
    """The interpreter's own command line (``sys.orig_argv`` from 3.10; /proc on 3.9 Linux)."""
    orig = getattr(sys, "orig_argv", None)
    if orig is not None:
        return list(orig)
    try:
        with open("/proc/self/cmdline", "rb") as handle:
            return [os.fsdecode(a) for a in handle.read().split(b"\0") if a]
    except OSError:
        return []


def _bootstrap_will_run() -> bool:
    """``python -m agent.bootstrap``: leave the agent to the bootstrap and its options."""
    if not sys.argv or sys.argv[0] != "-m":
        return False
    argv = _original_argv()
    return any(a == "-m" and b == "agent.bootstrap" for a, b in zip(argv, argv[1:]))


def _script() -> str | None:
    """The script the interpreter is about to run, if it runs one."""
    if sys.flags.interactive or not sys.argv:
        return None
    first = sys.argv[0]
    if first in ("", "-", "-c", "-m") or not os.path.exists(first):
        return None
    return first


def activate() -> None:
    """Start the agent for this interpreter; called from ``twinweave.pth``."""
    global _activated
    if _activated:
        return
    _activated = True
    if _bootstrap_will_run():
        return
    path = requested()
    from agent import bootstrap, runtime
    from agent.pointcuts import PointcutError, load

    def fail(message: str) -> None:
        sys.stderr.write(f"twinweave: error: {message}\n")
        sys.stderr.flush()
        os._exit(bootstrap.EXIT_USAGE)  # raising here would abort interpreter start-up

    if not path:
        fail("-X agent needs a pointcut file: -X agent=aop.xml")
        return
    bootstrap.configure_logging(bool(os.environ.get("AGENT_VERBOSE")))
    try:
        config = load(path)
        agent = runtime.start(
            config, os.environ.get("AGENT_BACKEND", "auto"), os.environ.get("AGENT_REPORT")
        )
    except PointcutError as exc:
        fail(str(exc))
        return
    except (runtime.AgentError, RuntimeError) as exc:
        fail(str(exc))
        return
    script = _script()
    if script is not None:
        finish_process(lambda: bootstrap.run_script(script, sys.argv[1:], agent))
