"""The local store: JSON or bytes only, never pickle, and the dict-like API of get_cache."""

from __future__ import annotations

import os
import time

import diskcache
import pytest

import cache
from cache.store import LocalStore, StoreError, decode_value, encode_value


@pytest.fixture
def local_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("TWINWEAVE_CACHE_DIRECTORY", str(tmp_path / "local"))
    cache._forget()
    yield tmp_path / "local"
    cache._forget()


@pytest.mark.parametrize(
    "value",
    [None, True, 0, -(2**63), 2**70, 1.5, "", "snowman \u2603", [1, [2, {}]], {"a": {"b": [None]}}],
)
def test_json_values_round_trip(value):
    assert decode_value(encode_value(value)) == value


def test_bytes_round_trip_and_tuples_become_lists():
    assert decode_value(encode_value(b"\x00\xff")) == b"\x00\xff"
    assert decode_value(encode_value(bytearray(b"ab"))) == b"ab"
    assert decode_value(encode_value((1, 2))) == [1, 2]


@pytest.mark.parametrize("value", [object(), {1: "int key"}, float("nan"), {1.5}, len])
def test_other_values_are_refused_with_a_clear_error(value):
    with pytest.raises(TypeError, match="JSON-compatible"):
        encode_value(value)


def test_damaged_encodings_are_store_errors():
    for data in (b"", b"X{}", b"J{", b"JNaN", b"J\xff"):
        with pytest.raises(StoreError):
            decode_value(data)


class Exploit:
    """Unpickling this would create the marker file: it must never happen."""

    marker = ""

    def __reduce__(self):
        return (os.mknod, (self.marker,))


def test_a_planted_pickle_is_refused_never_loaded(tmp_path):
    folder = str(tmp_path / "shared")
    marker = tmp_path / "pwned"
    Exploit.marker = str(marker)
    planter = diskcache.Cache(folder)  # the default Disk pickles
    planter.set("evil", Exploit())
    planter.set(("tuple", "key"), "pickled key")
    planter.close()
    store = LocalStore(folder)
    try:
        with pytest.raises(StoreError, match="refused"):
            store.get_encoded("evil")
        with pytest.raises(StoreError, match="refused"):
            list(store.keys())
    finally:
        store.close()
    assert not marker.exists()


def test_get_cache_is_a_local_dict_like_store_outside_failover(local_caches):
    c = cache.get_cache("orders")
    assert cache.get_cache("orders") is c
    c["a"] = {"n": 1}
    c.set("b", b"raw")
    assert c["a"] == {"n": 1} and c.get("b") == b"raw" and c.get("zz", 7) == 7
    assert "a" in c and "zz" not in c and 3 not in c
    assert sorted(c) == ["a", "b"] and len(c) == 2
    assert sorted(c.items()) == [("a", {"n": 1}), ("b", b"raw")]
    assert c.delete("a") is True and c.delete("a") is False
    with pytest.raises(KeyError):
        del c["a"]
    with pytest.raises(KeyError):
        c["a"]
    with pytest.raises(TypeError, match="keys are str"):
        c.set(1, "x")
    c.set("soon", 1, expire=0.05)
    time.sleep(0.1)
    assert "soon" not in c and c.get("soon") is None and sorted(c) == ["b"]
    c.clear()
    assert len(c) == 0
    assert (local_caches / "orders").is_dir()
    with pytest.raises(ValueError, match="cache names"):
        cache.get_cache("../escape")


def test_position_lives_beside_the_data(tmp_path):
    store = LocalStore(str(tmp_path / "s"))
    try:
        assert store.position() == (0, 0)
        store.put("k", encode_value(1), position=(3, 9))
        store.delete("k", position=(3, 10))
        assert store.position() == (3, 10)
        assert list(store.keys()) == []  # the position is not an entry
    finally:
        store.close()
