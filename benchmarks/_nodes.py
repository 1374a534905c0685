"""What the cluster benchmarks (takeover.py, replication.py, adapter.py) share about nodes.

Each script builds its own cluster (settings, program, what it measures); this module
holds how a node process is started (a clean environment of its own, output to a log
file) and how a script waits for a node to get somewhere, failing with the nodes' logs.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class BenchError(RuntimeError):
    """A cluster could not be measured; the message says what was missing."""


def node_env(cache_home: Path) -> dict[str, str]:
    """The environment of a node: ours without the agent's settings, caches in ``cache_home``.

    The nodes find the project's packages even when it is not installed.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWINWEAVE_", "AGENT_"))}
    env["XDG_CACHE_HOME"] = str(cache_home)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_REPO, os.environ.get("PYTHONPATH")) if p)
    return env


def spawn(command: list[str], log: Path, cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    """Start ``command`` with no stdin, its stdout and stderr both written to ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
        )


def wait_for(
    what: str, probe: Callable[[], Any], timeout: float, interval: float, logs: Callable[[], str]
) -> Any:
    """``probe()``'s first true value, asked every ``interval`` s for up to ``timeout`` s.

    Raises :class:`BenchError` naming ``what`` with ``logs()`` when the time is up.
    """
    limit = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > limit:
            raise BenchError(f"no {what} after {timeout:.0f} s\n{logs()}")
        time.sleep(interval)
