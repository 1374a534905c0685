"""The main job, end to end: three failover nodes, a few hundred files, a kill -9 of the master.

    python examples/demo.py [--files 300] [--delay-ms 10] [--keep]

Starts three nodes of a failover cluster (``python -m agent.bootstrap --failover`` running
``examples/fs_adapter.py`` with ``examples/aop.xml``) over the same ``in`` and ``out``
folders, feeds files into ``in`` while the master works, kills the master with ``kill -9``
in the middle of a message, waits for a slave to take over and finish, stops the survivors
with SIGTERM, checks that every file was delivered exactly once (one output per input, each
written once, upper-cased once, with one ``X-Processed-By`` line; the input folder empty;
no temp file left) and prints a summary with the new master's timing table. Exit status 0
only if every check holds; otherwise 1, with the reason (130 when interrupted).

It also shows the profile live: each node serves Prometheus metrics on a loopback port of
its own (the ``prometheus`` plugin, extra ``[prometheus]``), and before the stop the demo
scrapes the new master's ``/metrics`` and prints its workflow count and p99 next to the
timing table; the nodes write their timeline (the ``trace`` plugin), and the new master's
is kept for Perfetto (https://ui.perfetto.dev), in the temporary folder, under a name
the summary gives.

Nothing to set up, nothing leaves the machine: the nodes talk over multicast through
127.0.0.1 with TTL 0, on a random port, under a cluster name of this run's own; their
folders, cache and logs live in a temporary folder (removed at the end unless ``--keep``).
Every wait is bounded and every process started is killed at the end, also on Ctrl-C.
The adapter's ``--trace`` (a test and demo aid) tells the demo what each node did.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

EXAMPLES = Path(__file__).resolve().parent
REPO = EXAMPLES.parent
ADAPTER = EXAMPLES / "fs_adapter.py"
POINTCUTS = EXAMPLES / "aop.xml"
NODES = ("node-a", "node-b", "node-c")
DELAY_MS = 200  # failover.delay: a heartbeat every 200 ms...
RETRIES = 3  # ...and a takeover after 3 missed ones
HEADER = "X-Processed-By: "
WORKFLOW = "fs_adapter.StandardWorkflow.on_message"
LIVE_PLUGINS = """\
    <plugin name="prometheus" address="127.0.0.1" port="{port}"/>
    <plugin name="trace" file="{timeline}"/>
"""
EXIT_DEMOTED = 75  # a node that lost a simultaneous claim steps down with this status

T = TypeVar("T")


class DemoError(Exception):
    """A step did not happen in time, or a check failed; the message says which."""


@dataclass
class Event:
    """One line of the adapter's ``--trace`` file."""

    t: float  # time.monotonic() in the node (one clock system-wide)
    event: str  # start, inflight, begin, written, linked, exists, skipped, recorded, ...
    node: str
    epoch: int
    detail: str
    message: str


class Trace:
    """The trace file shared by the nodes, read as it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[Event] = []
        self._offset = 0
        self._rest = b""

    def refresh(self) -> list[Event]:
        try:
            with open(self.path, "rb") as stream:
                stream.seek(self._offset)
                data = stream.read()
        except FileNotFoundError:
            return self.events
        self._offset += len(data)
        *lines, self._rest = (self._rest + data).split(b"\n")
        for line in lines:
            t, event, node, epoch, detail, message = line.decode().split(" ", 5)
            self.events.append(Event(float(t), event, node, int(epoch), detail, message))
        return self.events

    def of(self, kind: str) -> list[Event]:
        return [e for e in self.refresh() if e.event == kind]


class Node:
    def __init__(
        self,
        name: str,
        popen: subprocess.Popen,
        log: Path,
        report: Path,
        metrics_port: int | None = None,
        timeline: Path | None = None,
    ) -> None:
        self.name = name
        self.popen = popen
        self.log = log
        self.report = report
        self.metrics_port = metrics_port
        self.timeline = timeline

    def alive(self) -> bool:
        return self.popen.poll() is None

    def text(self) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def live_pointcuts(folder: Path, name: str, port: int, timeline: Path) -> Path:
    """``examples/aop.xml`` plus the prometheus plugin on ``port`` and the trace plugin."""
    text = POINTCUTS.read_text(encoding="utf-8")
    extra = LIVE_PLUGINS.format(port=port, timeline=timeline)
    path = folder / f"aop-{name}.xml"
    path.write_text(text.replace("  </plugins>", extra + "  </plugins>", 1), encoding="utf-8")
    return path


def has_prometheus_client(python: str) -> bool:
    """Whether the nodes' interpreter (this one by default) has the prometheus extra."""
    if python == sys.executable:
        return importlib.util.find_spec("prometheus_client") is not None
    probe = subprocess.run([python, "-c", "import prometheus_client"], capture_output=True)
    return probe.returncode == 0


