"""``python -m benchmarks.chaos.node BOOTSTRAP-ARGUMENTS``: the real node, stamped lines.

Exactly ``python -m agent.bootstrap BOOTSTRAP-ARGUMENTS``, except that the cluster's log
lines go to stderr as ``MONOTONIC LEVEL cluster MESSAGE`` and every other handler's
``%(asctime)s`` (the adapter's, the replicated cache's) is the monotonic clock too:
``time.monotonic()`` is one clock system-wide on Linux, so the campaign's checker can put
every host's lines, the adapter's trace and the campaign's own fault log on one time line.
"""

from __future__ import annotations

import logging
import time

from agent.bootstrap import main


def _monotonic_time(self: logging.Formatter, record: logging.LogRecord, datefmt=None) -> str:
    return f"{time.monotonic():.6f}"  # handlers format as the record is made


def stamp_lines() -> None:
    logging.Formatter.formatTime = _monotonic_time  # type: ignore[method-assign]
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logger = logging.getLogger("cluster")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


if __name__ == "__main__":
    stamp_lines()
    main()
