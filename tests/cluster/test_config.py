"""Tests for cluster.config: the properties file, precedence, aliases and every error path."""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import socket
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.config import Settings, SettingsError, find_config, load_settings


def write(tmp_path: Path, text: str, name: str = "bootstrap.properties") -> str:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return str(path)


def load(tmp_path: Path, text: str, **kwargs: object) -> Settings:
    kwargs.setdefault("environ", {})
    return load_settings(write(tmp_path, text), **kwargs)  # type: ignore[arg-type]


def test_defaults() -> None:
    s = load_settings(environ={})
    assert s == Settings()
    assert (s.group, s.port, s.delay_ms, s.retries, s.ttl) == ("230.0.0.1", 2710, 1000, 5, 1)
    assert (s.cluster, s.priority, s.replication, s.stop_timeout_ms) == (
        "default",
        100,
        "sync",
        10000,
    )
    assert s.interface is s.secret is s.node_id is s.cache_directory is None
    assert s.delay_s == 1.0


def test_file_syntax(tmp_path: Path) -> None:
    s = load(
        tmp_path,
        "\ufeff# a comment\n"
        "! another comment \\\n"
        "failover.port=1\n"
        "\n"
        "   failover.group : 239.1.2.3   \r\n"
        "failover.delay   250\r"
        "failover.cluster = our\\\n"
        "        -cluster\n"
        "failover.node-id=n\\u00e9\\=1\\:x\\\\\n"
        "failover.priority=7\n"
        "failover.priority=8\n"
        "adapter.whatever = anything at all = ok\n"
        "Adapter.Other: 1\n"
        "failover.secret=\\\n",
    )
    assert s.port == 1  # a comment line ending in a backslash does not continue
    assert s.group == "239.1.2.3"
    assert s.delay_ms == 250
    assert s.cluster == "our-cluster"
    assert s.node_id == "n\u00e9=1:x\\"
    assert s.priority == 8  # the last of a repeated key wins
    assert s.secret is None  # empty after the dangling continuation


NAME_CHARS = st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"))


@st.composite
def escaped(draw: st.DrawFn, text: str) -> str:
    """``text`` written with a random mix of Java escapes."""
    out = []
    for i, c in enumerate(text):
        how = draw(st.sampled_from(["plain", "unicode", "backslash"]))
        if i == 0 and c in "=:" and how == "plain":
            how = "backslash"  # unescaped, it would be read as the separator after a space
        if c == "\\":
            out.append("\\\\" if how != "unicode" else "\\u005c")
        elif how == "unicode" and ord(c) <= 0xFFFF:
            out.append(f"\\u{ord(c):04x}")
        elif how == "backslash" and c not in "tnrfu":
            out.append("\\" + c)
        else:
            out.append(c)
    return "".join(out)


@settings(max_examples=100, deadline=None, database=None)
@given(
    node_id=st.text(NAME_CHARS, min_size=1, max_size=20).filter(
        lambda s: len(s.encode()) <= 64 and not any(c.isspace() for c in s)
    ),
    data=st.data(),
    separator=st.sampled_from(["=", ":", " ", " = ", "\t:\t"]),
)
def test_values_round_trip_through_escapes(
    tmp_path_factory: pytest.TempPathFactory, node_id: str, data: st.DataObject, separator: str
) -> None:
    tmp_path = tmp_path_factory.mktemp("props")
    line = f"failover.node-id{separator}{data.draw(escaped(node_id))}\n"
    assert load(tmp_path, line).node_id == node_id


def test_crlf_and_continuation_at_end_of_file(tmp_path: Path) -> None:
    s = load(tmp_path, "failover.ttl=0\r\nfailover.retries=1\\\r\n  2\\")
    assert (s.ttl, s.retries) == (0, 12)


def test_precedence(tmp_path: Path) -> None:
    path = write(tmp_path, "failover.port=1000\nfailover.delay=100\nfailover.ttl=3\n")
    environ = {
        "TWINWEAVE_FAILOVER_DELAY": "200",
        "TWINWEAVE_FAILOVER_TTL": "4",
        "FAILOVER_PRIORITY": "1",  # not ours: only TWINWEAVE_ names are read
        "TWINWEAVE_FAULTS": "/elsewhere",  # another module's variable
    }
    s = load_settings(path, environ=environ, overrides=["failover.ttl=5"])
    assert (s.port, s.delay_ms, s.ttl, s.priority) == (1000, 200, 5, 100)