def scrape(port: int) -> dict[str, Any]:
    """One real scrape of a node's ``/metrics``: the workflow's histogram and the cluster."""
    from prometheus_client.parser import text_string_to_metric_families

    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode("utf-8")
    found: dict[str, Any] = {"url": url, "buckets": []}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("name") == WORKFLOW:
                if sample.name.endswith("_bucket"):
                    found["buckets"].append((float(sample.labels["le"]), sample.value))
                elif sample.name.endswith("_count"):
                    found["count"] = int(sample.value)
            elif sample.name.startswith("twinweave_cluster_") and "reason" not in sample.labels:
                found[sample.name[len("twinweave_cluster_") :]] = sample.value
    return found


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The q-quantile from cumulative ``(le, count)`` buckets, as PromQL's
    ``histogram_quantile`` estimates it (linear within the bucket); None without calls."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower  # beyond the last finite bound: PromQL answers that bound
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = bound, count
    return lower


def _die_with_parent() -> None:  # pragma: no cover - runs in the child, between fork and exec
    """Linux: the node gets SIGKILL if the demo itself dies (even by kill -9)."""
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Demo:
    """One run: a temporary folder, three nodes, the feeder, the trace; ``close`` kills all."""

    def __init__(
        self, root: Path, files: int, delay_ms: int, python: str, live: bool = True
    ) -> None:
        self.root = root
        self.live = live  # prometheus and trace plugins on the nodes
        self.files = files
        self.delay_ms = delay_ms
        self.python = python
        self.inbox = root / "in"
        self.outbox = root / "out"
        self.inbox.mkdir()
        self.outbox.mkdir()
        self.cluster = f"demo-{uuid.uuid4().hex[:12]}"
        self.port = random.randint(20000, 60000)
        self.trace = Trace(root / "trace")
        self.nodes: dict[str, Node] = {}
        self.inputs: dict[str, str] = {}  # name -> content fed
        self.t0 = time.monotonic()
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("TWINWEAVE_", "AGENT_"))
        }
        self.env["XDG_CACHE_HOME"] = str(root / "xdg")
        # the nodes find agent, cluster and cache even in a clone that is not installed
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p
        )
        self._feeder: threading.Thread | None = None
        self._stop_feeding = False
        self._feeding_error: BaseException | None = None

    def elapsed(self, t: float | None = None) -> float:
        return (time.monotonic() if t is None else t) - self.t0

    # -- nodes -----------------------------------------------------------------------------

    def start(self, name: str) -> Node:
        settings = {
            "failover.interface": "127.0.0.1",  # loopback only...
            "failover.ttl": "0",  # ...and never routed
            "failover.group": "230.0.0.1",
            "failover.port": str(self.port),
            "failover.cluster": self.cluster,
            "failover.delay": str(DELAY_MS),
            "failover.retries": str(RETRIES),
            "failover.node-id": name,
            "cache.directory": str(self.root / "state" / name),
        }
        report = self.root / f"report-{name}.json"
        pointcuts, port, timeline = POINTCUTS, None, None
        if self.live:
            port, timeline = free_port(), self.root / f"timeline-{name}.json"
            pointcuts = live_pointcuts(self.root, name, port, timeline)
        command = [self.python, "-m", "agent.bootstrap", "--failover"]
        command += ["--pointcuts", str(pointcuts), "--report", str(report)]
        for key, value in settings.items():
            command += ["-D", f"{key}={value}"]
        command += [str(ADAPTER), "--in", str(self.inbox), "--out", str(self.outbox)]
        command += ["--delay-ms", str(self.delay_ms), "--poll-ms", "50"]
        command += ["--trace", str(self.trace.path)]
        log = self.root / f"{name}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.root,  # no folder named agent, cluster or cache in it
                env=self.env,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        node = self.nodes[name] = Node(name, popen, log, report, port, timeline)
        return node

    def close(self) -> None:
        """Kill and reap every node still running (the demo's ``finally``)."""
        for node in self.nodes.values():
            if node.alive():
                node.popen.kill()
        for node in self.nodes.values():
            try:
                node.popen.wait(10)
            except subprocess.TimeoutExpired:  # pragma: no cover - the kernel owes us this
                print(f"node {node.name} (pid {node.popen.pid}) survived SIGKILL", file=sys.stderr)
        if self._feeder is not None:
            self._stop_feeding = True
            self._feeder.join(5)

    def wait(
        self, what: str, probe: Callable[[], T | None], timeout: float, every: float = 0.01
    ) -> T:
        limit = time.monotonic() + timeout
        while True:
            value = probe()
            if value:
                return value
            if self._feeding_error is not None:
                raise DemoError(f"feeding the inbox failed: {self._feeding_error}")
            if time.monotonic() > limit:
                raise DemoError(f"no {what} after {timeout:.0f} s")
            time.sleep(every)

    def logs(self) -> str:
        return "\n".join(f"--- {n.name}.log:\n{n.text()[-3000:]}" for n in self.nodes.values())

    # -- files -----------------------------------------------------------------------------

    def feed(self, batch: int, every_s: float) -> None:
        """Write the inputs in the background, ``batch`` files every ``every_s``, atomically."""

        def run() -> None:
            try:
                for i in range(self.files):
                    if self._stop_feeding:
                        return
                    name = f"msg-{i:05d}.txt"
                    content = f"message {i} of the twinweave demo\nsent at {time.time():.3f}\n"
                    temp = self.inbox / f".{name}.part"  # dot files are not picked up
                    temp.write_text(content, encoding="utf-8")
                    os.replace(temp, self.inbox / name)
                    self.inputs[name] = content
                    if (i + 1) % batch == 0:
                        time.sleep(every_s)
            except BaseException as exc:  # reported by the next wait
                self._feeding_error = exc

        self._feeder = threading.Thread(target=run, name="feeder", daemon=True)
        self._feeder.start()

    def fed_all(self) -> bool:
        return self._feeder is not None and not self._feeder.is_alive()

    def inbox_names(self) -> list[str]:
        return sorted(os.listdir(self.inbox))


