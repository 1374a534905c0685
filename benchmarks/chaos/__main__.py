"""``python -m benchmarks.chaos [--runs N] [--seed S] [--backend multicast|etcd|both]``.

Runs N seeded runs (:mod:`benchmarks.chaos.campaign`), judges each with
:mod:`benchmarks.chaos.check`, and prints the figures: runs, faults by kind, double-master
intervals (inside / outside partitions, longest), acknowledged writes lost, files lost or
delivered twice or half-written, epochs reused, nodes that never rejoined, and seconds of
unavailability per fault kind. Run ``r`` has seed ``S * 1000 + r`` and 3 hosts, or 5 on
every third run (so that 3/2 splits happen); ``--only RUN`` repeats the run of that seed
alone (the same schedule of faults; what the nodes do in between is up to timing).
``--json FILE`` writes every run's verdict.

Needs root on Linux (network namespaces). Every namespace, link and process a run makes is
removed when the run ends, fails or is interrupted (Ctrl-C, SIGTERM); leftovers of a
campaign that was killed outright are swept at the next start. Exit status 1 if any run
failed a check.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.chaos.campaign import Plan, Run
from benchmarks.chaos.check import check_run
from benchmarks.chaos.net import sweep

LOSSES = (
    "acked_lost_outside",
    "acked_lost_no_live_slave",
    "acked_lost_losing_side",
    "files_lost",
    "files_twice",
    "files_half_written",
    "files_failed",
    "epochs_reused_on_a_node",
    "epochs_shared_outside",
    "epochs_shared_inside",
    "not_rejoined",
    "crashes",
)


def plans(runs: int, seed: int, backend: str, faults: int) -> list[Plan]:
    backends = ["multicast", "etcd"] if backend == "both" else [backend]
    made = []
    for r in range(runs):
        hosts = 5 if r % 3 == 2 else 3
        made.append(Plan(seed * 1000 + r, hosts, backends[r % len(backends)], faults=faults))
    return made


def summarize(verdicts: list[dict[str, Any]]) -> dict[str, Any]:
    by_backend: dict[str, Any] = {}
    for backend in sorted({v["backend"] for v in verdicts}):
        mine = [v for v in verdicts if v["backend"] == backend]
        faults: Counter[str] = Counter()
        for v in mine:
            faults.update(v["faults"])
        down: dict[str, list[float]] = {}
        never = Counter()
        for v in mine:
            for kind, seconds in v["unavailable"]:
                if seconds is None:
                    never[kind] += 1
                else:
                    down.setdefault(kind, []).append(seconds)
        by_backend[backend] = {
            "runs": len(mine),
            "failed_runs": sum(1 for v in mine if v["failures"]),
            "faults": dict(sorted(faults.items())),
            "double_masters_inside": sum(v["double_masters_inside"] for v in mine),
            "double_masters_outside": sum(v["double_masters_outside"] for v in mine),
            "double_master_max_s": max((v["double_master_max_s"] for v in mine), default=0.0),
            "acked_writes": sum(v["acked"] for v in mine),
            "refused_at_start": sum(v["refused_at_start"] for v in mine),
            "files_fed": sum(v["fed"] for v in mine),
            **{key: sum(len(v[key]) for v in mine) for key in LOSSES},
            "unavailable_s": {
                kind: {"n": len(s), "median": statistics.median(s), "max": max(s)}
                for kind, s in sorted(down.items())
            },
            "no_delivery_after": dict(never),
        }
    return by_backend


def table(summary: dict[str, Any]) -> str:
    backends = list(summary)
    rows = [("figure", *backends), ("---", *["---"] * len(backends))]

    def row(label: str, fn: Any) -> None:
        rows.append((label, *[str(fn(summary[b])) for b in backends]))

    row("runs (failed)", lambda s: f"{s['runs']} ({s['failed_runs']})")
    row("faults injected", lambda s: ", ".join(f"{k} {n}" for k, n in s["faults"].items()))
    row("double-master intervals inside partitions", lambda s: s["double_masters_inside"])
    row("double-master intervals outside partitions", lambda s: s["double_masters_outside"])
    row("longest double-master interval (s)", lambda s: f"{s['double_master_max_s']:.2f}")
    row("acknowledged writes", lambda s: s["acked_writes"])
    row("acknowledged writes lost outside partitions", lambda s: s["acked_lost_outside"])
    row(
        "... lost by a master with no live slave / by the losing side of a partition",
        lambda s: f"{s['acked_lost_no_live_slave']} / {s['acked_lost_losing_side']}",
    )
    row("files fed", lambda s: s["files_fed"])
    row(
        "files lost / delivered twice / half-written",
        lambda s: f"{s['files_lost']} / {s['files_twice']} / {s['files_half_written']}",
    )
    row(
        "epochs reused on a node / shared outside partitions",
        lambda s: f"{s['epochs_reused_on_a_node']} / {s['epochs_shared_outside']}",
    )
    row("nodes that never rejoined / crashed", lambda s: f"{s['not_rejoined']} / {s['crashes']}")
    row(
        "nodes that found etcd unreachable at start (exit 2, restarted)",
        lambda s: s["refused_at_start"],
    )
    kinds = sorted({k for s in summary.values() for k in s["unavailable_s"]})
    for kind in kinds:
        row(
            f"unavailable after a {kind} of the master (median / max s)",
            lambda s, kind=kind: (
                "{median:.2f} / {max:.2f}".format(**s["unavailable_s"][kind])
                if kind in s["unavailable_s"]
                else "-"
            ),
        )
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0].strip("`"))
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--only", type=int, metavar="RUN", help="only the run of this seed (as printed), again"
    )
    parser.add_argument("--backend", choices=("multicast", "etcd", "both"), default="both")
    parser.add_argument("--faults", type=int, default=4, help="faults per run")
    parser.add_argument("--json", metavar="FILE", help="write every run's verdict here")
    parser.add_argument("--keep", metavar="DIR", help="keep the runs' folders in DIR")
    options = parser.parse_args(argv)
    if not sys.platform.startswith("linux") or os.geteuid() != 0 or not shutil.which("ip"):
        print(
            "benchmarks.chaos needs root on Linux with iproute2 (network namespaces)",
            file=sys.stderr,
        )
        return 2
    if options.backend != "multicast" and not shutil.which("etcd"):
        print("the etcd backend needs etcd: apt-get install -y etcd-server", file=sys.stderr)
        return 2

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGINT too: a background
        signal.signal(sig, interrupted)  # job starts with it ignored
    swept = sweep()
    if swept:
        print(f"removed {len(swept)} namespaces an interrupted campaign left", file=sys.stderr)
    root = Path(options.keep) if options.keep else Path(tempfile.mkdtemp(prefix="twc-"))
    root.mkdir(parents=True, exist_ok=True)
    verdicts = []
    started = time.monotonic()
    try:
        chosen = plans(options.runs, options.seed, options.backend, options.faults)
        if options.only is not None:
            r = options.only % 1000
            chosen = plans(r + 1, options.only // 1000, options.backend, options.faults)[r:]
            options.runs = 1
        for n, plan in enumerate(chosen):
            folder = root / f"run-{plan.seed}-{plan.backend}"
            folder.mkdir()
            try:
                Run(plan, folder).execute()
                verdict = check_run(folder)
            except Exception as exc:  # a run that could not be made is a failed run
                verdict = {
                    "folder": str(folder),
                    "backend": plan.backend,
                    "failures": [f"run error: {type(exc).__name__}: {exc}"],
                }
            verdicts.append(verdict)
            status = "ok" if not verdict["failures"] else ", ".join(verdict["failures"])
            print(
                f"run {n + 1}/{options.runs} seed {plan.seed} {plan.backend} "
                f"{plan.hosts} hosts: {status}",
                flush=True,
            )
    except KeyboardInterrupt:
        print("interrupted: every namespace and process of the run was removed", file=sys.stderr)
        return 130
    finally:
        if not options.keep:
            shutil.rmtree(root, ignore_errors=True)
    complete = [v for v in verdicts if "fed" in v]
    if options.json:
        Path(options.json).write_text(json.dumps(verdicts, indent=1, default=str))
    if complete:
        print(table(summarize(complete)))
    print(f"{len(verdicts)} runs in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return 1 if any(v["failures"] for v in verdicts) else 0


if __name__ == "__main__":
    sys.exit(main())
