"""The fault campaign (``python -m benchmarks.chaos``): its checker, a short campaign, cleanup.

The checker is tested on runs written by hand (each defect it must find, planted in an
otherwise clean run); the campaign itself runs 10 seeded runs over both backends on real
network namespaces (root only) and must find nothing, and leave nothing behind, even
when it is interrupted.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.chaos.check import check_run, message_name, message_text
from benchmarks.chaos.net import PREFIX, namespaces
from cache.store import LocalStore, encode_value

REPO = Path(__file__).resolve().parents[2]
WINDOW = 0.45


class FakeRun:
    """A run folder as the campaign leaves it: n1 master at epoch 1, n2 and n3 following it,
    ``count`` messages delivered and acknowledged by n1, everything stopped cleanly."""

    def __init__(self, folder: Path, count: int = 3, backend: str = "multicast") -> None:
        self.folder = folder
        (folder / "in").mkdir()
        (folder / "out").mkdir()
        self.events = [f"0.0 plan seed=1 hosts=3 backend={backend} window={WINDOW}"]
        self.trace: list[str] = ["1.0 start n1 1 0 -"]
        self.logs = {
            "n1.0": [
                "0.9 INFO cluster Promoted to Master node (epoch 1, rank 0 among 3 nodes)",
                "0.95 INFO  [cache.replication] slave n2 is live at (1, 0)",
                "0.96 INFO  [cache.replication] slave n3 is live at (1, 0)",
            ],
            "n2.0": ["0.9 INFO cluster Following master n1 (epoch 1)"],
            "n3.0": ["0.9 INFO cluster Following master n1 (epoch 1)"],
        }
        self.ledger: dict[str, object] = {}
        for i in range(count):
            self.deliver(i, "n1", 1, 2.0 + i / 10)
        self.events += [f"9.0 fed {count}", "9.1 settled n1", "9.5 end"]

    def deliver(self, i: int, node: str, epoch: int, t: float, ledger: bool = True) -> None:
        name = message_name(i)
        for k, event in enumerate(("begin", "written", "linked", "recorded", "acked")):
            self.trace.append(f"{t + k / 1000:.6f} {event} {node} {epoch} - {name}")
        text = message_text(i).upper() + f"X-Processed-By: {node}\n"
        (self.folder / "out" / name).write_text(text, encoding="utf-8")
        if ledger:
            self.ledger[name] = {"node": node, "epoch": epoch}

    def write(self) -> dict:
        (self.folder / "events.log").write_text("\n".join(sorted(self.events, key=_t)) + "\n")
        (self.folder / "trace").write_text("\n".join(sorted(self.trace, key=_t)) + "\n")
        for name, lines in self.logs.items():
            (self.folder / f"{name}.log").write_text("\n".join(lines) + "\n")
        store = LocalStore(str(self.folder / "state" / "n1" / "data" / "chaos.ledger"))
        for key, value in self.ledger.items():
            store.put(key, encode_value(value))
        store.close()
        return check_run(self.folder)


def _t(line: str) -> float:
    return float(line.split(" ", 1)[0])


def test_a_clean_run_passes_and_its_ledger_is_read(tmp_path):
    verdict = FakeRun(tmp_path).write()
    assert verdict["failures"] == []
    assert verdict["acked"] == 3 and verdict["fed"] == 3
    assert verdict["final_master"] == "n1" and verdict["not_rejoined"] == []


def test_two_masters_outside_a_partition_fail_the_run_inside_one_they_are_counted(tmp_path):
    (tmp_path / "a").mkdir()
    run = FakeRun(tmp_path / "a")
    run.trace.append("2.05 start n2 2 0 -")  # n2 acts while n1 still does: no partition
    run.trace.append("2.15 linked n2 2 0 msg-000099.txt")
    verdict = run.write()
    assert verdict["double_masters_outside"] == 1
    assert "double masters outside partitions" in verdict["failures"]

    (tmp_path / "b").mkdir()
    run = FakeRun(tmp_path / "b")
    run.events += ["1.9 fault isolate n1 master n1|n2,n3", "2.5 heal"]
    run.trace += ["2.05 start n2 2 0 -", "2.15 linked n2 2 0 msg-000099.txt"]
    verdict = run.write()
    assert (verdict["double_masters_inside"], verdict["double_masters_outside"]) == (1, 0)
    assert verdict["double_master_max_s"] == pytest.approx(0.1, abs=1e-6)
    assert "double masters outside partitions" not in verdict["failures"]

    (tmp_path / "c").mkdir()
    run = FakeRun(tmp_path / "c", backend="etcd")  # etcd has a quorum: no excuse
    run.events += ["1.9 fault isolate n1 master n1|n2,n3", "2.5 heal"]
    run.trace += ["2.05 start n2 2 0 -", "2.15 linked n2 2 0 msg-000099.txt"]
    assert "double masters (etcd)" in run.write()["failures"]


def test_an_acknowledged_write_missing_on_the_final_master_is_lost(tmp_path):
    (tmp_path / "a").mkdir()
    run = FakeRun(tmp_path / "a")
    run.deliver(3, "n1", 1, 3.0, ledger=False)
    run.events = [e.replace("fed 3", "fed 4") for e in run.events]
    verdict = run.write()
    assert verdict["acked_lost_outside"] == [message_name(3)]
    assert "acked_lost_outside" in verdict["failures"]

    (tmp_path / "b").mkdir()
    run = FakeRun(tmp_path / "b")  # acknowledged once n1 had dropped its unreachable slaves
    run.events += ["2.9 fault isolate n1 master n1|n2,n3", "3.2 heal"]
    for slave in ("n2", "n3"):
        closed = f"replication to {slave} (('10.77.0.2', 1)) closed: too slow to acknowledge"
        run.logs["n1.0"].append(f"2.95 INFO  [cache.replication] {closed}")
    run.deliver(3, "n1", 1, 3.0, ledger=False)
    run.events = [e.replace("fed 3", "fed 4") for e in run.events]
    verdict = run.write()
    assert verdict["acked_lost_no_live_slave"] == [message_name(3)]
    assert verdict["failures"] == []

    (tmp_path / "c").mkdir()
    run = FakeRun(tmp_path / "c", backend="etcd")  # n1 and n2 cut off from etcd and n3
    run.events += ["2.9 fault split n1 master n1,n2|n3", "4.0 heal"]
    run.deliver(3, "n1", 1, 3.0, ledger=False)  # acknowledged by n2, in n1's grace period
    run.trace.append("3.5 start n3 2 0 -")  # n3 took over on the other side
    run.events = [e.replace("fed 3", "fed 4") for e in run.events]
    verdict = run.write()
    assert verdict["acked_lost_losing_side"] == [message_name(3)]
    assert verdict["acked_lost_outside"] == []


def test_files_lost_twice_or_half_written_and_reused_epochs_and_crashes_fail(tmp_path):
    run = FakeRun(tmp_path, count=4)
    os.remove(tmp_path / "out" / message_name(0))  # lost
    run.trace.append(f"5.0 linked n1 1 - {message_name(1)}")  # published twice
    (tmp_path / "out" / message_name(2)).write_text("half")  # not its input
    (tmp_path / "out" / ".msg-000003.txt.n1.tmp").write_text("")  # a temp file left
    run.logs["n2.0"].append("3.0 INFO cluster Promoted to Master node (epoch 1, rank 0 among 1)")
    run.logs["n2.1"] = ["4.0 INFO cluster Following master n1 (epoch 1)"]
    run.logs["n3.0"].append("Traceback (most recent call last):")
    verdict = run.write()
    assert verdict["files_lost"] == [message_name(0)]
    assert verdict["files_twice"] == [message_name(1)]
    assert verdict["files_half_written"] == [".msg-000003.txt.n1.tmp", message_name(2)]
    assert verdict["epochs_shared_outside"] == [1]
    assert verdict["crashes"] == ["n3.0.log"]
    assert {
        "files_lost",
        "files_twice",
        "files_half_written",
        "epochs_shared_outside",
        "crashes",
    } <= set(verdict["failures"])


def test_a_node_promoted_twice_at_one_epoch_reuses_it_and_one_left_behind_never_rejoined(
    tmp_path,
):
    run = FakeRun(tmp_path)
    run.logs["n1.1"] = ["5.0 INFO cluster Promoted to Master node (epoch 1, rank 0 among 3)"]
    run.logs["n3.0"].append("6.0 INFO cluster Following master n2 (epoch 7)")
    verdict = run.write()
    assert verdict["epochs_reused_on_a_node"] == ["n1@1"]
    assert verdict["not_rejoined"] == ["n3"]


needs_root = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.geteuid() != 0,
    reason="network namespaces need root on Linux",
)


def _ours(pid: int) -> list[str]:
    return [n for n in namespaces() if n.startswith(f"{PREFIX}{pid}-")]


@contextlib.contextmanager
def campaign(*args: str) -> Iterator[subprocess.Popen]:
    """``python -m benchmarks.chaos ARGS``, interrupted (it cleans up) if still running."""
    command = [sys.executable, "-m", "benchmarks.chaos", *args]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()


@pytest.mark.slow
@needs_root
def test_a_short_campaign_on_both_backends_finds_nothing_and_leaves_nothing(tmp_path):
    report = tmp_path / "verdicts.json"
    args = [
        "--runs",
        "10",
        "--seed",
        "3",
        "--faults",
        "3",
        "--backend",
        "both",
        "--json",
        str(report),
    ]
    with campaign(*args) as process:
        out, _ = process.communicate(timeout=900)
    verdicts = json.loads(report.read_text())
    failed = [(v["folder"], v["failures"]) for v in verdicts if v["failures"]]
    assert process.returncode == 0 and not failed, f"{failed}\n{out}"
    assert len(verdicts) == 10
    assert {v["backend"] for v in verdicts} == {"multicast", "etcd"}
    faults = sum(sum(v["faults"].values()) for v in verdicts)
    kinds = {kind for v in verdicts for kind in v["faults"]}
    assert faults == 30 and len(kinds) >= 4, (faults, kinds)
    assert sum(v["acked"] for v in verdicts) > 100  # the adapter worked between faults
    assert "double-master intervals" in out  # the figures were printed
    assert _ours(process.pid) == [], namespaces()


@pytest.mark.slow
@needs_root
def test_an_interrupted_campaign_removes_its_namespaces_and_processes(tmp_path):
    keep = tmp_path / "runs"
    with campaign("--runs", "5", "--backend", "etcd", "--keep", str(keep)) as process:
        limit = time.monotonic() + 60
        while not list(keep.glob("*/n*.log")) and time.monotonic() < limit:
            time.sleep(0.2)
        time.sleep(2)  # the nodes and etcd run
        assert _ours(process.pid), "the campaign made no namespaces"
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=60)
    assert process.returncode == 130, out
    assert _ours(process.pid) == []
    left = subprocess.run(["pgrep", "-f", str(keep)], capture_output=True, text=True)
    assert left.stdout == "", left.stdout
