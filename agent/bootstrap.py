"""``python -m agent.bootstrap``: run a script or module as ``__main__``, agent installed first.

Owns the command line of DESIGN.md and running the user's program the way
``python SCRIPT ARGS`` or ``python -m MODULE ARGS`` would (``sys.argv``,
``sys.path[0]``, ``__main__``, exit status, uncaught-exception output), so that
adding the agent changes nothing but the profiling. The script's own code is
woven before it runs; it answers to ``__main__`` and to its file's stem. The site
hook (``agent.sitehook``) reuses :func:`run_script`. Starting the agent itself is
``agent.runtime``'s job.

Usage::

    python -m agent.bootstrap --pointcuts aop.xml adapter.py --in inbox
    python -m agent.bootstrap --report stats.json -m mypkg.service
"""

from __future__ import annotations

import argparse
import atexit
import builtins
import io
import logging
import os
import runpy
import signal
import sys
from collections.abc import Callable, Sequence
from importlib.machinery import SourceFileLoader
from types import CodeType, ModuleType, TracebackType
from typing import NoReturn

from agent import runtime
from agent.pointcuts import AgentConfig, PointcutError, load

log = logging.getLogger(__name__)

EXIT_USAGE = 2
_OUR_FILES = {os.path.abspath(__file__), os.path.abspath(runpy.__file__)}


class _UntilAppConfigures(logging.StreamHandler):
    """stderr for the agent's messages while the application has no logging of its own.

    Decided per message, not once at start: an application usually configures logging
    after the agent started (``logging.basicConfig`` in its ``main``); from then on its
    root handlers get the messages (they propagate) and this one stays quiet, so
    nothing is printed twice.
    """

    def emit(self, record: logging.LogRecord) -> None:
        if not logging.getLogger().handlers:
            super().emit(record)


def configure_logging(verbose: bool) -> None:
    """Send the agent's messages to stderr unless the application configures logging."""
    logger = logging.getLogger("agent")
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not logging.getLogger().handlers and not logger.handlers:
        handler = _UntilAppConfigures()
        handler.setFormatter(logging.Formatter("twinweave %(levelname)s %(name)s: %(message)s"))
        handler.setLevel(logging.DEBUG if verbose else logging.WARNING)
        logger.addHandler(handler)


def _ours(tb: TracebackType) -> bool:
    filename = tb.tb_frame.f_code.co_filename
    return filename.startswith("<frozen runpy") or os.path.abspath(filename) in _OUR_FILES


def _user_traceback(tb: TracebackType | None) -> TracebackType | None:
    """Drop the bootstrap's and runpy's frames from the top of a traceback."""
    while tb is not None and _ours(tb):
        tb = tb.tb_next
    return tb


def _die_like_python(exc: BaseException) -> NoReturn:
    """Report an uncaught exception as the interpreter would, and exit the same way."""
    tb = _user_traceback(exc.__traceback__)
    sys.excepthook(type(exc), exc.with_traceback(tb), tb)
    if isinstance(exc, KeyboardInterrupt):
        # CPython re-kills itself with SIGINT so that the parent sees the signal (bpo-1054041).
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    sys.exit(1)


def main_module(path: str) -> ModuleType:
    """A fresh ``__main__`` module for the script at ``path``, installed in ``sys.modules``."""
    module = ModuleType("__main__")
    module.__file__ = path
    module.__cached__ = None  # type: ignore[attr-defined]
    module.__loader__ = SourceFileLoader("__main__", path)
    module.__spec__ = None
    module.__package__ = None
    module.__builtins__ = builtins  # type: ignore[attr-defined]
    sys.modules["__main__"] = module
    return module


def compile_script(path: str, agent: runtime.Agent | None) -> CodeType:
    """Compile the script (honouring its coding cookie) and weave it."""
    with io.open_code(path) as handle:
        source = handle.read()
    code = compile(source, path, "exec", dont_inherit=True)
    if agent is not None:
        stem = os.path.splitext(os.path.basename(path))[0]
        code = agent.weave_module(code, (stem, "__main__"))
    return code


def run_script(script: str, args: Sequence[str], agent: runtime.Agent | None) -> None:
    """Run ``script`` as ``python script args`` would; uncaught exceptions exit like Python."""
    path = os.path.abspath(script)
    sys.argv = [script, *args]
    if os.path.isdir(path) or (not path.endswith((".py", ".pyw")) and _is_zip(path)):
        # A directory or zip with __main__.py: runpy imports it, and the import hook weaves it.
        sys.path.insert(0, path)
        try:
            runpy.run_path(path, run_name="__main__")
        except SystemExit:
            raise
        except BaseException as exc:
            _die_like_python(exc)
        return
    if not getattr(sys.flags, "safe_path", False):  # python -P adds no script folder
        if _launched_by_module():
            sys.path[0] = os.path.dirname(path)  # where `python -m` put the working folder
        else:
            sys.path.insert(0, os.path.dirname(path))
    try:
        code = compile_script(path, agent)
    except OSError as exc:
        sys.stderr.write(f"{sys.executable}: can't open file {script!r}: {exc}\n")
        sys.exit(EXIT_USAGE)
    module = main_module(path)
    try:
        exec(code, module.__dict__)
    except SystemExit:
        raise
    except BaseException as exc:
        _die_like_python(exc)


def _is_zip(path: str) -> bool:
    import zipfile

    return os.path.isfile(path) and zipfile.is_zipfile(path)


