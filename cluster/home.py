"""A node's home: its folder, its identity and its persisted epoch.

Owns where a node keeps what must survive a restart (``cache.directory``): the
node id it answers to and the highest epoch it has seen, written atomically and
synced before the node announces it. Two nodes on one host never share a
folder: by default each takes the first free slot ``node-1``, ``node-2``, ...
under ``$XDG_CACHE_HOME/twinweave/CLUSTER`` (``~/.cache`` by default), held by
an exclusive lock for the life of the process (the kernel drops it when the
process dies, even on kill -9), so a restarted node finds a slot of its own
again. Does not hold the cache data itself (``cache``), nor decide anything
(``cluster.election``).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import socket
import tempfile
from pathlib import Path

from cluster.config import Settings
from cluster.names import is_name

log = logging.getLogger(__name__)

MAX_SLOTS = 256
_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


class HomeError(RuntimeError):
    """The node's folder cannot be used; the message says which and what to do."""


def default_root(cluster: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "twinweave" / _ID_CHARS.sub("_", cluster)


class NodeHome:
    """The locked folder of one running node."""

    def __init__(self, path: Path, lock_fd: int, node_id: str) -> None:
        self.path = path
        self._lock_fd = lock_fd
        self.node_id = node_id

    @classmethod
    def claim(cls, settings: Settings) -> NodeHome:
        """Lock ``cache.directory``, or the first free slot of the default root."""
        if settings.cache_directory:
            path = Path(settings.cache_directory)
            fd = _lock(path)
            if fd is None:
                raise HomeError(
                    f"cache.directory {path} is in use by another running node; give each "
                    "node its own folder (or leave cache.directory unset to get one)"
                )
            suggested = f"{_host()}-{_ID_CHARS.sub('_', path.name)}"
        else:
            root = default_root(settings.cluster)
            for slot in range(1, MAX_SLOTS + 1):
                path = root / f"node-{slot}"
                fd = _lock(path)
                if fd is not None:
                    break
            else:
                raise HomeError(f"all {MAX_SLOTS} node folders under {root} are in use")
            suggested = f"{_host()}-{slot}"
        try:
            node_id = settings.node_id or _read_or_create_id(path, suggested)
        except OSError as exc:
            os.close(fd)
            raise HomeError(f"cannot keep the node id in {path}: {exc}") from exc
        return cls(path, fd, node_id)

    # -- the epoch -------------------------------------------------------------------------

    @property
    def epoch_file(self) -> Path:
        return self.path / "epoch"

    def load_epoch(self) -> int:
        """The highest epoch this node has seen (0 for a new node)."""
        try:
            text = self.epoch_file.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return 0
        except (OSError, UnicodeDecodeError) as exc:
            raise HomeError(f"cannot read {self.epoch_file}: {exc}") from exc
        if not text.isdigit():
            raise HomeError(
                f"{self.epoch_file} is damaged ({text[:40]!r}); it must hold the node's last "
                "epoch. Write the highest epoch `python -m cluster status` shows into it, "
                "or remove the file if no node of this cluster ever ran from this folder"
            )
        return int(text)

    def save_epoch(self, epoch: int) -> None:
        """Write ``epoch`` durably (temp file, fsync, rename, fsync the folder)."""
        fd, tmp = tempfile.mkstemp(prefix=".epoch-", dir=self.path)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write(f"{epoch}\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.epoch_file)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        dir_fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def release(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


def _lock(path: Path) -> int | None:
    """An exclusive, non-blocking lock on ``path/lock``; None when another process holds it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise HomeError(f"cannot use {path} as a node folder: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    os.set_inheritable(fd, False)
    return fd


def _host() -> str:
    name = socket.gethostname().split(".")[0] or "node"
    return _ID_CHARS.sub("_", name)[:40]


def _read_or_create_id(path: Path, suggested: str) -> str:
    id_file = path / "node-id"
    try:
        text = id_file.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        text = ""
    if is_name(text):  # anything else is replaced: no heartbeat could carry it
        return text
    id_file.write_text(suggested + "\n", encoding="utf-8")
    return suggested
