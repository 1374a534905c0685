"""``python -m benchmarks``: every section runs, its figures land in one results file, a table
and a chart; ``python -m benchmarks.compare`` tells two runs apart.

Behaviour only: the suite runs in ``--smoke`` mode (one value per pyperf row, one takeover
per series), whose figures mean nothing; no assertion here is about speed.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import _pyperf, chart, compare, suite, table

REPO = Path(__file__).resolve().parents[2]
SECTIONS = [section.name for section in suite.SECTIONS]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One ``--smoke`` run of the whole suite: its exit status, output and results file."""
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--output", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    files = list(out.glob("results-*.json"))
    return {
        "proc": proc,
        "out": out,
        "files": files,
        "results": suite.load_results(files[0]) if len(files) == 1 else None,
    }


@pytest.mark.slow
def test_every_section_is_measured_and_reported(smoke: dict[str, Any]) -> None:
    proc = smoke["proc"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = smoke["results"]
    assert results is not None, smoke["files"]
    assert list(results["sections"]) == SECTIONS
    assert results["mode"] == "smoke"
    assert results["machine"]["cpus"] >= 1
    for name, section in results["sections"].items():
        assert section["status"] == "ok", (name, section)
        assert section["rows"], name
        for row in section["rows"]:
            assert isinstance(row["value"], (int, float)), (name, row)
            assert row["unit"], (name, row)
        assert all(isinstance(c["holds"], bool) for c in section["claims"]), name
        assert f"== {name}: " in proc.stdout
        for row in section["rows"]:
            assert row["name"] in proc.stdout, (name, row["name"])
        for missing in section["missing"]:
            assert missing["reason"], (name, missing)


@pytest.mark.slow
def test_ratios_are_computed_from_the_rows_of_the_same_run(smoke: dict[str, Any]) -> None:
    results = smoke["results"]
    assert results is not None
    checked = 0
    for section in results["sections"].values():
        rows = {row["name"]: row for row in section["rows"]}
        for row in section["rows"]:
            if row.get("baseline") in rows and row.get("ratio") is not None:
                base = rows[row["baseline"]]["value"]
                assert row["ratio"] == pytest.approx(row["value"] / base, rel=1e-6), row
                checked += 1
    assert checked >= 10


@pytest.mark.slow
def test_every_overhead_mechanism_is_measured_or_says_why_not(smoke: dict[str, Any]) -> None:
    results = smoke["results"]
    assert results is not None
    overhead = results["sections"]["overhead"]
    measured = {row["name"] for row in overhead["rows"]}
    missing = {entry["name"]: entry["reason"] for entry in overhead["missing"]}
    for name, _ in chart.MECHANISMS:
        assert (name in measured) != (name in missing), name
    if sys.version_info < (3, 12):
        assert "monitoring_noop" in missing
        assert "monitoring_noop missing" in " ".join(smoke["proc"].stdout.split())
    else:
        assert "monitoring_noop" in measured


@pytest.mark.slow
def test_the_chart_is_a_png_and_takes_several_versions(
    smoke: dict[str, Any], tmp_path: Path
) -> None:
    png = smoke["out"] / "overhead.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = smoke["results"]
    other = copy.deepcopy(results)
    other["python"] = "9.99.0"
    for row in other["sections"]["overhead"]["rows"]:
        if row["name"] == "wrapt_decorator":
            other["sections"]["overhead"]["rows"].remove(row)
            break
    two = chart.draw([results, other], tmp_path / "two.png")
    assert two.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert two.stat().st_size > png.stat().st_size / 2


@pytest.mark.slow
def test_every_headline_figure_of_the_readme_table_comes_from_the_run(
    smoke: dict[str, Any],
) -> None:
    results = smoke["results"]
    text = table.markdown([results])
    rows = text.splitlines()[2:]
    assert len(rows) == len(table.HEADLINES)
    for (section, name, _, label), line in zip(table.HEADLINES, rows):
        assert line.startswith(f"| {label} | ")
        value = line.rsplit("|", 2)[1].strip()
        if value == "n/a":  # only what this Python cannot measure
            missing = {m["name"] for m in results["sections"][section]["missing"]}
            assert name in missing, (section, name)
        else:
            assert any(ch.isdigit() for ch in value), line


def test_a_results_file_without_overhead_figures_cannot_be_charted(tmp_path: Path) -> None:
    empty = {"format": suite.FORMAT, "sections": {"overhead": {"status": "failed"}}}
    with pytest.raises(chart.ChartError):
        chart.draw([empty], tmp_path / "x.png")


@pytest.mark.slow
def test_compare_calls_out_a_change_beyond_the_noise(smoke: dict[str, Any], tmp_path: Path) -> None:
    results = smoke["results"]
    later = copy.deepcopy(results)
    rows = later["sections"]["takeover"]["rows"]
    rows[0]["value"] *= 3  # a takeover three times slower
    later["sections"]["replication"]["claims"][0]["holds"] = not results["sections"]["replication"][
        "claims"
    ][0]["holds"]
    later.pop("_path")
    b = tmp_path / "later.json"
    b.write_text(json.dumps(later), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.compare", results["_path"], str(b)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith(rows[0]["name"]))
    assert " 3.00 worse" in line
    unchanged = next(x for x in proc.stdout.splitlines() if x.startswith("bare "))
    assert "worse" not in unchanged and "better" not in unchanged
    assert "claim replication:" in proc.stdout


def test_compare_refuses_a_file_that_is_not_a_results_file(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.json"
    bogus.write_text('{"benchmarks": []}', encoding="utf-8")
    assert compare.main([str(bogus), str(bogus)]) == 2


def test_judge_uses_the_standard_errors_when_both_rows_have_them() -> None:
    a = {"value": 100.0, "unit": "ns", "sem": 2.0}
    assert compare.judge(a, {"value": 104.0, "unit": "ns", "sem": 2.0}, 0.05) == "same"
    assert compare.judge(a, {"value": 110.0, "unit": "ns", "sem": 2.0}, 0.05) == "worse"
    assert compare.judge(a, {"value": 90.0, "unit": "ns", "sem": 2.0}, 0.05) == "better"
    fast = {"value": 1000.0, "unit": "/s"}
    assert compare.judge(fast, {"value": 1200.0, "unit": "/s"}, 0.05) == "better"
    assert compare.judge(fast, {"value": 1030.0, "unit": "/s"}, 0.05) == "same"


def test_a_section_that_fails_is_reported_not_hidden(tmp_path: Path) -> None:
    script = tmp_path / "scripts" / "broken.py"
    script.parent.mkdir()
    script.write_text("import sys\nprint('cannot measure here')\nsys.exit(3)\n")
    section = suite.Section(
        "broken",
        "a section that cannot run",
        str(script),
        pyperf=False,
        args={"smoke": ()},
        convert=suite.convert_generic,
    )
    raw = tmp_path / "raw"
    raw.mkdir()
    outcome = suite.run_section(section, "smoke", raw, verbose=False)
    assert outcome["status"] == "failed"
    assert "exit status 3" in outcome["error"]
    assert "cannot measure here" in Path(outcome["log"]).read_text()
    results = {
        "mode": "smoke",
        "implementation": "CPython",
        "python": "3",
        "started": "now",
        "machine": {},
        "elapsed_s": 1.0,
        "sections": {"broken": outcome},
    }
    assert "not measured: exit status 3" in suite.format_table(results)


def test_quick_stands_for_pyperf_options_that_later_ones_override() -> None:
    quick = ("--processes", "3", "--values", "2")
    assert _pyperf.expand_quick(["--quick", "-o", "x.json"], quick) == [*quick, "-o", "x.json"]
    assert _pyperf.expand_quick(["--quick", "--values", "5"], quick)[-2:] == ["--values", "5"]
    assert _pyperf.expand_quick(["--fast"], quick) == ["--fast"]


def _results(python: str, mode: str, sections: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": suite.FORMAT,
        "python": python,
        "implementation": "CPython",
        "mode": mode,
        "started": "2026-12-06T12:00:00+00:00",
        "sections": sections,
        "_path": "earlier.json",
    }


def test_merge_replaces_only_the_sections_measured_again() -> None:
    earlier = _results(
        "3.11.7", "full", {"overhead": {"rows": ["old"]}, "replication": {"rows": ["old"]}}
    )
    later = _results("3.11.7", "full", {"replication": {"rows": ["new"]}})
    out = suite.merged(earlier, later)
    assert out["sections"]["overhead"] == {"rows": ["old"]}
    assert out["sections"]["replication"] == {"rows": ["new"]}
    assert list(out["sections"]) == ["overhead", "replication"]  # the suite's order
    assert out["merged"] == [{"sections": ["replication"], "started": later["started"]}]
    assert "_path" not in out
    again = suite.merged(dict(out, _path="x"), later)
    assert len(again["merged"]) == 2


@pytest.mark.parametrize("field, value", [("python", "3.13.0"), ("mode", "quick")])
def test_merge_refuses_a_run_of_another_kind(field: str, value: str) -> None:
    earlier = _results("3.11.7", "full", {"replication": {}})
    later = dict(_results("3.11.7", "full", {"replication": {}}), **{field: value})
    with pytest.raises(suite.ResultsError, match=field):
        suite.merged(earlier, later)


def test_merge_needs_the_sections_to_measure() -> None:
    with pytest.raises(SystemExit):
        suite.parse_args(["--merge"])
