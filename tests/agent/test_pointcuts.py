"""Tests for agent.pointcuts: the expression grammar, the file format and the matcher.

The property-based tests compare the parser against a small reference matcher written
here from the documented rules (segment by segment, with ``fnmatch`` for one segment),
so the compiled regular expressions are checked against an independent reading.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from agent.pointcuts import (
    ASPECT_TYPES,
    AgentConfig,
    And,
    Aspect,
    Execution,
    Not,
    Or,
    PluginSpec,
    PointcutError,
    Within,
    load,
    parse,
    parse_expression,
    parse_pattern,
)

# No example database and no deadline: the tests leave no files behind and never fail
# because a loaded machine was slow.
PROPERTY = settings(deadline=None, database=None, max_examples=150)

DESIGN_EXAMPLE = """\
<agent>
  <weaver>
    <include within="shop..*"/>            <!-- no include = everything -->
    <exclude within="shop.vendored..*"/>
  </weaver>
  <aspects>
    <aspect name="workflows" type="workflow"
            pointcut="execution(* shop..*Workflow.on_message(..))"
            message-id="message.unique_id"/>
    <aspect name="services" type="service"
            pointcut="execution(* shop.services.*.do_service(..))
                      and not within(shop.services.debug)"/>
  </aspects>
  <plugins>
    <plugin name="timing" report="stats.json"/>
    <plugin factory="mypkg.telemetry:make_plugin"/>
  </plugins>
