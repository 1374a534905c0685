"""``python examples/demo.py``, README's main job: the whole story, exit 0, and nothing left.

The demo starts three real failover nodes on loopback, kills the master with ``kill -9``
mid-stream and checks the output itself; here its exit status and summary are checked, and
that it leaves no process and no folder behind, also when interrupted with Ctrl-C.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
from fs_cluster import DEMO

from tests.nodeproc import clean_env

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

DEMO_TIMEOUT_S = 120.0


def processes_mentioning(text: str) -> list[int]:
    """The pids of the processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


def demo_env(tmp_path: Path) -> dict[str, str]:
    env = clean_env(tmp_path)
    env["TMPDIR"] = str(tmp_path)  # the demo's temporary folder goes there
    return env


def test_the_demo_delivers_every_file_exactly_once_and_exits_0(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(DEMO)],
        cwd=tmp_path,
        env=demo_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert re.search(r"node-\w is master \(epoch 1\)", out), out
    killed = re.search(r"kill -9 (node-\w) \(the master\) while it works on (msg-\d+\.txt)", out)
    assert killed, out
    new = re.search(r"(node-\w) is master \(epoch (\d+)\), (\d+\.\d\d) s after the kill", out)
    assert new and new.group(1) != killed.group(1), out
    assert float(new.group(3)) < 10.0
    assert re.search(r"takeover after kill -9: \d+\.\d\d s", out), out
    assert re.search(r"files delivered: 300 of 300 \(.*\); lost: 0", out), out
    assert "duplicates: 0 (outputs written twice); transformed twice or wrongly: 0" in out, out
    assert "temp files left: 0; inbox: empty" in out, out
    assert f"timing on {new.group(1)} (its --report" in out, out
    assert "fs_adapter.StandardWorkflow.on_message [workflow]" in out, out
    assert out.rstrip().splitlines()[-1].startswith("OK: every file delivered exactly once")
    live = re.search(
        rf"live, from a real scrape of {new.group(1)}'s http://127\.0\.0\.1:\d+/metrics before "
        rf"the stop: twinweave_cluster_is_master 1, epoch {new.group(2)}, takeovers 1, "
        r"replicated writes (\d+)",
        out,
    )
    assert live and int(live.group(1)) > 0, out
    calls = re.search(
        r"workflow fs_adapter\.StandardWorkflow\.on_message: (\d+) calls, p99 ~\d+\.\d\d ms by "
        r"histogram_quantile .*; the timing report's p99 at exit: \d+\.\d\d ms",
        out,
    )
    assert calls and 0 < int(calls.group(1)) <= 300, out
    timeline = re.search(rf"timeline of {new.group(1)} \(Chrome trace events\): (\S+)", out)
    assert timeline, out
    kept = Path(timeline.group(1))
    assert kept.parent == tmp_path  # in the temporary folder, outside the run's own
    events = json.loads(kept.read_text())["traceEvents"]
    assert any(e.get("name") == "fs_adapter.StandardWorkflow.on_message" for e in events)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("twinweave-demo-")]
    assert processes_mentioning(str(tmp_path)) == []


def test_ctrl_c_stops_the_demo_and_every_node_it_started(tmp_path: Path) -> None:
    log = tmp_path / "demo.out"
    with open(log, "wb") as out:
        demo = subprocess.Popen(
            [sys.executable, str(DEMO)],
            cwd=tmp_path,
            env=demo_env(tmp_path),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        limit = time.monotonic() + 60.0
        while "is master (epoch 1)" not in log.read_text():
            assert demo.poll() is None and time.monotonic() < limit, log.read_text()
            time.sleep(0.02)
        assert len(processes_mentioning(str(tmp_path))) == 3  # the nodes, running
        demo.send_signal(signal.SIGINT)
        assert demo.wait(30) == 130, log.read_text()
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(10)
        for pid in processes_mentioning(str(tmp_path)):  # never leave a node behind
            os.kill(pid, signal.SIGKILL)
    assert processes_mentioning(str(tmp_path)) == [], log.read_text()
    assert "interrupted; stopping the nodes" in log.read_text()


def load_demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("twinweave_demo", DEMO)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_demo_s_verdict_catches_lost_duplicated_and_twice_transformed_files(
    tmp_path: Path,
) -> None:
    """The demo's own checks (its exit status depends on them), on a planted outcome."""
    demo_module = load_demo()
    demo = demo_module.Demo(tmp_path, 30, 0, sys.executable)
    lines = []
    for i in range(30):
        name = f"msg-{i:05d}.txt"
        demo.inputs[name] = f"message {i}\n"
        (demo.outbox / name).write_text(f"MESSAGE {i}\nX-Processed-By: node-a\n")
        lines.append(f"{i}.0 linked node-a 1 - {name}\n")
    demo.trace.path.write_text("".join(lines))
    assert demo_module.check(demo)[0] == []

    (demo.outbox / "msg-00001.txt").unlink()  # lost
    with open(demo.trace.path, "a") as trace:  # published a second time
        trace.write("99.0 linked node-b 2 - msg-00002.txt\n")
    (demo.outbox / "msg-00003.txt").write_text(  # transformed twice
        "MESSAGE 3\nX-Processed-By: node-a\nX-PROCESSED-BY: NODE-A\nX-Processed-By: node-a\n"
    )
    (demo.outbox / ".msg-00004.txt.node-a.tmp").write_text("MESS")  # a temp file left
    (demo.inbox / "msg-00005.txt").write_text("message 5\n")  # an input left
    problems = "\n".join(demo_module.check(demo)[0])
    assert "1 files lost (no output), e.g. ['msg-00001.txt']" in problems
    assert "1 outputs written more than once, e.g. ['msg-00002.txt']" in problems
    assert "msg-00003.txt" in problems and "not transformed exactly once" in problems
    assert "1 temp files left in out/" in problems
    assert "the inbox is not empty: 1 files" in problems
