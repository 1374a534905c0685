"""The pointcut file: its XML format, the pointcut grammar and the matcher built from them.

This module owns reading an ``aop.xml``-like pointcut file (:func:`load`, :func:`parse`),
the pointcut expression grammar (:func:`parse_expression`) and the question "which aspects
apply to this function?" (:meth:`AgentConfig.match`, with :meth:`AgentConfig.module_may_match`
as a cheap per-module pre-filter for the import hook). It does not rewrite code
(``agent.weaving``), install import hooks (``agent.importer``), run anything at call time
(``agent.events``) or build plugins (``agent.plugins``): a :class:`PluginSpec` only says
which plugin the file asked for. Nothing in a pointcut file is ever evaluated as code.

The file: an ``<agent>`` root with at most one each of ``<weaver>`` (``<include
within=NAME/>`` and ``<exclude within=NAME/>``; no include means everything),
``<aspects>`` (``<aspect name= pointcut= type= message-id=/>``; ``type`` is one of
:data:`ASPECT_TYPES`, ``custom`` when omitted; ``message-id`` is a dotted path from a
parameter name) and ``<plugins>`` (``<plugin name=.../>`` or ``<plugin
factory="module:callable"/>``, any other attributes being the plugin's options). At least
one aspect is required. XML does not allow ``<`` inside attribute values, so write
``&lt;locals>`` there.

Expressions::

    pointcut   := or_expr
    or_expr    := and_expr (("or" | "||") and_expr)*
    and_expr   := unary (("and" | "&&") unary)*
    unary      := ("not" | "!")* primary
    primary    := "(" or_expr ")" | "execution(" RET NAME "(" ARGS ")" ")" | "within(" NAME ")"

``not`` binds tighter than ``and``, which binds tighter than ``or``. RET is ``*`` or any
text (a return type is not checked). NAME is a dotted name pattern (:class:`Pattern`):
segments of letters, digits, ``_``, ``<``, ``>`` (for qualname parts such as ``<locals>``
and ``<lambda>``) and ``*``, which matches any run of characters inside one segment;
segments are joined by ``.`` or by ``..``, which matches zero or more whole segments, and
a leading ``..`` lets a pattern start in any module (``..on_message``). ARGS is ``..``
(any parameters) or a comma list of parameter names, ``*`` (exactly one parameter) and
``..`` (zero or more parameters), e.g. ``()``, ``(message)``, ``(self, *)``, ``(*, ..)``.
The parameters of a function are its names in ``co_varnames`` order: positional-only,
positional, ``*args``, keyword-only, ``**kwargs``.

Matching rules:

* A join point is named ``module.qualname`` (``shop.util.outer.<locals>.inner``).
  ``execution`` needs the whole name to match NAME and the parameters to match ARGS.
  ``within(NAME)`` matches when NAME matches the whole name or a part of it that ends at
  a dot: ``within(shop.services)`` matches ``shop.services`` and ``shop.services.X.do``
  but not ``shop.servicesx.y``.
* Methods: a first parameter named ``self`` or ``cls`` is ignored when the parameters
  do not match ARGS as written, so ``on_message(message)`` and ``on_message(self,
  message)`` both match ``def on_message(self, message)``.
* A join point may answer to several names (the bootstrap's script is both
  ``__main__.Flow.on_message`` and ``adapter.Flow.on_message``). It is excluded when any
  of its names is excluded by the ``<weaver>``; otherwise an aspect applies when one of
  its names is included (everything is included when there is no ``<include>``) and
  matches the aspect's pointcut. :meth:`AgentConfig.module_may_match` looks at one
  module name: ask once per alias and weave when any answer is true.

Errors are :class:`PointcutError` with the file, the line (and column when known), what
was wrong and what was expected. Files are UTF-8; DTDs and entity declarations are
refused, so no entity expansion can happen.
"""

from __future__ import annotations

import bisect
import enum
import keyword
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Callable, TypeVar
from xml.parsers import expat

log = logging.getLogger(__name__)

_T = TypeVar("_T")

ASPECT_TYPES = ("workflow", "service", "producer", "consumer", "channel", "custom")
"""The step types an ``<aspect type=...>`` may name."""

DEFAULT_ASPECT_TYPE = "custom"

MAX_NESTING = 50
"""Deepest parenthesis nesting accepted in a pointcut (keeps parsing and matching shallow)."""


class PointcutError(ValueError):
    """A pointcut file or expression is wrong; the message says where and what was expected.

    ``str(error)`` is ``FILE:LINE: detail`` or ``FILE:LINE:COLUMN: detail`` (``FILE: detail``
    when the file could not be read at all).
    """

    def __init__(
        self,
        filename: str,
        line: int | None,
        detail: str,
        column: int | None = None,
    ) -> None:
        self.filename = filename
        self.line = line
        self.column = column
        self.detail = detail
        where = filename
        if line is not None:
            where += f":{line}"
            if column is not None:
                where += f":{column}"
        super().__init__(f"{where}: {detail}")