def masters(trace: Trace, after_epoch: int = 0) -> list[Event]:
    """The adapter starts (promotions) with an epoch above ``after_epoch``, in time order."""
    return sorted((e for e in trace.of("start") if e.epoch > after_epoch), key=lambda e: e.t)


def check(demo: Demo) -> tuple[list[str], dict[str, Any]]:
    """Every exactly-once check; returns the problems found (none: all is well) and figures."""
    problems: list[str] = []
    events = demo.trace.refresh()
    expected = dict(demo.inputs)
    outputs = {p.name: p for p in demo.outbox.iterdir()}
    temps = sorted(name for name in outputs if name.startswith("."))
    delivered = {name: p for name, p in outputs.items() if not name.startswith(".")}
    missing = sorted(set(expected) - set(delivered))
    extra = sorted(set(delivered) - set(expected))
    if len(expected) != demo.files:
        problems.append(f"only {len(expected)} of {demo.files} files were fed")
    if missing:
        problems.append(f"{len(missing)} files lost (no output), e.g. {missing[:5]}")
    if extra:
        problems.append(f"{len(extra)} unexpected outputs, e.g. {extra[:5]}")
    if temps:
        problems.append(f"{len(temps)} temp files left in out/, e.g. {temps[:5]}")
    left = demo.inbox_names()
    if left:
        problems.append(f"the inbox is not empty: {len(left)} files, e.g. {left[:5]}")
    failed = demo.root / "out.failed"
    if failed.exists() and os.listdir(failed):
        problems.append(f"messages failed: {sorted(os.listdir(failed))[:5]}")

    writes = Counter(e.message for e in events if e.event == "linked")
    writer = {e.message: e.node for e in events if e.event == "linked"}
    twice = sorted(name for name, count in writes.items() if count > 1)
    if twice:
        problems.append(f"{len(twice)} outputs written more than once, e.g. {twice[:5]}")
    # the input upper-cased once, then one header line naming the node that published it
    bad = [
        name
        for name in sorted(set(delivered) & set(expected))
        if delivered[name].read_text(encoding="utf-8")
        != expected[name].upper() + f"{HEADER}{writer.get(name)}\n"
    ]
    if bad:
        problems.append(f"{len(bad)} outputs not transformed exactly once, e.g. {bad[:5]}")
    figures = {
        "delivered": len(set(delivered) & set(expected)),
        "by_node": Counter(writer[name] for name in delivered if name in writer),
        "duplicates": len(twice),
        "lost": len(missing),
        "bad": len(bad),
        "temps": len(temps),
    }
    return problems, figures


