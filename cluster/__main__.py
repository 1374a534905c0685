"""The ``python -m cluster`` command line: parses arguments, loads settings, runs a command.

This module owns the command-line contract only: the commands and flags, where
settings come from (``--config``, ``$AGENT_CONFIG``, ``./bootstrap.properties``,
then ``-D key=value`` overrides, exactly as a node reads them), error messages
and exit statuses (2 for usage and settings errors). What a command does lives
elsewhere: ``status`` in ``cluster.status``.

    python -m cluster status [--config FILE] [-D key=value ...] [--wait SECONDS] [--json]
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence

from cluster import status
from cluster.backend import BackendError
from cluster.config import SettingsError, find_config, load_settings
from cluster.transport import TransportError

EXIT_USAGE = 2
PROG = "python -m cluster"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Inspect a twinweave failover cluster.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    show = commands.add_parser(
        "status",
        help="list the nodes, who is master and at which epoch",
        description=(
            "Listen to the heartbeat group and browse zeroconf for a while, then list the "
            "cluster's nodes. Exit status: 0 with exactly one master, 1 with none or several, "
            "2 for usage or settings errors."
        ),
    )
    show.add_argument(
        "--config",
        metavar="FILE",
        help="settings file (default: $AGENT_CONFIG, else ./bootstrap.properties if present)",
    )
    show.add_argument(
        "-D",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting, e.g. -D failover.interface=127.0.0.1 (repeatable)",
    )
    show.add_argument(
        "--wait",
        type=_seconds,
        metavar="SECONDS",
        help="how long to listen (default: 2.5 heartbeat delays, at least 1 s)",
    )
    show.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    return parser


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, not {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=logging.WARNING, format="twinweave: %(levelname)s: %(message)s")
    try:
        settings = load_settings(find_config(args.config), overrides=args.overrides)
    except SettingsError as exc:
        sys.stderr.write(f"twinweave: error: {exc}\n")
        return EXIT_USAGE
    wait_s = status.default_wait(settings) if args.wait is None else args.wait
    try:
        return status.report(settings, wait_s, args.json, sys.stdout, sys.stderr)
    except BackendError as exc:
        sys.stderr.write(f"twinweave: error: {exc}\n")
        return EXIT_USAGE
    except TransportError as exc:
        # TransportError(errno, text) would print as "[Errno N] text"; the text says it all.
        sys.stderr.write(f"twinweave: error: {exc.strerror or exc}\n")
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
