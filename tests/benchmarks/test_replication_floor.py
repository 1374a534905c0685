"""``benchmarks/replication.py``'s round-trip floor and issue 13's one-key targets.

Behaviour only: the floor measures round trips to a real echo process on loopback and
stops it; the verdicts are judged from the figures they are given. Nothing about speed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from benchmarks import replication


def test_the_floor_times_every_round_trip_and_stops_its_echo(tmp_path: Path) -> None:
    for journal in (False, True):
        floor = replication.round_trips(tmp_path, sys.executable, 50, journal)
        assert floor["trips"] == 50
        assert 0 < floor["p50_us"] <= floor["p99_us"]
    journals = list(tmp_path.glob("floor-*/journal"))
    assert len(journals) == 1  # only the journal variant writes one, every request in it
    assert journals[0].stat().st_size == replication.FLOOR_REQUEST * 55  # 50 + 5 warm-up


def _scenario(local: float, one: float, four: float, p99_ms: float) -> dict:
    row = {"p50_ms": 1.0, "p99_ms": p99_ms, "max_ms": 2.0}
    return {
        "median": {
            "local/1": dict(row, per_s=local),
            "replicated/1": dict(row, per_s=one),
            "replicated/4": dict(row, per_s=four),
        }
    }


@pytest.mark.parametrize(
    "one, p99, holds", [(600.0, 1.5, [True, True]), (400.0, 2.5, [False, False])]
)
def test_the_one_key_targets_are_judged_against_local(one: float, p99: float, holds: list) -> None:
    scenarios = {"sync, 1 slave": _scenario(1000.0, one, 500.0, p99)}
    floor = {"bare": {"p50_us": 80.0}, "journal": {"p50_us": 90.0}}
    verdicts = replication.one_key_verdicts(scenarios, floor)
    assert [v["holds"] for v in verdicts] == holds
    assert "2000 us" in verdicts[0]["value"]  # 0.5 x of 1000/s leaves 2 ms a write
    assert "80 us" in verdicts[0]["value"]


def test_the_two_slave_targets_use_their_thread_counts() -> None:
    scenarios = {"sync, 2 slaves": _scenario(1000.0, 390.0, 610.0, 1.0)}
    verdicts = replication.one_key_verdicts(scenarios, None)
    assert [(v["holds"], "1 thr" in v["target"]) for v in verdicts] == [
        (False, True),
        (True, False),
    ]
