"""The fixture the example adapter's cluster tests share: ``fs_cluster(*adapter_args)``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fs_cluster import FsCluster

from tests.nodeproc import killing_all


@pytest.fixture
def fs_cluster(tmp_path: Path) -> Iterator[Callable[..., FsCluster]]:
    """Makes :class:`FsCluster` groups in the test's folder; every node killed at the end."""

    def make(*args: str) -> FsCluster:
        return FsCluster(tmp_path, list(args))

    with killing_all(make) as tracked:
        yield tracked
