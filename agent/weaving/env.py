"""Which Python we run on, as facts the weaver needs: the one place for version checks.

The bytecode backend emits different instructions per CPython minor version (the
call convention, exception handling and the function prologue all changed between
3.9 and 3.13). Every such difference is named here once, with the CPython change
behind it, so the templates read as "if the interpreter does X" rather than
scattered version comparisons. An unknown future version is refused rather than
guessed at: emitting bytecode for an interpreter we have not tested could crash it.
"""

from __future__ import annotations

import sys

PY: tuple[int, int] = sys.version_info[:2]
SUPPORTED = ((3, 9), (3, 10), (3, 11), (3, 12), (3, 13))


class UnsupportedPython(RuntimeError):
    """The running interpreter is one the bytecode weaver does not know."""


def check_supported() -> None:
    """Raise :class:`UnsupportedPython` unless the bytecode backend knows this Python."""
    if PY not in SUPPORTED or sys.implementation.name != "cpython":
        raise UnsupportedPython(
            f"twinweave's bytecode weaver supports CPython {SUPPORTED[0][0]}.{SUPPORTED[0][1]} to "
            f"{SUPPORTED[-1][0]}.{SUPPORTED[-1][1]}, not {sys.implementation.name} "
            f"{PY[0]}.{PY[1]}; upgrade twinweave, or use --backend monitoring where available"
        )


# Zero-cost exceptions (bpo-40222, 3.11): handlers live in an exception table
# (TryBegin/TryEnd for the `bytecode` library) instead of SETUP_FINALLY blocks.
EXCEPTION_TABLE = PY >= (3, 11)
# 3.11 added RESUME at the start of every code object (after the generator and
# cell prologue), which is where a call's own code begins.
HAS_RESUME = PY >= (3, 11)
# 3.10 generators start with GEN_START, which pops the first sent value (bpo-43683).
HAS_GEN_START = PY == (3, 10)
# Calls: 3.11 pushes NULL then the callable and needs PRECALL before CALL;
# 3.12 dropped PRECALL (gh-98686); 3.13 pushes the callable, then NULL (gh-115545).
CALL_PRECALL = PY == (3, 11)
NULL_BEFORE_CALLABLE = (3, 11) <= PY < (3, 13)
NULL_AFTER_CALLABLE = PY >= (3, 13)
# 3.12 added RETURN_CONST (gh-101632).
HAS_RETURN_CONST = PY >= (3, 12)
# 3.11 added co_qualname; before, the weaver derives qualified names itself.
HAS_CO_QUALNAME = PY >= (3, 11)
# 3.10+ line tables can say "no line", so inserted code fires no line events of its
# own; 3.9's lnotab cannot, so there inserted code takes a neighbour's line.
NO_LOCATION = PY >= (3, 10)
# A suspended generator whose yield sits in no handler but PEP 479's wrapper is
# closed without throwing GeneratorExit into it (gh-100762). The compiler marks
# such yields: 3.12 in YIELD_VALUE's argument (the handler depth), 3.13 with a
# bit of the RESUME that follows. Woven generators must be closed the long way
# so that their catch-all handler records the end of the call.
YIELD_VALUE_DEPTH = PY == (3, 12)
RESUME_DEPTH1_MASK = 4 if PY >= (3, 13) else 0
# sys.monitoring (PEP 669) exists from 3.12. Asked of sys itself, the one check
# both the agent's backend choice and the monitoring backend rely on.
HAS_MONITORING = hasattr(sys, "monitoring")
# 3.11 folded the binary operators into BINARY_OP (bpo-45636), whose argument
# names the operator: NB_SUBTRACT ("-") is 10 in CPython's Include/opcode.h.
HAS_BINARY_OP = PY >= (3, 11)
NB_SUBTRACT = 10
# 3.10's ROT_N reaches the token under a block handler's six values, and its
# RERAISE 1 restores the frame's line to where the exception came from; 3.9 has
# neither, so there the handler drops the exception values and re-raises bare.
HAS_ROT_N = PY == (3, 10)
# 3.9 and 3.10 refuse more than 20 nested blocks (CO_MAXBLOCKS); the weaver adds one.
MAX_BLOCKS = 20
