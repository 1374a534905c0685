"""Failover settings: where they come from, what they may be, and the one object that holds them.

This module owns the failover and cache settings of DESIGN.md (:class:`Settings`), reading
them from a ``bootstrap.properties`` file, the environment and ``-D key=value`` overrides
(:func:`load_settings`), finding that file (:func:`find_config`) and checking every value,
so that a wrong setting stops the program with a :class:`SettingsError` that names the key,
where it came from (``FILE:LINE``, the environment variable or ``-D``) and what was
expected. It does not open sockets (``cluster.transport``; :meth:`Settings.interface_address`
only asks the kernel for a route), elect anyone (``cluster.election``) or choose the
default cache directory (``cache``).

Precedence, highest first: overrides (``-D key=value``), the environment, the file, the
defaults. The environment is read only for ``TWINWEAVE_`` followed by the key upper-cased
with ``.`` and ``-`` turned into ``_`` (``TWINWEAVE_FAILOVER_DELAY=200``,
``TWINWEAVE_CACHE_DIRECTORY=~/state``); an unknown ``TWINWEAVE_FAILOVER_*`` or
``TWINWEAVE_CACHE_*`` name is an error, like an unknown key in the file. Keys outside the
``failover.`` and ``cache.`` namespaces belong to the user's adapter and are ignored. An
empty value for ``failover.interface``, ``failover.secret``, ``failover.node-id`` or
``cache.directory`` means "not set", so a higher level can clear a lower one.

The file is read like a Java ``.properties`` file, in UTF-8: ``key=value``, ``key: value``
or ``key value``; lines starting with ``#`` or ``!`` are comments; blank lines are
skipped; surrounding whitespace is trimmed; a line ending in an odd number of backslashes
continues on the next line (whose leading whitespace is dropped); backslash escapes are
Java's (``\\t``, ``\\n``, ``\\uXXXX``, and ``\\`` before any other character stands for
that character, so write ``C:\\\\cache`` for ``C:\\cache``). A key given twice keeps its
last value.

Interlok compatibility: users of Interlok's multicast failover may keep their keys.

* ``failover.multicast.group`` and ``failover.multicast.port`` are ``failover.group`` and
  ``failover.port``.
* ``failover.ping.interval.seconds`` (seconds, may be fractional) sets ``failover.delay``.
* ``failover.instance.timeout.seconds`` sets ``failover.retries`` to
  ``ceil(timeout / delay)`` (at least 1), using the delay finally chosen.
* ``failover.slave.position`` N (1 = first in line) sets ``failover.priority`` to
  ``max(0, 1000 - N)``.
* ``failover.socket.mode`` may only be ``multicast``; twinweave has no TCP mode.

Giving a key and its alias at the same level (both in the file, say) is an error; across
levels the higher level wins whichever spelling it uses.
"""

from __future__ import annotations

import difflib
import ipaddress
import logging
import math
import os
import re
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cluster.names import NAME_RULE, is_name

log = logging.getLogger(__name__)

ENV_PREFIX = "TWINWEAVE_"
CONFIG_ENV = "AGENT_CONFIG"
DEFAULT_FILE = "bootstrap.properties"
MIN_SECRET_BYTES = 16
_NAMESPACES = ("failover.", "cache.")
_FALLBACK_ADDRESS = "127.0.0.1"


class SettingsError(ValueError):
    """A setting is wrong; the message names the key, where it came from and what was expected.

    ``str(error)`` is ``WHERE: detail``, WHERE being ``FILE:LINE``, ``environment NAME`` or
    ``command line -D`` (just ``detail`` when there is no single source).
    """

    def __init__(self, detail: str, key: str | None = None, where: str | None = None) -> None:
        self.detail = detail
        self.key = key
        self.where = where
        super().__init__(f"{where}: {detail}" if where else detail)


def _parse_int(text: str) -> int:
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        raise ValueError(text)
    return int(text)


def _parse_seconds_ms(text: str) -> int:
    """Non-negative seconds, maybe fractional, as whole milliseconds."""
    if not re.fullmatch(r"\+?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)", text):
        raise ValueError(text)
    milliseconds = float(text) * 1000
    if not math.isfinite(milliseconds):  # "9" * 400 is a float's infinity
        raise ValueError(text)
    return round(milliseconds)


def _optional(text: str) -> str | None:
    return text or None


def _ipv4(value: object) -> ipaddress.IPv4Address | None:
    if not isinstance(value, str):
        return None
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        return None


def _is_multicast(value: object) -> bool:
    address = _ipv4(value)
    return address is not None and address.is_multicast


