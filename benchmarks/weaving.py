"""Weaving cost: what the agent adds to a large package's import, and what one woven function costs.

Issue 5, item 3, measured on the running Python in one pyperf run::

    Import time of a large package with the agent off, on with nothing matched,
    and on with everything matched; microseconds per woven function, cold and warm.

The "large package" is a set of sizeable pure-Python standard-library packages and
modules that neither interpreter start-up nor the agent's own start-up imports
(:data:`IMPORTS`: unittest, xml.dom.minidom, xml.etree.ElementTree, tarfile, difflib,
concurrent.futures), so it exists wherever Python 3.9 to 3.13 does; with what they
pull in, some 25 to 30 modules and about 1000 functions. The package is what the
import of :data:`IMPORTS` brings into ``sys.modules`` under the agent (found out at
the start of each run, so it is right for the running Python); the summary says how
many modules and functions it holds and how many got woven. Its ``.pyc`` files exist,
as on any installed Python (the summary counts them); the import reads them, never
the source.

How an import is timed, and why. An import is only cold once per process: a module
removed from ``sys.modules`` and imported again finds extension modules, the path
finders' directory caches and its own side effects (registries, ``atexit``
handlers, the agent's probe cache) left from the first time. So every value of the
import rows is one import in a **fresh process** (``benchmarks/weaving_child.py``,
started by the pyperf worker), and the child times just the import statements with
``time.perf_counter`` and reports the figure; pyperf does the rest (worker
processes, values, statistics, its JSON). Timing the whole process instead and
subtracting a start-up-only process measured in the same run would also be fair,
but the difference of two process times of 40 to 100 ms is noisier than the 7 to
15 ms import it is after, and it would mix in the agent's own start-up and exit
(parsing the pointcut file, starting the plugins, the report at exit), which are
not import cost.

The same modules are imported in the timed window of every variant: the agent's
start-up already imports some of what the package needs (``tokenize``, ``inspect``,
``logging``...), so the agent-off child imports those (the *prelude*, found out at
the start of the run) before its clock starts. Every child also touches every
``sys.path`` entry and runs a full garbage collection before its clock starts, so
that every variant's window starts from a collected heap: otherwise a full
collection (milliseconds) falls inside one variant's window and not another's,
depending only on what the process allocated before (on 3.13 it made the
agent-off import the slower one).

Rows (pyperf benchmarks):

* ``import_agent_off``: ``python weaving_child.py``, no agent.
* ``import_agent_unrelated``: ``python -m agent.bootstrap --pointcuts F
  weaving_child.py`` with a pointcut file about another module (the usual case: the
  agent profiles your service while it imports libraries nobody asked about): the
  import hook sees every import and declines each at its module pre-filter.
* ``import_agent_nothing``: a pointcut file that names every module of the package
  but no function in it (``execution(* P..twinweave_matches_nothing(..))`` per
  module prefix P): every loader is instrumented, every function is matched against
  the pointcuts, none is woven, and every function keeps the compiler's code object.
* ``import_agent_everything``: a pointcut that matches every function of the package
  (``execution(* P..*(..))`` per prefix), with the ``timing`` plugin on: all of them
  are woven on their way in (``Agent.weave_module``, called by the import hook), with
  an empty code cache (``agent.weaving.codecache``), so every module is woven and its
  entry written: the first start-up after an install or an edit.
* ``import_agent_everything_warm``: the same, with the code cache that one untimed
  child of the same kind filled before (once per worker): every module was woven
  before and is unchanged since, so its woven code comes from the cache and only its
  probes are made and registered again. The usual start-up.
* ``weave_per_function_warm``: "woven before, unchanged since", per function, in one
  process: a real agent with the everything-pointcut and its timing plugin started
  gets each module's code through the import hook's ``get_code`` (a fresh loader per
  module, instrumented as the import hook does, with a code cache of its own) once,
  untimed, which weaves the module and writes its entry; then again and again: each
  value is one pass of those ``get_code`` calls over every module of the package,
  each served from the cache; pyperf divides by the functions woven per pass.
  Matching results and probes are cached in the process by then: what is left is
  reading the entry, ``marshal``, and putting the probes' constants back. Each pass
  starts from a collected heap, as each import child does (:func:`time_warm`).

Every child with the agent gets ``AGENT_CODE_CACHE`` set to a folder of the run's own
(an empty one per value except for the warm import row), so no entry from an earlier
run or from beside the standard library's ``.pyc`` files is ever read.

Derived in the summary, from the means of this run: ``import_added_*`` = the
variant's import - ``import_agent_off`` (ratio = added / off), and
``weave_per_function_cold`` = (``import_agent_everything`` - ``import_agent_nothing``)
/ functions woven: what weaving a function costs in a fresh process beyond
looking at it and matching it (which the nothing row does too), first-use costs
included: the join point and probe creation, the rewrite, the woven code's
registration, and the garbage collections all that allocation brings.

Run it from the repository root (see benchmarks/README.md)::

    python benchmarks/weaving.py --quick -o out.json --summary out.summary.json
    python benchmarks/weaving.py -o full.json --summary full.summary.json

Every pyperf option works; ``--summary FILE`` and ``--quick`` (:data:`QUICK_ARGS`) are
ours. The defaults differ from pyperf's: 10 processes of 3 values, no warm-up value
and one loop per value (``--loops 1``, so no calibration): a value of these rows is
one fresh process's import (several milliseconds) or one weaving pass over the
whole package (a second or so), long enough to time on its own, and never warmer
for coming second in its worker. Pass ``--loops``, ``--warmups``, ``--processes`` to
change that. Each worker sets up only the row it measures.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import importlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import CodeType
from typing import Any

_HERE = os.path.dirname(os.path.abspath(__file__))
_REPO = os.path.dirname(_HERE)
if _REPO not in sys.path:  # pyperf workers run this file directly: make `agent` importable
    sys.path.insert(0, _REPO)

from agent.importer import instrument_loader  # noqa: E402
from agent.plugins import AgentContext  # noqa: E402
from agent.pointcuts import load as load_pointcuts  # noqa: E402
from agent.runtime import Agent  # noqa: E402
from agent.weaving.codecache import CodeCache  # noqa: E402
from agent.weaving.rewrite import probe_of  # noqa: E402
from benchmarks import weaving_child as child  # noqa: E402
from benchmarks._pyperf import add_options, bench_stats, expand_quick, finish  # noqa: E402

IMPORTS = (
    "unittest",
    "xml.dom.minidom",
    "xml.etree.ElementTree",
    "tarfile",
    "difflib",
    "concurrent.futures",
)
"""What the timed window imports: the large package is this and everything it pulls in."""

CHILD = os.path.join(_HERE, "weaving_child.py")
VARIANTS = ("off", "unrelated", "nothing", "everything", "everything_warm")
"""The agent-off child, the three pointcut files, and the everything one with a filled cache."""
WARM_VARIANT = "everything_warm"
UNRELATED_MODULE = "twinweave_bench_unrelated"
"""The module the unrelated pointcut file names (no such module exists)."""
NOTHING_NAME = "twinweave_matches_nothing"
"""The function name the nothing-pointcut asks for in every module of the package."""

IMPORT_ROWS = {
    "off": "import_agent_off",
    "unrelated": "import_agent_unrelated",
    "nothing": "import_agent_nothing",
    "everything": "import_agent_everything",
    WARM_VARIANT: "import_agent_everything_warm",
}
WARM_ROW = "weave_per_function_warm"
DESCRIPTIONS = {
    "import_agent_off": "fresh process, no agent",
    "import_agent_unrelated": "agent on, pointcuts about another module: the import hook "
    "declines every module",
    "import_agent_nothing": "agent on, pointcuts naming every module of the package but no "
    "function: all matched against, none woven",
    "import_agent_everything": "agent on, pointcuts matching every function of the package, "
    "timing plugin: all woven (empty code cache)",
    "import_agent_everything_warm": "the same, every module woven before and unchanged since: "
    "served from the code cache",
    WARM_ROW: "the import hook's get_code again for modules woven before and unchanged since "
    "(from the code cache), in a process that already wove them, per function woven",
}
"""What each pyperf row measures (its metadata, and the start of its note in the summary)."""
CHILD_TIMEOUT_S = 300.0
CONTEXT = AgentContext(python=platform.python_version(), backend="bytecode", report=None)

QUICK_ARGS = ("--processes", "3", "--values", "1")
"""What ``--quick`` stands for: 3 worker processes of 1 value per row (about 30 s on 2 cores).

