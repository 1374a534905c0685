"""Smoke test of benchmarks/weaving.py: every row's set-up does what the row says it measures.

Behaviour only: nothing here is timed and no assertion is about speed (the figures come
from running the benchmark itself, see benchmarks/README.md).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import platform
from pathlib import Path
from types import CodeType
from typing import Any

import pytest

from agent.pointcuts import parse
from benchmarks import weaving
from tests.benchmarks.scripts import run_quickest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "weaving.py"


child = weaving.child

UNITS = {"ms", "us", "ns", "x", "%", "count"}


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One discovery (a report child of every variant), shared by the tests below."""
    return weaving.discover(str(tmp_path_factory.mktemp("weaving")))


def _python_modules(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in report["modules"] if m["kind"] == "python"]


def test_every_variant_runs_here(spec: Any) -> None:
    assert spec.missing == {}
    assert set(spec.reports) == set(weaving.VARIANTS)


def test_the_package_is_large_and_cold_and_read_from_pyc_files(spec: Any) -> None:
    facts = weaving.package_facts(spec)
    assert facts["modules"] >= 15
    assert facts["functions"] >= 500
    assert facts["pyc_cached"] == facts["modules"]  # the normal user situation
    for name in weaving.IMPORTS:
        assert name in spec.package  # none of them was imported by any start-up
    assert not set(spec.prelude) & set(spec.package)
    for name in spec.package:  # the roots of the pointcuts cover the package, and only it
        assert any(name == root or name.startswith(root + ".") for root in spec.roots)


def test_every_variant_imports_exactly_the_same_modules_in_its_window(spec: Any) -> None:
    windows = {v: weaving.new_modules(r) for v, r in spec.reports.items()}
    assert len({frozenset(w) for w in windows.values()}) == 1, windows
    assert weaving.package_facts(spec)["same_modules_in_every_variant"]
    assert spec.reports["off"]["agent"] is False
    for variant in ("unrelated", "nothing", "everything"):
        assert spec.reports[variant]["agent"] is True
        assert spec.reports[variant]["backend"] == "bytecode"


@pytest.mark.parametrize("variant", ["unrelated", "nothing"])
def test_nothing_matched_weaves_nothing_and_keeps_the_compiled_code(
    spec: Any, variant: str
) -> None:
    report = spec.reports[variant]
    assert report["woven"] == 0
    assert report["joinpoints"] == 0
    modules = _python_modules(report)
    assert sum(m["functions"] for m in modules) > 0
    for module in modules:
        assert module["functions_woven"] == 0, module
        assert module["functions_unchanged"] == module["functions"], module


def test_everything_matched_weaves_every_function_of_the_package(spec: Any) -> None:
    report = spec.reports["everything"]
    facts = weaving.package_facts(spec)
    assert report["woven"] > 0
    assert report["woven"] == facts["functions"]
    assert report["weave_failed"] == 0
    for module in _python_modules(report):
        assert module["functions_woven"] == module["functions"], module
        assert module["functions_unchanged"] == 0, module
    assert weaving.functions_woven(spec) == report["woven"]


def _original_codes(spec: Any) -> list[tuple[str, CodeType]]:
    for name in spec.imports:
        importlib.import_module(name)
    codes = [(name, child.original_code(name)) for name in spec.package]
    assert all(isinstance(code, CodeType) for _, code in codes)
    return codes


@pytest.mark.parametrize("variant", ["unrelated", "nothing"])
def test_the_agent_returns_the_very_code_objects_when_nothing_matches(
    spec: Any, variant: str
) -> None:
    """In process, the import hook's call on the package's code: same objects back."""
    agent = weaving.Agent(weaving.load_pointcuts(spec.pointcuts[variant]), "auto")
    agent.plugins.start(weaving.CONTEXT)
    try:
        for name, code in _original_codes(spec):
            assert agent.weave_module(code, (name,)) is code, name
        assert agent.joinpoints() == []
    finally:
        agent.stop()


def test_the_warm_row_weaves_what_the_import_wove_again_and_again(spec: Any) -> None:
    warm = weaving.setup_warm(spec)
    try:
        assert warm.woven == weaving.functions_woven(spec)
        assert {name for name, _ in warm.codes} == set(spec.package)
        results = weaving.weave_pass(warm)  # a timed pass: all woven anew from the same codes
        woven = sum(weaving.probe_of(c) is not None for r in results for c in weaving._all_codes(r))
        assert woven == warm.woven
        for (_, original), result in zip(warm.codes, results):
            assert weaving.probe_of(original) is None  # the originals stay unwoven
            assert result is not original or not child.join_points(original)
    finally:
        warm.close()


def test_pointcut_files_parse_and_say_what_they_should() -> None:
    roots = ["concurrent", "xml.dom", "difflib"]
    for variant in ("unrelated", "nothing", "everything"):
        config = parse(weaving.pointcut_file(variant, roots), variant)
        assert [p.name for p in config.plugins] == ["timing"]
        everything = variant == "everything"
        assert bool(config.match(["xml.dom.minidom.Node.toxml"], ["self"])) == everything
        assert bool(config.match(["difflib.ndiff"], ["a", "b"])) == everything
        assert bool(config.match(["xml.sax.parse"], ["source"])) is False
        assert config.module_may_match("xml.dom.minidom") == (variant != "unrelated")
    nothing = parse(weaving.pointcut_file("nothing", roots), "nothing")
    assert nothing.match([f"difflib.{weaving.NOTHING_NAME}"], [])