def _is_local_candidate(value: object) -> bool:
    """An IPv4 address a NIC could have: not multicast, not 0.0.0.0, not broadcast."""
    address = _ipv4(value)
    return (
        address is not None
        and not address.is_multicast
        and not address.is_unspecified
        and address != ipaddress.IPv4Address("255.255.255.255")
    )


def _expand(text: str, environ: Mapping[str, str]) -> str:
    """``~`` and ``$NAME`` / ``${NAME}`` (from ``environ``; unknown names are kept as written)."""

    def variable(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return environ.get(name, match.group(0))

    return os.path.expanduser(re.sub(r"\$(?:(\w+)|\{([^}]*)\})", variable, text))


@dataclass(frozen=True)
class _Field:
    """One setting: its key, its :class:`Settings` attribute and how text becomes a value."""

    key: str
    name: str
    expected: str
    parse: Callable[[str], Any]  # raises ValueError for malformed text
    valid: Callable[[Any], bool]
    expand: bool = False  # expand ~ and $VARS before parsing


def _env_name(key: str) -> str:
    return ENV_PREFIX + re.sub(r"[.-]", "_", key.upper())


def _int_field(key: str, name: str, low: int, high: int, unit: str = "") -> _Field:
    return _Field(
        key,
        name,
        f"an integer from {low} to {high}{unit}",
        _parse_int,
        lambda v: type(v) is int and low <= v <= high,
    )


def _parse_endpoints(text: str) -> tuple[str, ...]:
    return tuple(part.strip().rstrip("/") for part in text.split(",") if part.strip())


def _is_endpoint(value: object) -> bool:
    """``http(s)://HOST:PORT``: what an etcd client URL looks like (no path, no query)."""
    if not isinstance(value, str):
        return False
    match = re.fullmatch(r"(https?)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})", value)
    return match is not None and 0 < int(match.group(3)) <= 65535


def _path_field(key: str, name: str, what: str) -> _Field:
    return _Field(
        key,
        name,
        f"{what} (empty: none)",
        _optional,
        lambda v: v is None or (isinstance(v, str) and len(v) > 0),
        expand=True,
    )


_FIELDS: tuple[_Field, ...] = (
    _Field(
        "failover.group",
        "group",
        "an IPv4 multicast address (224.0.0.0 to 239.255.255.255)",
        str,
        _is_multicast,
    ),
    _int_field("failover.port", "port", 1, 65535),
    _int_field("failover.delay", "delay_ms", 10, 600_000, " (milliseconds)"),
    _int_field("failover.retries", "retries", 1, 1000),
    _Field(
        "failover.interface",
        "interface",
        "a local IPv4 address such as 127.0.0.1 (empty: the primary address)",
        _optional,
        lambda v: v is None or _is_local_candidate(v),
    ),
    _int_field("failover.ttl", "ttl", 0, 255),
    _Field(
        "failover.cluster",
        "cluster",
        f"a name of {NAME_RULE}",
        str,
        is_name,
    ),
    _int_field("failover.priority", "priority", 0, 65535),
    _Field(
        "failover.secret",
        "secret",
        "a shared secret (empty: none)",
        lambda text: text.encode("utf-8") or None,
        lambda v: v is None or (isinstance(v, bytes) and len(v) > 0),
    ),
    _Field(
        "failover.node-id",
        "node_id",
        f"a node id of {NAME_RULE} (empty: chosen by the node)",
        _optional,
        lambda v: v is None or is_name(v),
    ),
    _int_field("failover.stop-timeout", "stop_timeout_ms", 0, 3_600_000, " (milliseconds)"),
    _Field(
        "failover.backend",
        "backend",
        "multicast or etcd",
        str.lower,
        lambda v: v in ("multicast", "etcd"),
    ),
    _Field(
        "failover.etcd.endpoints",
        "etcd_endpoints",
        "a comma list of etcd client URLs such as http://10.0.0.1:2379,http://10.0.0.2:2379",
        _parse_endpoints,
        lambda v: isinstance(v, tuple) and all(_is_endpoint(e) for e in v),
    ),
    _Field(
        "failover.etcd.prefix",
        "etcd_prefix",
        "a key prefix starting with / such as /twinweave",
        str,
        lambda v: isinstance(v, str) and v.startswith("/") and v.isprintable() and " " not in v,
    ),
    _Field(
        "failover.etcd.username",
        "etcd_username",
        "an etcd user name (empty: no authentication)",
        _optional,
        lambda v: v is None or (isinstance(v, str) and v.isprintable()),
    ),
    _Field(
        "failover.etcd.password",
        "etcd_password",
        "the etcd user's password",
        _optional,
        lambda v: v is None or isinstance(v, str),
    ),
    _path_field("failover.etcd.ca", "etcd_ca", "a CA certificate file (PEM) for https endpoints"),
    _path_field("failover.etcd.cert", "etcd_cert", "a client certificate file (PEM)"),
    _path_field("failover.etcd.key", "etcd_key", "the client certificate's key file (PEM)"),
    _Field(
        "cache.directory",
        "cache_directory",
        "a directory path (empty: the default)",
        _optional,
        lambda v: v is None or (isinstance(v, str) and len(v) > 0),
        expand=True,
    ),
    _Field(
        "cache.replication",
        "replication",
        "sync or async",
        str.lower,
        lambda v: v in ("sync", "async"),
    ),
)
_BY_NAME = {f.name: f for f in _FIELDS}
_HIDDEN = ("secret", "etcd_password")  # shown as *** in logs and errors
_HIDDEN_KEYS = tuple(_BY_NAME[name].key for name in _HIDDEN)


def _position_to_priority(text: str) -> int:
    position = _parse_int(text)
    if position < 1:
        raise ValueError(text)
    return max(0, 1000 - position)


def _multicast_only(text: str) -> None:
    if text.lower() != "multicast":
        raise ValueError(text)


@dataclass(frozen=True)
class _Timeout:
    """``failover.instance.timeout.seconds``, turned into retries once the delay is known."""

    ms: int


@dataclass(frozen=True)
class _Alias:
    """An Interlok key: which field it sets (None: checked only) and how its text converts."""

    key: str
    target: str | None
    expected: str
    parse: Callable[[str], Any]


_ALIASES: tuple[_Alias, ...] = (
    _Alias("failover.multicast.group", "group", _BY_NAME["group"].expected, str),
    _Alias("failover.multicast.port", "port", _BY_NAME["port"].expected, _parse_int),
    _Alias(
        "failover.ping.interval.seconds",
        "delay_ms",
        "a number of seconds from 0.01 to 600",
        _parse_seconds_ms,
    ),
    _Alias(
        "failover.instance.timeout.seconds",
        "retries",
        "a non-negative number of seconds",
        lambda text: _Timeout(_parse_seconds_ms(text)),
    ),
    _Alias(
        "failover.slave.position",
        "priority",
        "a position 1, 2, 3... (1 = first in line)",
        _position_to_priority,
    ),
    _Alias(
        "failover.socket.mode",
        None,
        "multicast (the only mode twinweave supports; remove the key or set it to multicast)",
        _multicast_only,
    ),
)
_SPECS: dict[str, _Field | _Alias] = {**{f.key: f for f in _FIELDS}, **{a.key: a for a in _ALIASES}}
_ENV_KEYS = {_env_name(key): key for key in _SPECS}


@dataclass(frozen=True)
class Settings:
    """The failover and cache settings of one node; every value is checked on construction.

    >>> Settings(port=2711, interface="127.0.0.1").describe()["failover.port"]
    2711
    """

    group: str = "230.0.0.1"
    port: int = 2710
    delay_ms: int = 1000
    retries: int = 5
    interface: str | None = None
    ttl: int = 1
    cluster: str = "default"
    priority: int = 100
    secret: bytes | None = field(default=None, repr=False)
    node_id: str | None = None
    stop_timeout_ms: int = 10000
    cache_directory: str | None = None
    replication: str = "sync"
    backend: str = "multicast"
    etcd_endpoints: tuple[str, ...] = ()
    etcd_prefix: str = "/twinweave"
    etcd_username: str | None = None
    etcd_password: str | None = field(default=None, repr=False)
    etcd_ca: str | None = None
    etcd_cert: str | None = None
    etcd_key: str | None = None

    def __post_init__(self) -> None:
        for spec in _FIELDS:
            value = getattr(self, spec.name)
            if not spec.valid(value):
                raise SettingsError(
                    f"{spec.key}={_shown(spec, value)}: expected {spec.expected}", spec.key
                )
        if self.backend == "etcd" and not self.etcd_endpoints:
            raise SettingsError(
                "failover.backend=etcd needs failover.etcd.endpoints (a comma list of etcd "
                "client URLs such as http://10.0.0.1:2379)",
                "failover.etcd.endpoints",
            )
        if (self.etcd_cert is None) != (self.etcd_key is None):
            raise SettingsError(
                "failover.etcd.cert and failover.etcd.key go together: give both or neither",
                "failover.etcd.cert",
            )

    @property
    def delay_s(self) -> float:
        """Seconds between heartbeats."""
        return self.delay_ms / 1000

    def interface_address(self) -> str:
        """The configured interface, else the address the kernel would send to the group from.

        Finding it sends nothing: connecting a UDP socket only picks a route. When there is
        no route (no network at all), the answer is ``127.0.0.1``.
        """
        if self.interface is not None:
            return self.interface
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.connect((self.group, self.port))
                address = str(probe.getsockname()[0])
        except OSError as exc:
            log.warning(
                "no route to multicast group %s (%s); using %s: set failover.interface",
                self.group,
                exc,
                _FALLBACK_ADDRESS,
            )
            return _FALLBACK_ADDRESS
        return address if _is_local_candidate(address) else _FALLBACK_ADDRESS

    def describe(self) -> dict[str, Any]:
        """The settings by key, for logs; the secret shows as ``***`` (None when unset)."""
        shown: dict[str, Any] = {}
        for spec in _FIELDS:
            value = getattr(self, spec.name)
            shown[spec.key] = "***" if spec.name in _HIDDEN and value is not None else value
        return shown


def _shown(spec: _Field | _Alias, value: object) -> str:
    """A value as error messages show it: the secret never appears."""
    return "***" if spec.key in _HIDDEN_KEYS else repr(value)


@dataclass(frozen=True)
class _Entry:
    """One ``key=value`` as given, and where."""

    key: str
    text: str
    where: str


def _unescape(text: str, hidden: bool = False) -> str:
    """Java's escapes; with ``hidden`` (a secret's value) an error never quotes the text."""
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c != "\\" or i + 1 == len(text):
            out.append(c)
            i += 1
            continue
        c = text[i + 1]
        i += 2
        if c == "u":
            digits = text[i : i + 4]
            if not re.fullmatch(r"[0-9a-fA-F]{4}", digits):
                shown = "***" if hidden else digits
                raise ValueError(f"malformed escape \\u{shown}: expected 4 hex digits after \\u")
            out.append(chr(int(digits, 16)))
            i += 4
        else:
            out.append({"t": "\t", "n": "\n", "r": "\r", "f": "\f"}.get(c, c))
    return "".join(out)


def _split_key(line: str) -> tuple[str, str]:
    """Java's rule: the key ends at the first unescaped ``=``, ``:`` or whitespace."""
    i = 0
    while i < len(line) and line[i] not in "=: \t\f":
        i += 2 if line[i] == "\\" else 1
    key = line[:i]
    rest = line[i:].lstrip(" \t\f")
    if rest[:1] in ("=", ":"):
        rest = rest[1:].lstrip(" \t\f")
    return key, rest


def _ends_in_continuation(line: str) -> bool:
    trailing = len(line) - len(line.rstrip("\\"))
    return trailing % 2 == 1


def _read_file(path: str) -> list[_Entry]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise SettingsError(f"cannot read the settings file: {exc.strerror}", where=path) from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SettingsError("not valid UTF-8", where=f"{path}:{line}") from exc
    entries: list[_Entry] = []
    lines = re.split(r"\r\n|\r|\n", text)
    number = 0
    while number < len(lines):
        start = number + 1
        logical = lines[number].strip(" \t\f")
        number += 1
        if not logical or logical[0] in "#!":
            continue
        while _ends_in_continuation(logical):
            logical = logical[:-1]
            if number == len(lines):
                break
            logical += lines[number].strip(" \t\f")
            number += 1
        where = f"{path}:{start}"
        raw_key, raw_value = _split_key(logical)
        try:
            key = _unescape(raw_key)
            entries.append(_Entry(key, _unescape(raw_value, key in _HIDDEN_KEYS), where))
        except ValueError as exc:
            raise SettingsError(str(exc), where=where) from exc
    return entries


def _read_environ(environ: Mapping[str, str]) -> list[_Entry]:
    entries: list[_Entry] = []
    prefixes = tuple(_env_name(ns) for ns in _NAMESPACES)
    for name in sorted(environ):
        if not name.startswith(prefixes):
            continue
        where = f"environment {name}"
        key = _ENV_KEYS.get(name)
        if key is None:
            close = difflib.get_close_matches(name, _ENV_KEYS, n=1)
            hint = f"did you mean {close[0]}?" if close else "known: " + ", ".join(_ENV_KEYS)
            raise SettingsError(f"unknown setting ({hint})", where=where)
        entries.append(_Entry(key, environ[name].strip(), where))
    return entries


def _read_overrides(overrides: Sequence[str]) -> list[_Entry]:
    entries: list[_Entry] = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SettingsError(
                f"{item!r}: expected key=value, e.g. -D failover.delay=200", where="command line -D"
            )
        entries.append(_Entry(key.strip(), value.strip(), "command line -D"))
    return entries


def _unknown_key(entry: _Entry) -> SettingsError:
    close = difflib.get_close_matches(entry.key.lower(), _SPECS, n=1)
    hint = f"did you mean {close[0]}?" if close else "known keys: " + ", ".join(_SPECS)
    return SettingsError(f"unknown key {entry.key} ({hint})", entry.key, entry.where)


def _resolve_level(
    entries: list[_Entry], environ: Mapping[str, str]
) -> dict[str, tuple[_Entry, Any]]:
    """One level's entries as {Settings attribute: (entry, value)}, every value checked."""
    chosen: dict[str, tuple[_Entry, Any]] = {}
    for entry in entries:
        if not entry.key.lower().startswith(_NAMESPACES):
            continue
        spec = _SPECS.get(entry.key)
        if spec is None:
            raise _unknown_key(entry)
        expand = isinstance(spec, _Field) and spec.expand
        problem = f"{entry.key}={_shown(spec, entry.text)}: expected {spec.expected}"
        try:
            # expanduser refuses a NUL after "~" with ValueError: the same refusal
            text = _expand(entry.text, environ) if expand else entry.text
            value = spec.parse(text)
        except ValueError:
            raise SettingsError(problem, entry.key, entry.where) from None
        name = spec.name if isinstance(spec, _Field) else spec.target
        if name is None:
            continue
        if not isinstance(value, _Timeout) and not _BY_NAME[name].valid(value):
            raise SettingsError(problem, entry.key, entry.where)
        earlier = chosen.get(name)
        if earlier is not None and earlier[0].key != entry.key:
            raise SettingsError(
                f"{entry.key} and {earlier[0].key} ({earlier[0].where}) both set"
                f" {_BY_NAME[name].key}; keep one",
                entry.key,
                entry.where,
            )
        chosen[name] = (entry, value)
    return chosen


def _retries_for(entry: _Entry, timeout: _Timeout, delay_ms: int) -> int:
    retries = max(1, -(-timeout.ms // delay_ms))
    if not _BY_NAME["retries"].valid(retries):
        raise SettingsError(
            f"{entry.key}={entry.text!r}: expected at most {delay_ms:d} seconds"
            f" (1000 heartbeats of {delay_ms} ms)",
            entry.key,
            entry.where,
        )
    return retries


def load_settings(
    path: str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Sequence[str] = (),
) -> Settings:
    """Settings from the file at ``path`` (if any), ``environ`` and ``-D`` ``overrides``.

    ``environ`` defaults to ``os.environ`` (also used to expand ``$VARS`` in
    ``cache.directory``). Costs one file read; sends nothing.
    """
    environ = os.environ if environ is None else environ
    levels = [
        _read_file(path) if path is not None else [],
        _read_environ(environ),
        _read_overrides(overrides),
    ]
    values: dict[str, tuple[_Entry, Any]] = {}
    for entries in levels:
        values.update(_resolve_level(entries, environ))
    fields = {name: value for name, (_, value) in values.items()}
    if isinstance(fields.get("retries"), _Timeout):
        delay_ms = fields.get("delay_ms", Settings.delay_ms)
        fields["retries"] = _retries_for(values["retries"][0], fields["retries"], delay_ms)
    settings = Settings(**fields)
    if settings.secret is not None and len(settings.secret) < MIN_SECRET_BYTES:
        log.warning(
            "failover.secret is only %d bytes long; use at least %d random bytes",
            len(settings.secret),
            MIN_SECRET_BYTES,
        )
    return settings


def find_config(explicit: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The settings file: ``--config FILE``, ``$AGENT_CONFIG`` or ``./bootstrap.properties``.

    Returns None when none is given and ``bootstrap.properties`` is not in the working
    directory. A file named by ``--config`` or ``$AGENT_CONFIG`` must exist.
    """
    environ = os.environ if environ is None else environ
    for path, where in ((explicit, "--config"), (environ.get(CONFIG_ENV), f"${CONFIG_ENV}")):
        if path:
            if not os.path.isfile(path):
                raise SettingsError(
                    f"settings file {path} does not exist (or is not a file)", where=where
                )
            return path
    default = os.path.join(os.getcwd(), DEFAULT_FILE)
    return default if os.path.isfile(default) else None
