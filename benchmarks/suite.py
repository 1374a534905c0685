"""The whole benchmark suite in one command: ``python -m benchmarks [--quick] [--output DIR]``.

Each section is one of the scripts beside this file, run as a child process with the
interpreter that runs the suite (so ``python3.13 -m benchmarks`` measures 3.13), one after
the other, never side by side (two cores: sections running together would measure each
other). A section writes its own raw output (pyperf's JSON, or the script's ``--json``) into
``DIR/raw-<python>/``; the suite turns each into rows of one shape and writes them all to
``DIR/results-<python>.json``, prints one table, and draws ``DIR/overhead.png`` from every
``results-*.json`` in DIR (one bar per mechanism, one colour per Python version).

A row is ``{"name", "value", "unit", "baseline", "ratio", "note", ...}``: ``ratio`` is
``value / value(baseline)``, both measured in this run; extra keys (``sem``, ``added``,
``x_decorator``) where a section has them. A row the running Python cannot measure is
listed under ``missing`` with the reason (e.g. ``sys.monitoring`` before 3.12); a section
that could not run at all is ``"status": "failed"`` with the error, and the suite's exit
status is 1. Nothing here measures anything itself: every figure comes from the section's
own output in this run.

Modes: the default (pyperf's default statistics, 20 takeovers per series), ``--quick``
(about 5 minutes on a 2-core machine) and ``--smoke`` (one value per pyperf row, one
takeover, no heartbeat CPU: the plumbing only, for the tests; its figures mean nothing).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_OUTPUT = HERE / "results"
FORMAT = 1
"""Version of the results file's layout (``compare`` refuses other versions)."""

Converted = dict[str, Any]


@dataclass(frozen=True)
class Section:
    """One script of the suite: how to run it in each mode and how to read what it wrote."""

    name: str
    title: str
    script: str
    pyperf: bool
    args: dict[str, tuple[str, ...]]
    convert: Callable[[dict[str, Any]], Converted]
    timeout_s: dict[str, float] = field(default_factory=dict)
    """Seconds the section may take, by mode (a mode not listed: :data:`TIMEOUT_S`)."""

    def timeout(self, mode: str) -> float:
        return self.timeout_s.get(mode, TIMEOUT_S[mode])

    def command(self, mode: str, raw: Path) -> tuple[list[str], Path]:
        """The child's command line for ``mode``, and the file it leaves its figures in."""
        base = [sys.executable, str(HERE / self.script), *self.args[mode]]
        if self.pyperf:
            out = raw / f"{self.name}.summary.json"
            return [*base, "-o", str(raw / f"{self.name}.pyperf.json"), "--summary", str(out)], out
        out = raw / f"{self.name}.json"
        return [*base, "--json", str(out)], out


# -- reading each section's output ------------------------------------------------------------


def _row(name: str, value: float, unit: str, note: str = "", **extra: Any) -> dict[str, Any]:
    row = {"name": name, "value": value, "unit": unit, "baseline": None, "ratio": None}
    row.update(note=note, **extra)
    return row


