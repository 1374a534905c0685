"""The slave's journal: what a slave acknowledged survives it dying before it applies."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from cache.journal import Journal, scan
from cache.replica import Replica
from cache.store import decode_value, encode_value
from cache.wire import Batch, Kind, Op, change_record


def ops(first: int, count: int, epoch: int = 1, cache: str = "x") -> list[Op]:
    return [
        Op(epoch, n, Kind.PUT, cache, f"k{n}", encode_value(n), None)
        for n in range(first, first + count)
    ]


def records(changes: list[Op]) -> list[bytes]:
    return [change_record(changes[0] if len(changes) == 1 else Batch(tuple(changes)))]


def test_records_round_trip_in_order(tmp_path):
    journal = Journal(tmp_path / "journal")
    journal.append(records(ops(1, 1)) + records(ops(2, 3)))
    journal.append(records(ops(5, 1)))
    assert [op.seq for op in journal.read()] == [1, 2, 3, 4, 5]
    assert journal.damaged == 0
    assert os.stat(tmp_path / "journal").st_mode & 0o777 == 0o600
    journal.close()


@pytest.mark.parametrize(
    ("damage", "problem", "whole"),
    [
        (lambda data: data[:-3], "a torn record", [1, 2]),
        (lambda data: data + b"\x00\x00", "a torn record header", [1, 2, 3]),
        (lambda data: data[:-1] + bytes([data[-1] ^ 1]), "a record that fails its CRC", [1, 2]),
    ],
)
def test_a_damaged_tail_is_cut_off_and_counted(tmp_path, damage, problem, whole):
    path = tmp_path / "journal"
    journal = Journal(path)
    journal.append(records(ops(1, 2)))
    journal.append(records(ops(3, 1)))
    journal.close()
    path.write_bytes(damage(path.read_bytes()))
    assert scan(path.read_bytes())[2] == problem
    journal = Journal(path)
    kept = journal.read()
    assert [op.seq for op in kept] == whole
    assert journal.damaged == 1
    assert scan(path.read_bytes()) == (kept, len(path.read_bytes()), None)  # cut there
    journal.append(records(ops(len(whole) + 1, 1)))  # and appending goes on from the cut
    assert [op.seq for op in journal.read()] == [*whole, len(whole) + 1]
    journal.close()


def test_a_record_that_is_not_a_change_is_refused(tmp_path):
    path = tmp_path / "journal"
    journal = Journal(path)
    journal.append([b"\x08" + bytes(16)])  # an Ack's type byte: not a change
    assert journal.read() == [] and journal.damaged == 1
    assert path.read_bytes() == b""
    journal.close()


def test_a_full_disk_fails_the_append_and_leaves_no_torn_record(tmp_path):
    # a real short write: the file size limit stops the write part-way
    script = textwrap.dedent(
        f"""
        import resource, signal, sys
        sys.path.insert(0, {os.getcwd()!r})
        from cache.journal import Journal
        from cache.wire import Kind, Op, change_record
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        journal = Journal({str(tmp_path / "journal")!r})
        small = change_record(Op(1, 1, Kind.PUT, "x", "a", b"J1", None))
        journal.append([small])
        resource.setrlimit(resource.RLIMIT_FSIZE, (len(small) + 8 + 100, resource.RLIM_INFINITY))
        big = change_record(Op(1, 2, Kind.PUT, "x", "b", b"B" + bytes(5000), None))
        try:
            journal.append([big])
        except OSError as exc:
            print("refused:", exc)
        print([op.seq for op in journal.read()], journal.damaged)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "refused:" in out
    assert out.strip().endswith("[1] 0")  # the first record whole, no torn second one


def test_an_acknowledged_change_survives_the_slave_dying_before_it_applies(tmp_path):
    replica = Replica(tmp_path / "r")
    replica.apply_all(ops(1, 2))
    taken = ops(3, 3)
    replica.stage(taken, journal=records(taken))  # journaled (acknowledged), not applied
    assert replica.position == (1, 5) and replica.applied == (1, 2)
    # the process dies here: nothing more runs in it; a new one opens the same folder
    reopened = Replica(tmp_path / "r")
    assert reopened.position == reopened.applied == (1, 5)
    store = reopened.store("x")
    assert {k: decode_value(v) for k, v, _ in store.items_encoded()} == {
        f"k{n}": n for n in range(1, 6)
    }
    assert (tmp_path / "r" / "journal").read_bytes() == b""  # replayed, then emptied
    reopened.close()


def test_replay_takes_only_what_follows_the_stores(tmp_path):
    replica = Replica(tmp_path / "r")
    replica.apply_all(ops(1, 3))
    replica.close()
    # a journal left with changes already applied, then a gap, then one that follows none
    journal = Journal(tmp_path / "r" / "journal")
    journal.append(records(ops(2, 3)) + records(ops(7, 1)))
    journal.close()
    reopened = Replica(tmp_path / "r")
    assert reopened.position == (1, 4)  # 2 and 3 were in the stores; 7 does not follow 4
    reopened.close()


def test_a_change_the_master_cannot_apply_stays_pending_and_keeps_its_seq(tmp_path, monkeypatch):
    from cache.store import LocalStore

    replica = Replica(tmp_path / "m")
    replica.apply_all(ops(1, 1))
    real = LocalStore.apply
    failures = [1]

    def full_disk(self, *args, **kw):
        if failures:
            failures.pop()
            raise OSError(28, "No space left on device")
        return real(self, *args, **kw)

    monkeypatch.setattr(LocalStore, "apply", full_disk)
    with pytest.raises(OSError, match="No space"):
        replica.apply_all(ops(2, 1))
    assert replica.applied == (1, 1) and replica.position == (1, 2)
    assert replica.next_position(1) == (1, 3)  # seq 2 is taken: never reused
    replica.apply_all(ops(3, 1))  # applies 2, then 3
    assert replica.applied == (1, 3)
    assert sorted(k for k, _, _ in replica.store("x").items_encoded()) == ["k1", "k2", "k3"]
    replica.close()
