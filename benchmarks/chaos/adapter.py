"""The campaign's adapter: ``examples/fs_adapter.py`` unchanged, plus a ledger of deliveries.

After each message the example delivers (output published, input removed), the master
writes one entry to the replicated cache ``chaos.ledger`` (``cache.replication=sync``: the
write returns once every live slave has it) and only then traces ``acked``. The ledger is
never deleted from, so the final master's copy on disk must hold every entry ever traced
as acked: the campaign's checker reads it with sqlite, not through the node.

Arguments are the example's (``--in``, ``--out``, ``--trace``, ...).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples"))

import fs_adapter

import cache
import cluster

LEDGER = "chaos.ledger"


class LedgerChannel(fs_adapter.Channel):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.ledger = cache.get_cache(LEDGER)

    def process(self, message_id: str) -> bool:
        before = self.processed
        result = super().process(message_id)
        if self.processed > before:  # delivered now (not skipped, not failed)
            self.ledger.set(message_id, {"node": cluster.node_id(), "epoch": cluster.epoch()})
            fs_adapter.trace("acked", message_id)
        return result


fs_adapter.Channel = LedgerChannel  # type: ignore[misc]

if __name__ == "__main__":
    sys.exit(fs_adapter.main())