class _SyntaxProblem(Exception):
    """Raised inside the expression parser with an offset into the text being parsed.

    The public entry points turn it into a :class:`PointcutError` with a line and column
    in the user's file.
    """

    def __init__(self, offset: int, detail: str) -> None:
        super().__init__(detail)
        self.offset = offset
        self.detail = detail


class _Verdict(enum.Enum):
    """What a pointcut says about every join point of one module."""

    NEVER = "never"
    MAYBE = "maybe"
    ALWAYS = "always"


# --------------------------------------------------------------------------- patterns

_SEGMENT = re.compile(r"[\w<>*]+")
_GAP = r"(?:[^.]+\.)*"  # zero or more whole segments, each followed by its dot


def _glob_regex(glob: str) -> str:
    return "".join(
        "[^.]*" if run[0] == "*" else re.escape(run) for run in re.findall(r"\*+|[^*]+", glob)
    )


@dataclass(frozen=True)
class Pattern:
    """A dotted name pattern such as ``shop..*Workflow.on_message`` or ``..<locals>.*``.

    ``parts`` holds one ``(after_gap, glob)`` pair per segment; ``after_gap`` is true when
    ``..`` comes before the segment. The pattern is compiled to regular expressions once;
    :meth:`matches` and :meth:`matches_within` each cost one regex match.
    """

    text: str
    parts: tuple[tuple[bool, str], ...]
    _full: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _prefix: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _globs: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        body = ""
        for index, (after_gap, glob) in enumerate(self.parts):
            if index:
                body += r"\." + _GAP if after_gap else r"\."
            elif after_gap:
                body += _GAP
            body += _glob_regex(glob)
        object.__setattr__(self, "_full", re.compile(body))
        object.__setattr__(self, "_prefix", re.compile(body + r"(?=\.|\Z)"))
        object.__setattr__(
            self,
            "_globs",
            tuple(re.compile(_glob_regex(glob)) for _, glob in self.parts),
        )

    def matches(self, name: str) -> bool:
        """True when the whole dotted ``name`` matches."""
        return self._full.fullmatch(name) is not None

    def matches_within(self, name: str) -> bool:
        """True when ``name`` or a part of it ending at a dot matches (``within`` semantics)."""
        return self._prefix.match(name) is not None

    def may_match_below(self, module: str) -> bool:
        """True when some name ``module.X`` (one or more segments more) could match."""
        return any(state < len(self.parts) for state in self._walk(module))

    def covers_below(self, module: str) -> bool:
        """True when ``matches_within`` is true for every name ``module.X``.

        That is when the pattern matches ``module`` or a part of it ending at a dot, or
        when it can consume the module's segments and then needs only one more segment of
        any text (``shop..*`` covers every module under ``shop``).
        """
        if self.matches_within(module):
            return True
        last = len(self.parts) - 1
        return not self.parts[last][1].strip("*") and last in self._walk(module)

    def _walk(self, module: str) -> set[int]:
        """Every count of parts that could have matched exactly the segments of ``module``.

        A small NFA over segments; exact for well-formed dotted names.
        """
        states = {0}
        for segment in module.split("."):
            following: set[int] = set()
            for state in states:
                if state < len(self.parts):
                    if self.parts[state][0]:
                        following.add(state)
                    if self._globs[state].fullmatch(segment):
                        following.add(state + 1)
            if not following:
                break
            states = following
        else:
            return states
        return set()


def _parse_pattern(text: str, offset: int = 0) -> Pattern:
    """Parse a name pattern; ``offset`` places ``text`` in the text used for error columns."""
    offset += len(text) - len(text.lstrip())
    text = text.strip()
    expected_segment = "expected a name segment of letters, digits, '_', '<', '>' or '*'"
    parts: list[tuple[bool, str]] = []
    position = 0
    after_gap = text.startswith("..")
    if after_gap:
        position = 2
    while True:
        segment = _SEGMENT.match(text, position)
        if segment is None:
            found = repr(text[position]) if position < len(text) else "end of the name"
            raise _SyntaxProblem(offset + position, f"unexpected {found}; {expected_segment}")
        parts.append((after_gap, segment.group()))
        position = segment.end()
        if position == len(text):
            return Pattern(text, tuple(parts))
        if text.startswith("...", position):
            raise _SyntaxProblem(
                offset + position,
                "unexpected '...'; expected '.' or '..' between segments",
            )
        after_gap = text.startswith("..", position)
        if after_gap:
            position += 2
        elif text[position] == ".":
            position += 1
        else:
            raise _SyntaxProblem(
                offset + position,
                f"unexpected {text[position]!r} in the name; expected '.', '..' or its end",
            )