def timing_table(report: Path, env: dict[str, str], python: str) -> str | None:
    """``python -m agent.report REPORT``, or None if the node ran no adapter code."""
    if not report.exists():
        return None
    result = subprocess.run(
        [python, "-m", "agent.report", str(report)],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    if result.returncode != 0:
        return f"(python -m agent.report failed: {result.stderr.strip()})"
    return None if "(no woven call was recorded)" in result.stdout else result.stdout.rstrip()


def run_demo(demo: Demo, out: Callable[[str], None]) -> list[str]:
    """The story; returns the problems found (an exception if a step did not happen)."""
    s = demo
    out(
        f"twinweave demo: 3 failover nodes on 127.0.0.1 (cluster {s.cluster}, port {s.port}, "
        f"delay {DELAY_MS} ms, retries {RETRIES}), {s.files} files, {s.delay_ms} ms per message"
    )
    for name in NODES:
        s.start(name)
    out(f"{s.elapsed():6.1f} s  started {', '.join(NODES)} (logs, folders: {s.root})")
    first = s.wait("master", lambda: next(iter(masters(s.trace)), None), 60)
    others = [name for name in NODES if name != first.node]
    following = f"Following master {first.node} (epoch {first.epoch})"
    s.wait(
        f"{following!r} from both slaves",
        lambda: all(following in s.nodes[n].text() for n in others),
        30,
    )
    out(
        f"{s.elapsed(first.t):6.1f} s  {first.node} is master (epoch {first.epoch}); "
        f"{' and '.join(others)} follow it"
    )
    s.feed(batch=10, every_s=0.1)
    out(f"{s.elapsed():6.1f} s  feeding {s.files} files into in/, 10 every 0.1 s")

    # kill the master in the middle of a message, once a third of the files are through
    def mid_message() -> Event | None:
        events = s.trace.refresh()
        if sum(1 for e in events if e.event == "linked") < s.files // 3:
            return None
        mine = [e for e in events if e.node == first.node]
        return mine[-1] if mine and mine[-1].event in ("begin", "written") else None

    caught = s.wait("message in progress on the master", mid_message, 60, every=0.002)
    victim = s.nodes[first.node]
    killed_at = time.monotonic()
    victim.popen.kill()
    status = victim.popen.wait(10)
    done_before = sum(1 for e in s.trace.refresh() if e.event == "linked")
    out(
        f"{s.elapsed(killed_at):6.1f} s  kill -9 {first.node} (the master) while it works on "
        f"{caught.message}; {done_before} files delivered so far"
    )

    def new_master() -> Event | None:
        # the first promotion whose node still runs two heartbeats later (under load two
        # slaves may claim at once: the loser steps down at once, with exit status 75)
        for start in masters(s.trace, first.epoch):
            if s.nodes[start.node].alive() and time.monotonic() - start.t > 2 * DELAY_MS / 1000:
                return start
        return None

    new = s.wait("new master", new_master, 30)
    takeover = new.t - killed_at
    inflight = [e for e in s.trace.of("inflight") if e.epoch > first.epoch]
    listed = ", ".join(sorted({e.message for e in inflight})) or "nothing"
    out(
        f"{s.elapsed(new.t):6.1f} s  {new.node} is master (epoch {new.epoch}), "
        f"{takeover:.2f} s after the kill; cluster.inflight() lists {listed}"
    )

    def finished() -> bool:
        names = [n for n in os.listdir(s.outbox) if not n.startswith(".")]
        return s.fed_all() and not s.inbox_names() and len(names) >= s.files

    s.wait("end of the work (every file delivered, inbox empty)", finished, 60)
    out(f"{s.elapsed():6.1f} s  every output is there and the inbox is empty")
    live = live_metrics(s, s.nodes[new.node], out)

    # stop the slaves first (they are dormant), then the master: nobody takes over any more
    survivors = sorted((n for n in s.nodes.values() if n.alive()), key=lambda n: n.name == new.node)
    statuses = {}
    for node in survivors:
        node.popen.send_signal(signal.SIGTERM)
        try:
            statuses[node.name] = node.popen.wait(20)
        except subprocess.TimeoutExpired:
            raise DemoError(f"{node.name} still runs 20 s after SIGTERM") from None
    out(f"{s.elapsed():6.1f} s  stopped {' and '.join(statuses)} with SIGTERM")

    problems, f = check(s)
    new_report = s.nodes[new.node].report
    ended = {n.name: n.popen.returncode for n in s.nodes.values() if n.name not in statuses}
    stepped_down = [name for name, code in ended.items() if code == EXIT_DEMOTED]
    if status != -signal.SIGKILL:
        problems.append(f"{first.node} ended with {status}, not by kill -9")
    for name, code in statuses.items():
        if code != 0:
            problems.append(f"{name} exited with {code} on SIGTERM, not 0")
    for name, code in ended.items():
        if name != first.node and code != EXIT_DEMOTED:
            problems.append(f"{name} ended on its own with status {code}")

    out("")
    out("who was master when:")
    for e in masters(s.trace):
        note = ""
        if e.node in stepped_down and e.epoch > first.epoch:
            note = " (a simultaneous claim: it stepped down with exit 75, as designed)"
        out(f"  {s.elapsed(e.t):6.1f} s  {e.node}, epoch {e.epoch}{note}")
    silent = DELAY_MS * (RETRIES + 1)
    out(
        f"takeover after kill -9: {takeover:.2f} s (nominal: its links close and its port "
        f"refuses, then a quarter delay to rank = {DELAY_MS // 4} ms; had its host gone: "
        f"{RETRIES} missed heartbeats, then one more delay to claim = {silent} ms)"
    )
    by_node = ", ".join(f"{node} {count}" for node, count in sorted(f["by_node"].items()))
    out(f"files delivered: {f['delivered']} of {s.files} ({by_node}); lost: {f['lost']}")
    out(
        f"duplicates: {f['duplicates']} (outputs written twice); transformed twice or wrongly: "
        f"{f['bad']}; temp files left: {f['temps']}; inbox: "
        + ("empty" if not s.inbox_names() else "NOT empty")
    )
    for message in sorted({e.message for e in inflight}):
        steps = [e for e in s.trace.refresh() if e.message == message and e.epoch > first.epoch]
        done = [e for e in steps if e.event in ("linked", "skipped")]
        if done and done[0].event == "linked":
            how = f"{done[0].node} published it"
        elif done:
            how = f"{done[0].node} found it published by {done[0].detail}, removed its input only"
        else:
            how = "never finished?"
        out(f"in flight at the kill: {message} -> {how}; published once in all")
    if live is not None:
        out("")
        out(
            f"live, from a real scrape of {new.node}'s {live['url']} before the stop: "
            f"twinweave_cluster_is_master {live.get('is_master', 0):.0f}, "
            f"epoch {live.get('epoch', 0):.0f}, takeovers {live.get('takeovers_total', 0):.0f}, "
            f"replicated writes {live.get('replicated_writes_total', 0):.0f}"
        )
        out(f"  workflow {WORKFLOW}: {live.get('count', 0)} calls, {live_p99(live, new_report)}")
    for name in sorted(statuses, key=lambda n: n != new.node):
        table = timing_table(s.nodes[name].report, s.env, s.python)
        if table:
            out(f"\ntiming on {name} (its --report, written at its clean exit):")
            out(table)
    kept = keep_timeline(s, s.nodes[new.node])
    if kept is not None:
        out(f"\ntimeline of {new.node} (Chrome trace events): {kept}")
        out("  open it in https://ui.perfetto.dev (Open trace file) or chrome://tracing")
    return problems


def live_metrics(demo: Demo, node: Node, out: Callable[[str], None]) -> dict[str, Any] | None:
    """The new master's metrics, from a real scrape, or None (said why) when there are none."""
    if node.metrics_port is None:
        return None
    if not has_prometheus_client(demo.python):
        out(
            "          (no live metrics: the prometheus extra is not installed; "
            'pip install -e ".[prometheus]" to see them)'
        )
        return None

    def scraped() -> dict[str, Any] | None:
        try:
            found = scrape(node.metrics_port)  # type: ignore[arg-type]
        except OSError:
            return None
        return found if found.get("count") else None  # the drain delivers every 0.5 s

    return demo.wait(f"a scrape of {node.name}'s /metrics", scraped, 10, every=0.1)


def live_p99(live: dict[str, Any], report: Path) -> str:
    """The scrape's p99 (as PromQL's histogram_quantile estimates it) beside the exact one."""
    p99 = histogram_quantile(0.99, live["buckets"])
    if p99 is None:
        return "no p99 yet"
    finite = sorted(bound for bound, _ in live["buckets"] if bound != float("inf"))
    upper = next((bound for bound in finite if bound >= p99), None)
    lower = max((bound for bound in finite if bound < p99), default=0.0)
    text = f"p99 ~{p99 * 1000:.2f} ms by histogram_quantile"
    if upper is not None:
        text += f" (bucket {lower * 1000:g}-{upper * 1000:g} ms)"
    try:
        report_data = json.loads(report.read_text(encoding="utf-8"))
        exact = next(c for c in report_data["components"] if c["name"] == WORKFLOW)["p99_ns"]
    except (OSError, ValueError, StopIteration, KeyError):
        return text
    return text + f"; the timing report's p99 at exit: {exact / 1e6:.2f} ms"


def keep_timeline(demo: Demo, node: Node) -> Path | None:
    """Copy the node's timeline (written at its clean exit) out of the run's folder."""
    if node.timeline is None or not node.timeline.exists():
        return None
    kept = Path(tempfile.gettempdir()) / f"twinweave-timeline-{demo.cluster}-{node.name}.json"
    shutil.copyfile(node.timeline, kept)
    return kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=300, help="files to feed (default 300)")
    parser.add_argument("--delay-ms", type=int, default=10, help="per message (default 10)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--python", default=sys.executable, help="interpreter of the nodes")
    args = parser.parse_args(argv)
    if args.files < 30:
        parser.error("--files: at least 30")

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    began = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="twinweave-demo-"))
    demo = Demo(root, args.files, args.delay_ms, args.python)
    status = 1
    try:
        problems = run_demo(demo, lambda line: print(line, flush=True))
        print()
        if problems:
            for problem in problems:
                print(f"FAILED: {problem}")
        else:
            print(
                f"OK: every file delivered exactly once across a kill -9 of the master "
                f"({time.monotonic() - began:.1f} s)"
            )
            status = 0
    except DemoError as exc:
        print(f"\nFAILED: {exc}\n{demo.logs()}")
    except KeyboardInterrupt:
        print("\ninterrupted; stopping the nodes")
        status = 130
    finally:
        demo.close()
        if args.keep or status not in (0, 130):
            print(f"(the run's folder, with each node's log: {root})")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