</agent>
"""


def matches(expression: str, name: str, params: Sequence[str] = ()) -> bool:
    return parse_expression(expression).matches(name, params)


def config_with(*pointcuts: str, weaver: str = "") -> AgentConfig:
    aspects = "".join(
        f"<aspect name='a{index}' pointcut={quoteattr(pointcut)}/>"
        for index, pointcut in enumerate(pointcuts)
    )
    return parse(f"<agent><weaver>{weaver}</weaver><aspects>{aspects}</aspects></agent>")


def error_of(call: Callable[[], object]) -> PointcutError:
    with pytest.raises(PointcutError) as caught:
        call()
    return caught.value


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("shop..*Workflow.on_message", "shop.flows.OrderWorkflow.on_message", True),
        ("shop..*Workflow.on_message", "shop.OrderWorkflow.on_message", True),
        ("shop..*Workflow.on_message", "shop.a.b.OrderWorkflow.on_message", True),
        ("shop..*Workflow.on_message", "shop.flows.Order.on_message", False),
        ("shop..*Workflow.on_message", "shopx.OrderWorkflow.on_message", False),
        ("shop..*Workflow.on_message", "shop.flows.OrderWorkflow.on_message_x", False),
        ("shop..*Workflow.on_message", "x.shop.OrderWorkflow.on_message", False),
        ("shop.*.f", "shop.a.f", True),
        ("shop.*.f", "shop.a.b.f", False),
        ("shop.*.f", "shop.f", False),
        ("shop.on_*", "shop.on_message", True),
        ("shop.on_*", "shop.do_message", False),
        ("shop.*Flow*.run", "shop.MyFlowImpl.run", True),
        ("shop.*Flow*.run", "shop.Flow.run", True),
        ("..on_message", "a.b.on_message", True),
        ("..on_message", "on_message", True),
        ("..on_message", "a.b.on_messages", False),
        ("a..b..c", "a.b.c", True),
        ("a..b..c", "a.x.b.y.z.c", True),
        ("a..b..c", "a.c", False),
        ("shop.util.outer.<locals>.inner", "shop.util.outer.<locals>.inner", True),
        ("shop..<lambda>", "shop.m.f.<locals>.<lambda>", True),
        ("..<locals>.*", "shop.util.outer.<locals>.inner", True),
        ("..<locals>.*", "shop.util.outer.inner", False),
        ("a.b", "a_b", False),
        ("a.b", "a.b", True),
        ("pkg.Ünïcode.f", "pkg.Ünïcode.f", True),
    ],
)
def test_execution_name_patterns(pattern: str, name: str, expected: bool) -> None:
    assert matches(f"execution(* {pattern}(..))", name, ["x"]) is expected


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("shop.services", "shop.services.X.do", True),
        ("shop.services", "shop.services", True),
        ("shop.services", "shop.servicesx.y", False),
        ("shop.services", "shop", False),
        ("shop..*", "shop.a.b.c", True),
        ("shop..*", "shopping.a", False),
        ("shop.serv*", "shop.services.X", True),
        ("..debug", "shop.services.debug.f", True),
        ("..debug", "shop.debugger.f", False),
        ("shop.util.outer", "shop.util.outer.<locals>.inner", True),
        ("  shop  ", "shop.x", True),
    ],
)
def test_within(pattern: str, name: str, expected: bool) -> None:
    assert matches(f"within({pattern})", name) is expected


@pytest.mark.parametrize(
    "returns", ["*", "void", "int | None", "Callable[[int], str]", "tuple[int, ...]", "f(x)"]
)
def test_return_type_is_any_text_and_ignored(returns: str) -> None:
    pointcut = parse_expression(f"execution({returns} shop.f(..))")
    assert isinstance(pointcut, Execution)
    assert pointcut.returns == returns
    assert pointcut.matches("shop.f", ["a"])


def test_spacing_is_free_around_tokens() -> None:
    spaced = parse_expression(" execution (  *   shop.f ( a ,  .. ) ) \n&&\t! within( x )")
    assert spaced == parse_expression("execution(* shop.f(a, ..))&&!within(x)")


# --------------------------------------------------------------------------- parameters


@pytest.mark.parametrize(
    ("args", "params", "expected"),
    [
        ("..", [], True),
        ("..", ["a", "b"], True),
        ("", [], True),
        ("", ["a"], False),
        ("message", ["message"], True),
        ("message", ["msg"], False),
        ("message", ["message", "extra"], False),
        ("*", ["a"], True),
        ("*", ["a", "b"], False),
        ("*", [], False),
        ("*, ..", ["a"], True),
        ("*, ..", ["a", "b", "c"], True),
        ("*, ..", [], False),
        ("a, *", ["a", "b"], True),
        ("a, *", ["b", "b"], False),
        (".., message", ["a", "b", "message"], True),
        (".., message", ["message", "b"], False),
        ("a, .., b", ["a", "b"], True),
        ("a, .., b", ["a", "x", "y", "b"], True),
        ("a, .., b", ["b", "a"], False),
        ("args, kwargs", ["args", "kwargs"], True),
        ("*", [".0"], True),
    ],
)
def test_parameter_lists(args: str, params: list[str], expected: bool) -> None:
    assert matches(f"execution(* m.f({args}))", "m.f", params) is expected


@pytest.mark.parametrize(
    ("args", "params", "expected"),
    [
        ("message", ["self", "message"], True),
        ("message", ["cls", "message"], True),
        ("self, message", ["self", "message"], True),
        ("self, message", ["message"], False),
        ("", ["self"], True),
        ("", ["cls"], True),
        ("*", ["self"], True),  # as written: * is self
        ("*", ["self", "message"], True),  # without self
        ("self, *", ["self"], False),
        ("*, ..", ["self"], True),
        ("message", ["this", "message"], False),
        ("message", ["message", "self"], False),
        ("message", ["self", "self", "message"], False),  # only one leading self is dropped
    ],
)
def test_self_and_cls_are_ignored_when_the_list_does_not_name_them(
    args: str, params: list[str], expected: bool
) -> None:
    assert matches(f"execution(* m.C.f({args}))", "m.C.f", params) is expected


# --------------------------------------------------------------------------- operators

# Three independent facts about a join point: A (name under x), B (name ends in f),
# C (the one parameter is p); every combination is reachable.
TERMS = {"A": "within(x)", "B": "execution(* ..f(..))", "C": "execution(* ..*(p))"}


@pytest.mark.parametrize(
    ("expression", "truth"),
    [
        ("A or B and C", lambda a, b, c: a or (b and c)),
        ("A and B or C", lambda a, b, c: (a and b) or c),
        ("not A and B", lambda a, b, c: (not a) and b),
        ("not (A and B)", lambda a, b, c: not (a and b)),
        ("A || B && !C", lambda a, b, c: a or (b and not c)),
        ("!A || !!B", lambda a, b, c: (not a) or b),
        ("(A or B) and C", lambda a, b, c: (a or b) and c),
        ("not not not A", lambda a, b, c: not a),
        ("A and not B or not C and A", lambda a, b, c: (a and not b) or ((not c) and a)),
        ("A&&B||C", lambda a, b, c: (a and b) or c),
        ("not(A)or(B)", lambda a, b, c: (not a) or b),
        ("A and (B or (C and not (A)))", lambda a, b, c: a and (b or (c and not a))),
    ],
)
def test_operators_and_precedence(
    expression: str, truth: Callable[[bool, bool, bool], bool]
) -> None:
    for term, text in TERMS.items():
        expression = expression.replace(term, text)
    pointcut = parse_expression(expression)
    for a in (True, False):
        for b in (True, False):
            for c in (True, False):
                name = ("x." if a else "y.") + ("f" if b else "g")
                params = ["p"] if c else ["q"]
                assert pointcut.matches(name, params) is truth(a, b, c), (name, params)


def test_operators_build_flat_nodes_and_render_back() -> None:
    pointcut = parse_expression("within(a) or within(b) or not (within(c) && within(d))")
    assert pointcut == Or(
        (
            parse_expression("within(a)"),
            parse_expression("within(b)"),
            Not(And((parse_expression("within(c)"), parse_expression("within(d)")))),
        )
    )
    assert str(pointcut) == "within(a) or within(b) or not (within(c) and within(d))"
    assert isinstance(parse_expression("within(a)"), Within)


def test_deep_negation_chains_collapse() -> None:
    assert parse_expression("!" * 10_001 + "within(a)") == Not(parse_expression("within(a)"))


# --------------------------------------------------------------------------- expression errors


@pytest.mark.parametrize(
    ("text", "column", "detail"),
    [
        ("", 1, "empty pointcut; expected execution(...) or within(...)"),
        ("   ", 1, "empty pointcut; expected execution(...) or within(...)"),
        ("foo(a)", 1, "unexpected 'foo'; expected 'execution(', 'within(', 'not', '!' or '('"),
        ("a & b", 1, "unexpected 'a'; expected 'execution('"),
        (
            "within(a) andd within(b)",
            11,
            "unexpected 'andd'; expected 'and', 'or' or the end of the pointcut",
        ),
        ("within(a) & within(b)", 11, "unexpected '&'; expected 'and', 'or' or the end"),
        ("within(a))", 10, "unexpected ')'; expected 'and', 'or' or the end of the pointcut"),
        ("within(a) and", 14, "unexpected end of the pointcut; expected 'execution(', 'within("),
        ("within a", 8, "unexpected 'a'; expected '(' after 'within'"),
        ("execution", 10, "unexpected end of the pointcut; expected '(' after 'execution'"),
        ("within(a", 9, "unexpected end of the pointcut; expected ')' to close 'within('"),
        ("(within(a)", 11, "unexpected end of the pointcut; expected 'and', 'or' or ')'"),
        ("(within(a) within(b))", 12, "unexpected 'within'; expected 'and', 'or' or ')'"),
        ("within()", 8, "empty within(); expected a name pattern, like within(shop.services)"),
        ("within(a b)", 9, "unexpected ' ' in the name; expected '.', '..' or its end"),
        ("within(a...b)", 9, "unexpected '...'; expected '.' or '..' between segments"),
        ("within(a.)", 10, "unexpected end of the name; expected a name segment"),
        ("within(.a)", 8, "unexpected '.'; expected a name segment of letters, digits"),
        ("within(..)", 10, "unexpected end of the name; expected a name segment"),
        ("within(a.b-c)", 11, "unexpected '-' in the name; expected '.', '..' or its end"),
        ("execution(* a.f)", 16, "no parameter list; expected 'RET NAME(ARGS)', like execution("),
        ("execution(a.f(..))", 11, "no return type before the name; expected 'RET NAME(ARGS)'"),
        ("execution(*a.f(..))", 11, "no return type before the name"),
        ("execution(* a.f(..) (..))", 20, "no name before '('; expected 'RET NAME(ARGS)'"),
        (
            "execution(* a.f(x, a-b))",
            20,
            "unexpected 'a-b' in the parameter list; expected a parameter name, '*' or '..'",
        ),
        ("execution(* a.f(x,))", 19, "empty parameter in the parameter list; expected a param"),
        ("execution(* a..(..))", 16, "unexpected end of the name; expected a name segment"),
        ("(" * 51 + "within(a)" + ")" * 51, 51, "nested too deeply; expected at most 50 levels"),
    ],
)
def test_expression_errors_say_where_and_what_was_expected(
    text: str, column: int, detail: str
) -> None:
    error = error_of(lambda: parse_expression(text, "aop.xml", 7))
    assert (error.filename, error.line, error.column) == ("aop.xml", 7, column)
    assert detail in error.detail
    assert str(error) == f"aop.xml:7:{column}: {error.detail}"
    assert isinstance(error, ValueError)


def test_expression_error_lines_count_from_the_given_line() -> None:
    error = error_of(lambda: parse_expression("within(a)\n  or\r\n  wthin(b)", "f.xml", 5))
    assert (error.line, error.column) == (7, 3)
    assert error.detail.startswith("unexpected 'wthin'")


def test_fifty_levels_of_parentheses_are_fine() -> None:
    assert matches("(" * 50 + "within(a)" + ")" * 50, "a.b")


# --------------------------------------------------------------------------- the file


def test_design_example_parses_completely() -> None:
    config = parse(DESIGN_EXAMPLE, "aop.xml")
    assert config.path == "aop.xml"
    assert [pattern.text for pattern in config.includes] == ["shop..*"]
    assert [pattern.text for pattern in config.excludes] == ["shop.vendored..*"]
    workflows, services = config.aspects
    assert (workflows.name, workflows.type, workflows.message_id, workflows.line) == (
        "workflows",
        "workflow",
        "message.unique_id",
        7,
    )
    assert workflows.pointcut == parse_expression("execution(* shop..*Workflow.on_message(..))")
    assert (services.name, services.type, services.message_id, services.line) == (
        "services",
        "service",
        None,
        10,
    )
    assert config.plugins == (
        PluginSpec("timing", None, {"report": "stats.json"}, 15),
        PluginSpec(None, "mypkg.telemetry:make_plugin", {}, 16),
    )


def test_design_example_matches() -> None:
    config = parse(DESIGN_EXAMPLE, "aop.xml")
    workflows, services = config.aspects
    message = ["self", "message"]
    assert config.match(["shop.flows.OrderWorkflow.on_message"], message) == (workflows,)
    assert config.match(["shop.services.Billing.do_service"], message) == (services,)
    assert config.match(["shop.services.debug.do_service"], message) == ()
    assert config.match(["shop.vendored.x.PayWorkflow.on_message"], message) == ()
    assert config.match(["other.OrderWorkflow.on_message"], message) == ()


def test_minimal_file_defaults() -> None:
    config = parse("<agent><aspects><aspect name='a' pointcut='within(m)'/></aspects></agent>")
    (aspect,) = config.aspects
    assert aspect == Aspect("a", "custom", parse_expression("within(m)"), None, 1)
    assert (config.path, config.includes, config.excludes, config.plugins) == (
        "<string>",
        (),
        (),
        (),
    )


@pytest.mark.parametrize("step_type", ASPECT_TYPES)
def test_every_aspect_type_is_accepted(step_type: str) -> None:
    aspect = f"<aspect name='a' type='{step_type}' pointcut='within(m)'/>"
    text = f"<agent><aspects>{aspect}</aspects></agent>"
    assert parse(text).aspects[0].type == step_type


def test_xml_escapes_in_pointcuts() -> None:
    config = config_with("within(a) && execution(* a.f.<locals>.<lambda>(..))")
    assert config.match(["a.f.<locals>.<lambda>"], []) == config.aspects
    text = "<agent><aspects><aspect name='a' pointcut='within(a.&lt;locals>)'/></aspects></agent>"
    assert parse(text).aspects[0].pointcut == parse_expression("within(a.<locals>)")


def test_plugin_options_keep_every_other_attribute() -> None:
    text = """<agent><aspects><aspect name='a' pointcut='within(m)'/></aspects>
      <plugins><plugin factory=' pkg.mod:Factory.build ' interval='5' mode=''/></plugins></agent>"""
    assert parse(text).plugins == (
        PluginSpec(None, "pkg.mod:Factory.build", {"interval": "5", "mode": ""}, 2),
    )


def test_sections_may_come_in_any_order_and_encoding_declarations_are_ignored() -> None:
    text = """<?xml version="1.0" encoding="ISO-8859-1"?>
    <agent>
      <plugins><plugin name="timing"/></plugins>
      <aspects><aspect name="é" pointcut="within(é)"/></aspects>
      <weaver/>
    </agent>"""
    config = parse(text)
    assert config.aspects[0].name == "é"
    assert config.match(["é.f"], []) == config.aspects


# --------------------------------------------------------------------------- file errors

ASPECT = "<aspect name='a' pointcut='within(m)'/>"


@pytest.mark.parametrize(
    ("text", "line", "column", "detail"),
    [
        ("", 1, 1, "XML syntax error: no element found; expected a well-formed XML document"),
        (
            "<agent>\n  <aspects>\n</agent>",
            3,
            3,
            "XML syntax error: mismatched tag; expected a well-formed XML document",
        ),
        (
            "<agent>\n<aspects><aspect name='a' pointcut='within(a.<locals>)'/></aspects></agent>",
            2,
            46,
            "write '<' as '&lt;'",
        ),
        (
            '<?xml version="1.0"?>\n<!DOCTYPE lolz [\n <!ENTITY lol "lol">\n'
            ' <!ENTITY lol2 "&lol;&lol;&lol;">\n]>\n<agent>&lol2;</agent>',
            2,
            1,
            "<!DOCTYPE> is not allowed; expected a plain document without DTD or entities",
        ),
        ("<agent>&bomb;</agent>", 1, 8, "XML syntax error: undefined entity"),
        ("<aop/>", 1, 1, "the root element is <aop>; expected <agent>"),
        (
            f"<agent>\n  {ASPECT}\n</agent>",
            2,
            3,
            "unexpected element <aspect> inside <agent>; expected <weaver>, <aspects> or <plugins>",
        ),
        (
            "<agent><weaver>\n<includes within='a'/></weaver></agent>",
            2,
            1,
            "unexpected element <includes> inside <weaver>; expected <include> or <exclude>",
        ),
        (
            "<agent><aspects>\n<aspect name='a' pointcut='within(m)'><x/></aspect>"
            "</aspects></agent>",
            2,
            39,
            "unexpected element <x> inside <aspect>; expected no child elements",
        ),
        (
            "<agent>\n<aspects>\n  <aspect name='a'\n    pontcut='within(m)'/></aspects></agent>",
            4,
            5,
            "unknown attribute 'pontcut' on <aspect>; expected 'name', 'type', 'pointcut' or "
            "'message-id'",
        ),
        ("<agent version='1'/>", 1, 8, "unknown attribute 'version' on <agent>; expected no attr"),
        (
            "<agent><aspects>\n  <aspect pointcut='within(m)'/></aspects></agent>",
            2,
            3,
            "<aspect> has no 'name'; expected name=\"...\"",
        ),
        (
            "<agent><aspects>\n  <aspect name='a'/></aspects></agent>",
            2,
            3,
            "<aspect> has no 'pointcut'; expected pointcut=\"...\"",
        ),
        (
            "<agent><weaver><include/></weaver></agent>",
            1,
            16,
            "<include> has no 'within'; expected within=\"...\"",
        ),
        (
            "<agent><aspects><aspect name=' ' pointcut='within(m)'/></aspects></agent>",
            1,
            31,
            "empty 'name' on <aspect>; expected a value",
        ),
        (
            "<agent><aspects><aspect name='a' pointcut=''/></aspects></agent>",
            1,
            44,
            "empty 'pointcut' on <aspect>; expected a value",
        ),
        (
            f"<agent><aspects>\n{ASPECT}\n<aspect name='a' pointcut='within(n)'/>"
            "</aspects></agent>",
            3,
            15,
            "duplicate aspect name 'a' (first at line 2); expected a unique name per aspect",
        ),
        (
            "<agent><aspects>\n<aspect name='a' type='flow' pointcut='within(m)'/>"
            "</aspects></agent>",
            2,
            24,
            "unknown aspect type 'flow'; expected workflow, service, producer, consumer, "
            "channel or custom",
        ),
        (
            "<agent><aspects>\n<aspect name='a'\n   pointcut='execution(* a.f(..))\n"
            "      &amp;&amp; withn(b)'/></aspects></agent>",
            4,
            18,
            "pointcut of aspect 'a': unexpected 'withn'; expected 'execution(', 'within(', 'not'",
        ),
        (
            "<agent><aspects>\n<aspect name='a' pointcut='within(a.b.)'/></aspects></agent>",
            2,
            39,
            "pointcut of aspect 'a': unexpected end of the name; expected a name segment",
        ),
        (
            "<agent><weaver>\n<exclude within=' shop vendored'/></weaver></agent>",
            2,
            23,
            "<exclude within>: unexpected ' ' in the name; expected '.', '..' or its end",
        ),
        (
            "<agent><aspects>\n<aspect name='a' pointcut='within(m)' message-id='msg..id'/>"
            "</aspects></agent>",
            2,
            51,
            "message-id 'msg..id' is not a dotted path; expected Python identifiers joined by "
            "'.', like message.unique_id",
        ),
        (
            "<agent><aspects>\n<aspect name='a' pointcut='within(m)' message-id='msg.class'/>"
            "</aspects></agent>",
            2,
            51,
            "message-id 'msg.class' is not a dotted path",
        ),
        (
            "<agent><aspects>\n<aspect name='a' pointcut='within(m)' message-id='get_id()'/>"
            "</aspects></agent>",
            2,
            51,
            "message-id 'get_id()' is not a dotted path",
        ),
        ("<agent/>", 1, None, "no aspects; expected at least one <aspect name=... pointcut=...>"),
        (
            "<agent>\n\n<aspects>\n</aspects></agent>",
            3,
            None,
            "no aspects; expected at least one <aspect",
        ),
        (
            f"<agent>\n<aspects>{ASPECT}\n   oops</aspects></agent>",
            3,
            4,
            "unexpected text 'oops' inside <aspects>; expected only elements and comments",
        ),
        (
            f"<agent>\n<weaver/>\n<aspects>{ASPECT}</aspects>\n<weaver/></agent>",
            4,
            1,
            "second <weaver> (the first is at line 2); expected at most one <weaver> inside "
            "<agent>",
        ),
        (
            f"<agent><aspects>{ASPECT}</aspects><plugins>\n<plugin name='t' factory='a:b'/>"
            "</plugins></agent>",
            2,
            1,
            "<plugin> has both 'name' and 'factory'; expected exactly one of them",
        ),
        (
            f"<agent><aspects>{ASPECT}</aspects><plugins>\n<plugin report='x'/></plugins></agent>",
            2,
            1,
            "<plugin> has neither 'name' nor 'factory'; expected exactly one of them",
        ),
        (
            f"<agent><aspects>{ASPECT}</aspects><plugins>\n<plugin name=''/></plugins></agent>",
            2,
            15,
            "empty 'name' on <plugin>; expected a value",
        ),
        (
            f"<agent><aspects>{ASPECT}</aspects><plugins>\n<plugin factory='pkg.mod'/>"
            "</plugins></agent>",
            2,
            18,
            "factory 'pkg.mod' is not 'module:callable'; expected a dotted module path, ':' "
            "and a callable name, like mypkg.telemetry:make_plugin",
        ),
        (
            f"<agent><aspects>{ASPECT}</aspects><plugins>\n<plugin factory='a:b:c'/>"
            "</plugins></agent>",
            2,
            18,
            "factory 'a:b:c' is not 'module:callable'",
        ),
        (
            f"<agent><aspects>{ASPECT}</aspects><plugins>\n<plugin factory='a.:b'/>"
            "</plugins></agent>",
            2,
            18,
            "factory 'a.:b' is not 'module:callable'",
        ),
    ],
)
def test_file_errors_say_where_and_what_was_expected(
    text: str, line: int, column: int | None, detail: str
) -> None:
    error = error_of(lambda: parse(text, "aop.xml"))
    assert (error.filename, error.line, error.column) == ("aop.xml", line, column)
    assert detail in error.detail
    where = f"aop.xml:{line}" if column is None else f"aop.xml:{line}:{column}"
    assert str(error) == f"{where}: {error.detail}"


def test_the_first_error_in_the_file_is_reported() -> None:
    text = """<agent>
      <aspects>
        <aspect name="a" type="bad" pointcut="within(m)"/>
        <aspect name="b" pointcut="within("/>
      </aspects>
      <unknown/>
    </agent>"""
    assert error_of(lambda: parse(text)).line == 3


def test_missing_aspects_are_reported_at_the_root_when_there_is_no_aspects_element() -> None:
    error = error_of(lambda: parse("<?xml version='1.0'?>\n<!-- c -->\n<agent>\n</agent>", "f.xml"))
    assert (error.line, error.column) == (3, None)


def test_load_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "aop.xml"
    path.write_text(DESIGN_EXAMPLE, encoding="utf-8")
    config = load(str(path))
    assert config.path == str(path)
    assert config == parse(DESIGN_EXAMPLE, str(path))


def test_load_accepts_a_byte_order_mark_and_crlf_line_ends(tmp_path: Path) -> None:
    path = tmp_path / "aop.xml"
    path.write_bytes(
        b"\xef\xbb\xbf<agent>\r\n<aspects>\r\n<aspect name='a'\r\n pointcut='within(a.)'/>"
        b"</aspects></agent>"
    )
    error = error_of(lambda: load(str(path)))
    assert (error.filename, error.line, error.column) == (str(path), 4, 21)


def test_load_reports_an_unreadable_file(tmp_path: Path) -> None:
    path = str(tmp_path / "missing.xml")
    error = error_of(lambda: load(path))
    assert (error.filename, error.line, error.column) == (path, None, None)
    assert "cannot read the pointcut file (No such file or directory); expected" in error.detail
    assert str(error).startswith(f"{path}: cannot read")


def test_load_reports_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "aop.xml"
    path.write_bytes(b"<agent>\n<aspects>\n<aspect name='\xe9'/>")
    error = error_of(lambda: load(str(path)))
    assert error.line == 3
    assert "not UTF-8 text; expected a UTF-8 encoded pointcut file" in error.detail


# --------------------------------------------------------------------------- weaver and aliases


def test_without_include_everything_is_in_scope() -> None:
    config = config_with("execution(* ..f(..))")
    assert config.match(["any.module.f"], []) == config.aspects


def test_includes_and_excludes() -> None:
    weaver = (
        "<include within='shop..*'/><include within='tools.one'/>"
        "<exclude within='shop.vendored'/><exclude within='..tests'/>"
    )
    config = config_with("execution(* ..f(..))", weaver=weaver)
    assert config.match(["shop.a.f"], []) == config.aspects
    assert config.match(["tools.one.f"], []) == config.aspects
    assert config.match(["tools.two.f"], []) == ()
    assert config.match(["shop.vendored.f"], []) == ()
    assert config.match(["shop.a.tests.f"], []) == ()
    assert config.match(["shop.vendoredx.f"], []) == config.aspects


def test_aspects_come_back_in_file_order() -> None:
    config = config_with("within(a.b)", "execution(* a..f(..))", "within(z)", "within(a)")
    first, second, _, fourth = config.aspects
    assert config.match(["a.b.f"], []) == (first, second, fourth)


def test_any_alias_may_match() -> None:
    config = config_with("execution(* adapter.Flow.on_message(self, message))")
    names = ["__main__.Flow.on_message", "adapter.Flow.on_message"]
    assert config.match(names, ["self", "message"]) == config.aspects
    assert config.match(names[:1], ["self", "message"]) == ()


def test_an_excluded_alias_excludes_the_join_point() -> None:
    config = config_with("within(__main__)", weaver="<exclude within='adapter'/>")
    names = ["__main__.Flow.on_message", "adapter.Flow.on_message"]
    assert config.match(names, []) == ()
    assert config.match(names[:1], []) == config.aspects


def test_include_and_pointcut_must_agree_on_one_alias() -> None:
    config = config_with("within(__main__)", weaver="<include within='adapter'/>")
    assert config.match(["__main__.Flow.f", "adapter.Flow.f"], []) == ()
    config = config_with("within(adapter)", weaver="<include within='adapter'/>")
    assert config.match(["__main__.Flow.f", "adapter.Flow.f"], []) == config.aspects


def test_match_results_are_cached() -> None:
    config = config_with("within(a)")
    first = config.match(["a.f"], ["x"])
    assert config.match(("a.f",), ("x",)) is first


@pytest.mark.parametrize(
    ("pointcut", "weaver", "module", "expected"),
    [
        ("execution(* shop.f(..))", "", "shop", True),
        ("execution(* shop.f(..))", "", "shop.sub", False),
        ("execution(* shop.f(..))", "", "other", False),
        ("execution(* shop..f(..))", "", "shop.a.b", True),
        ("execution(* ..on_message(..))", "", "anything.at.all", True),
        ("within(shop)", "", "shop.deep.down", True),
        ("within(shop.a.b)", "", "shop", True),
        ("within(shop.a.b)", "", "shop.c", False),
        ("not within(shop)", "", "shop", False),
        ("not within(shop)", "", "shop.sub", False),
        ("not within(shop)", "", "other", True),
        ("not execution(* shop.f(..))", "", "shop", True),
        ("within(shop) and not within(shop.debug)", "", "shop.debug", False),
        ("within(shop) and not within(shop.debug)", "", "shop.debug.x", False),
        ("within(shop) and not within(shop.debug)", "", "shop", True),
        ("within(shop..*) and not within(shop..*)", "", "shop", False),
        ("within(a) or within(b)", "", "b.x", True),
        ("within(a) or within(b)", "", "c", False),
        ("within(..*)", "<include within='shop..*'/>", "shop", True),
        ("within(..*)", "<include within='shop'/>", "shop.flows", True),
        ("within(..*)", "<include within='shop.flows'/>", "shop", True),
        ("within(..*)", "<include within='shop.flows'/>", "shop.other", False),
        ("within(..*)", "<include within='shop..*'/>", "shopping", False),
        ("within(..*)", "<exclude within='shop.vendored..*'/>", "shop.vendored", False),
        ("within(..*)", "<exclude within='shop.vendored..*'/>", "shop.vendored.x", False),
        ("within(..*)", "<exclude within='shop.vendored..*'/>", "shop", True),
        ("within(..*)", "<exclude within='shop.vendored.*.*'/>", "shop.vendored", True),
        ("within(..*)", "<exclude within='..tests'/>", "shop.tests", False),
    ],
)
def test_module_may_match(pointcut: str, weaver: str, module: str, expected: bool) -> None:
    config = config_with(pointcut, weaver=weaver)
    assert config.module_may_match(module) is expected
    assert config.module_may_match(module) is expected  # the cached answer


# --------------------------------------------------------------------------- properties
#
# A generated pointcut is a small tree of tuples:
#   ("execution", name, params) | ("within", name) | ("and", [..]) | ("or", [..]) | ("not", x)
# where name is [(after_gap, glob), ...] and params is None (any) or a list of items.

GLOBS = ["a", "b", "ab", "*", "a*", "*b", "*a*", "<locals>", "<lambda>"]
SEGMENTS = ["a", "b", "ab", "ba", "aa", "<locals>", "<lambda>"]
PARAM_ITEMS = ["a", "b", "self", "cls", "*", ".."]
PARAM_NAMES = ["a", "b", "self", "cls"]

Name = list[tuple[bool, str]]
Tree = tuple[object, ...]

names_patterns = st.lists(st.tuples(st.booleans(), st.sampled_from(GLOBS)), min_size=1, max_size=4)
param_patterns = st.none() | st.lists(st.sampled_from(PARAM_ITEMS), max_size=4)
leaves = st.tuples(st.just("execution"), names_patterns, param_patterns) | st.tuples(
    st.just("within"), names_patterns
)
trees = st.recursive(
    leaves,
    lambda children: (
        st.tuples(st.sampled_from(["and", "or"]), st.lists(children, min_size=2, max_size=3))
        | st.tuples(st.just("not"), children)
    ),
    max_leaves=6,
)
join_points = st.tuples(
    st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=5),
    st.lists(st.sampled_from(PARAM_NAMES), max_size=4),
)


def name_text(name: Name) -> str:
    return "".join(
        (".." if gap else "." if index else "") + glob for index, (gap, glob) in enumerate(name)
    )


def reference_name(name: Name, segments: Sequence[str]) -> bool:
    """Whole-name match, one segment at a time, straight from the documented rules."""
    if not name:
        return not segments
    (gap, glob), rest = name[0], name[1:]
    starts = range(len(segments)) if gap else range(min(1, len(segments)))
    return any(
        fnmatch.fnmatchcase(segments[start], glob) and reference_name(rest, segments[start + 1 :])
        for start in starts
    )


def reference_params_as_written(items: Sequence[str], params: Sequence[str]) -> bool:
    if not items:
        return not params
    head, rest = items[0], items[1:]
    if head == "..":
        return any(
            reference_params_as_written(rest, params[skip:]) for skip in range(len(params) + 1)
        )
    return (
        bool(params) and head in ("*", params[0]) and reference_params_as_written(rest, params[1:])
    )


def reference(tree: Tree, segments: Sequence[str], params: Sequence[str]) -> bool:
    kind = tree[0]
    if kind == "within":
        return any(reference_name(tree[1], segments[:end]) for end in range(1, len(segments) + 1))
    if kind == "execution":
        items = tree[2]
        params_match = (
            items is None
            or reference_params_as_written(items, params)
            or (
                bool(params)
                and params[0] in ("self", "cls")
                and reference_params_as_written(items, params[1:])
            )
        )
        return reference_name(tree[1], segments) and params_match
    if kind == "not":
        return not reference(tree[1], segments, params)
    results = [reference(child, segments, params) for child in tree[1]]
    return all(results) if kind == "and" else any(results)


@st.composite
def rendered(draw: st.DrawFn, tree: Tree) -> str:
    """``tree`` as pointcut text, with random spacing, operator spellings and parentheses."""

    def space() -> str:
        return draw(st.sampled_from(["", " ", "  ", "\n  ", "\t"]))

    def gap() -> str:
        return draw(st.sampled_from([" ", "  ", "\n", " \t "]))

    def render(node: Tree, needs_parens: bool) -> str:
        kind = node[0]
        if kind == "within":
            text = f"within{space()}({space()}{name_text(node[1])}{space()})"
        elif kind == "execution":
            items = node[2]
            args = ".." if items is None else f"{space()},{space()}".join(items)
            returns = draw(st.sampled_from(["*", "void", "tuple[int, ...]", "dict[str, int]"]))
            text = (
                f"execution{space()}({space()}{returns}{gap()}{name_text(node[1])}{space()}"
                f"({space()}{args}{space()}){space()})"
            )
        elif kind == "not":
            child = render(node[1], needs_parens=node[1][0] in ("and", "or"))
            text = draw(st.sampled_from([f"not{gap()}{child}", f"!{space()}{child}"]))
        else:
            spellings = ["and", "&&"] if kind == "and" else ["or", "||"]
            parts = [render(child, kind == "and" and child[0] == "or") for child in node[1]]
            text = parts[0]
            for part in parts[1:]:
                operator = draw(st.sampled_from(spellings))
                around = gap() if operator.isalpha() else space()
                text += f"{around}{operator}{around}{part}"
        if needs_parens or draw(st.integers(0, 5)) == 0:
            text = f"({space()}{text}{space()})"
        return text

    return render(tree, needs_parens=False)


@PROPERTY
@given(st.data(), trees, st.lists(join_points, min_size=1, max_size=8))
def test_parsed_expressions_match_like_the_reference(
    data: st.DataObject, tree: Tree, points: list[tuple[list[str], list[str]]]
) -> None:
    text = data.draw(rendered(tree))
    pointcut = parse_expression(text)
    for segments, params in points:
        expected = reference(tree, segments, params)
        assert pointcut.matches(".".join(segments), params) is expected, (segments, params)
    assert parse_expression(str(pointcut)) == pointcut


@PROPERTY
@given(trees, st.lists(names_patterns, max_size=2), st.lists(names_patterns, max_size=2), st.data())
def test_module_may_match_is_never_false_when_something_matches(
    tree: Tree, includes: list[Name], excludes: list[Name], data: st.DataObject
) -> None:
    weaver = "".join(f"<include within={quoteattr(name_text(name))}/>" for name in includes)
    weaver += "".join(f"<exclude within={quoteattr(name_text(name))}/>" for name in excludes)
    config = config_with(data.draw(rendered(tree)), weaver=weaver)
    for segments, params in data.draw(st.lists(join_points, min_size=1, max_size=8)):
        if config.match([".".join(segments)], params):
            for end in range(1, len(segments)):
                assert config.module_may_match(".".join(segments[:end])), segments[:end]


@PROPERTY
@given(
    st.lists(names_patterns, min_size=2, max_size=5),
    param_patterns,
    st.lists(join_points, min_size=1, max_size=8),
)
def test_executions_or_ed_together_match_like_the_reference(
    names: list[Name], params: list[str] | None, points: list[tuple[list[str], list[str]]]
) -> None:
    """``execution(* a..*(..)) or execution(* b..*(..))`` is matched as one expression."""
    args = ".." if params is None else ", ".join(params)
    text = " or ".join(f"execution(* {name_text(name)}({args}))" for name in names)
    pointcut = parse_expression(text)
    assert isinstance(pointcut, Or) and pointcut._fused is not None
    for segments, point_params in points:
        expected = any(
            reference(("execution", name, params), segments, point_params) for name in names
        )
        assert pointcut.matches(".".join(segments), point_params) is expected, (segments, text)


@PROPERTY
@given(names_patterns, st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=3), join_points)
def test_pattern_module_questions_are_sound(
    name: Name, module: list[str], point: tuple[list[str], list[str]]
) -> None:
    pattern = parse_pattern(name_text(name))
    below = ".".join(module + point[0])
    if pattern.matches(below):
        assert pattern.may_match_below(".".join(module))
    if pattern.covers_below(".".join(module)):
        assert pattern.matches_within(below)


EXPRESSION_SOUP = [
    "execution", "within", "(", ")", "*", "..", ".", "a", "b", "<locals>", ",", "and", "or",
    "not", "!", "&&", "||", " ", "\n", "&", "|", "[", "]", "self", "-", "...", "é", "\t",
]  # fmt: skip
XML_SOUP = [
    "<agent>", "</agent>", "<aspects>", "</aspects>", "<weaver>", "</weaver>", "<plugins>",
    "</plugins>", "<aspect ", "<include ", "<exclude ", "<plugin ", "name='a' ", "name='b' ",
    "pointcut='within(a)' ", "pointcut='", "within='a..*' ", "factory='m:f' ", "type='x' ",
    "message-id='m.id' ", "/>", ">", "<", "'", '"', "=", "&amp;", "&lt;", "&#10;", "&x;",
    "<!DOCTYPE a>", "<!-- c -->", "<![CDATA[x]]>", "<?pi x?>", "\n", "\r\n", " ", "x", "é",
    "\x00", "\ud800",
]  # fmt: skip


@PROPERTY
@given(st.text() | st.lists(st.sampled_from(EXPRESSION_SOUP)).map("".join))
def test_arbitrary_expressions_fail_only_with_pointcut_error(text: str) -> None:
    try:
        parse_expression(text)
    except PointcutError as error:
        assert error.line is not None and error.line >= 1
        assert error.column is not None and error.column >= 1


@PROPERTY
@given(st.text() | st.lists(st.sampled_from(XML_SOUP + EXPRESSION_SOUP)).map("".join))
def test_arbitrary_files_fail_only_with_pointcut_error(text: str) -> None:
    try:
        parse(text, "f.xml")
    except PointcutError as error:
        assert error.filename == "f.xml"
        assert error.line is not None and error.line >= 1


printable = st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\r") | (
    st.sampled_from(["\n", "\t"])
)


@PROPERTY
@given(
    st.text(printable, max_size=40)
    | st.lists(st.sampled_from([*EXPRESSION_SOUP, "'", '"', "<", ">", "&"])).map("".join)
)
def test_pointcut_errors_in_files_point_at_the_same_character(text: str) -> None:
    assume(text.strip())  # an empty attribute is reported as such, not as a pointcut
    prefix = "<agent><aspects><aspect name='a' pointcut="
    document = f"{prefix}{quoteattr(text)}/></aspects></agent>"
    try:
        expected: str | PointcutError = str(parse_expression(text))
    except PointcutError as error:
        expected = error
    try:
        config = parse(document)
    except PointcutError as error:
        assert isinstance(expected, PointcutError), error
        lines = text.split("\n")
        offset = sum(len(line) + 1 for line in lines[: expected.line - 1]) + expected.column - 1
        escaped = escape(text[:offset], {"\n": "&#10;", "\t": "&#9;"})
        if '"' in text and "'" in text:  # quoteattr's choice of quotes and escapes
            escaped = escaped.replace('"', "&quot;")
        assert (error.line, error.column) == (1, len(prefix) + 1 + len(escaped) + 1)
        assert error.detail == f"pointcut of aspect 'a': {expected.detail}"
    else:
        assert str(config.aspects[0].pointcut) == expected
