"""What the smoke tests of the pyperf scripts share: a fixture per row, a run end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Callable

import pytest


def run_quickest(
    script: Path, tmp_path: Path, cwd: Path | None = None, **env: str
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run ``script`` in pyperf's quickest mode (one worker, one value of one loop per row).

    RuntimeWarnings are errors (a coroutine never awaited fails the run). Returns the
    finished process and the path of its ``--summary`` file.
    """
    summary_file = tmp_path / "summary.json"
    done = subprocess.run(
        [sys.executable, str(script), "--debug-single-value", "--summary", str(summary_file)],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONWARNINGS="error::RuntimeWarning", **env),
        cwd=cwd,
    )
    return done, summary_file


def row_fixture(setups: Mapping[str, Callable[[], Any]]) -> Any:
    """A fixture that builds each row of ``setups`` in turn (a test per row) and closes it."""

    @pytest.fixture(params=sorted(setups))
    def variant(request: pytest.FixtureRequest) -> Iterator[Any]:
        built = setups[request.param]()
        try:
            yield built
        finally:
            built.close()

    return variant


def profiled_calls(profiler: Any, co_name: str) -> list[int]:
    """The call counts ``profiler`` (a ``cProfile.Profile``) holds for code named ``co_name``."""
    return [
        entry.callcount
        for entry in profiler.getstats()
        if getattr(entry.code, "co_name", None) == co_name
    ]
