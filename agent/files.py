"""Files the agent writes for its user (reports, timelines): always whole, never half.

Owns one thing: :func:`write_atomic`, a temporary file beside the target, flushed and
synced, then renamed over it, so that a reader (``agent.report --watch``, Perfetto, a
scraper of the report) sees the old file or the new one. It does not decide what goes
in the files (the plugins do) nor when (``agent.periodic``).
"""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Iterable


def write_atomic(path: str, pieces: Iterable[str]) -> None:
    """Write the text ``pieces`` to ``path`` atomically: a temporary file, then ``os.replace``.

    Readers see the old file or the new one, never half of one; the pieces are
    streamed (a timeline is too big to build as one string). Raises ``OSError``
    (and whatever ``pieces`` raises), leaving no temporary file behind; a ``path``
    that exists and is not a regular file (``/dev/null``, a folder) is refused.
    """
    folder, base = os.path.split(os.path.abspath(path))
    if os.path.exists(path) and not os.path.isfile(path):
        # renaming over /dev/null (or a folder, a FIFO) would replace it, not write to it
        raise OSError(errno.EINVAL, "not a regular file, so it is left as it is", path)
    temporary = os.path.join(folder, f".{base}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temporary, "x", encoding="utf-8") as stream:
            for piece in pieces:
                stream.write(piece)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