Options given after ``--quick`` win. The everything row and the warm row each weave
the whole package per value (a second or more), which is what bounds the time.
"""
DEFAULTS = {"processes": 10, "values": 3, "warmups": 0, "loops": 1}
"""The Runner's defaults here (see the module docstring): no calibration, no warm-up."""


CACHE_SETTING = "AGENT_CODE_CACHE"

_python = sys.executable
"""The children's interpreter: the workers' (pyperf's ``--python``, by default this one)."""


class ChildError(RuntimeError):
    """A child process failed; the message ends with its last lines of stderr."""


# -- the children ----------------------------------------------------------------------------


_ENV_KEYS = ("PATH", "HOME", "TMPDIR", "TEMP", "TMP", "SYSTEMROOT", "LANG", "LANGUAGE")
"""What a child inherits of the environment (and ``LC_*``); ``PYTHONPATH`` is the checkout."""


def child_env() -> dict[str, str]:
    """The children's environment: this checkout first on the path, and little else.

    The same in the main process (which finds the package out) and in pyperf's
    workers (which time it, in the environment pyperf gives them), and for every
    variant, so ``sys.path`` is the same in every child. No ``AGENT_*`` setting
    is inherited: the site hook must not start an agent in the agent-off child.
    """
    env = {
        key: value for key, value in os.environ.items() if key in _ENV_KEYS or key.startswith("LC_")
    }
    env["PYTHONPATH"] = _REPO
    return env


