"""The election model-checked: spin explores ``cluster/election.pml`` for each property.

Every property of the model (a ``PROP_...`` define; see the model's header) is checked
on 2 and on 3 nodes, exhaustively within the model's bounds (faults per run, epochs),
and must hold with a meaningful number of states explored. Each mutation of a rule
(``-DDROP_LEASE``, ``-DDROP_TIEBREAK``) must make spin find a violation of the property
it breaks. One search per test, so that pytest's workers share them out.

``python tests/cluster/test_election_model.py`` prints states explored and time per
property as a Markdown table (the README's figures).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

MODEL = Path(__file__).resolve().parents[2] / "cluster" / "election.pml"

PROPERTIES = {
    "PROP_ONE_MASTER_PER_EPOCH": "at most one master per epoch (once two meet)",
    "PROP_EPOCHS_INCREASE": "epochs never reused on a node (across restarts)",
    "PROP_LEASE_STOPS": "a master whose lease ran out stops acting",
    "PROP_LEASE_HANDOVER": "no node claims while a master it followed acts on that lease",
    "PROP_ONE_MASTER_AFTER_FAULTS": "after faults end, one master emerges and stays",
}

# The model's bounds per cluster size, so that every search is exhaustive and quick:
# on 2 nodes, two process faults (kill, SIGTERM, SIGSTOP, a cut link) and two packets
# lost or duplicated per run, retries = 2; on 3 nodes, one process fault, no single
# packet lost (a cut link loses them all), retries = 1 (the window is one delay).
BOUNDS = {
    2: {"MAXF": 2, "MAXL": 2, "RETRIES": 2},
    3: {"MAXF": 1, "MAXL": 0, "RETRIES": 1},
}

# mutation -> the properties it must break (checked on 2 nodes)
MUTATIONS = {
    "DROP_LEASE": ["PROP_LEASE_STOPS"],
    "DROP_TIEBREAK": ["PROP_ONE_MASTER_PER_EPOCH", "PROP_ONE_MASTER_AFTER_FAULTS"],
}

MIN_STATES = 100_000  # a search that explores fewer has lost most of the model
DEPTH = 20_000  # pan's depth bound: far beyond the deepest path of the bounded model


@dataclass(frozen=True)
class Check:
    prop: str
    nodes: int
    mutation: str | None = None


@dataclass
class Result:
    errors: int
    states: int
    transitions: int
    depth: int
    seconds: float  # wall time of the search, compilation excluded (for the figures only)
    truncated: bool  # pan reached its depth bound: the search was not exhaustive
    output: str


def tools_missing() -> str | None:
    missing = [tool for tool in ("spin", "gcc") if shutil.which(tool) is None]
    if missing:
        return (
            f"{' and '.join(missing)} not found: the election model check needs spin and a "
            "C compiler (Debian: apt-get install spin gcc; .ci/run installs spin when missing)"
        )
    return None


def run(check: Check) -> Result:
    """spin -a the model with this property (and mutation), compile pan, search."""
    defines = [f"-DN={check.nodes}", f"-D{check.prop}"]
    defines += [f"-D{k}={v}" for k, v in BOUNDS[check.nodes].items()]
    if check.mutation:
        defines.append(f"-D{check.mutation}")
    with tempfile.TemporaryDirectory(prefix="twinweave-spin-") as folder:
        work = Path(folder)
        shutil.copy(MODEL, work / MODEL.name)
        steps = [
            ["spin", "-a", *defines, MODEL.name],
            ["gcc", "-w", "-O1", "-DSAFETY", "-DMEMLIM=4096", "-o", "pan", "pan.c"],
        ]
        for step in steps:
            done = subprocess.run(step, cwd=work, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(step)} failed:\n{done.stdout}{done.stderr}")
        started = time.monotonic()
        done = subprocess.run(["./pan", f"-m{DEPTH}"], cwd=work, capture_output=True, text=True)
        seconds = time.monotonic() - started
    out = done.stdout + done.stderr

    def number(pattern: str) -> int:
        found = re.search(pattern, out)
        if found is None:
            raise RuntimeError(f"pan's output has no {pattern!r}:\n{out}")
        return int(float(found.group(1)))

    return Result(
        errors=number(r"errors: (\d+)"),
        states=number(r"([\d.e+]+) states, stored"),
        transitions=number(r"([\d.e+]+) transitions"),
        depth=number(r"depth reached (\d+)"),
        seconds=seconds,
        truncated="max search depth too small" in out,
        output=out,
    )


@pytest.fixture(autouse=True)
def tools():
    problem = tools_missing()
    if problem:
        pytest.fail(problem)


@pytest.mark.parametrize("nodes", [2, 3])
@pytest.mark.parametrize("prop", list(PROPERTIES))
def test_property_holds(prop, nodes):
    result = run(Check(prop, nodes))
    assert result.errors == 0, f"spin found a violation of {prop}:\n{result.output}"
    assert not result.truncated, f"the search hit pan's depth bound:\n{result.output}"
    assert result.states >= MIN_STATES, result.output


@pytest.mark.parametrize(
    ("mutation", "prop"), [(m, p) for m, props in MUTATIONS.items() for p in props]
)
def test_mutation_is_caught(mutation, prop):
    result = run(Check(prop, 2, mutation))
    assert result.errors >= 1, f"-D{mutation} went unnoticed by {prop}:\n{result.output}"
    assert "assertion violated" in result.output


def table() -> str:
    """States explored and time per property, on 2 and 3 nodes, as Markdown."""
    rows = [
        "| property | nodes | states | transitions | depth | seconds |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for n in (2, 3):
        for prop, meaning in PROPERTIES.items():
            r = run(Check(prop, n))
            verdict = "" if r.errors == 0 else " **VIOLATED**"
            rows.append(
                f"| {meaning}{verdict} | {n} | {r.states:,} | {r.transitions:,} | "
                f"{r.depth} | {r.seconds:.1f} |"
            )
    return "\n".join(rows)


if __name__ == "__main__":
    problem = tools_missing()
    if problem:
        sys.exit(problem)
    print(table())
