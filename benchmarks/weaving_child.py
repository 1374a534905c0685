"""One cold import of the "large package", in a fresh process: the child that weaving.py times.

Run by ``benchmarks/weaving.py`` (never by hand, though it works)::

    python benchmarks/weaving_child.py MODE IMPORTS PRELUDE
    python -m agent.bootstrap --pointcuts FILE benchmarks/weaving_child.py MODE IMPORTS PRELUDE

``IMPORTS`` and ``PRELUDE`` are comma-separated module names (``-`` for none). The
child imports ``PRELUDE`` first, untimed (modules the package needs that the agent's
own start-up has already imported, so that every variant imports exactly the same
modules in the timed window), asks the path finder for a module that does not exist
(so every ``sys.path`` entry has its finder and directory listing before the clock
starts, as after any start-up), runs a full garbage collection, then times
``importlib.import_module`` of each name in ``IMPORTS`` with ``time.perf_counter``.
Before the window the child itself imports only ``gc``, ``time`` and ``importlib``
(with ``importlib.util`` and ``importlib.machinery``), the same in every variant.

Why the collection: the cyclic garbage collector runs during the import (a full
collection costs milliseconds), and when it runs depends on what the process
allocated before. The agent's start-up allocates a lot, so without a common starting
point the collector would fall at different places in different variants (on 3.13 the
agent-off import came out *slower* than the one under the agent, by a full
collection). After ``gc.collect()`` every variant starts with nothing pending and
the collector's counters at zero; what the import allocates, and collects, is its own.

``MODE`` ``time`` prints the seconds the timed window took, alone on the last line.
``MODE`` ``report`` prints, as JSON after the window: the seconds, the modules the
window imported (in import order) and, per module, its kind, its join points and
whether its ``.pyc`` is cached; with the agent running, how many functions it wove
during the window, what the imported functions now run (woven code, or code equal
to what the compiler made) and what its code cache did (``agent.weaving.codecache``:
hits, misses, entries written). In ``report`` mode the agent's weaving step is wrapped by
a counter before the window opens, so its figures are for counting, never for timing.

The helpers below (:func:`original_code`, :func:`join_points`, :func:`functions_of`)
use only the standard library; ``weaving.py`` and the smoke test use them too.
"""

from __future__ import annotations

import gc
import importlib
import importlib.machinery
import importlib.util
import sys
import time

NO_SUCH_MODULE = "twinweave_bench_no_such_module"


def split(names: str) -> list[str]:
    """``a,b,c`` -> ``["a", "b", "c"]``; ``-`` or empty -> ``[]``."""
    return [] if names in ("", "-") else names.split(",")


# -- helpers used after the timed window (and by weaving.py) ---------------------------------


def fresh_loader(name: str) -> object | None:
    """A new loader of the kind that loaded module ``name``, for its file; None for other kinds."""
    module = sys.modules.get(name)
    spec = getattr(module, "__spec__", None)
    origin = getattr(spec, "origin", None)
    loader = getattr(spec, "loader", None)
    if not isinstance(origin, str) or loader is None:
        return None
    if isinstance(loader, importlib.machinery.SourceFileLoader):
        return importlib.machinery.SourceFileLoader(name, origin)
    if isinstance(loader, importlib.machinery.SourcelessFileLoader):
        return importlib.machinery.SourcelessFileLoader(name, origin)
    return None


def original_code(name: str) -> object | None:
    """The code of module ``name`` as the compiler made it (from its ``.pyc``), or None.

    Read through a fresh loader of the module's own kind, never through the loader
    the import system used: under the agent that one returns woven code.
    """
    loader = fresh_loader(name)
    return None if loader is None else loader.get_code(name)  # type: ignore[attr-defined]


def kind_of(name: str) -> str:
    """``python`` (source with code), ``extension``, ``builtin`` or ``other``."""
    spec = getattr(sys.modules.get(name), "__spec__", None)
    loader = getattr(spec, "loader", None)
    if isinstance(
        loader, (importlib.machinery.SourceFileLoader, importlib.machinery.SourcelessFileLoader)
    ):
        return "python"
    if isinstance(loader, importlib.machinery.ExtensionFileLoader):
        return "extension"
    if loader is importlib.machinery.BuiltinImporter or isinstance(
        loader, importlib.machinery.BuiltinImporter
    ):
        return "builtin"
    return "other"


def pyc_cached(name: str) -> bool:
    """Whether the module's ``.pyc`` is in ``__pycache__`` (the import read it, not the source)."""
    import os

    spec = getattr(sys.modules.get(name), "__spec__", None)
    cached = getattr(spec, "cached", None)
    return bool(cached) and os.path.exists(cached)