def child_command(
    variant: str, mode: str, imports: Sequence[str], prelude: Sequence[str], pointcuts: str | None
) -> list[str]:
    """A child's command line: ``weaving_child.py MODE IMPORTS PRELUDE``, maybe with the agent."""
    args = [CHILD, mode, ",".join(imports) or "-", ",".join(prelude) or "-"]
    if variant == "off":
        return [_python, *args]
    if pointcuts is None:
        raise ValueError(f"variant {variant!r} needs a pointcut file")
    return [_python, "-m", "agent.bootstrap", "--pointcuts", pointcuts, *args]


def run_child(command: list[str], cache: str | None = None) -> str:
    """Run one child to its end; its stdout. Raises :class:`ChildError` if it fails.

    ``cache``: the code cache folder of a child with the agent (``AGENT_CODE_CACHE``);
    None: a new empty one, removed afterwards.
    """
    env = child_env()
    if cache is None:
        with tempfile.TemporaryDirectory(prefix="twinweave-codecache-") as empty:
            return run_child(command, os.path.join(empty, "cache"))
    env[CACHE_SETTING] = cache
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=env,
        cwd=_REPO,
        timeout=CHILD_TIMEOUT_S,
    )
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise ChildError(f"exit status {done.returncode}: {tail or 'no output'}")
    return done.stdout


def last_line(stdout: str) -> str:
    lines = stdout.strip().splitlines()
    if not lines:
        raise ChildError("the child printed nothing")
    return lines[-1]


# -- the package and the pointcut files ------------------------------------------------------


def prefixes(modules: Sequence[str]) -> list[str]:
    """The fewest dotted names whose subtrees (``P`` and ``P.*``) cover exactly ``modules``.

    A module whose parent package is one of ``modules`` is covered by the parent's
    prefix; one whose parent is not (``xml.dom``, under an ``xml`` that a start-up
    imported) is a prefix of its own, so modules imported before are never covered.
    """
    wanted = set(modules)
    found = []
    for name in modules:
        parent = name.rpartition(".")[0]
        while parent and parent not in wanted:
            parent = parent.rpartition(".")[0]
        if not parent:
            found.append(name)
    return sorted(found)