def _launched_by_module() -> bool:
    """True when this process was started as ``python -m agent.bootstrap``."""
    main = sys.modules.get("__main__")
    # not __name__: run as `-m agent.bootstrap`, this module's own name is "__main__"
    return getattr(main, "__spec__", None) is not None and main.__spec__.name == "agent.bootstrap"


def run_module(module: str, args: Sequence[str]) -> None:
    """Run ``module`` as ``python -m module args`` would."""
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit:
        raise
    except ImportError as exc:
        if getattr(exc, "name", None) == module or str(exc).startswith("No module named"):
            sys.stderr.write(f"{sys.executable}: {exc}\n")
            sys.exit(1)
        _die_like_python(exc)
    except BaseException as exc:
        _die_like_python(exc)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m agent.bootstrap",
        description="Run a Python script or module with the twinweave agent installed.",
    )
    p.add_argument("--pointcuts", metavar="FILE", help="pointcut file (default: $AGENT_POINTCUTS)")
    p.add_argument(
        "--config",
        metavar="FILE",
        help="failover settings (default: $AGENT_CONFIG, else ./bootstrap.properties if present)",
    )
    p.add_argument("--failover", action="store_true", help="run as one node of a failover cluster")
    p.add_argument(
        "-D",
        dest="defines",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting of the config file (e.g. -D failover.delay=200)",
    )
    p.add_argument(
        "--backend",
        choices=runtime.BACKENDS,
        default="auto",
        help="how calls are observed: bytecode rewriting or sys.monitoring (3.12+); auto = fastest",
    )
    p.add_argument(
        "--report", metavar="FILE", help="where the timing plugin writes its JSON report"
    )
    p.add_argument(
        "--report-interval",
        metavar="S",
        help="also rewrite the report every S seconds while the program runs "
        "(default: $AGENT_REPORT_INTERVAL, else at exit only)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log what is woven")
    p.add_argument("-m", dest="module", metavar="MODULE", help="run a module as a script")
    p.add_argument("target", nargs="?", metavar="SCRIPT", help="the script to run")
    p.add_argument("args", nargs="*", metavar="ARGS", help="its arguments (or the module's)")
    return p


_VALUED = ("--pointcuts", "--config", "--backend", "--report", "--report-interval", "-D")


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """The bootstrap's own options, and the program's command line from SCRIPT or -m on.

    As with ``python`` itself, everything after ``SCRIPT`` or ``-m MODULE`` belongs to
    the program, options included (``-m json.tool -h`` is json.tool's help).
    """
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg == "--":
            return argv[:index], argv[index + 1 :]
        if arg == "-m" or (arg.startswith("-m") and not arg.startswith("--")):
            end = index + 2 if arg == "-m" else index + 1
            return argv[:end], argv[end:]
        if not arg.startswith("-") or arg == "-":
            return argv[:index], argv[index:]
        index += 2 if arg in _VALUED else 1
    return argv, []


def _fail(message: str) -> NoReturn:
    sys.stderr.write(f"twinweave: error: {message}\n")
    sys.exit(EXIT_USAGE)


def load_config(path: str | None) -> AgentConfig | None:
    """The pointcut file named by ``--pointcuts`` or ``$AGENT_POINTCUTS``; errors stop here."""
    path = path or os.environ.get("AGENT_POINTCUTS")
    if not path:
        return None
    try:
        return load(path)
    except PointcutError as exc:
        _fail(str(exc))


def main(argv: list[str] | None = None) -> None:
    own, program = split_argv(sys.argv[1:] if argv is None else argv)
    options = parser().parse_args(own)
    if options.module is None:
        if not program:
            parser().error("give a SCRIPT to run, or -m MODULE")
        options.target, program = program[0], program[1:]
    configure_logging(options.verbose)
    settings = _failover_settings(options) if options.failover else None
    config = load_config(options.pointcuts)
    agent = None
    if config is None:
        log.warning("no pointcut file (--pointcuts or AGENT_POINTCUTS): nothing is woven")
    else:
        try:
            interval = runtime.parse_interval(options.report_interval, "--report-interval")
            agent = runtime.start(
                config,
                options.backend,
                options.report,
                _failover_plugins(config, settings),
                interval,
            )
        except (runtime.AgentError, RuntimeError) as exc:
            _fail(str(exc))

    def run_program() -> None:
        if options.module is not None:
            run_module(options.module, program)
        else:
            run_script(options.target, program, agent)

    if settings is None:
        run_program()
    else:
        _run_failover(settings, run_program, options.verbose)


def _failover_plugins(config: AgentConfig, settings: object) -> list[object]:
    """Under --failover the failover plugin runs whether or not the pointcut file names it."""
    if settings is None or any(spec.name == "failover" for spec in config.plugins):
        return []
    from agent.plugins.failover import FailoverPlugin

    return [FailoverPlugin()]


def _failover_settings(options: argparse.Namespace) -> object:
    from cluster.config import SettingsError, find_config, load_settings

    try:
        return load_settings(find_config(options.config), overrides=options.defines)
    except SettingsError as exc:
        _fail(str(exc))


def _run_failover(settings: object, run_program: Callable[[], None], verbose: bool) -> NoReturn:
    """One node of the cluster: dormant until promoted, then the program (cluster.runner)."""
    from cluster.backend import BackendError
    from cluster.home import HomeError
    from cluster.runner import configure_logging as cluster_logging
    from cluster.runner import run_node
    from cluster.transport import TransportError

    cluster_logging(verbose)
    try:
        status = run_node(settings, run_program)  # type: ignore[arg-type]
    except (BackendError, HomeError, TransportError) as exc:
        _fail(str(exc))
    sys.exit(status)


if __name__ == "__main__":
    main()
