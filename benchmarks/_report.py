"""How the suite's scripts word their results: the verdict printed after each claim.

Every script (the pyperf ones, takeover.py, adapter.py) ends a claim's line with the
same word, so a reader (or ``grep FAILS``) finds a failed claim the same way in any
summary. The figures and claims themselves belong to each script.
"""

from __future__ import annotations


def verdict(ok: bool) -> str:
    """``holds`` or ``FAILS``."""
    return "holds" if ok else "FAILS"