def join_points(code: object) -> list[object]:
    """Every function code object in the tree of ``code`` (what the weaver may weave)."""
    from types import CodeType

    CO_OPTIMIZED = 0x0001
    found = []
    stack = [code]
    while stack:
        current = stack.pop()
        assert isinstance(current, CodeType)
        name = current.co_name
        if current.co_flags & CO_OPTIMIZED and (not name.startswith("<") or name == "<lambda>"):
            found.append(current)
        stack.extend(const for const in current.co_consts if isinstance(const, CodeType))
    return found


def reachable_functions(module: object, name: str, tables: bool = False) -> list[object]:
    """The functions defined in ``module`` (their ``__module__`` is ``name``) reachable from it.

    Module-level functions and the functions of its classes (any depth), including
    static and class methods and property accessors; with ``tables``, also those held
    in the dicts, lists and tuples it (or a class of it) holds.
    """
    from types import FunctionType

    found: list[object] = []
    seen: set[int] = set()
    stack = list(vars(module).values())
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, (staticmethod, classmethod)):
            stack.append(obj.__func__)
        elif isinstance(obj, property):
            stack.extend(f for f in (obj.fget, obj.fset, obj.fdel) if f is not None)
        elif isinstance(obj, FunctionType):
            if obj.__module__ == name:
                found.append(obj)
        elif isinstance(obj, type) and obj.__module__ == name:
            stack.extend(vars(obj).values())
        elif tables and isinstance(obj, dict):
            stack.extend(obj.values())
        elif tables and isinstance(obj, (list, tuple)):
            stack.extend(obj)
    return found


def functions_of(name: str) -> list[object]:
    """The functions module ``name`` defines that can be reached from it.

    Those of :func:`reachable_functions` whose code comes from the module's own file
    (``collections.abc`` re-exports functions that ``_collections_abc`` defines: they
    are not its own).
    """
    module = sys.modules[name]
    filename = getattr(module, "__file__", None)
    return [
        function
        for function in reachable_functions(module, name)
        if function.__code__.co_filename == filename  # type: ignore[attr-defined]
    ]


def module_report(name: str, probe_of: object | None) -> dict[str, object]:
    """What one imported module is: kind, join points, ``.pyc``, and its functions' code."""
    entry: dict[str, object] = {"name": name, "kind": kind_of(name)}
    if entry["kind"] != "python":
        return entry
    original = original_code(name)
    codes = join_points(original) if original is not None else []
    entry["join_points"] = len(codes)
    entry["pyc_cached"] = pyc_cached(name)
    compiled = set(codes)  # code objects hash and compare by value
    functions = functions_of(name)
    woven = unchanged = 0
    for function in functions:
        code = function.__code__  # type: ignore[attr-defined]
        if probe_of is not None and probe_of(code) is not None:  # type: ignore[operator]
            woven += 1
        if code in compiled:  # equal to a code object the compiler made: left as it was
            unchanged += 1
    entry["functions"] = len(functions)
    entry["functions_woven"] = woven
    entry["functions_unchanged"] = unchanged
    return entry


# -- the child -------------------------------------------------------------------------------


class _Counter:
    """Wraps the agent's weaving step (``report`` mode only): counts what it wove."""

    def __init__(self, apply: object) -> None:
        self.apply = apply
        self.woven = 0
        self.failed = 0

    def __call__(self, code: object, probe: object) -> object:
        try:
            woven = self.apply(code, probe)  # type: ignore[operator]
        except Exception:
            self.failed += 1
            raise
        self.woven += woven is not code
        return woven


def main(argv: list[str]) -> None:
    mode, imports, prelude = argv[0], split(argv[1]), split(argv[2])
    for name in prelude:
        importlib.import_module(name)
    importlib.util.find_spec(NO_SUCH_MODULE)  # every sys.path entry gets its finder now
    runtime = sys.modules.get("agent.runtime")  # only there when the agent runs
    agent = runtime.current() if runtime is not None else None  # type: ignore[attr-defined]
    counter = None
    if mode == "report" and agent is not None:
        from agent.weaving.rewrite import weave_code

        counter = _Counter(agent._apply or weave_code)
        agent._apply = counter
    before = set(sys.modules)
    gc.collect()  # every variant's window starts from the same, collected heap
    start = time.perf_counter()
    for name in imports:
        importlib.import_module(name)
    seconds = time.perf_counter() - start
    if mode == "time":
        print(repr(seconds))
        return
    new = [name for name in list(sys.modules) if name not in before]
    import json
    import platform

    probe_of = None
    if agent is not None:
        from agent.weaving.rewrite import probe_of
    report = {
        "seconds": seconds,
        "python": platform.python_version(),
        "agent": agent is not None,
        "modules": [module_report(name, probe_of) for name in new],
    }
    if agent is not None:
        report["joinpoints"] = len(agent.joinpoints())
        report["backend"] = agent.backend
        cache = getattr(agent, "code_cache", None)
        report["code_cache"] = cache.stats.as_dict() if cache is not None else None
    if counter is not None:
        report["woven"] = counter.woven
        report["weave_failed"] = counter.failed
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1:])