def test_environment_names(tmp_path: Path) -> None:
    environ = {
        "TWINWEAVE_FAILOVER_NODE_ID": "alpha",
        "TWINWEAVE_FAILOVER_STOP_TIMEOUT": "0",
        "TWINWEAVE_CACHE_DIRECTORY": "$STATE/${NODE}/c",
        "TWINWEAVE_CACHE_REPLICATION": "ASYNC",
        "STATE": "/srv",
        "NODE": "n1",
    }
    s = load_settings(environ=environ)
    assert (s.node_id, s.stop_timeout_ms, s.replication) == ("alpha", 0, "async")
    assert s.cache_directory == "/srv/n1/c"


def test_cache_directory_expands_home() -> None:
    s = load_settings(environ={}, overrides=["cache.directory=~/x/$UNSET_NAME"])
    assert s.cache_directory == os.path.expanduser("~/x/$UNSET_NAME")


def test_empty_value_clears_a_lower_level(tmp_path: Path) -> None:
    path = write(tmp_path, "failover.interface=127.0.0.1\nfailover.secret=0123456789abcdef\n")
    s = load_settings(
        path, environ={"TWINWEAVE_FAILOVER_SECRET": ""}, overrides=["failover.interface="]
    )
    assert s.interface is None and s.secret is None


def test_overrides_syntax() -> None:
    s = load_settings(environ={}, overrides=[" failover.port = 3000 ", "failover.secret=a=b==c"])
    assert s.port == 3000
    assert s.secret == b"a=b==c"
    with pytest.raises(
        SettingsError, match=r"command line -D: 'failover\.port': expected key=value"
    ):
        load_settings(environ={}, overrides=["failover.port"])
    with pytest.raises(SettingsError, match="expected key=value"):
        load_settings(environ={}, overrides=["=5"])


BAD_VALUES = [
    ("failover.group", "10.0.0.1", "IPv4 multicast"),
    ("failover.group", "230.0.0", "IPv4 multicast"),
    ("failover.port", "0", "from 1 to 65535"),
    ("failover.port", "65536", "from 1 to 65535"),
    ("failover.port", "12ab", "from 1 to 65535"),
    ("failover.port", "1_000", "from 1 to 65535"),
    ("failover.delay", "9", "from 10 to 600000"),
    ("failover.delay", "1.5", "from 10 to 600000"),
    ("failover.retries", "0", "from 1 to 1000"),
    ("failover.interface", "230.0.0.1", "local IPv4"),
    ("failover.interface", "0.0.0.0", "local IPv4"),
    ("failover.interface", "localhost", "local IPv4"),
    ("failover.ttl", "256", "from 0 to 255"),
    ("failover.cluster", "a b", "without whitespace"),
    ("failover.cluster", "x" * 65, "1 to 64 UTF-8 bytes"),
    ("failover.cluster", "\u00e9" * 33, "1 to 64 UTF-8 bytes"),
    ("failover.priority", "-1", "from 0 to 65535"),
    ("failover.node-id", "n\\u0007", "printable"),
    ("failover.stop-timeout", "3600001", "from 0 to 3600000"),
    ("cache.replication", "eventually", "sync or async"),
    ("failover.multicast.group", "1.2.3.4", "IPv4 multicast"),
    ("failover.multicast.port", "x", "from 1 to 65535"),
    ("failover.ping.interval.seconds", "0.001", "seconds from 0.01 to 600"),
    ("failover.ping.interval.seconds", "-1", "seconds from 0.01 to 600"),
    ("failover.ping.interval.seconds", "nan", "seconds from 0.01 to 600"),
    ("failover.instance.timeout.seconds", "-3", "non-negative number of seconds"),
    ("failover.slave.position", "0", "1 = first in line"),
    ("failover.socket.mode", "tcp", "only mode twinweave supports"),
]


@pytest.mark.parametrize(("key", "value", "expected"), BAD_VALUES)
def test_bad_value_in_file(tmp_path: Path, key: str, value: str, expected: str) -> None:
    path = write(tmp_path, f"# settings\n{key}={value}\n")
    with pytest.raises(SettingsError) as info:
        load_settings(path, environ={})
    message = str(info.value)
    assert message.startswith(f"{path}:2: {key}=")
    assert expected in message
    assert info.value.key == key


