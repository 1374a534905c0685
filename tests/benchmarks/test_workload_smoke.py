"""Smoke test of benchmarks/workload.py: every row processes the adapter as ``bare`` does.

Behaviour only: nothing here is timed and no assertion is about speed (the speed
claim is shown by running the benchmark itself, see benchmarks/README.md).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from benchmarks import _pyperf, workload
from benchmarks.weaving_child import reachable_functions
from tests.benchmarks.scripts import profiled_calls, row_fixture, run_quickest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "workload.py"
LOOPS = 2


variant = row_fixture(workload.SETUPS)


@pytest.fixture(scope="module")
def bare_outputs() -> tuple[list[bytes], dict[str, int]]:
    bare = workload.setup_bare()
    try:
        return _outputs(bare)
    finally:
        bare.close()


def _outputs(variant: Any) -> tuple[list[bytes], dict[str, int]]:
    """What a fresh adapter of ``variant``'s module sends for the batch, one message at a time.

    Run through the row's own timed loop (so profilers are on and the agent drains
    as when timed), one iteration.
    """
    adapter = variant.module.Adapter()
    sent: list[bytes] = []

    def process(batch: list[str]) -> None:
        for payload in batch:
            assert adapter.process([payload]) == 1
            sent.append(adapter.producer.last)

    workload.run_variant(variant, 1, process)
    return sent, dict(adapter.producer.by_destination)


def test_rows_are_the_documented_ones() -> None:
    assert set(workload.ALL_SETUPS) == set(workload.DESCRIPTIONS)
    monitoring = sys.version_info >= (3, 12)
    assert ("monitoring_noop" in workload.SETUPS) == monitoring
    for name in workload.ALL_SETUPS:
        assert (name in workload.SETUPS) != (name in workload.MISSING), name
    if not monitoring:
        assert workload.MISSING == {"monitoring_noop": "sys.monitoring exists from Python 3.12"}
    for required in ("bare", "agent_few_matched", "agent_all_matched", "setprofile_noop"):
        assert required in workload.SETUPS


def test_the_batch_is_deterministic_and_exercises_every_path(bare_outputs: Any) -> None:
    batch = workload.payloads()
    assert len(batch) == workload.BATCH
    fresh = workload.load_service().module.generate_orders(workload.BATCH, workload.SEED)
    assert fresh == batch
    sent, destinations = bare_outputs
    assert len(sent) == workload.BATCH
    assert destinations.get("orders.rejected", 0) > 0  # the error handler runs too
    assert sum(1 for name in destinations if name != "orders.rejected") >= 4


def test_every_row_sends_what_bare_sends(variant: Any, bare_outputs: Any) -> None:
    elapsed = workload.run_variant(variant, LOOPS)  # runs; the figure itself is not checked
    assert isinstance(elapsed, float)
    assert variant.adapter.producer.sent == LOOPS * workload.BATCH
    assert sys.getprofile() is None, "a profiler row left its profiler on"
    assert _outputs(variant) == bare_outputs


def _component_counts(timing: Any) -> dict[str, tuple[int, int]]:
    return {
        c["name"].rpartition("workload_service.")[2]: (c["count"], c["failed"])
        for c in timing.build_report()["components"]
    }


def test_few_matched_row_weaves_exactly_its_functions_and_times_them() -> None:
    variant = workload.setup_agent_few_matched()
    try:
        assert variant.agent.plugins.draining, "the drain thread runs as in production"
        loaded = variant.notes["loaded"]
        notes = workload.weaving_notes(loaded)
        assert notes["woven"] == [
            "EnvelopeProducer.produce",
            "OrderWorkflow.on_message",
            "PricingService.do_service",
        ]
        assert notes["unmatched"] == notes["functions"] - 3 > 40
        assert notes["unmatched_same_code"] == notes["unmatched"]
        assert notes["unmatched_changed"] == []
        assert notes["live_as_expected"] == notes["live_functions"] >= notes["functions"] - 5
        assert notes["same_code_object"] is True
        module = variant.module
        compiled = workload._functions_in(loaded.compiled)
        for cls, name in (("ValidationService", "do_service"), ("Template", "render")):
            code = getattr(getattr(module, cls), name).__code__
            assert code is compiled[f"{cls}.{name}:{code.co_firstlineno}"]
            assert workload.probe_of(code) is None
        assert workload.probe_of(module.field.__code__) is None
        assert workload.probe_of(module.OrderWorkflow.on_message.__code__) is not None
        assert variant.module.__name__ == "workload_service"
        assert "workload_service" not in sys.modules  # each row has its own copy

        timing = variant.notes["timing"]
        assert _component_counts(timing) == {}  # set-up calls matched nothing timed here
        workload.run_variant(variant, LOOPS)  # drained on the clock: no extra drain needed
        rejected = variant.adapter.workflow.error_handler.rejected
        calls = LOOPS * workload.BATCH
        assert 0 < rejected < calls
        assert _component_counts(timing) == {
            "OrderWorkflow.on_message": (calls, 0),
            "EnvelopeProducer.produce": (calls, 0),
            "PricingService.do_service": (calls - rejected, 0),
        }
    finally:
        variant.close()
    assert not any(t.name == "twinweave-drain" and t.is_alive() for t in threading.enumerate())


def test_all_matched_row_weaves_every_function() -> None:
    variant = workload.setup_agent_all_matched()
    try:
        notes = workload.weaving_notes(variant.notes["loaded"])
        assert notes["unmatched"] == 0
        assert len(notes["woven"]) == notes["functions"]
        assert notes["live_as_expected"] == notes["live_functions"]
        per_message = workload.timed_calls(variant)
        assert per_message > 50  # most of the workload's calls are now timed
    finally:
        variant.close()


def test_the_identity_check_catches_an_equal_copy_of_an_unmatched_function() -> None:
    """A loader that handed back equal but new code objects must not pass as "untouched"."""
    spec = importlib.machinery.PathFinder.find_spec(workload.SERVICE_MODULE, [workload.SERVICE_DIR])
    compiled = spec.loader.get_code(workload.SERVICE_MODULE)
    consts = list(compiled.co_consts)
    # the module-level function `field`
    (index,) = [i for i, c in enumerate(consts) if getattr(c, "co_name", None) == "field"]
    consts[index] = consts[index].replace(co_name="field")  # equal, but another object
    assert consts[index] == compiled.co_consts[index]
    copied = compiled.replace(co_consts=tuple(consts))
    module = ModuleType(workload.SERVICE_MODULE)
    exec(copied, module.__dict__)
    notes = workload.weaving_notes(workload.Loaded(module, compiled, copied))
    line = compiled.co_consts[index].co_firstlineno
    assert notes["woven"] == []
    assert notes["unmatched_changed"] == [f"field:{line}"]
    assert notes["live_as_expected"] == notes["live_functions"] - 1
    assert notes["same_code_object"] is False


def test_bare_and_profiler_rows_load_the_module_without_an_agent() -> None:
    for name in ("bare", "setprofile_noop", "cprofile"):
        variant = workload.SETUPS[name]()
        try:
            assert variant.agent is None
            module = variant.module
            for function in reachable_functions(module, module.__name__, tables=True):
                assert workload.probe_of(function.__code__) is None, function.__qualname__
        finally:
            variant.close()


def test_profilers_are_on_only_around_the_timed_window() -> None:
    seen: list[Any] = []
    variant = workload.setup_setprofile_noop()
    try:

        def spy(batch: list[str]) -> None:
            seen.append(sys.getprofile())
            variant.adapter.process(batch[:3])

        workload.run_variant(variant, LOOPS, spy)
        assert seen == [_pyperf.noop_profile] * LOOPS
        assert sys.getprofile() is None
    finally:
        variant.close()

    variant = workload.setup_cprofile()
    try:
        workload.run_variant(variant, LOOPS)
        profiler = variant.notes["profiler"]
        assert profiled_calls(profiler, "on_message") == [LOOPS * workload.BATCH]
        variant.process()  # outside the window: not profiled
        assert profiled_calls(profiler, "on_message") == [LOOPS * workload.BATCH]
    finally:
        variant.close()


@pytest.mark.skipif(sys.version_info < (3, 12), reason="sys.monitoring exists from 3.12")
def test_monitoring_row_is_on_all_code_only_in_the_window_and_frees_its_tool_id() -> None:
    mon = sys.monitoring
    variant = workload.setup_monitoring_noop()
    tool = variant.notes["tool_id"]
    seen: list[int] = []
    try:
        assert mon.get_tool(tool) == workload.MONITORING_TOOL_NAME
        assert mon.get_events(tool) == 0

        def spy(batch: list[str]) -> None:
            seen.append(mon.get_events(tool))
            variant.adapter.process(batch[:3])

        workload.run_variant(variant, LOOPS, spy)
        assert seen == [mon.events.PY_START | mon.events.PY_RETURN] * LOOPS
        assert mon.get_events(tool) == 0
    finally:
        variant.close()
    assert mon.get_tool(tool) is None


def _made_up_rows(**means: float) -> dict[str, dict[str, Any]]:
    rows = {name: {"mean_us": 80.0, "sem_us": 0.4, "values": 6} for name in workload.SETUPS}
    for name, mean in means.items():
        rows[name] = dict(rows[name], mean_us=mean)
    return rows


@pytest.fixture(scope="module")
def facts() -> dict[str, Any]:
    return workload.structure()


def test_structure_reports_the_weaving_and_same_output(facts: dict[str, Any]) -> None:
    assert facts["python_calls_per_message"] > 100
    few = facts["agent_few_matched"]
    assert few["timed_calls_per_message"] == pytest.approx(3, abs=0.2)
    assert few["same_output"] and facts["agent_all_matched"]["same_output"]


def test_summary_has_the_suite_schema(facts: dict[str, Any]) -> None:
    summary = workload.summarize(
        _made_up_rows(bare=80.0, agent_few_matched=81.0, agent_all_matched=96.0), facts
    )
    assert summary["python"] == workload.platform.python_version()
    values = {row["name"]: row for row in summary["rows"]}
    for row in summary["rows"]:
        assert set(row) == {"name", "value", "unit", "baseline", "ratio", "note"}
        assert isinstance(row["name"], str) and isinstance(row["note"], str)
        assert isinstance(row["value"], (int, float))
        assert row["unit"] in ("ms", "us", "ns", "x", "%", "count")
        if row["baseline"] is None:
            assert row["ratio"] is None
        else:
            baseline = values[row["baseline"]]
            assert row["ratio"] == pytest.approx(row["value"] / baseline["value"])
    for name in workload.SETUPS:
        assert values[name]["unit"] == "us"
        assert values[name]["baseline"] == (None if name == "bare" else "bare")
    assert values["agent_all_matched"]["ratio"] == pytest.approx(1.2)
    assert summary["missing"] == [
        {"name": name, "reason": reason} for name, reason in workload.MISSING.items()
    ]
    assert [set(claim) for claim in summary["claims"]] == [{"text", "holds"}] * 3
    assert all(claim["holds"] is True for claim in summary["claims"])
    json.dumps(summary)  # serializable as is
    text = workload.format_summary(summary)
    assert "claim on this Python: holds" in text
    for name, reason in workload.MISSING.items():
        (line,) = [line for line in text.splitlines() if line.startswith(f"{name} ")]
        assert line.split(None, 1)[1] == f"missing: {reason}"


def test_claim_fails_when_few_matched_is_slower_than_the_bound(facts: dict[str, Any]) -> None:
    slow = 80.0 * (workload.FULL_SPEED_BOUND + 0.01)
    summary = workload.summarize(_made_up_rows(bare=80.0, agent_few_matched=slow), facts)
    speed, same, output = summary["claims"]
    assert speed["holds"] is False and same["holds"] is True and output["holds"] is True
    assert "FAILS" in workload.format_summary(summary)
    broken = dict(facts, agent_few_matched=dict(facts["agent_few_matched"], same_code_object=False))
    summary = workload.summarize(_made_up_rows(), broken)
    assert summary["claims"][1]["holds"] is False


@pytest.mark.skipif(importlib.util.find_spec("pyperf") is None, reason="pyperf not installed")
def test_the_script_runs_every_row_in_one_pyperf_run(tmp_path: Path) -> None:
    """End to end, with pyperf's quickest mode (one worker, one value of one loop per row)."""
    # from another folder: the script finds the repository and its module by itself
    done, summary_file = run_quickest(SCRIPT, tmp_path, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    table = done.stdout[done.stdout.index("twinweave untargeted cost") :]
    lines = {line.split()[0]: line for line in table.splitlines() if line.strip()}
    for name in workload.SETUPS:
        assert name in lines and "missing" not in lines[name], name
    for name, reason in workload.MISSING.items():
        assert f"missing: {reason}" in lines[name]
    assert "claim on this Python:" in table
    summary = json.loads(summary_file.read_text())
    assert summary["python"] == workload.platform.python_version()
    names = [row["name"] for row in summary["rows"]]
    for name in workload.SETUPS:
        assert name in names
    assert {entry["name"] for entry in summary["missing"]} == set(workload.MISSING)
    assert len(summary["claims"]) == 3
    assert all(isinstance(claim["holds"], bool) for claim in summary["claims"])