def parse_pattern(text: str, filename: str = "<string>", line: int = 1) -> Pattern:
    """Parse a dotted name pattern such as ``shop..*`` (as in ``<include within=...>``)."""
    try:
        return _parse_pattern(text)
    except _SyntaxProblem as problem:
        raise _expression_error(text, problem, filename, line) from None


@dataclass(frozen=True)
class Params:
    """The ARGS of ``execution``: ``items`` is ``None`` for ``..`` (any parameters)."""

    items: tuple[str, ...] | None
    _regex: re.Pattern[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        regex = None
        if self.items is not None:
            pieces = {"*": "[^,]+,", "..": "(?:[^,]+,)*"}
            regex = re.compile(
                "".join(pieces.get(item) or re.escape(item) + "," for item in self.items)
            )
        object.__setattr__(self, "_regex", regex)

    @property
    def text(self) -> str:
        return ".." if self.items is None else ", ".join(self.items)

    def matches(self, params: Sequence[str]) -> bool:
        """True when ``params`` match, as written or without a leading ``self``/``cls``."""
        if self._regex is None:
            return True
        if self._regex.fullmatch("".join(param + "," for param in params)):
            return True
        return (
            len(params) > 0
            and params[0] in ("self", "cls")
            and self._regex.fullmatch("".join(param + "," for param in params[1:])) is not None
        )


def _parse_params(text: str, offset: int) -> Params:
    if text.strip() == "..":
        return Params(None)
    if not text.strip():
        return Params(())
    items: list[str] = []
    position = offset
    for piece in text.split(","):
        item = piece.strip()
        if item not in ("*", "..") and not item.isidentifier():
            found = f"unexpected {item!r}" if item else "empty parameter"
            raise _SyntaxProblem(
                position + len(piece) - len(piece.lstrip()),
                f"{found} in the parameter list; expected a parameter name, '*' or '..'",
            )
        items.append(item)
        position += len(piece) + 1
    return Params(tuple(items))


# --------------------------------------------------------------------------- pointcuts


class Pointcut(ABC):
    """A parsed pointcut expression; ``str()`` renders it back as an expression."""

    @abstractmethod
    def matches(self, name: str, params: Sequence[str]) -> bool:
        """True when the join point ``name`` with parameter names ``params`` is selected."""

    @abstractmethod
    def _verdict(self, module: str) -> _Verdict:
        """What this pointcut says about every join point named ``module.X``."""


def _wrapped(pointcut: Pointcut) -> str:
    return f"({pointcut})" if isinstance(pointcut, (And, Or)) else str(pointcut)


@dataclass(frozen=True)
class Execution(Pointcut):
    """``execution(RET NAME(ARGS))``."""

    returns: str
    name: Pattern
    params: Params

    def matches(self, name: str, params: Sequence[str]) -> bool:
        return self.name.matches(name) and self.params.matches(params)

    def _verdict(self, module: str) -> _Verdict:
        return _Verdict.MAYBE if self.name.may_match_below(module) else _Verdict.NEVER

    def __str__(self) -> str:
        return f"execution({self.returns} {self.name.text}({self.params.text}))"


@dataclass(frozen=True)
class Within(Pointcut):
    """``within(NAME)``."""

    name: Pattern

    def matches(self, name: str, params: Sequence[str]) -> bool:
        return self.name.matches_within(name)

    def _verdict(self, module: str) -> _Verdict:
        if self.name.covers_below(module):
            return _Verdict.ALWAYS
        return _Verdict.MAYBE if self.name.may_match_below(module) else _Verdict.NEVER

    def __str__(self) -> str:
        return f"within({self.name.text})"


@dataclass(frozen=True)
class And(Pointcut):
    parts: tuple[Pointcut, ...]

    def matches(self, name: str, params: Sequence[str]) -> bool:
        return all(part.matches(name, params) for part in self.parts)

    def _verdict(self, module: str) -> _Verdict:
        verdicts = {part._verdict(module) for part in self.parts}
        if _Verdict.NEVER in verdicts:
            return _Verdict.NEVER
        return _Verdict.MAYBE if _Verdict.MAYBE in verdicts else _Verdict.ALWAYS

    def __str__(self) -> str:
        return " and ".join(_wrapped(part) for part in self.parts)


@dataclass(frozen=True)
class Or(Pointcut):
    parts: tuple[Pointcut, ...]
    #: when every part is an ``execution`` with the same ARGS (``execution(* a..*(..)) or
    #: execution(* b..*(..))``, the usual way to name several packages): their name
    #: patterns as one regular expression, and those ARGS; one match instead of one per part
    _fused: tuple[re.Pattern[str], Params] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fused = None
        executions = [part for part in self.parts if isinstance(part, Execution)]
        if len(executions) == len(self.parts) and len({e.params for e in executions}) == 1:
            names = re.compile("|".join(f"(?:{e.name._full.pattern})" for e in executions))
            fused = (names, executions[0].params)
        object.__setattr__(self, "_fused", fused)

    def matches(self, name: str, params: Sequence[str]) -> bool:
        fused = self._fused
        if fused is not None:
            return fused[0].fullmatch(name) is not None and fused[1].matches(params)
        return any(part.matches(name, params) for part in self.parts)

    def _verdict(self, module: str) -> _Verdict:
        verdicts = {part._verdict(module) for part in self.parts}
        if _Verdict.ALWAYS in verdicts:
            return _Verdict.ALWAYS
        return _Verdict.MAYBE if _Verdict.MAYBE in verdicts else _Verdict.NEVER

    def __str__(self) -> str:
        return " or ".join(_wrapped(part) for part in self.parts)


@dataclass(frozen=True)
class Not(Pointcut):
    part: Pointcut

    def matches(self, name: str, params: Sequence[str]) -> bool:
        return not self.part.matches(name, params)

    def _verdict(self, module: str) -> _Verdict:
        flipped = {_Verdict.NEVER: _Verdict.ALWAYS, _Verdict.ALWAYS: _Verdict.NEVER}
        verdict = self.part._verdict(module)
        return flipped.get(verdict, verdict)

    def __str__(self) -> str:
        return f"not {_wrapped(self.part)}"


# --------------------------------------------------------------------------- expression parser

_TOKEN = re.compile(r"\s*(?:(&&|\|\||[!()])|([^\W\d]\w*)|([^\s()]+))")
_AND = ("and", "&&")
_OR = ("or", "||")
_NOT = ("not", "!")
_EXPECTED_TERM = "expected 'execution(', 'within(', 'not', '!' or '('"
_NAME_CHARS = re.compile(r"[\w<>*.]")


@dataclass(frozen=True)
class _Token:
    text: str  # "" at the end of the text
    start: int
    end: int

    def describe(self) -> str:
        return repr(self.text) if self.text else "end of the pointcut"


class _ExpressionParser:
    """Recursive descent over the grammar in the module docstring, one token at a time."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.position = 0
        self.depth = 0

    def parse(self) -> Pointcut:
        if not self.text.strip():
            raise _SyntaxProblem(0, "empty pointcut; expected execution(...) or within(...)")
        pointcut = self._or()
        token = self._peek()
        if token.text:
            raise _SyntaxProblem(
                token.start,
                f"unexpected {token.describe()}; expected 'and', 'or' or the end of the pointcut",
            )
        return pointcut

    def _peek(self) -> _Token:
        found = _TOKEN.match(self.text, self.position)
        if found is None or found.lastindex is None:
            return _Token("", len(self.text), len(self.text))
        return _Token(found.group(found.lastindex), found.start(found.lastindex), found.end())

    def _take(self) -> _Token:
        token = self._peek()
        self.position = token.end
        return token

    def _or(self) -> Pointcut:
        parts = [self._and()]
        while self._peek().text in _OR:
            self._take()
            parts.append(self._and())
        return parts[0] if len(parts) == 1 else Or(tuple(parts))

    def _and(self) -> Pointcut:
        parts = [self._unary()]
        while self._peek().text in _AND:
            self._take()
            parts.append(self._unary())
        return parts[0] if len(parts) == 1 else And(tuple(parts))

    def _unary(self) -> Pointcut:
        negations = 0
        while self._peek().text in _NOT:
            self._take()
            negations += 1
        pointcut = self._primary()
        if negations % 2 == 0:
            return pointcut
        # Double negations cancel, also across parentheses, so chains stay shallow and
        # str() parses back to an equal tree.
        return pointcut.part if isinstance(pointcut, Not) else Not(pointcut)

    def _primary(self) -> Pointcut:
        token = self._take()
        if token.text == "(":
            self.depth += 1
            if self.depth > MAX_NESTING:
                raise _SyntaxProblem(
                    token.start,
                    f"parentheses nested too deeply; expected at most {MAX_NESTING} levels",
                )
            pointcut = self._or()
            closing = self._take()
            if closing.text != ")":
                raise _SyntaxProblem(
                    closing.start,
                    f"unexpected {closing.describe()}; expected 'and', 'or' or ')'",
                )
            self.depth -= 1
            return pointcut
        if token.text == "execution":
            return self._execution(*self._body(token))
        if token.text == "within":
            return self._within(*self._body(token))
        raise _SyntaxProblem(token.start, f"unexpected {token.describe()}; {_EXPECTED_TERM}")

    def _body(self, keyword_token: _Token) -> tuple[str, int]:
        """The text between ``(`` and its matching ``)`` after ``execution``/``within``."""
        opening = self._take()
        if opening.text != "(":
            raise _SyntaxProblem(
                opening.start,
                f"unexpected {opening.describe()}; expected '(' after '{keyword_token.text}'",
            )
        depth = 0
        for index in range(opening.end, len(self.text)):
            char = self.text[index]
            if char == "(":
                depth += 1
            elif char == ")":
                if depth == 0:
                    self.position = index + 1
                    return self.text[opening.end : index], opening.end
                depth -= 1
        raise _SyntaxProblem(
            len(self.text),
            f"unexpected end of the pointcut; expected ')' to close '{keyword_token.text}('",
        )

    def _within(self, body: str, offset: int) -> Pointcut:
        name = body.strip()
        if not name:
            raise _SyntaxProblem(
                offset,
                "empty within(); expected a name pattern, like within(shop.services)",
            )
        return Within(_parse_pattern(body, offset))

    def _execution(self, body: str, offset: int) -> Pointcut:
        shape = "expected 'RET NAME(ARGS)', like execution(* shop..*Workflow.on_message(..))"
        trimmed = body.rstrip()
        opening = trimmed.rfind("(")
        if not trimmed.endswith(")") or opening < 0:
            raise _SyntaxProblem(offset + len(trimmed), f"no parameter list; {shape}")
        name_end = opening
        while name_end > 0 and trimmed[name_end - 1].isspace():
            name_end -= 1
        name_start = name_end
        while name_start > 0 and _NAME_CHARS.match(trimmed[name_start - 1]):
            name_start -= 1
        if name_start == name_end:
            raise _SyntaxProblem(offset + name_end, f"no name before '('; {shape}")
        returns = trimmed[:name_start].strip()
        if not returns or not trimmed[name_start - 1].isspace():
            raise _SyntaxProblem(
                offset + name_start,
                f"no return type before the name; {shape} ('*' for any return type)",
            )
        return Execution(
            returns,
            _parse_pattern(trimmed[name_start:name_end], offset + name_start),
            _parse_params(trimmed[opening + 1 : -1], offset + opening + 1),
        )


class _Lines:
    """Maps an index in a text to a 1-based (line, column), counting line ends as XML does."""

    def __init__(self, text: str) -> None:
        self.starts = [0] + [found.end() for found in re.finditer(r"\r\n|\r|\n", text)]

    def position(self, index: int) -> tuple[int, int]:
        line = bisect.bisect_right(self.starts, index) - 1
        return line + 1, index - self.starts[line] + 1


def _expression_error(
    text: str, problem: _SyntaxProblem, filename: str, line: int
) -> PointcutError:
    text_line, column = _Lines(text).position(problem.offset)
    return PointcutError(filename, line + text_line - 1, problem.detail, column)


def _parse_pointcut(text: str) -> Pointcut:
    return _ExpressionParser(text).parse()


def parse_expression(text: str, filename: str = "<string>", line: int = 1) -> Pointcut:
    """Parse a pointcut expression; ``filename`` and ``line`` place it for error messages."""
    try:
        return _parse_pointcut(text)
    except _SyntaxProblem as problem:
        raise _expression_error(text, problem, filename, line) from None


# --------------------------------------------------------------------------- the file


@dataclass(frozen=True)
class Aspect:
    """One ``<aspect>``: what to call the steps it selects and how to find the message id."""

    name: str
    type: str
    pointcut: Pointcut
    message_id: str | None
    """Dotted path from a parameter name (``message.unique_id``), or ``None``."""
    line: int


@dataclass(frozen=True)
class PluginSpec:
    """One ``<plugin>``: a short ``name`` or a ``module:callable`` ``factory``, not both."""

    name: str | None
    factory: str | None
    options: dict[str, str]
    """Every other attribute, e.g. ``{"report": "stats.json"}``."""
    line: int


@dataclass(frozen=True)
class AgentConfig:
    """A parsed pointcut file. Matching results are cached, so repeated questions are cheap."""

    path: str
    includes: tuple[Pattern, ...]
    excludes: tuple[Pattern, ...]
    aspects: tuple[Aspect, ...]
    plugins: tuple[PluginSpec, ...]
    _modules: dict[str, bool] = field(default_factory=dict, init=False, repr=False, compare=False)
    _matches: dict[tuple[tuple[str, ...], tuple[str, ...]], tuple[Aspect, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def module_may_match(self, module: str) -> bool:
        """False only when no join point ``module.X`` can be selected by any aspect.

        Conservative: true whenever some name in the module might match. For a module
        known under several names (the bootstrap's script), ask once per name.
        """
        answer = self._modules.get(module)
        if answer is None:
            answer = self._modules[module] = self._module_may_match(module)
        return answer

    def _module_may_match(self, module: str) -> bool:
        if self.includes and not any(
            pattern.covers_below(module) or pattern.may_match_below(module)
            for pattern in self.includes
        ):
            return False
        if any(pattern.covers_below(module) for pattern in self.excludes):
            return False
        return any(
            aspect.pointcut._verdict(module) is not _Verdict.NEVER for aspect in self.aspects
        )

    def match(self, names: Sequence[str], params: Sequence[str]) -> tuple[Aspect, ...]:
        """The aspects selecting the join point known as ``names``, in file order.

        ``params`` are the function's parameter names in ``co_varnames`` order.
        """
        key = (tuple(names), tuple(params))
        found = self._matches.get(key)
        if found is None:
            found = self._matches[key] = self._match(*key)
        return found

    def _match(self, names: tuple[str, ...], params: tuple[str, ...]) -> tuple[Aspect, ...]:
        if any(pattern.matches_within(name) for name in names for pattern in self.excludes):
            return ()
        if self.includes:
            names = tuple(
                name
                for name in names
                if any(pattern.matches_within(name) for pattern in self.includes)
            )
        return tuple(
            aspect
            for aspect in self.aspects
            if any(aspect.pointcut.matches(name, params) for name in names)
        )


# The file's schema as data: which children and attributes each element may have.
_CHILDREN: dict[str, tuple[str, ...]] = {
    "": ("agent",),
    "agent": ("weaver", "aspects", "plugins"),
    "weaver": ("include", "exclude"),
    "aspects": ("aspect",),
    "plugins": ("plugin",),
}
_SECTIONS = ("weaver", "aspects", "plugins")  # at most one of each
_ATTRIBUTES: dict[str, tuple[str, ...] | None] = {
    "agent": (),
    "weaver": (),
    "aspects": (),
    "plugins": (),
    "include": ("within",),
    "exclude": ("within",),
    "aspect": ("name", "type", "pointcut", "message-id"),
    "plugin": None,  # name or factory, and any options
}
_REQUIRED: dict[str, tuple[str, ...]] = {
    "include": ("within",),
    "exclude": ("within",),
    "aspect": ("name", "pointcut"),
}
_ATTRIBUTE = re.compile(r"""\s+([^\s=/>]+)\s*=\s*(?:"([^"]*)"|'([^']*)')""")
_TAG = re.compile(r"<[^\s/>]+")