@pytest.mark.parametrize(("key", "value", "expected"), BAD_VALUES[::4])
def test_bad_value_in_environment_and_overrides(key: str, value: str, expected: str) -> None:
    name = "TWINWEAVE_" + key.upper().replace(".", "_").replace("-", "_")
    with pytest.raises(SettingsError, match=rf"^environment {name}: {key}=.*{expected}"):
        load_settings(environ={name: value})
    with pytest.raises(SettingsError, match=rf"^command line -D: {key}=.*{expected}"):
        load_settings(environ={}, overrides=[f"{key}={value}"])


def test_unknown_keys_suggest_the_closest(tmp_path: Path) -> None:
    path = write(tmp_path, "failover.dealy=5\n")
    expected = (
        rf"^{re.escape(path)}:1: unknown key failover.dealy \(did you mean failover.delay\?\)"
    )
    with pytest.raises(SettingsError, match=expected):
        load_settings(path, environ={})
    with pytest.raises(
        SettingsError, match=r"unknown key Failover.Port \(did you mean failover.port\?\)"
    ):
        load_settings(environ={}, overrides=["Failover.Port=1"])
    with pytest.raises(SettingsError, match=r"known keys: failover.group, "):
        load_settings(environ={}, overrides=["cache.zzzzzzzzzzzzzzzzzzzz=1"])
    with pytest.raises(
        SettingsError,
        match=r"^environment TWINWEAVE_FAILOVER_RETRYS: unknown setting"
        r" \(did you mean TWINWEAVE_FAILOVER_RETRIES\?\)",
    ):
        load_settings(environ={"TWINWEAVE_FAILOVER_RETRYS": "3"})


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"missing.properties: cannot read the settings file"):
        load_settings(str(tmp_path / "missing.properties"), environ={})
    path = tmp_path / "latin1.properties"
    path.write_bytes(b"failover.port=1\nfailover.cluster=caf\xe9\n")
    with pytest.raises(SettingsError, match=r"latin1.properties:2: not valid UTF-8"):
        load_settings(str(path), environ={})
    bad_escape = write(tmp_path, "\n\nfailover.node-id=a\\u00zz\n")
    with pytest.raises(SettingsError, match=r":3: malformed escape \\u00zz"):
        load_settings(bad_escape, environ={})
    # a secret's value is never quoted, not even the bytes after a broken escape
    bad_secret = write(tmp_path, "failover.secret=abcdefghijklmnop\\uS3cR\n")
    with pytest.raises(SettingsError, match=r"malformed escape \\u\*\*\*") as caught:
        load_settings(bad_secret, environ={})
    assert "S3cR" not in str(caught.value)


def test_aliases(tmp_path: Path) -> None:
    s = load(
        tmp_path,
        "failover.multicast.group=239.9.9.9\n"
        "failover.multicast.port=4444\n"
        "failover.ping.interval.seconds=0.25\n"
        "failover.instance.timeout.seconds=1.1\n"
        "failover.slave.position=3\n"
        "failover.socket.mode=Multicast\n",
    )
    assert (s.group, s.port, s.delay_ms, s.retries, s.priority) == ("239.9.9.9", 4444, 250, 5, 997)


def test_alias_timeout_uses_the_final_delay(tmp_path: Path) -> None:
    path = write(tmp_path, "failover.instance.timeout.seconds=3\nfailover.delay=1000\n")
    assert load_settings(path, environ={}).retries == 3
    assert load_settings(path, environ={}, overrides=["failover.delay=200"]).retries == 15
    assert load_settings(path, environ={}, overrides=["failover.retries=2"]).retries == 2
    assert load_settings(environ={}, overrides=["failover.instance.timeout.seconds=0"]).retries == 1
    with pytest.raises(
        SettingsError, match=r"timeout.seconds='2000': expected at most 1000 seconds"
    ):
        load_settings(environ={}, overrides=["failover.instance.timeout.seconds=2000"])


def test_alias_and_key_across_levels(tmp_path: Path) -> None:
    path = write(tmp_path, "failover.multicast.port=4444\nfailover.slave.position=2000\n")
    s = load_settings(path, environ={"TWINWEAVE_FAILOVER_PORT": "5555"})
    assert (s.port, s.priority) == (5555, 0)
    s = load_settings(path, environ={}, overrides=["failover.priority=9"])
    assert s.priority == 9


