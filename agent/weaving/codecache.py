"""The cache of woven module code: weave a module once, not at every start-up.

Owns storing the woven code of a module the import hook wove, finding it again
in a later process, and trusting it only when nothing it depends on has changed.
It does not decide what matches (the resolver it is given does: the agent's
``probe_for``) nor weave anything (``agent.weaving.rewrite``).

Where. Beside the module's ``.pyc``, in a folder of our own inside its
``__pycache__`` (``importlib.util.cache_from_source``, so ``PYTHONPYCACHEPREFIX``
is followed): ``__pycache__/twinweave/<stem>.<cache tag>.pyc``. Inside
``__pycache__`` rather than a ``__twinweave__`` folder beside it because
everything that ignores or cleans Python's caches (``.gitignore`` files, ``py3clean``,
``find -name __pycache__ -delete``) already covers it, and a new folder would show
up in every project's working tree; a folder of our own inside it because we
create it with mode 0700, so its ownership and permissions are ours to check, and
the import system never looks there. Where that folder cannot be made or is not
ours (a read-only site-packages, another user's folder, ``sys.dont_write_bytecode``),
entries go to a per-user folder, ``$XDG_CACHE_HOME/twinweave`` (else
``~/.cache/twinweave``), named ``<stem>.<hash of the source path>.<cache tag>.pyc``.

The setting: ``AGENT_CODE_CACHE`` in the environment (the agent's other settings are
``AGENT_*`` variables too). Unset, empty or ``on``: as above. ``off`` (or ``0``,
``no``, ``false``): no cache, every start-up weaves. Any other value is a folder
that holds every entry (per-user naming), created 0700 if missing: for tests and
benchmarks that want a cache of their own.

Trust. An entry is used only when every part of its key matches: the module's
name; the source's identity (``st_mtime_ns`` and ``st_size`` of the ``.py``, or of the
``.pyc`` for a module without source; checked before the source is read, so an edit
during the weave is caught next time); the Python (``sys.implementation.cache_tag`` and
``importlib.util.MAGIC_NUMBER``); and the agent (its version and a checksum of the
weaver's own source files). Then the probe layout: an entry lists, per woven function,
its place in the code tree, its qualified name and the :data:`rewrite.Layout` it was
woven in; the loader resolves the probe of every join point of the tree again (which
re-registers it with the agent exactly as weaving does) and uses the entry only if the
same functions match with the same layouts and nothing else matches. Anything else
(a stale key, another layout, a truncated or corrupt file, a checksum or ``marshal``
error, an object of the wrong type) is counted, ignored, and the module is woven and
its entry rewritten.

Safety. Entries hold ``marshal`` data only (code objects, tuples, strings, ints),
never pickles. The probe's constants in woven code (bound methods, the clock) cannot
be marshalled; an entry holds their slot names instead (``templates.SLOTS``) and the
loader puts in the current probe's objects. A file is read only from a folder owned
by the current user and not writable by others, only if it is a regular file (not
followed through a symbolic link) owned by the current user and not writable by group
or others; folders are made 0700 and files 0600; a write goes to a temporary file in
the same folder and is renamed over the entry (``os.replace``), so readers see a whole
entry or none. A CRC-32 over the payload catches damage that ``marshal`` would not.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import marshal
import os
import stat
import sys
import threading
import zlib
from collections.abc import Sequence
from types import CodeType
from typing import Any, Callable, Optional

import agent
from agent.events import CO_SUSPENDING, Probe
from agent.weaving import rewrite, templates

log = logging.getLogger(__name__)

SETTING = "AGENT_CODE_CACHE"
FOLDER = "twinweave"
"""Our folder inside ``__pycache__`` (and the per-user folder's name)."""
FORMAT = 1
"""The entry layout below; bumped when it changes."""
_HEADER = b"TWWV" + FORMAT.to_bytes(2, "little") + b"\r\n"
_OFF = ("off", "0", "no", "false")
_ON = ("", "on", "1", "yes", "true")
_PLACEHOLDER = "twinweave-slot"
"""An entry's stand-in for a probe constant: ``(_PLACEHOLDER, slot name)`` in ``co_consts``."""

Resolver = Callable[[CodeType, str, Sequence[str]], Optional[Probe]]
"""The agent's ``probe_for``: code, qualname, module names -> probe or None."""

_WEAVER_FILES = ("rewrite.py", "patch.py", "_patch.c", "templates.py", "env.py", "codecache.py")


def _agent_fingerprint() -> str:
    """The agent version and a checksum of the sources that shape woven code."""
    from agent import weaving

    crc = 0
    folder = os.path.dirname(os.path.abspath(weaving.__file__))
    for name in _WEAVER_FILES:
        try:
            with open(os.path.join(folder, name), "rb") as handle:
                crc = zlib.crc32(handle.read(), crc)
        except OSError:  # an install without sources: the version alone
            crc = zlib.crc32(name.encode(), crc)
    return f"{agent.__version__}:{crc:08x}"


def _is_ours(info: os.stat_result) -> bool:
    return info.st_uid == os.getuid() and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _usable_folder(path: str, create: bool) -> bool:
    """Whether ``path`` is a folder of ours (made 0700 when ``create`` and missing)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        if not create:
            return False
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.mkdir(path, 0o700)
            info = os.lstat(path)
        except OSError:
            return False
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and _is_ours(info)


def _user_folder() -> str:
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, FOLDER)


class Stats:
    """What the cache did in this process (counted, never raised)."""

    __slots__ = ("corrupt", "hits", "misses", "refused", "stale", "write_errors", "written")

    def __init__(self) -> None:
        self.hits = self.misses = self.stale = self.corrupt = 0
        self.refused = self.written = self.write_errors = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class CodeCache:
    """Entries of woven module code for one agent (``resolve`` is its ``probe_for``)."""

    def __init__(self, resolve: Resolver, folder: str | None = None) -> None:
        """``folder``: one folder for every entry; None: beside each ``.pyc`` (see above)."""
        self._resolve = resolve
        self._folder = folder
        self._fingerprint = _agent_fingerprint()
        self._tag = sys.implementation.cache_tag
        self._magic = importlib.util.MAGIC_NUMBER
        self.stats = Stats()
        # a kit's constants are the probe's bound methods (or the C recorder's), fixed
        # once the probe is made: one set per probe serves every later start-up of it
        self._kits: dict[tuple[int, bool], tuple[Any, dict[str, Any]]] = {}

    @classmethod
    def from_setting(cls, resolve: Resolver, value: str | None = None) -> CodeCache | None:
        """The cache ``$AGENT_CODE_CACHE`` asks for, or None when it is off (or cannot work)."""
        text = (os.environ.get(SETTING, "") if value is None else value).strip()
        if (
            text.lower() in _OFF
            or not hasattr(os, "getuid")
            or sys.implementation.cache_tag is None
        ):
            return None
        folder = None if text.lower() in _ON else os.path.abspath(os.path.expanduser(text))
        return cls(resolve, folder)

    # -- where ----------------------------------------------------------------------------

    def source_of(self, loader: Any) -> tuple[str, str, tuple[Any, ...]] | None:
        """The file whose identity keys the module's entry (as the loader names it, and
        absolute) and that identity; None for a module the cache does not keep."""
        if not isinstance(
            loader,
            (importlib.machinery.SourceFileLoader, importlib.machinery.SourcelessFileLoader),
        ):
            return None
        path = getattr(loader, "path", None)
        if not isinstance(path, str):
            return None
        try:
            info = os.stat(path)
        except OSError:
            return None
        return path, os.path.abspath(path), ("stat", info.st_mtime_ns, info.st_size)

    def _places(self, source: str) -> list[tuple[str, str]]:
        """(folder, file name) where the entry of ``source`` may be: beside it first."""
        stem = os.path.basename(source).partition(".")[0]
        raw = source.encode("utf-8", "surrogateescape")
        digest = f"{zlib.crc32(raw):08x}{zlib.adler32(raw):08x}"
        flat = f"{stem}.{digest}.{self._tag}.pyc"
        if self._folder is not None:
            return [(self._folder, flat)]
        places = []
        try:
            if source.endswith(tuple(importlib.machinery.SOURCE_SUFFIXES)):
                beside = os.path.dirname(importlib.util.cache_from_source(source))
            else:
                beside = os.path.join(os.path.dirname(source), "__pycache__")
            places.append((os.path.join(beside, FOLDER), f"{stem}.{self._tag}.pyc"))
        except (NotImplementedError, ValueError):
            pass
        places.append((_user_folder(), flat))
        return places

    # -- reading --------------------------------------------------------------------------

    def _read(self, folder: str, name: str) -> bytes | None:
        if not _usable_folder(folder, create=False):
            return None
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(os.path.join(folder, name), flags)
        except OSError:
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or not _is_ours(info):
                self.stats.refused += 1
                log.debug("code cache: refusing %s (not ours, or writable by others)", name)
                return None
            with os.fdopen(fd, "rb", closefd=False) as handle:
                return handle.read()
        except OSError:
            return None
        finally:
            os.close(fd)

    def _key(self, fullname: str, source: str, identity: tuple[Any, ...]) -> tuple[Any, ...]:
        return (fullname, source, identity, self._tag, self._magic, self._fingerprint)

    def _decode(self, data: bytes, key: tuple[Any, ...]) -> tuple[CodeType, tuple[Any, ...]] | None:
        """The woven code (with placeholders) and its table; None, counted, when unusable."""
        head = len(_HEADER) + 4 + 8
        if (
            len(data) < head
            or data[: len(_HEADER)] != _HEADER
            or data[len(_HEADER) : len(_HEADER) + 4] != self._magic
        ):
            self.stats.corrupt += 1
            return None
        size = int.from_bytes(data[head - 8 : head - 4], "little")
        crc = int.from_bytes(data[head - 4 : head], "little")
        payload = data[head:]
        if size != len(payload) or zlib.crc32(payload) != crc:
            self.stats.corrupt += 1
            return None
        try:
            entry = marshal.loads(payload)
        except (EOFError, ValueError, TypeError):
            self.stats.corrupt += 1
            return None
        if not (isinstance(entry, tuple) and len(entry) == 3):
            self.stats.corrupt += 1
            return None
        found_key, code, table = entry
        if found_key != key:
            self.stats.stale += 1
            return None
        if not isinstance(code, CodeType) or type(table) is not tuple:
            self.stats.corrupt += 1
            return None
        return code, table

    def fetch(
        self, loader: Any, fullname: str, modules: Sequence[str]
    ) -> tuple[CodeType | None, tuple[Any, ...] | None]:
        """The cached woven code of module ``fullname`` with its probes registered (None:
        weave it), and the source's identity to :meth:`store` the woven code under."""
        found = self.source_of(loader)
        if found is None:
            return None, None
        path, source, identity = found
        key = self._key(fullname, source, identity)
        for folder, name in self._places(source):
            data = self._read(folder, name)
            if data is None:
                continue
            decoded = self._decode(data, key)
            if decoded is None:
                break  # the entry is rewritten where it was
            try:
                code = self._restore(*decoded, modules)
            except _Corrupt:
                self.stats.corrupt += 1
                break
            if code is None:
                self.stats.stale += 1
                break
            if isinstance(loader, importlib.machinery.SourceFileLoader):
                _fix_filename(code, path)
            self.stats.hits += 1
            return code, identity
        self.stats.misses += 1
        return None, identity

    def _restore(
        self, code: CodeType, table: tuple[Any, ...], modules: Sequence[str]
    ) -> CodeType | None:
        """Fill in the probes of ``table``'s functions; None unless every join point agrees.

        The table is checked as it is used, not in a pass of its own (this runs for
        every woven function at each start-up): a table that is not rows of four
        raises :class:`_Corrupt`; a row with a path, name or layout of the wrong type
        matches no function and makes the entry stale; slots are checked when used."""
        try:
            woven = {path: (qualname, shape, slots) for path, qualname, shape, slots in table}
        except (TypeError, ValueError):  # a row that is not four items, an unhashable path
            raise _Corrupt from None
        return _rebuild(code, (), "", woven, self._resolve, modules, self._kits)

    # -- writing --------------------------------------------------------------------------

    def store(
        self, loader: Any, fullname: str, identity: tuple[Any, ...] | None, code: CodeType
    ) -> bool:
        """Write the entry of a woven module (``identity`` as :meth:`source_of` gave it)."""
        found = self.source_of(loader)
        if found is None or identity is None or found[2] != identity:
            return False  # the source changed while it was woven: no entry for it
        source = found[1]
        table: list[tuple[Any, ...]] = []
        try:
            bare = _strip(code, (), table)
            payload = marshal.dumps((self._key(fullname, source, identity), bare, tuple(table)))
        except (ValueError, TypeError) as exc:  # something in it does not marshal
            log.debug("code cache: cannot store %s: %s", fullname, exc)
            self.stats.write_errors += 1
            return False
        data = (
            _HEADER
            + self._magic
            + len(payload).to_bytes(4, "little")
            + zlib.crc32(payload).to_bytes(4, "little")
            + payload
        )
        places = self._places(source)
        if sys.dont_write_bytecode and self._folder is None:
            places = places[-1:]  # the per-user folder only
        for folder, name in places:
            if _usable_folder(folder, create=True) and self._write(folder, name, data):
                self.stats.written += 1
                return True
        self.stats.write_errors += 1
        return False

    def _write(self, folder: str, name: str, data: bytes) -> bool:
        temp = os.path.join(folder, f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(temp, flags, 0o600)
        except OSError:
            return False
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(temp, os.path.join(folder, name))
            return True
        except OSError as exc:
            log.debug("code cache: cannot write %s: %s", name, exc)
            try:
                os.unlink(temp)
            except OSError:
                pass
            return False


def _fix_filename(code: CodeType, source: str) -> None:
    """As the import system does for a ``.pyc`` found under another path."""
    import _imp

    _imp._fix_co_filename(code, source)


class _Corrupt(Exception):
    """A cache entry's table is not what :func:`_strip` writes."""


def _strip(code: CodeType, path: tuple[int, ...], table: list[tuple[Any, ...]]) -> CodeType:
    """``code`` with every probe constant replaced by its placeholder; rows added to ``table``."""
    consts = list(code.co_consts)
    changed = False
    for index, const in enumerate(consts):
        if isinstance(const, CodeType):
            bare = _strip(const, (*path, index), table)
            if bare is not const:
                consts[index] = bare
                changed = True
    details = rewrite.woven_details(code)
    if details is not None:
        probe, slots, shape = details
        if not shape[0]:
            raise ValueError("woven code without a recorded layout")
        for index, name in slots:
            consts[index] = (_PLACEHOLDER, name)
        changed = True
        table.append((path, probe.joinpoint.name, shape, slots))
    return code.replace(co_consts=tuple(consts)) if changed else code


def _rebuild(
    code: CodeType,
    path: tuple[int, ...],
    qualname: str,
    woven: dict[tuple[int, ...], tuple[str, Any, Any]],
    resolve: Resolver,
    modules: Sequence[str],
    kits: dict[tuple[int, bool], tuple[Any, dict[str, Any]]],
) -> CodeType | None:
    """The tree of ``code`` with the probes' constants, every probe registered; None: mismatch.

    Walks in the order :func:`rewrite.weave_tree` does (children first), asking
    ``resolve`` about every join point, as weaving would. ``kits``: the constants of
    each probe's kit (by probe and generator flag), made once per probe.
    """
    consts = code.co_consts
    new = None  # the new constants, once one differs
    for index in [i for i, const in enumerate(consts) if type(const) is CodeType]:
        const = consts[index]
        child = _rebuild(
            const,
            (*path, index),
            rewrite._child_qualname(code, qualname, const),
            woven,
            resolve,
            modules,
            kits,
        )
        if child is None:
            return None
        if child is not const:
            if new is None:
                new = list(consts)
            new[index] = child
    if not rewrite.is_join_point(code):
        return code if new is None else code.replace(co_consts=tuple(new))
    probe = resolve(code, qualname, modules)
    row = woven.get(path)
    if row is None:
        if probe is not None:  # matches now (or was refused by the weaver): weave again
            return None
        return code if new is None else code.replace(co_consts=tuple(new))
    name, shape, slots = row
    if probe is None or probe.joinpoint.name != name or rewrite.layout(code, probe) != shape:
        return None
    generator = bool(code.co_flags & CO_SUSPENDING)
    kit = kits.get((id(probe), generator))
    if kit is None or kit[0] is not probe:
        kit = kits[id(probe), generator] = (probe, templates.Kit(probe, generator).values)
    values = kit[1]
    if new is None:
        new = list(consts)
    try:
        for index, slot in slots:
            if type(index) is not int or index < 0 or new[index] != (_PLACEHOLDER, slot):
                return None
            new[index] = values[slot]
    except KeyError:  # a slot this mode does not have
        return None
    except (TypeError, ValueError, IndexError):  # slots that are not (index, name) pairs
        raise _Corrupt from None
    restored = code.replace(co_consts=tuple(new))
    rewrite.register(restored, probe, slots, shape)
    return restored
