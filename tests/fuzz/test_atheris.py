"""A bounded coverage-guided run (atheris) of every target in ``atheris_targets.py``.

Each target runs in its own process, from its seeds, for a fixed number of inputs with a
fixed libFuzzer seed, and must end with no crash: an input that breaks the target's
property, raises anything undocumented, or takes longer than libFuzzer's per-input limit
(a hang) fails the test, with atheris's report and the input it saved.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.fuzz import seeds

ROOT = Path(__file__).resolve().parents[2]
#: inputs per target: the follower's each cost a connection and a replica on disk
RUNS = {name: 40 if name == "follower" else 2000 for name in seeds.CORPORA}


def _listed_for_this_python() -> bool:
    """Whether twinweave's ``test`` extra installs atheris on this interpreter."""
    try:
        requirements = importlib.metadata.requires("twinweave") or []
    except importlib.metadata.PackageNotFoundError:
        return False
    return any(
        req.name == "atheris" and req.marker is not None and req.marker.evaluate({"extra": "test"})
        for req in map(Requirement, requirements)
    )


def _need_atheris() -> None:
    if importlib.util.find_spec("atheris") is not None:
        return
    version = "{}.{}".format(*sys.version_info[:2])
    if _listed_for_this_python():
        pytest.fail(
            f"atheris is in the test extra for Python {version} but is not installed: "
            'python -m pip install -e ".[test]"'
        )
    pytest.skip(f"atheris is not installed and the test extra has none for Python {version}")


@pytest.mark.parametrize("target", sorted(seeds.CORPORA))
def test_a_bounded_coverage_guided_run_finds_nothing(target: str, tmp_path: Path) -> None:
    _need_atheris()
    env = {k: v for k, v in os.environ.items() if k not in ("AGENT_POINTCUTS", "AGENT_CONFIG")}
    command = [
        sys.executable,
        "-m",
        "tests.fuzz.atheris_targets",
        target,
        str(tmp_path / "corpus"),
        f"-atheris_runs={RUNS[target]}",
        "-seed=1",
        "-timeout=60",  # seconds for one input: longer is a hang
        f"-artifact_prefix={tmp_path}/",
    ]
    # the bound on the whole run is the number of inputs; this one only stops a stuck run
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    report = done.stderr[-6000:]
    crashes = sorted(path.name for path in tmp_path.iterdir() if path.name != "corpus")
    assert done.returncode == 0 and not crashes, f"{crashes}\n{report}"
    assert f"Done {RUNS[target]} " in done.stderr, report