def test_alias_and_key_at_one_level_conflict(tmp_path: Path) -> None:
    path = write(tmp_path, "failover.port=1\nfailover.multicast.port=2\n")
    with pytest.raises(
        SettingsError,
        match=rf"^{re.escape(path)}:2: failover.multicast.port and failover.port"
        rf" \({re.escape(path)}:1\) both set failover.port; keep one",
    ):
        load_settings(path, environ={})
    with pytest.raises(SettingsError, match=r"both set failover\.delay; keep one"):
        load_settings(
            environ={
                "TWINWEAVE_FAILOVER_DELAY": "100",
                "TWINWEAVE_FAILOVER_PING_INTERVAL_SECONDS": "1",
            }
        )
    with pytest.raises(SettingsError, match=r"both set failover\.retries"):
        load_settings(
            environ={}, overrides=["failover.retries=2", "failover.instance.timeout.seconds=4"]
        )


def test_settings_checks_direct_construction() -> None:
    with pytest.raises(
        SettingsError, match=r"^failover.port=0: expected an integer from 1 to 65535"
    ):
        Settings(port=0)
    with pytest.raises(SettingsError, match=r"failover.secret=\*\*\*"):
        Settings(secret="text")  # type: ignore[arg-type]
    with pytest.raises(SettingsError, match=r"^failover\.ttl=True"):
        Settings(ttl=True)


def test_describe_and_repr_hide_the_secret() -> None:
    s = Settings(secret=b"hunter2-hunter2-hunter2", interface="127.0.0.1")
    described = s.describe()
    assert described["failover.secret"] == "***"
    assert described["failover.interface"] == "127.0.0.1"
    assert described["cache.replication"] == "sync"
    assert "hunter2" not in repr(described) and "hunter2" not in repr(s)
    assert Settings().describe()["failover.secret"] is None


def test_errors_never_show_the_secret() -> None:
    with pytest.raises(
        SettingsError, match=r"^environment TWINWEAVE_FAILOVER_SECRET: .*=\*\*\*"
    ) as info:
        load_settings(environ={"TWINWEAVE_FAILOVER_SECRET": "\udcff-topsecret"})
    assert "topsecret" not in str(info.value)


def test_short_secret_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="cluster.config"):
        s = load_settings(environ={"TWINWEAVE_FAILOVER_SECRET": "s3cr"})
    assert s.secret == b"s3cr"
    assert "only 4 bytes" in caplog.text and "s3cr" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cluster.config"):
        load_settings(environ={"TWINWEAVE_FAILOVER_SECRET": "x" * 16})
    assert caplog.text == ""


def test_interface_address() -> None:
    assert Settings(interface="127.0.0.1").interface_address() == "127.0.0.1"
    address = ipaddress.IPv4Address(Settings().interface_address())
    assert not address.is_multicast and not address.is_unspecified


def test_interface_address_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(self: socket.socket, address: object) -> None:
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket.socket, "connect", unreachable)
    assert Settings().interface_address() == "127.0.0.1"


def test_find_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    other = write(tmp_path, "", "other.properties")
    assert find_config(None, environ={}) is None
    assert find_config(other, environ={"AGENT_CONFIG": "/nonexistent"}) == other
    assert find_config(None, environ={"AGENT_CONFIG": other}) == other
    default = write(tmp_path, "")
    assert find_config(None, environ={}) == os.path.join(str(tmp_path), "bootstrap.properties")
    assert os.path.samefile(find_config(None, environ={"AGENT_CONFIG": ""}) or "", default)
    with pytest.raises(SettingsError, match=r"^--config: settings file .*nope does not exist"):
        find_config(str(tmp_path / "nope"), environ={})
    with pytest.raises(
        SettingsError, match=r"^\$AGENT_CONFIG: settings file .*nope does not exist"
    ):
        find_config(None, environ={"AGENT_CONFIG": str(tmp_path / "nope")})
    with pytest.raises(SettingsError, match="is not a file"):
        find_config(str(tmp_path), environ={})


@pytest.mark.parametrize(
    "key", ["failover.ping.interval.seconds", "failover.instance.timeout.seconds"]
)
def test_huge_seconds_are_a_settings_error_not_an_overflow(key: str) -> None:
    # found by fuzzing: float("9" * 400) is infinity, and round(infinity) raised OverflowError
    with pytest.raises(SettingsError, match=key):
        load_settings(environ={}, overrides=[f"{key}={'9' * 400}"])


def test_a_nul_after_a_tilde_is_a_settings_error() -> None:
    # found by fuzzing: expanduser("~x\0") raised ValueError outside the parse's try
    with pytest.raises(SettingsError) as caught:
        load_settings(environ={}, overrides=["cache.directory=~x\x00"])
    assert caught.value.key == "cache.directory"
