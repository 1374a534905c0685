"""What a cluster name or a node id may be: the one rule, its limit and its wording.

A name is 1 to :data:`MAX_NAME_BYTES` UTF-8 bytes, printable, without whitespace, so it
fits the one-byte length of the heartbeat (``cluster.protocol``) and of the replication
Hello and Welcome (``cache.wire``), and goes into a log line or a folder listing as it is.
The settings (``cluster.config``) and the node's own id file (``cluster.home``) check the
same rule, so whatever they accept can be sent. This module imports nothing: it is the one
thing ``cache`` takes from ``cluster`` (the dependency otherwise runs cluster -> cache),
and importing it loads no other module of either package.
"""

from __future__ import annotations

MAX_NAME_BYTES = 64
#: the rule in words, for the error messages of every module that checks it
NAME_RULE = f"1 to {MAX_NAME_BYTES} UTF-8 bytes, printable, without whitespace"


def is_name(value: object) -> bool:
    """Whether ``value`` is a str that is a valid cluster name or node id (:data:`NAME_RULE`).

    >>> is_name("node-1"), is_name("node 1"), is_name(""), is_name("\\u00e9" * 33)
    (True, False, False, False)
    """
    if not isinstance(value, str) or not value.isprintable():
        return False
    if any(c.isspace() for c in value):
        return False
    # printable text holds no lone surrogate, so it always encodes
    return 0 < len(value.encode("utf-8")) <= MAX_NAME_BYTES
