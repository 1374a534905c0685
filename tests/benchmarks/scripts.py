"""Running a pyperf script of the suite end to end, as its smoke tests do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


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