def _compared(row: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """``row`` with its ratio to ``baseline`` (same unit, same run)."""
    if baseline["value"]:
        row.update(baseline=baseline["name"], ratio=row["value"] / baseline["value"])
    return row


def _kind_baselines(kind: str) -> tuple[str, str]:
    """overhead.py's bare and closure-decorator rows of a kind of call."""
    if kind == "function":
        return "bare", "closure_decorator"
    return f"{kind}_bare", f"{kind}_closure_decorator"


def convert_overhead(summary: dict[str, Any]) -> Converted:
    """overhead.py's ``--summary``: ns per call of every row, against its kind's bare call."""
    rows: list[dict[str, Any]] = []
    vs = summary.get("vs_baselines", {})
    added = summary.get("added_vs_bare", {})
    for name, stats in summary["rows"].items():
        kind = stats.get("kind", "function")
        row = _row(name, stats["mean_ns"], "ns", stats.get("description", ""), group=kind)
        row["sem"] = stats.get("sem_ns")
        bare, _ = _kind_baselines(kind)
        entry = vs.get(name, {})
        if name != bare and "x_bare" in entry:
            row.update(baseline=bare, ratio=entry["x_bare"])
        if name in added:
            row["added"] = added[name]["ns"]
        if "x_decorator" in entry:
            row["x_decorator"] = entry["x_decorator"]
        rows.append(row)
    floor = summary["clock_floor"]
    rows.append(
        _row(
            "clock_floor",
            floor["ns"],
            "ns",
            floor["definition"],
            group="clock",
            sem=floor["sem_ns"],
        )
    )
    claims = []
    for key, ratio in summary.get("ratios", {}).items():
        if "limit" in ratio:
            claims.append(
                {
                    "text": f"{ratio['definition']} = {ratio['value']:.2f} (<= {ratio['limit']:g})",
                    "holds": bool(summary["claim"].get(key)),
                }
            )
    unmatched = summary.get("unmatched", {})
    claims.append(
        {
            "text": "a function no pointcut matches runs the compiler's own code object "
            f"(module woven: {unmatched.get('module_was_woven')})",
            "holds": bool(summary["claim"].get("unmatched_same_code")),
        }
    )
    missing = []
    for line in summary.get("missing", []):
        name, _, reason = line.partition(": ")
        missing.append({"name": name, "reason": reason.removeprefix("missing: ")})
    about = (
        "pyperf mean per call (+- sem); ratio = row / the bare call of its kind; adds = row - bare"
    )
    return {"rows": rows, "claims": claims, "missing": missing, "about": about}


def convert_generic(summary: dict[str, Any]) -> Converted:
    """A section that already writes rows of the suite's shape (workload.py, weaving.py)."""
    converted = {
        "rows": list(summary["rows"]),
        "claims": list(summary.get("claims", [])),
        "missing": list(summary.get("missing", [])),
    }
    if summary.get("about"):
        converted["about"] = summary["about"]
    return converted


def convert_live(summary: dict[str, Any]) -> Converted:
    """live.py's ``--summary``: ns per call with each plugin against the bare call, ms per scrape.

    A row with an ``added_ratio`` (``{"of", "value", "sem"}``) carries the ratio of its added
    cost to another row's, the figure its claim rests on.
    """
    stats = summary["rows"]
    added = summary.get("added_vs_bare", {})
    ratios = summary.get("ratios", {})
    claim = summary.get("claim", {})
    facts = summary.get("facts", {})
    against = {
        "twinweave_prometheus": ratios.get("prometheus_vs_timing"),
        "twinweave_otel": ratios.get("otel_vs_sdk_span"),
    }
    bare = _row("bare", stats["bare"]["mean_ns"], "ns", stats["bare"].get("description", ""))
    bare["sem"] = stats["bare"]["sem_ns"]
    rows: list[dict[str, Any]] = [bare]
    for name, row_stats in stats.items():
        if name == "bare":
            continue
        note = row_stats.get("description", "")
        if row_stats.get("unit") == "ms":
            rows.append(
                _row(name, row_stats["mean_ns"] / 1e6, "ms", note, sem=row_stats["sem_ns"] / 1e6)
            )
            continue
        row = _compared(_row(name, row_stats["mean_ns"], "ns", note, sem=row_stats["sem_ns"]), bare)
        if name in added:
            row.update(added=added[name]["ns"], added_sem=added[name]["sem_ns"])
        ratio = against.get(name)
        if ratio is not None:
            row["added_ratio"] = {k: ratio[k] for k in ("of", "value", "sem")}
            row["note"] += f"; {ratio['definition']} = {ratio['value']:.2f} +- {ratio['sem']:.2f}"
        rows.append(row)
    exported = "spans the exporter received per call, counted untimed"
    counted = [
        (f"{name} spans per call", facts.get(f"{name}_spans_per_call"), "count", exported)
        for name in ("otel_sdk_span", "otel_sdk_span_attributes", "twinweave_otel")
    ]
    counted.append(
        (
            "twinweave_trace steps per call",
            facts.get("trace_steps_per_call"),
            "count",
            "steps of f in the timeline file per call, counted untimed",
        )
    )
    scrape = facts.get("prometheus_scrape_http")
    if scrape is not None:
        about_scrape = f"{scrape['components']} components, {scrape['calls']} calls counted"
        counted.append(("prometheus scrape size", scrape["bytes"] / 1024, "KiB", about_scrape))
    rows += [_row(*fact) for fact in counted if fact[1] is not None]
    like = ratios.get("otel_vs_sdk_span_attributes")
    if like is not None:
        rows.append(
            _row(
                "twinweave_otel / otel_sdk_span_attributes",
                like["value"],
                "x",
                f"{like['definition']}: the plugin against the same span made by hand",
                sem=like["sem"],
            )
        )
    claims = []
    prometheus = ratios.get("prometheus_vs_timing")
    if prometheus is not None:
        claims += [
            {
                "text": f"{prometheus['definition']} = {prometheus['value']:.2f} +- "
                f"{prometheus['sem']:.2f}: per call, timing + prometheus costs what timing alone "
                f"costs (difference {prometheus['difference_ns']:+.1f} ns +- "
                f"{prometheus['difference_sem_ns']:.1f}, within "
                f"{summary['settings']['same_cost_sems']:g} sem)",
                "holds": bool(claim.get("prometheus_within_noise")),
            },
            {
                "text": "with the prometheus plugin the join point keeps timing alone's probe "
                f"(timing mode, timed in C: {facts.get('prometheus_probe', {}).get('in_c')})",
                "holds": bool(claim.get("prometheus_same_probe")),
            },
        ]
    otel = ratios.get("otel_vs_sdk_span")
    if otel is not None:
        claims.append(
            {
                "text": f"{otel['definition']} = {otel['value']:.2f} +- {otel['sem']:.2f} "
                f"(<= {otel['limit']:g})",
                "holds": bool(claim.get("otel_vs_sdk_span")),
            }
        )
    claims.append(
        {
            "text": "every row did what it is timed for (one span exported per call, one step "
            "in the timeline per call, every component and call in a scrape)",
            "holds": bool(claim.get("rows_did_their_work")),
        }
    )
    about = (
        "pyperf mean per call (+- sem); ratio = row / bare; adds = row - bare; scrapes in ms "
        f"per scrape of {summary['settings']['components']} components; OTel: "
        f"{summary.get('span_processor', '?')}"
    )
    missing = list(summary.get("missing", []))
    return {"rows": rows, "claims": claims, "missing": missing, "about": about}


def convert_takeover(results: dict[str, Any]) -> Converted:
    """takeover.py's ``--json``: takeover after the master's process died, its host went
    and SIGTERM; heartbeat CPU."""
    rows, claims, missing = [], [], []
    settings = results["settings"]
    where = f"3 nodes on loopback, delay {settings['delay_ms']} ms, retries {settings['retries']}"
    for series, figures in results["series"].items():
        if not figures.get("runs"):
            missing.append({"name": f"takeover {series}", "reason": "no run completed"})
            continue
        for stat in ("median", "p99"):
            rows.append(
                _row(
                    f"takeover {series} {stat}",
                    figures[f"{stat}_s"] * 1000,
                    "ms",
                    f"{stat} of {figures['runs']} runs",
                    runs=figures["runs"],
                )
            )
        failed = figures["failed"] + figures["wrong_epoch"] + figures["troubled"]
        claims.append(
            {
                "text": f"takeover after {series}: {figures['bound']}"
                + (f"; {failed} runs failed or troubled" if failed else ""),
                "holds": bool(figures["holds"]),
            }
        )
    cpu = results.get("cpu")
    if cpu is None or "error" in cpu:
        reason = "not measured (--cpu-seconds 0)" if cpu is None else cpu["error"].splitlines()[0]
        for role in ("master", "slave"):
            missing.append({"name": f"heartbeat CPU {role}", "reason": reason})
    elif cpu is not None:
        for role, percent in cpu["percent_of_one_core"].items():
            rows.append(
                _row(
                    f"heartbeat CPU {role}",
                    percent,
                    "%",
                    f"% of one core over {cpu['wall_s']:.0f} s, default delay and retries",
                )
            )
        claims.append(
            {
                "text": f"heartbeat CPU per node < {cpu['target_percent']:g} % of one core",
                "holds": bool(cpu["holds"]),
            }
        )
    about = f"{where}; from the signal to the new master's adapter start"
    return {"rows": rows, "claims": claims, "missing": missing, "about": about}


def convert_replication(results: dict[str, Any]) -> Converted:
    """replication.py's ``--json``: throughput against local diskcache, p50/p99 latency."""
    rows, missing = [], []
    for scenario, figures in results["scenarios"].items():
        if "error" in figures:
            missing.append({"name": scenario, "reason": figures["error"].splitlines()[0]})
            continue
        table = figures["median"]
        local = None
        for key, stats in table.items():
            path, threads = key.split("/")
            if path == "batched":
                label = f"{scenario}: set_many({threads})"
                note = f"entries/s; latency per call of {threads}"
            else:
                what = "local diskcache" if path == "local" else f"{figures['mode']} replicated"
                label = f"{scenario}: {what}, {threads} thr"
                note = "writes/s"
            note += f"; p50 {stats['p50_ms']:.3g} ms, p99 {stats['p99_ms']:.3g} ms"
            row = _row(label, stats["per_s"], "/s", note)
            row.update(p50_ms=stats["p50_ms"], p99_ms=stats["p99_ms"])
            if path == "local" and threads == "1":
                local = row
            elif local is not None:
                _compared(row, local)
            rows.append(row)
        cpu = table.get("replicated/1", {}).get("cpu_us")
        if cpu:
            each = ", ".join(f"{name} {value:.0f} us" for name, value in cpu.items())
            rows.append(
                _row(f"{scenario}: CPU per write, all nodes", sum(cpu.values()), "us", each)
            )
    floor = results.get("floor") or {}
    for kind, what in (
        ("bare", "round trip to a Python echo"),
        ("journal", "... through a journal write"),
        ("one_cpu", "... both processes on 1 CPU"),
    ):
        if kind in floor:
            figures = floor[kind]
            note = f"p50 of {figures['trips']} trips; p99 {figures['p99_us']:.3g} us"
            rows.append(_row(f"floor: {what}", figures["p50_us"], "us", note))
    claims = [
        {"text": f"{v['target']}: {v['value']}", "holds": bool(v["holds"])}
        for v in results.get("verdicts", [])
    ]
    settings = results["settings"]
    about = (
        f"real nodes on loopback; {settings['writes']} writes per batch, median of "
        f"{settings['repeat']}; ratio = throughput / the master's local diskcache, 1 thread"
    )
    return {"rows": rows, "claims": claims, "missing": missing, "about": about}


def convert_adapter(results: dict[str, Any]) -> Converted:
    """adapter.py's ``--json``: the example adapter's messages/s alone and under failover."""
    f = results["figures"]
    files = results["settings"]["files"]
    alone = _row("example adapter alone", f["alone_median"], "/s", f"messages/s, {files} files")
    failover = _row(
        "example adapter, failover, 2 slaves",
        f["failover_median"],
        "/s",
        f"messages/s, {files} files",
    )
    _compared(failover, alone)
    claims = [
        {
            "text": f"example adapter under --failover with 2 slaves >= {f['target']}x alone",
            "holds": bool(f["holds"]),
        }
    ]
    about = (
        f"examples/fs_adapter.py with examples/aop.xml, --delay-ms 0; median of "
        f"{results['settings']['repeat']} repetitions"
    )
    return {"rows": [alone, failover], "claims": claims, "missing": [], "about": about}


PYPERF_ARGS = {"full": (), "quick": ("--quick",), "smoke": ("--debug-single-value",)}
"""A pyperf script's options in each mode: pyperf's defaults, the script's ``--quick``, and
pyperf's quickest mode (one worker, one value of one loop per row)."""


def _pyperf_section(
    name: str, title: str, convert: Callable[[dict[str, Any]], Converted], **timeout_s: float
) -> Section:
    """The section of the pyperf script ``NAME.py`` (``timeout_s``: seconds by mode)."""
    return Section(
        name,
        title,
        f"{name}.py",
        pyperf=True,
        args=PYPERF_ARGS,
        convert=convert,
        timeout_s=timeout_s,
    )


def _script_section(
    name: str,
    title: str,
    convert: Callable[[dict[str, Any]], Converted],
    quick: tuple[str, ...],
    smoke: tuple[str, ...],
) -> Section:
    """The section of the plain script ``NAME.py`` (its own ``--json``; its defaults in the
    full mode, ``quick`` and ``smoke`` its options in the others)."""
    return Section(
        name,
        title,
        f"{name}.py",
        pyperf=False,
        args={"full": (), "quick": quick, "smoke": smoke},
        convert=convert,
    )


SECTIONS: tuple[Section, ...] = (
    _pyperf_section("overhead", "per-call overhead against the alternatives", convert_overhead),
    _pyperf_section(
        "workload", "untargeted cost: a service loop with a few functions matched", convert_generic
    ),
    _pyperf_section("weaving", "weaving cost: importing a large package", convert_generic),
    _pyperf_section(
        "live",
        "live observability: plugins per call, Prometheus scrapes",
        convert_live,
        full=1800.0,
        smoke=120.0,
    ),
    _script_section(
        "takeover",
        "cluster: takeover time and heartbeat CPU",
        convert_takeover,
        quick=("--runs", "5", "--cpu-seconds", "5"),
        smoke=("--runs", "1", "--cpu-seconds", "0"),
    ),
    _script_section(
        "replication",
        "replicated cache writes against local diskcache",
        convert_replication,
        quick=("--writes", "1000", "--repeat", "1", "--floor-trips", "2000"),
        smoke=("--writes", "40", "--repeat", "1", "--floor-trips", "100"),
    ),
    _script_section(
        "adapter",
        "the example adapter under failover against alone",
        convert_adapter,
        quick=("--files", "500", "--repeat", "1"),
        smoke=("--files", "20", "--repeat", "1"),
    ),
)
TIMEOUT_S = {"full": 3600.0, "quick": 300.0, "smoke": 180.0}


# -- running ------------------------------------------------------------------------------------


def python_tag() -> str:
    return f"{platform.python_implementation().lower()}-{platform.python_version()}"


def machine() -> dict[str, Any]:
    """What the figures were measured on (they mean nothing without it)."""
    info: dict[str, Any] = {
        "host": platform.node(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            kib = int(meminfo.readline().split()[1])
        info["memory_gib"] = round(kib / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            model = next((line for line in cpuinfo if line.startswith("model name")), "")
        if model:
            info["cpu"] = model.split(":", 1)[1].strip()
    except OSError:
        pass
    info["loadavg_at_start"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    return info


def _stop(child: subprocess.Popen[bytes]) -> None:
    """Stop a section's process group (pyperf workers, cluster nodes) within a few seconds."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            return
        try:
            child.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_section(section: Section, mode: str, raw: Path, verbose: bool) -> dict[str, Any]:
    """Run one section to completion (or its time limit) and read its figures."""
    command, out = section.command(mode, raw)
    for stale in raw.glob(f"{section.name}.*"):
        stale.unlink()  # pyperf refuses to overwrite its -o file
    log_path = raw / f"{section.name}.log"
    result: dict[str, Any] = {
        "title": section.title,
        "command": command,
        "log": str(log_path),
        "started": _now(),
    }
    began = time.monotonic()
    with open(log_path, "wb") as log:
        child = subprocess.Popen(
            command,
            cwd=REPO,
            stdout=None if verbose else log,
            stderr=subprocess.STDOUT if not verbose else None,
            start_new_session=True,
        )
        try:
            code = child.wait(section.timeout(mode))
        except subprocess.TimeoutExpired:
            code = None
        except BaseException:
            _stop(child)
            raise
        finally:
            if child.poll() is None:
                _stop(child)
    result["elapsed_s"] = round(time.monotonic() - began, 1)
    if code is None:
        return dict(result, status="failed", error=f"timed out after {section.timeout(mode):.0f} s")
    if code != 0:
        return dict(result, status="failed", error=f"exit status {code}; see {log_path}")
    try:
        converted = section.convert(json.loads(out.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return dict(result, status="failed", error=f"unreadable output {out}: {exc!r}")
    return dict(result, status="ok", raw=str(out), **converted)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def merged(earlier: dict[str, Any], later: dict[str, Any]) -> dict[str, Any]:
    """``earlier`` with the sections ``later`` measured again (``--merge``): same Python,
    same mode, or :class:`ResultsError`; the file says which sections were re-run, when."""
    for what in ("python", "implementation", "mode"):
        if earlier.get(what) != later.get(what):
            raise ResultsError(
                f"{earlier.get('_path')}: {what} {earlier.get(what)!r}, this run "
                f"{later.get(what)!r}: --merge only replaces sections of the same kind of run"
            )
    out = {k: v for k, v in earlier.items() if k != "_path"}
    sections = dict(out["sections"])
    sections.update(later["sections"])
    out["sections"] = {
        name: sections[name] for name in [s.name for s in SECTIONS] if name in sections
    }
    out["merged"] = [
        *out.get("merged", []),
        {"sections": list(later["sections"]), "started": later["started"]},
    ]
    return out


def run(options: argparse.Namespace) -> dict[str, Any]:
    mode = "smoke" if options.smoke else "quick" if options.quick else "full"
    output = Path(options.output).resolve()
    raw = output / f"raw-{python_tag()}"
    raw.mkdir(parents=True, exist_ok=True)
    chosen = [s for s in SECTIONS if not options.sections or s.name in options.sections]
    results: dict[str, Any] = {
        "format": FORMAT,
        "suite": "twinweave benchmarks",
        "mode": mode,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "executable": sys.executable,
        "started": _now(),
        "machine": machine(),
        "sections": {},
    }
    began = time.monotonic()
    for section in chosen:
        print(f"[{section.name}] {section.title} ({mode})...", end=" ", flush=True)
        outcome = run_section(section, mode, raw, options.verbose)
        results["sections"][section.name] = outcome
        state = "ok" if outcome["status"] == "ok" else f"FAILED: {outcome['error']}"
        print(f"{outcome['elapsed_s']:.0f} s, {state}", flush=True)
    results["elapsed_s"] = round(time.monotonic() - began, 1)
    return results


# -- the table -----------------------------------------------------------------------------------


def _figure(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit == "count" and float(value).is_integer():
        return f"{int(value)}"
    magnitude = abs(value)
    text = (
        f"{value:.3g}" if magnitude < 10 else f"{value:.1f}" if magnitude < 1000 else f"{value:.0f}"
    )
    return f"{text} {unit}".rstrip()


def format_table(results: dict[str, Any]) -> str:
    machine_ = results["machine"]
    out = [
        f"twinweave benchmarks ({results['mode']}), {results['implementation']} "
        f"{results['python']} on {machine_.get('cpus')} CPUs"
        + (f" ({machine_['cpu']})" if machine_.get("cpu") else "")
        + f", {results['started']}",
        "ratio = value / baseline's value, both measured in this run",
    ]
    for name, section in results["sections"].items():
        out += ["", f"== {name}: {section['title']}"]
        if section["status"] != "ok":
            out.append(f"   not measured: {section['error']}")
            continue
        if section.get("about"):
            out.append(f"   ({section['about']})")
        width = max([len(r["name"]) for r in section["rows"]] + [20])
        out.append(f"   {'row':<{width}} {'value':>12} {'ratio':>7}  baseline / note")
        for row in section["rows"]:
            ratio = f"{row['ratio']:.2f}x" if row.get("ratio") is not None else ""
            extra = []
            if row.get("added") is not None:
                extra.append(f"adds {_figure(row['added'], row['unit'])}")
            if row.get("x_decorator") is not None:
                extra.append(f"{row['x_decorator']:.2f}x closure decorator")
            about = row.get("note") or (f"vs {row['baseline']}" if row.get("baseline") else "")
            if extra:
                about = "; ".join([about, *extra]) if about else "; ".join(extra)
            out.append(
                f"   {row['name']:<{width}} {_figure(row['value'], row['unit']):>12} "
                f"{ratio:>7}  {about}"
            )
        for missing in section.get("missing", []):
            out.append(
                f"   {missing['name']:<{width}} {'missing':>12}          {missing['reason']}"
            )
        for claim in section.get("claims", []):
            out.append(f"   claim: {claim['text']}: {'holds' if claim['holds'] else 'FAILS'}")
    out.append("")
    out.append(f"whole suite: {results['elapsed_s']:.0f} s")
    for merge in results.get("merged", []):
        out.append(
            f"measured again and merged: {', '.join(merge['sections'])} ({merge['started']})"
        )
    return "\n".join(out)


# -- results files -------------------------------------------------------------------------------


class ResultsError(Exception):
    """A file is not a readable results file of this suite."""


def load_results(path: str | Path) -> dict[str, Any]:
    """A results file written by ``python -m benchmarks`` (``_path`` added: where it was)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ResultsError(f"{path}: cannot read: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ResultsError(f"{path}: not a results file of this suite (format {FORMAT})")
    data["_path"] = str(path)
    return data


# -- command line --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run twinweave's benchmark suite on this Python: JSON, a table and a chart.",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="fewer samples: about 5 minutes")
    size.add_argument(
        "--smoke", action="store_true", help="one sample per row: checks the plumbing only"
    )
    parser.add_argument(
        "--output",
        "-o",
        default=str(DEFAULT_OUTPUT),
        metavar="DIR",
        help="where results, raw outputs and the chart go (default benchmarks/results)",
    )
    parser.add_argument(
        "--sections",
        type=lambda text: [part for part in text.split(",") if part],
        metavar="A,B",
        help="run only these sections: " + ", ".join(s.name for s in SECTIONS),
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="with --sections: replace only those sections in this Python's results file",
    )
    parser.add_argument("--no-chart", action="store_true", help="do not draw the PNG")
    parser.add_argument("-v", "--verbose", action="store_true", help="show each section's output")
    options = parser.parse_args(argv)
    unknown = set(options.sections or ()) - {s.name for s in SECTIONS}
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    if options.merge and not options.sections:
        parser.error("--merge needs --sections (the sections to measure again)")
    return options


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    output = Path(options.output).resolve()
    path = output / f"results-{python_tag()}.json"
    earlier = None
    if options.merge:
        try:
            earlier = load_results(path)
        except ResultsError as exc:
            print(f"--merge: {exc}", file=sys.stderr)
            return 2
    results = run(options)
    failed = [n for n, s in results["sections"].items() if s["status"] != "ok"]
    if earlier is not None:
        if failed:  # an earlier good figure is not replaced by a failed run
            print(f"--merge: not merged, sections not measured: {', '.join(failed)}")
            print(format_table(results))
            return 1
        try:
            results = merged(earlier, results)
        except ResultsError as exc:
            print(f"--merge: {exc}", file=sys.stderr)
            return 2
    path.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print()
    print(format_table(results))
    print(f"results: {path}")
    if not options.no_chart:
        from benchmarks import chart

        files = sorted(output.glob("results-*.json"))
        try:
            drawn = chart.draw([load_results(f) for f in files], output / "overhead.png")
        except (chart.ChartError, ResultsError) as exc:
            print(f"chart: not drawn: {exc}")
        else:
            print(f"chart: {drawn} ({', '.join(f.name for f in files)})")
    if failed:
        print(f"sections not measured: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
