"""Running the user's program as a failover node: dormant until promoted, stopped on demotion.

Owns the main thread's side of a node's life for ``python -m agent.bootstrap
--failover``: start the :class:`cluster.manager.Node`, wait (dormant) until it is
promoted, run the program, turn SIGTERM and Ctrl-C into a clean stop (stop
hooks, the program interrupted, resignation so a slave takes over at once),
and choose the exit status: the program's own, or
:data:`cluster.manager.EXIT_DEMOTED` when the node stepped down. It does not
know how the program is run (the bootstrap passes a callable) nor how the
election works.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable, Mapping
from types import FrameType

import cluster
from cluster.config import Settings
from cluster.manager import Node

log = logging.getLogger("cluster")

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def configure_logging(verbose: bool = False) -> None:
    """The cluster's INFO lines on stderr, unless the application configures logging."""
    logger = logging.getLogger("cluster")
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not logging.getLogger().handlers and not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-5s [FailoverManager] %(message)s")
        )
        logger.addHandler(handler)
        logger.propagate = False


def exit_code(exc: SystemExit) -> int:
    """The status ``sys.exit(code)`` would give, as the interpreter computes it."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    sys.stderr.write(f"{code}\n")
    return 1


def run_node(
    settings: Settings,
    program: Callable[[], None],
    environ: Mapping[str, str] | None = None,
) -> int:
    """Be one node of the cluster; run ``program`` while master. Returns the exit status."""
    node = Node(settings, environ)
    previous = {sig: signal.getsignal(sig) for sig in _STOP_SIGNALS}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if node.interrupting():
            raise SystemExit(node.exit_status or 0)
        name = signal.Signals(signum).name
        if not node.request_stop(f"{name} received", 0) and signum == signal.SIGINT:
            raise SystemExit(node.exit_status or 0)  # a second Ctrl-C: stop now

    node.start()
    cluster.install(node)
    for sig in _STOP_SIGNALS:
        signal.signal(sig, on_signal)
    status = 0
    try:
        if node.wait_promoted():
            node.adapter_started()
            try:
                program()
            except SystemExit as exc:
                status = exit_code(exc)
        else:
            status = node.exit_status or 0
    except SystemExit as exc:  # a signal while waiting
        status = exit_code(exc)
    finally:
        status = node.finish(status)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        cluster.install(None)
    return status
