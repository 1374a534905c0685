"""A node's folder: one per running node, the same again after a restart, a durable epoch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cluster.config import Settings
from cluster.home import HomeError, NodeHome, default_root


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path


def test_two_nodes_on_one_host_get_their_own_slots_and_keep_them(cache_home):
    settings = Settings(cluster="c1")
    a = NodeHome.claim(settings)
    b = NodeHome.claim(settings)
    try:
        assert a.path != b.path
        assert a.node_id != b.node_id
        assert a.path.parent == b.path.parent == default_root("c1")
        first_a = (a.path, a.node_id)
    finally:
        a.release()
    again = NodeHome.claim(settings)  # a restarted node finds the free slot, and its id
    try:
        assert (again.path, again.node_id) == first_a
    finally:
        again.release()
        b.release()


def test_a_killed_process_leaves_its_slot_free(cache_home):
    code = (
        "import os, sys; from cluster.config import Settings; from cluster.home import NodeHome;"
        "h = NodeHome.claim(Settings(cluster='c2')); print(h.path, flush=True); os._exit(9)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    home = NodeHome.claim(Settings(cluster="c2"))
    try:
        assert str(home.path) == out.stdout.strip()
    finally:
        home.release()


def test_explicit_directory_in_use_is_a_clear_error(tmp_path):
    settings = Settings(cache_directory=str(tmp_path / "n"), node_id="fixed")
    home = NodeHome.claim(settings)
    try:
        assert home.node_id == "fixed"
        with pytest.raises(HomeError, match="in use by another running node"):
            NodeHome.claim(settings)
    finally:
        home.release()


def test_epoch_round_trip_and_damage(tmp_path):
    home = NodeHome.claim(Settings(cache_directory=str(tmp_path / "n")))
    try:
        assert home.load_epoch() == 0
        home.save_epoch(41)
        home.save_epoch(42)
        assert home.load_epoch() == 42
        assert [p.name for p in home.path.iterdir() if p.name.startswith(".epoch")] == []
        home.epoch_file.write_text("4x2\n")
        with pytest.raises(HomeError, match="damaged"):
            home.load_epoch()
    finally:
        home.release()