def _quote_list(names: Sequence[str], wrap: Callable[[str], str]) -> str:
    shown = [wrap(name) for name in names]
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " or " + shown[-1]


def _is_dotted_path(text: str) -> bool:
    return all(part.isidentifier() and not keyword.iskeyword(part) for part in text.split("."))


@dataclass(frozen=True)
class _Attribute:
    name_index: int
    value_index: int
    raw: str  # the value as written in the file, before entity and whitespace handling


def _raw_offset(raw: str, offset: int) -> int:
    """Where character ``offset`` of an attribute's parsed value was written in ``raw``."""
    index = 0
    for _ in range(offset):
        if index >= len(raw):
            break
        if raw[index] == "&" and ";" in raw[index:]:
            index = raw.index(";", index) + 1
        elif raw.startswith("\r\n", index):
            index += 2
        else:
            index += 1
    return index


class _Reader:
    """Reads a pointcut file with expat, interpreting each element as it starts.

    Errors therefore come out in document order. The handler for every element knows
    the element's position, and the position of each attribute value, in ``text``.
    """

    def __init__(self, text: str, filename: str) -> None:
        self.text = text
        self.filename = filename
        self.lines = _Lines(text)
        self.data = text.encode("utf-8", "surrogatepass")
        self.parser = expat.ParserCreate(encoding="UTF-8")
        self.stack: list[str] = []
        self.root_line = 1
        self.sections: dict[str, int] = {}  # section element -> line where it starts
        self.includes: list[Pattern] = []
        self.excludes: list[Pattern] = []
        self.aspects: list[Aspect] = []
        self.plugins: list[PluginSpec] = []
        self._decoded = (0, 0)  # (byte index, character index) last reported by expat
        self._handlers: dict[str, Callable[[dict[str, str], dict[str, _Attribute], int], None]]
        self._handlers = {
            "include": self._include,
            "exclude": self._exclude,
            "aspect": self._aspect,
            "plugin": self._plugin,
        }

    def read(self) -> AgentConfig:
        parser = self.parser
        parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        parser.StartDoctypeDeclHandler = self._doctype
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self._end
        parser.CharacterDataHandler = self._characters
        try:
            parser.Parse(self.data, True)
        except expat.ExpatError as error:
            index = len(self.data[: parser.ErrorByteIndex].decode("utf-8", "replace"))
            expected = "a well-formed XML document with an <agent> root"
            if self.text[index : index + 1] == "<":
                expected += " (inside an attribute value, write '<' as '&lt;': &lt;locals>)"
            raise self._error(
                index, f"XML syntax error: {expat.ErrorString(error.code)}; expected {expected}"
            ) from None
        if not self.aspects:
            raise PointcutError(
                self.filename,
                self.sections.get("aspects", self.root_line),
                "no aspects; expected at least one <aspect name=... pointcut=...> inside <aspects>",
            )
        return AgentConfig(
            self.filename,
            tuple(self.includes),
            tuple(self.excludes),
            tuple(self.aspects),
            tuple(self.plugins),
        )

    def _error(self, index: int, detail: str) -> PointcutError:
        line, column = self.lines.position(index)
        return PointcutError(self.filename, line, detail, column)

    def _doctype(self, *_: object) -> None:
        # expat reports the position after the doctype's name; point at "<!DOCTYPE".
        index = self.text.rfind("<!DOCTYPE", 0, self._current_index() + 1)
        raise self._error(
            max(index, 0),
            "<!DOCTYPE> is not allowed; expected a plain document without DTD or entities",
        )

    def _characters(self, data: str) -> None:
        if data.strip():
            raise self._error(
                self._current_index() + len(data) - len(data.lstrip()),
                f"unexpected text {data.strip()[:30]!r} inside <{self.stack[-1]}>; "
                "expected only elements and comments",
            )

    def _end(self, tag: str) -> None:
        self.stack.pop()

    def _current_index(self) -> int:
        """Character index in ``text`` of what expat is reporting (a start tag, some text)."""
        byte_index = self.parser.CurrentByteIndex
        last_byte, last_char = self._decoded
        char_index = last_char + len(
            self.data[last_byte:byte_index].decode("utf-8", "surrogatepass")
        )
        self._decoded = (byte_index, char_index)
        return char_index

    def _attributes(self, tag_index: int) -> dict[str, _Attribute]:
        found: dict[str, _Attribute] = {}
        tag = _TAG.match(self.text, tag_index)
        position = tag.end() if tag else tag_index
        attribute = _ATTRIBUTE.match(self.text, position)
        while attribute is not None:
            value_group = 2 if attribute.group(2) is not None else 3
            found[attribute.group(1)] = _Attribute(
                attribute.start(1),
                attribute.start(value_group),
                attribute.group(value_group),
            )
            attribute = _ATTRIBUTE.match(self.text, attribute.end())
        return found

    def _start(self, tag: str, attrs: dict[str, str]) -> None:
        index = self._current_index()
        parent = self.stack[-1] if self.stack else ""
        allowed = _CHILDREN.get(parent, ())
        if tag not in allowed:
            if not parent:
                detail = f"the root element is <{tag}>; expected <agent>"
            else:
                expected = _quote_list(allowed, "<{}>".format) if allowed else "no child elements"
                detail = f"unexpected element <{tag}> inside <{parent}>; expected {expected}"
            raise self._error(index, detail)
        self.stack.append(tag)
        line = self.lines.position(index)[0]
        if not parent:
            self.root_line = line
        elif tag in _SECTIONS:
            if tag in self.sections:
                raise self._error(
                    index,
                    f"second <{tag}> (the first is at line {self.sections[tag]}); "
                    f"expected at most one <{tag}> inside <agent>",
                )
            self.sections[tag] = line
        positions = self._attributes(index)
        known = _ATTRIBUTES[tag]
        for name, value in attrs.items():
            if known is not None and name not in known:
                where = positions.get(name)
                expected = _quote_list(known, repr) if known else "no attributes"
                raise self._error(
                    where.name_index if where else index,
                    f"unknown attribute {name!r} on <{tag}>; expected {expected}",
                )
            if not value.strip() and (known is not None or name in ("name", "factory")):
                raise self._error(
                    self._value_index(positions, name, index),
                    f"empty {name!r} on <{tag}>; expected a value",
                )
        for name in _REQUIRED.get(tag, ()):
            if name not in attrs:
                raise self._error(index, f'<{tag}> has no {name!r}; expected {name}="..."')
        handler = self._handlers.get(tag)
        if handler is not None:
            handler(attrs, positions, index)

    def _value_index(self, positions: dict[str, _Attribute], name: str, tag_index: int) -> int:
        where = positions.get(name)
        return where.value_index if where else tag_index

    def _compile(
        self,
        read: Callable[[str], _T],
        what: str,
        value: str,
        where: _Attribute | None,
        tag_index: int,
    ) -> _T:
        """Parse an attribute's value, placing any syntax problem where it was written."""
        try:
            return read(value)
        except _SyntaxProblem as problem:
            index = tag_index
            if where is not None:
                index = where.value_index + _raw_offset(where.raw, problem.offset)
            raise self._error(index, f"{what}: {problem.detail}") from None

    def _pattern(
        self,
        tag: str,
        attrs: dict[str, str],
        positions: dict[str, _Attribute],
        index: int,
    ) -> Pattern:
        return self._compile(
            _parse_pattern,
            f"<{tag} within>",
            attrs["within"],
            positions.get("within"),
            index,
        )

    def _include(self, attrs: dict[str, str], positions: dict[str, _Attribute], index: int) -> None:
        self.includes.append(self._pattern("include", attrs, positions, index))

    def _exclude(self, attrs: dict[str, str], positions: dict[str, _Attribute], index: int) -> None:
        self.excludes.append(self._pattern("exclude", attrs, positions, index))

    def _aspect(self, attrs: dict[str, str], positions: dict[str, _Attribute], index: int) -> None:
        name = attrs["name"].strip()
        line = self.lines.position(index)[0]
        for other in self.aspects:
            if other.name == name:
                raise self._error(
                    self._value_index(positions, "name", index),
                    f"duplicate aspect name {name!r} (first at line {other.line}); "
                    "expected a unique name per aspect",
                )
        step_type = attrs.get("type", DEFAULT_ASPECT_TYPE).strip()
        if step_type not in ASPECT_TYPES:
            raise self._error(
                self._value_index(positions, "type", index),
                f"unknown aspect type {step_type!r}; expected {_quote_list(ASPECT_TYPES, str)}",
            )
        message_id = attrs.get("message-id")
        if message_id is not None:
            message_id = message_id.strip()
            if not _is_dotted_path(message_id):
                raise self._error(
                    self._value_index(positions, "message-id", index),
                    f"message-id {message_id!r} is not a dotted path; expected Python "
                    "identifiers joined by '.', like message.unique_id",
                )
        pointcut = self._compile(
            _parse_pointcut,
            f"pointcut of aspect {name!r}",
            attrs["pointcut"],
            positions.get("pointcut"),
            index,
        )
        self.aspects.append(Aspect(name, step_type, pointcut, message_id, line))

    def _plugin(self, attrs: dict[str, str], positions: dict[str, _Attribute], index: int) -> None:
        name = attrs.get("name")
        factory = attrs.get("factory")
        if (name is None) == (factory is None):
            has = (
                "both 'name' and 'factory'" if name is not None else "neither 'name' nor 'factory'"
            )
            raise self._error(index, f"<plugin> has {has}; expected exactly one of them")
        if factory is not None:
            factory = factory.strip()
            module, colon, attribute = factory.partition(":")
            if not (colon and _is_dotted_path(module) and _is_dotted_path(attribute)):
                raise self._error(
                    self._value_index(positions, "factory", index),
                    f"factory {factory!r} is not 'module:callable'; expected a dotted module "
                    "path, ':' and a callable name, like mypkg.telemetry:make_plugin",
                )
        options = {key: value for key, value in attrs.items() if key not in ("name", "factory")}
        self.plugins.append(
            PluginSpec(
                name.strip() if name is not None else None,
                factory,
                options,
                self.lines.position(index)[0],
            )
        )


def parse(text: str, filename: str = "<string>") -> AgentConfig:
    """Parse the text of a pointcut file; ``filename`` is used in error messages."""
    config = _Reader(text, filename).read()
    log.debug(
        "%s: %d aspects (%s), %d plugins",
        filename,
        len(config.aspects),
        "; ".join(f"{aspect.name}: {aspect.pointcut}" for aspect in config.aspects),
        len(config.plugins),
    )
    return config


def load(path: str) -> AgentConfig:
    """Read and parse the pointcut file at ``path`` (UTF-8)."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        raise PointcutError(
            str(path),
            None,
            f"cannot read the pointcut file ({error.strerror or error}); "
            "expected a readable pointcut file",
        ) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise PointcutError(
            str(path),
            data[: error.start].count(b"\n") + 1,
            "the file is not UTF-8 text; expected a UTF-8 encoded pointcut file",
        ) from None
    return parse(text, str(path))
