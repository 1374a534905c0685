"""``python -m benchmarks.chaos.node BOOTSTRAP-ARGUMENTS``: the real node, stamped lines.

Exactly ``python -m agent.bootstrap BOOTSTRAP-ARGUMENTS``, except that the cluster's log
lines go to stderr as ``MONOTONIC LEVEL cluster MESSAGE``: ``time.monotonic()`` is one
clock system-wide on Linux, so the campaign's checker can put every host's lines, the
adapter's trace and the campaign's own fault log on one time line.
"""

from __future__ import annotations

import logging
import time

from agent.bootstrap import main


class MonotonicLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"{time.monotonic():.6f} {record.levelname} {record.name} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def stamp_cluster_lines() -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(MonotonicLines())
    logger = logging.getLogger("cluster")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


if __name__ == "__main__":
    stamp_cluster_lines()
    main()
