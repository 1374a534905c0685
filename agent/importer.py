"""The import hook: weave module code after the loader compiles it and before it runs.

Owns getting hold of code objects on their way into the interpreter: a meta-path
finder that, for modules the pointcut file may match, asks the other finders for
the spec and instruments the spec's loader so that ``get_code`` returns woven
code (``exec_module`` of source and bytecode loaders calls ``get_code``; so does
``runpy`` for ``python -m``). The loader object stays the one the import system
made, so ``module.__loader__``, ``isinstance`` checks, resources and source
lookups behave as before, and the ``.pyc`` cache keeps unwoven code. Given a
code cache (``agent.weaving.codecache``), ``get_code`` asks it first and, after
weaving a module, stores the woven code there, so an unchanged module is woven
once, not at every start-up (``AGENT_CODE_CACHE=off`` turns that off). It also
walks modules imported before the agent started and swaps the ``__code__`` of
their matching functions. It does not decide what matches nor how code is
rewritten: ``weave`` is given to it.
"""

from __future__ import annotations

import importlib.machinery
import logging
import sys
import threading
from collections.abc import Iterator, Sequence
from types import CodeType, FunctionType, ModuleType
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from agent.weaving.codecache import CodeCache

log = logging.getLogger(__name__)

WeaveModule = Callable[[CodeType, Sequence[str]], CodeType]
"""Weave a module's code object, given the names the module answers to."""
WeaveFunction = Callable[[CodeType, str, Sequence[str]], CodeType]
"""Weave one function's code object, given its qualname and its module's names."""
MayMatch = Callable[[str], bool]

_MARK = "_twinweave_instrumented"


class WeavingFinder:
    """A meta-path finder that hands matching modules to the weaver."""

    def __init__(
        self, may_match: MayMatch, weave: WeaveModule, cache: CodeCache | None = None
    ) -> None:
        self._may_match = may_match
        self._weave = weave
        self._cache = cache
        self._busy = threading.local()

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> Any:
        if getattr(self._busy, "active", False) or not self._may_match(fullname):
            return None
        self._busy.active = True
        try:
            spec = None
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
        finally:
            self._busy.active = False
        if spec is not None and spec.loader is not None:
            instrument_loader(spec.loader, self._weave, self._cache)
        return spec

    def invalidate_caches(self) -> None:
        """Nothing cached here; present for the import system's protocol."""


def instrument_loader(loader: Any, weave: WeaveModule, cache: CodeCache | None = None) -> bool:
    """Make ``loader`` return woven code (from ``cache`` when it has it); False when it has
    no code to weave."""
    if getattr(loader, _MARK, False) or isinstance(loader, importlib.machinery.ExtensionFileLoader):
        return False
    original = getattr(loader, "get_code", None)
    if original is None:
        return False

    def get_code(fullname: str) -> CodeType | None:
        identity = None
        if cache is not None:
            # The source's identity is taken before its code is read, so an edit made
            # while the module is woven leaves no entry that would outlive it.
            cached, identity = cache.fetch(loader, fullname, (fullname,))
            if cached is not None:
                return cached
        code = original(fullname)
        if code is None:
            return None
        woven = weave(code, (fullname,))
        if cache is not None and woven is not code:
            cache.store(loader, fullname, identity, woven)
        return woven

    try:
        loader.get_code = get_code
        if not _exec_uses_get_code(loader):
            # zipimporter runs its own code lookup (3.10+) or has only the legacy
            # load_module (3.9): take over module execution too.
            def exec_module(module: ModuleType) -> None:
                code = get_code(module.__name__)
                if code is None:
                    raise ImportError(f"no code for module {module.__name__}", name=module.__name__)
                exec(code, module.__dict__)

            if not hasattr(loader, "exec_module"):
                loader.create_module = lambda spec: None
            loader.exec_module = exec_module
        setattr(loader, _MARK, True)
    except (AttributeError, TypeError):  # a loader with __slots__ or read-only attributes
        log.debug("cannot instrument loader %r", loader)
        return False
    return True


def _exec_uses_get_code(loader: Any) -> bool:
    exec_module = getattr(type(loader), "exec_module", None)
    basics = getattr(importlib.machinery.SourceFileLoader, "exec_module", None)
    return exec_module is basics


def install(finder: WeavingFinder) -> None:
    """Put ``finder`` first on ``sys.meta_path`` (once)."""
    if finder not in sys.meta_path:
        sys.meta_path.insert(0, finder)


def uninstall(finder: WeavingFinder) -> None:
    """Remove ``finder`` from ``sys.meta_path`` if it is there."""
    if finder in sys.meta_path:
        sys.meta_path.remove(finder)


def _functions_of(module: ModuleType) -> Iterator[FunctionType]:
    """Functions defined in ``module``: top level, in classes (any depth), behind decorators."""
    name = module.__name__
    seen: set = set()
    stack: list[Any] = list(vars(module).values())
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
                yield obj
            wrapped = getattr(obj, "__wrapped__", None)
            if wrapped is not None:
                stack.append(wrapped)
        elif isinstance(obj, type) and obj.__module__ == name:
            stack.extend(vars(obj).values())


def weave_loaded(may_match: MayMatch, weave: WeaveFunction, skip: Callable[[str], bool]) -> int:
    """Weave, in place, the functions of modules imported before the agent started.

    Returns the number of functions whose code was replaced.
    """
    count = 0
    for name, module in list(sys.modules.items()):
        if module is None or skip(name) or not may_match(name):
            continue
        for function in _functions_of(module):
            code = function.__code__
            woven = weave(code, function.__qualname__, (name,))
            if woven is not code:
                function.__code__ = woven
                count += 1
    return count