def test_prefixes_cover_a_tree_with_its_fewest_roots() -> None:
    modules = ["unittest", "unittest.case", "xml.dom", "xml.dom.minidom", "xml.etree", "heapq"]
    assert weaving.prefixes(modules) == ["heapq", "unittest", "xml.dom", "xml.etree"]


def _check_schema(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    assert isinstance(summary["python"], str)
    rows = {row["name"]: row for row in summary["rows"]}
    for row in summary["rows"]:
        assert set(row) >= {"name", "value", "unit", "baseline", "ratio", "note"}
        assert isinstance(row["value"], float)
        assert row["unit"] in UNITS
        assert row["baseline"] is None or row["baseline"] in rows
        assert row["ratio"] is None or isinstance(row["ratio"], float)
        assert isinstance(row["note"], str) and row["note"]
    for entry in summary["missing"]:
        assert set(entry) == {"name", "reason"}
    return rows


ALL_ROWS = {
    "import_agent_off",
    "import_agent_unrelated",
    "import_agent_nothing",
    "import_agent_everything",
    "import_agent_everything_warm",
    "import_added_unrelated",
    "import_added_nothing",
    "import_added_everything",
    "package_modules",
    "package_functions",
    "functions_woven",
    "weave_per_function_cold",
    "weave_per_function_warm",
}


def test_summary_arithmetic_on_made_up_figures(spec: Any) -> None:
    woven = weaving.functions_woven(spec)
    stats = {
        "import_agent_off": {"mean": 0.010, "sem": 0.0001, "values": 3},
        "import_agent_unrelated": {"mean": 0.011, "sem": 0.0001, "values": 3},
        "import_agent_nothing": {"mean": 0.020, "sem": 0.0001, "values": 3},
        "import_agent_everything": {"mean": 0.020 + woven * 1e-3, "sem": 0.001, "values": 3},
        "import_agent_everything_warm": {"mean": 0.040, "sem": 0.0001, "values": 3},
        "weave_per_function_warm": {"mean": 0.5e-3, "sem": 1e-6, "values": 3},
    }
    summary = weaving.summarize(stats, spec)
    rows = _check_schema(summary)
    assert set(rows) == ALL_ROWS
    assert summary["missing"] == []
    assert rows["import_agent_off"]["value"] == pytest.approx(10.0)
    assert rows["import_agent_nothing"]["ratio"] == pytest.approx(2.0)
    assert rows["import_agent_everything_warm"]["ratio"] == pytest.approx(4.0)
    assert rows["import_added_unrelated"]["value"] == pytest.approx(1.0)
    assert rows["import_added_unrelated"]["ratio"] == pytest.approx(0.1)
    assert rows["weave_per_function_cold"]["value"] == pytest.approx(1000.0)
    assert rows["weave_per_function_warm"]["value"] == pytest.approx(500.0)
    assert rows["weave_per_function_warm"]["ratio"] == pytest.approx(0.5)
    assert rows["functions_woven"]["value"] == woven
    assert rows["functions_woven"]["ratio"] == pytest.approx(1.0)
    text = weaving.format_summary(summary)
    for name in ALL_ROWS:
        assert name in text


def test_a_variant_that_cannot_run_is_listed_as_missing(spec: Any) -> None:
    broken = weaving.Spec(**{**vars(spec), "missing": {"everything": "no agent here"}})
    broken.reports = {k: v for k, v in spec.reports.items() if k != "everything"}
    stats = {
        name: {"mean": 0.01, "sem": 0.0, "values": 1}
        for name in ("import_agent_off", "import_agent_unrelated", "import_agent_nothing")
    }
    summary = weaving.summarize(stats, broken)
    rows = _check_schema(summary)
    missing = {entry["name"]: entry["reason"] for entry in summary["missing"]}
    assert missing["import_agent_everything"] == "no agent here"
    assert {"weave_per_function_cold", "weave_per_function_warm", "functions_woven"} <= set(missing)
    assert not set(rows) & set(missing)
    assert "missing: no agent here" in weaving.format_summary(summary)


@pytest.mark.skipif(importlib.util.find_spec("pyperf") is None, reason="pyperf not installed")
def test_the_script_runs_every_row_in_one_pyperf_run(tmp_path: Path) -> None:
    """End to end, with pyperf's quickest mode (one worker, one value of one loop per row)."""
    done, summary_file = run_quickest(SCRIPT, tmp_path, TMPDIR=str(tmp_path))
    assert done.returncode == 0, done.stderr
    table = done.stdout[done.stdout.index("twinweave weaving cost") :]
    for name in ALL_ROWS:
        assert name in table, name
    assert "check: every variant imports the same modules: yes" in table
    assert "NO" not in table.split()
    summary = json.loads(summary_file.read_text())
    rows = _check_schema(summary)
    assert set(rows) == ALL_ROWS
    assert summary["missing"] == []
    assert summary["python"] == platform.python_version()
    assert rows["functions_woven"]["value"] > 0
    assert not list(tmp_path.glob("twinweave-weaving-*"))  # its pointcut files are removed
