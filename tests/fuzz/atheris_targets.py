"""The targets of ``targets.py`` under atheris, a coverage-guided fuzzer (libFuzzer for Python).

    python -m tests.fuzz.atheris_targets TARGET CORPUS [LIBFUZZER OPTIONS]
    python -m tests.fuzz.atheris_targets heartbeat corpus/ -atheris_runs=20000 -seed=1

Run it from the top of the repository; TARGET is one of :data:`TARGETS`. Its seeds
(``seeds.CORPORA``) are written into the folder CORPUS, where libFuzzer starts from them
and keeps what it finds. Only twinweave's own packages are instrumented for coverage. A
target given an input that breaks its property raises; atheris then prints the traceback,
writes the input as ``crash-*`` (``-artifact_prefix=FOLDER/`` says where) and exits
non-zero.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["agent", "cluster", "cache"]):
    from cluster.protocol import Codec
    from tests.fuzz import seeds, targets

_FILES = targets.Scratch(Path(tempfile.mkdtemp(prefix="twinweave-atheris-")))


def _heartbeat(data: bytes) -> None:
    for secret in (None, seeds.SECRET):
        targets.heartbeat(data, Codec(seeds.CLUSTER, secret))


def _follower(data: bytes) -> None:
    with tempfile.TemporaryDirectory(prefix="twinweave-atheris-") as folder:
        targets.follower(data, Path(folder) / "replica")


def _both(check: Callable[[bytes, bytes | None], object]) -> Callable[[bytes], None]:
    def run(data: bytes) -> None:
        for secret in (None, seeds.SECRET):
            check(data, secret)

    return run


#: seeds.CORPORA's targets: the check of one input
TARGETS: dict[str, Callable[[bytes], object]] = {
    "pointcuts": lambda data: targets.pointcut_file(data, _FILES),
    "properties": lambda data: targets.properties_file(data, _FILES),
    "heartbeat": _heartbeat,
    "heartbeat-node": targets.heartbeat_to_node,
    "slave-session": _both(targets.slave_session),
    "master-session": _both(targets.master_session),
    "change-record": targets.change_record,
    "follower": _follower,
}


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] not in TARGETS:
        sys.exit(
            f"usage: python -m tests.fuzz.atheris_targets {{{','.join(TARGETS)}}} CORPUS"
            " [LIBFUZZER OPTIONS]"
        )
    seeds.write_corpus(argv[1], Path(argv[2]))
    atheris.Setup([argv[0], *argv[3:], argv[2]], TARGETS[argv[1]])
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