def pointcut_file(variant: str, roots: Sequence[str]) -> str:
    """The pointcut file of an agent variant, for a package covered by ``roots``."""
    if variant == "unrelated":
        expression = f"execution(* {UNRELATED_MODULE}..*(..))"
        weaver = f'  <weaver>\n    <include within="{UNRELATED_MODULE}"/>\n  </weaver>\n'
    elif variant == "nothing":
        expression = " or ".join(f"execution(* {root}..{NOTHING_NAME}(..))" for root in roots)
        weaver = ""
    elif variant == "everything":
        expression = " or ".join(f"execution(* {root}..*(..))" for root in roots)
        weaver = ""
    else:
        raise ValueError(f"no pointcut file for variant {variant!r}")
    return (
        f"<agent>\n{weaver}  <aspects>\n"
        f'    <aspect name="package" type="service" pointcut="{expression}"/>\n'
        "  </aspects>\n  <plugins>\n"
        '    <plugin name="timing"/>\n'
        "  </plugins>\n</agent>\n"
    )


@dataclass
class Spec:
    """What the run found out about the package, shared by the main process and its workers."""

    imports: list[str]
    prelude: list[str]
    package: list[str]
    """The Python modules the timed window imports (under the agent), in import order."""
    roots: list[str]
    pointcuts: dict[str, str]
    reports: dict[str, dict[str, Any]]
    missing: dict[str, str]
    """Variant -> why it cannot run here."""

    def command(self, variant: str, mode: str) -> list[str]:
        return child_command(
            variant,
            mode,
            self.imports,
            self.prelude if variant == "off" else (),
            self.pointcuts.get("everything" if variant == WARM_VARIANT else variant),
        )

    def save(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as stream:
            json.dump(vars(self), stream)

    @classmethod
    def load(cls, path: str) -> Spec:
        with open(path, encoding="utf-8") as stream:
            return cls(**json.load(stream))


def report_of(command: list[str], cache: str | None = None) -> dict[str, Any]:
    """Run one child in ``report`` mode (``command``) and return its JSON report."""
    return json.loads(last_line(run_child(command, cache)))


def filled_cache(spec: Spec, folder: str) -> str:
    """A code cache folder under ``folder`` that an untimed everything child has filled."""
    cache = os.path.join(folder, "cache")
    run_child(spec.command("everything", "time"), cache)
    return cache


def new_modules(result: dict[str, Any]) -> list[str]:
    return [module["name"] for module in result["modules"]]


def discover(workdir: str, imports: Sequence[str] = IMPORTS) -> Spec:
    """Find the package, the prelude and the pointcut files, and report on every variant.

    One child of each kind, before anything is timed: the import under the agent
    with the unrelated pointcuts gives the package (what the window imports once the
    agent's start-up has run); the import without the agent gives the prelude (what
    it imports besides). Then a report from every variant as it will be timed,
    prelude included, to count what it wove and to check that every variant imports
    the same modules.
    """
    missing: dict[str, str] = {}
    pointcuts = {}
    unrelated_file = os.path.join(workdir, "unrelated.xml")
    with open(unrelated_file, "w", encoding="utf-8") as stream:
        stream.write(pointcut_file("unrelated", ()))
    pointcuts["unrelated"] = unrelated_file
    plain = report_of(child_command("off", "report", imports, (), None))
    try:
        under_agent = report_of(child_command("unrelated", "report", imports, (), unrelated_file))
    except ChildError as exc:
        reason = f"the agent does not start here: {exc}"
        missing.update(unrelated=reason, nothing=reason, everything=reason)
        under_agent = plain
    in_window = set(new_modules(under_agent))
    prelude = [name for name in new_modules(plain) if name not in in_window]
    package = [m["name"] for m in under_agent["modules"] if m["kind"] == "python"]
    roots = prefixes(package)
    for variant in ("nothing", "everything"):
        path = os.path.join(workdir, f"{variant}.xml")
        with open(path, "w", encoding="utf-8") as stream:
            stream.write(pointcut_file(variant, roots))
        pointcuts[variant] = path
    spec = Spec(list(imports), prelude, package, roots, pointcuts, {}, missing)
    if "everything" in missing:
        missing[WARM_VARIANT] = missing["everything"]
    for variant in VARIANTS:
        if variant in missing:
            continue
        try:
            cache = None
            if variant == WARM_VARIANT:
                cache = filled_cache(spec, tempfile.mkdtemp(prefix="warm-", dir=workdir))
            spec.reports[variant] = report_of(spec.command(variant, "report"), cache)
        except ChildError as exc:
            missing[variant] = f"the child failed: {exc}"
    return spec


def functions_woven(spec: Spec) -> int:
    """Functions the everything variant wove during its import (0 when it cannot run)."""
    return int(spec.reports.get("everything", {}).get("woven", 0))


# -- the timed rows --------------------------------------------------------------------------

_spec_path: str | None = None
_spec: Spec | None = None


def get_spec() -> Spec:
    """This run's spec: from the file the main process passed, or found out here."""
    global _spec
    if _spec is None:
        if _spec_path is not None:
            _spec = Spec.load(_spec_path)
        else:  # a worker started by hand: find out for ourselves
            workdir = tempfile.mkdtemp(prefix="twinweave-weaving-")
            atexit.register(shutil.rmtree, workdir, True)
            _spec = discover(workdir)
    return _spec


_warm_cache: str | None = None


def time_import(loops: int, variant: str) -> float:
    """pyperf's time function of an import row: ``loops`` fresh children, their window seconds.

    Each child has an empty code cache, but the warm row's: that one is filled once per
    worker, untimed, by an everything child.
    """
    global _warm_cache
    spec = get_spec()
    command = spec.command(variant, "time")
    cache = None
    if variant == WARM_VARIANT:
        if _warm_cache is None:
            folder = tempfile.mkdtemp(prefix="twinweave-codecache-")
            atexit.register(shutil.rmtree, folder, True)
            _warm_cache = filled_cache(spec, folder)
        cache = _warm_cache
    total = 0.0
    for _ in range(loops):
        total += float(last_line(run_child(command, cache)))
    return total


@dataclass
class Warm:
    """The warm row's set-up: a started agent, the package's compiled module code objects,
    and per module a loader instrumented as the import hook does, with a code cache."""

    agent: Agent
    codes: list[tuple[str, Any]]
    woven: int
    """Functions one pass of :func:`weave_pass` weaves."""
    loaders: list[tuple[str, Any]]
    cache: CodeCache
    folder: str

    def close(self) -> None:
        self.agent.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


def _all_codes(code: Any) -> list[Any]:
    """Every code object in the tree of ``code``."""
    found, stack = [], [code]
    while stack:
        current = stack.pop()
        found.append(current)
        stack.extend(c for c in current.co_consts if isinstance(c, CodeType))
    return found


def setup_warm(spec: Spec) -> Warm:
    """A real agent (everything-pointcut, timing plugin started) that has woven the package once.

    The package is imported plainly here (no import hook in this process). Each of
    its modules gets a fresh loader of its own kind, instrumented as the import hook
    instruments loaders, with a code cache in a new folder; one untimed pass of their
    ``get_code`` weaves every module and writes its entry, so the cache, matching
    results and probes are warm before the first value.
    """
    agent = Agent(load_pointcuts(spec.pointcuts["everything"]), "auto")
    agent.plugins.start(CONTEXT)
    folder = tempfile.mkdtemp(prefix="twinweave-codecache-")
    cache = CodeCache(agent.probe_for, os.path.join(folder, "cache"))
    for name in spec.imports:
        importlib.import_module(name)
    codes, loaders = [], []
    for name in spec.package:
        code = child.original_code(name)
        loader = child.fresh_loader(name)
        if code is None or loader is None:
            continue
        codes.append((name, code))
        instrument_loader(loader, agent.weave_module, cache)
        loaders.append((name, loader))
    woven = 0
    for name, loader in loaders:
        result = loader.get_code(name)
        woven += sum(probe_of(c) is not None for c in _all_codes(result))
    return Warm(agent, codes, woven, loaders, cache, folder)


def weave_pass(warm: Warm) -> list[Any]:
    """One pass of the import hook's ``get_code`` over every module of the package (each
    served from the code cache); the woven codes."""
    return [loader.get_code(name) for name, loader in warm.loaders]


_warm: Warm | None = None


def time_warm(loops: int) -> float:
    """pyperf's time function of the warm row: ``loops`` weaving passes, seconds.

    The woven code objects of a pass are kept until its clock stops, as an import
    keeps them, so freeing them is not in the figure. Each pass starts from a
    collected heap (``gc.collect()`` before its clock starts, as every import child
    does): otherwise what earlier passes left behind makes a full collection fall
    into every third value or so of a worker, a cost of this loop and not of an
    import. Collections the pass's own allocations cause stay in the figure.
    """
    global _warm
    if _warm is None:
        spec = get_spec()
        _warm = setup_warm(spec)
        atexit.register(_warm.close)
        expected = functions_woven(spec)
        if _warm.woven != expected:
            raise RuntimeError(
                f"a weaving pass here weaves {_warm.woven} functions, the import wove "
                f"{expected}: the warm figure would not be per function woven"
            )
    clock = time.perf_counter
    total = 0.0
    stats = _warm.cache.stats
    hits = stats.hits
    for _ in range(loops):
        gc.collect()
        start = clock()
        kept = weave_pass(_warm)
        total += clock() - start
        del kept
    # Every module that has an entry (all but those without functions) came from the cache.
    if stats.hits - hits != loops * stats.written:
        raise RuntimeError(
            f"the code cache served {stats.hits - hits} modules of {loops * stats.written}: "
            "the warm figure would not be the cached path"
        )
    return total


# -- the summary -----------------------------------------------------------------------------


def _row(
    name: str,
    value: float,
    unit: str,
    note: str,
    baseline: str | None = None,
    ratio: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    row = {"name": name, "value": float(value), "unit": unit, "baseline": baseline}
    row["ratio"] = None if ratio is None else float(ratio)
    row["note"] = note
    row.update(extra)
    return row


def package_facts(spec: Spec) -> dict[str, Any]:
    """Modules, functions, ``.pyc`` files and checks, from the reports of the variants."""
    base = spec.reports.get("unrelated") or spec.reports.get("off") or {"modules": []}
    modules = base["modules"]
    python = [m for m in modules if m["kind"] == "python"]
    facts: dict[str, Any] = {
        "imports": list(spec.imports),
        "modules": len(python),
        "other_modules": len(modules) - len(python),
        "pyc_cached": sum(bool(m.get("pyc_cached")) for m in python),
        "functions": sum(int(m.get("join_points", 0)) for m in python),
        "prelude": list(spec.prelude),
        "roots": list(spec.roots),
    }
    windows = {variant: set(new_modules(r)) for variant, r in spec.reports.items()}
    facts["same_modules_in_every_variant"] = len({frozenset(w) for w in windows.values()}) <= 1
    for variant in ("unrelated", "nothing"):
        result = spec.reports.get(variant)
        if result is None:
            continue
        python_modules = [m for m in result["modules"] if m["kind"] == "python"]
        facts[f"{variant}_woven"] = int(result.get("woven", 0))
        facts[f"{variant}_code_unchanged"] = all(
            m["functions_unchanged"] == m["functions"] and m["functions_woven"] == 0
            for m in python_modules
        )
    everything = spec.reports.get("everything")
    if everything is not None:
        python_modules = [m for m in everything["modules"] if m["kind"] == "python"]
        facts["woven"] = int(everything.get("woven", 0))
        facts["weave_failed"] = int(everything.get("weave_failed", 0))
        facts["joinpoints"] = int(everything.get("joinpoints", 0))
        facts["reachable_functions"] = sum(m["functions"] for m in python_modules)
        facts["reachable_woven"] = sum(m["functions_woven"] for m in python_modules)
    return facts


Missing = list[dict[str, str]]
"""The summary's ``missing`` entries: ``{"name": row, "reason": why}``."""


def _import_rows(stats: dict[str, dict[str, float]], missing: Missing) -> list[dict[str, Any]]:
    """The cold imports in ms, each against ``import_agent_off``, then what each variant adds."""
    rows: list[dict[str, Any]] = []
    off = stats.get(IMPORT_ROWS["off"])
    for variant in VARIANTS:
        name = IMPORT_ROWS[variant]
        if name not in stats:
            continue
        s = stats[name]
        ratio = s["mean"] / off["mean"] if off and variant != "off" else None
        rows.append(
            _row(
                name,
                s["mean"] * 1e3,
                "ms",
                f"{DESCRIPTIONS[name]} ({s['values']} values)",
                IMPORT_ROWS["off"] if ratio is not None else None,
                ratio,
                sem=s["sem"] * 1e3,
            )
        )
    for variant in ("unrelated", "nothing", "everything"):
        name = IMPORT_ROWS[variant]
        added = f"import_added_{variant}"
        if name not in stats or off is None:
            missing.append({"name": added, "reason": f"{name} did not run"})
            continue
        difference = stats[name]["mean"] - off["mean"]
        rows.append(
            _row(
                added,
                difference * 1e3,
                "ms",
                f"{name} - import_agent_off; ratio = added / off",
                IMPORT_ROWS["off"],
                difference / off["mean"],
                sem=math.hypot(stats[name]["sem"], off["sem"]) * 1e3,
            )
        )
    return rows


def _package_rows(facts: dict[str, Any], missing: Missing) -> list[dict[str, Any]]:
    """The package's modules and functions, and how many of them the everything import wove."""
    rows: list[dict[str, Any]] = []
    rows.append(
        _row(
            "package_modules",
            facts["modules"],
            "count",
            f"Python modules the import brings in ({facts['pyc_cached']} read from a cached "
            f".pyc), plus {facts['other_modules']} extension modules",
            pyc_cached=facts["pyc_cached"],
        )
    )
    rows.append(
        _row(
            "package_functions",
            facts["functions"],
            "count",
            "function code objects in them, nested ones included",
        )
    )
    woven = facts.get("woven")
    if woven is not None:
        rows.append(
            _row(
                "functions_woven",
                woven,
                "count",
                f"by the everything import ({facts['joinpoints']} join points, "
                f"{facts['weave_failed']} refused); ratio = share of package_functions",
                "package_functions",
                woven / facts["functions"] if facts["functions"] else None,
            )
        )
    else:
        missing.append({"name": "functions_woven", "reason": "the everything variant did not run"})
    return rows


def _weave_rows(
    stats: dict[str, dict[str, float]], woven: int | None, spec: Spec, missing: Missing
) -> list[dict[str, Any]]:
    """Weaving one function, cold (from the imports) and warm (the weave pass alone)."""
    rows: list[dict[str, Any]] = []
    everything = stats.get(IMPORT_ROWS["everything"])
    nothing = stats.get(IMPORT_ROWS["nothing"])
    cold = None
    if everything and nothing and woven:
        cold = (everything["mean"] - nothing["mean"]) / woven
        rows.append(
            _row(
                "weave_per_function_cold",
                cold * 1e6,
                "us",
                "(import_agent_everything - import_agent_nothing) / functions_woven, fresh process",
                sem=math.hypot(everything["sem"], nothing["sem"]) / woven * 1e6,
            )
        )
    else:
        missing.append(
            {"name": "weave_per_function_cold", "reason": "needs the everything and nothing rows"}
        )
    warm = stats.get(WARM_ROW)
    if warm is not None:
        rows.append(
            _row(
                WARM_ROW,
                warm["mean"] * 1e6,
                "us",
                f"{DESCRIPTIONS[WARM_ROW]} ({warm['values']} values); ratio = warm / cold",
                "weave_per_function_cold" if cold else None,
                warm["mean"] / cold if cold else None,
                sem=warm["sem"] * 1e6,
            )
        )
    elif "everything" not in spec.missing:
        missing.append({"name": WARM_ROW, "reason": "the row did not run"})
    else:
        missing.append({"name": WARM_ROW, "reason": spec.missing["everything"]})
    return rows


def summarize(stats: dict[str, dict[str, float]], spec: Spec) -> dict[str, Any]:
    """The rows of the summary (the suite's shape) from pyperf's results of this run."""
    facts = package_facts(spec)
    missing = [
        {"name": IMPORT_ROWS[variant], "reason": reason} for variant, reason in spec.missing.items()
    ]
    rows = _import_rows(stats, missing)
    rows += _package_rows(facts, missing)
    rows += _weave_rows(stats, facts.get("woven"), spec, missing)
    children = [r["python"] for r in spec.reports.values() if "python" in r]
    return {
        "python": children[0] if children else platform.python_version(),
        "implementation": platform.python_implementation(),
        "rows": rows,
        "missing": missing,
        "package": facts,
        "about": "cold imports in fresh processes (pyperf mean +- sem); ratio = row / "
        "import_agent_off of this run; weaving per function cold and warm",
    }


def _figure(row: dict[str, Any]) -> str:
    unit = row["unit"]
    value = row["value"]
    if unit == "count":
        return f"{int(value):>9d}"
    return f"{value:>9.2f} {unit:<2}" if unit in ("ms", "us", "ns") else f"{value:>9.3f} {unit}"


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a small text table."""
    facts = summary["package"]
    out = [
        f"twinweave weaving cost, {summary['implementation']} {summary['python']}: "
        "cold imports in fresh processes, pyperf mean (+- sem)",
        f"package: import {', '.join(facts['imports'])}: {facts['modules']} Python modules "
        f"({facts['pyc_cached']} from cached .pyc) + {facts['other_modules']} extension "
        f"modules, {facts['functions']} functions; {len(facts['prelude'])} modules imported "
        "before the clock without the agent (its start-up imports them)",
        "",
        f"{'row':<26} {'value':>12} {'+-sem':>8}  {'ratio':>7}  {'to':<23} note",
    ]
    for row in summary["rows"]:
        sem = f"{row['sem']:>8.2f}" if "sem" in row else f"{'':>8}"
        ratio = f"{row['ratio']:>7.3f}" if row["ratio"] is not None else f"{'':>7}"
        baseline = row["baseline"] or ""
        out.append(
            f"{row['name']:<26} {_figure(row):>12} {sem}  {ratio}  {baseline:<23} {row['note']}"
        )
    for entry in summary["missing"]:
        out.append(f"{entry['name']:<26} missing: {entry['reason']}")
    checks = [
        ("every variant imports the same modules", facts.get("same_modules_in_every_variant")),
        ("nothing-matched: 0 woven, compiled code kept", facts.get("nothing_code_unchanged")),
        ("unrelated: 0 woven, compiled code kept", facts.get("unrelated_code_unchanged")),
    ]
    out.append("")
    for label, ok in checks:
        if ok is not None:
            out.append(f"check: {label}: {'yes' if ok else 'NO'}")
    return "\n".join(out)


# -- main ------------------------------------------------------------------------------------


def _pass_spec(cmd: list[str], args: Any) -> None:
    """pyperf's hook for a worker's command line: hand it this run's spec file."""
    if _spec_path is not None:
        cmd.extend(["--weaving-spec", _spec_path])


def main(argv: list[str] | None = None) -> int:
    global _spec_path, _python
    import pyperf  # only the benchmark itself needs it (the smoke test does not)

    runner = pyperf.Runner(add_cmdline_args=_pass_spec, **DEFAULTS)
    runner.metadata["description"] = "twinweave: import time with the agent, weaving cost"
    add_options(runner, QUICK_ARGS)
    runner.argparser.add_argument("--weaving-spec", metavar="FILE", help=argparse.SUPPRESS)
    args = runner.parse_args(expand_quick(sys.argv[1:] if argv is None else argv, QUICK_ARGS))
    _python = args.python or sys.executable  # the workers' interpreter, also in the main process
    workdir = None
    if args.weaving_spec:
        _spec_path = args.weaving_spec
    elif not args.worker:
        workdir = tempfile.mkdtemp(prefix="twinweave-weaving-")
        spec = discover(workdir)
        _spec_path = os.path.join(workdir, "spec.json")
        spec.save(_spec_path)
    try:
        spec = get_spec()
        results: dict[str, Any] = {}
        for variant in VARIANTS:
            if variant in spec.missing:
                continue
            name = IMPORT_ROWS[variant]
            results[name] = runner.bench_time_func(
                name, time_import, variant, metadata={"description": DESCRIPTIONS[name]}
            )
        woven = functions_woven(spec)
        if woven:
            results[WARM_ROW] = runner.bench_time_func(
                WARM_ROW,
                time_warm,
                inner_loops=woven,
                metadata={"description": DESCRIPTIONS[WARM_ROW]},
            )
        if args.worker or any(bench is None for bench in results.values()):
            return 0  # a worker, or a pyperf mode that measured nothing here
        summary = summarize({name: bench_stats(b) for name, b in results.items()}, spec)
        return finish(summary, args, format_summary)
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
