"""Go's `text/template`, the subset matchbox users write, as matchbox runs it (`missingkey=error`, builtins only).

Parsing and execution are separate, as in Go: `parse_template` turns the source into a tree once (and is what
`bootd check` runs), `GoTemplate.render` walks the tree with one machine's data. The rules follow Go's
text/template documentation; the places where Go is surprising are kept, because a data dir must render here
as it does under matchbox:
- a missing map key is an error, also deep inside (`.request.query.foo` when `foo` was not sent);
- JSON numbers are float64 (`render` converts), template literals are int or float, and `eq` between the two
  is an error ("incompatible types for comparison"), as it is in Go;
- a nil value prints `<no value>` at the top and `<nil>` inside a list or map;
- `and`/`or` return one of their arguments (not a bool) and stop at the first that decides;
- `range` over a map walks its keys in sorted order; over nil it runs `else`.

Supported: text, `{{.}}`, fields and chains (`.a.b`, `$x.a`, `(pipeline).a`), variables (`$`, `$x := ...`,
`$x = ...`, `range $i, $x := ...`), pipelines with `|`, parentheses, string/raw-string/number/bool/nil
literals, `if`/`else if`/`else`, `range` (+`else`, `break`, `continue`), `with` (+`else`), `end`, comments,
trim markers `{{-` and `-}}`, and the functions and, or, not, len, index, print, printf, println, eq, ne, lt,
le, gt, ge. Anything else (`define`, `template`, `block`, other functions) is a `TemplateSyntaxError` naming the
line and the construct.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from appliance.templates.gofmt import format_value, go_type, sprint, sprintf, sprintln


class TemplateError(Exception):
    """A template problem at a line, in a construct (the action's text)."""

    def __init__(self, line: int, construct: str, message: str) -> None:
        super().__init__(f"line {line}: {construct}: {message}")
        self.line, self.construct, self.message = line, construct, message


class TemplateSyntaxError(TemplateError):
    """The template cannot be parsed (or uses something outside the subset)."""


class TemplateExecError(TemplateError):
    """The template parsed but failed for this machine's data (a missing key, a bad comparison...)."""


# --- the tree --------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Literal:
    value: Any


@dataclass(frozen=True, slots=True)
class Dot:
    pass


@dataclass(frozen=True, slots=True)
class Variable:
    name: str  # "$" or "$x"


@dataclass(frozen=True, slots=True)
class Function:
    name: str


@dataclass(frozen=True, slots=True)
class Chain:
    """Field access on an operand: `.a.b` (Dot), `$x.a`, `(pipe).a`."""

    base: Operand
    fields: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Command:
    args: tuple[Operand, ...]


@dataclass(frozen=True, slots=True)
class Pipe:
    declare: tuple[str, ...]  # variables declared (`:=`) or assigned (`=`)
    assign: bool
    commands: tuple[Command, ...]


Operand = Union[Literal, Dot, Variable, Function, Chain, Pipe]


@dataclass(slots=True)
class Action:  # {{pipeline}}: print it (or only declare a variable)
    line: int
    text: str
    pipe: Pipe


@dataclass(slots=True)
class Control:  # if / range / with
    keyword: str
    line: int
    text: str
    pipe: Pipe
    body: list[Node] = field(default_factory=list)
    otherwise: list[Node] | None = None


@dataclass(slots=True)
class LoopJump:  # break / continue
    keyword: str
    line: int
    text: str


Node = Union[str, Action, Control, LoopJump]

FUNCTIONS = frozenset(("and", "or", "not", "len", "index", "print", "printf", "println",
                       "eq", "ne", "lt", "le", "gt", "ge"))
_OUTSIDE_SUBSET = frozenset(("define", "template", "block", "slice", "call", "html", "js", "urlquery"))
_KEYWORDS = frozenset(("if", "else", "end", "range", "with", "break", "continue", "define", "template", "block"))


# --- lexing ----------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<declare>:=)
  | (?P<punct>[|(),=])
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<raw>`[^`]*`)
  | (?P<char>'(?:[^'\\\n]|\\.)+')
  | (?P<number>[+-]?(?:0[xX][0-9a-fA-F_]+|0[bB][01_]+|0[oO][0-7_]+
                      |(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:[eE][+-]?\d+)?))
  | (?P<variable>\$[A-Za-z_0-9]*)
  | (?P<field>(?:\.[A-Za-z_][A-Za-z_0-9]*)+)
  | (?P<dot>\.)
  | (?P<ident>[A-Za-z_][A-Za-z_0-9]*)
""", re.VERBOSE)
_FIELDS_AFTER = re.compile(r"(?:\.[A-Za-z_][A-Za-z_0-9]*)+")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v", "\\": "\\", '"': '"',
            "'": "'"}


def _unquote(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        kind = text[i + 1]
        if kind in _ESCAPES:
            out.append(_ESCAPES[kind])
            i += 2
        elif kind in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[kind]
            out.append(chr(int(text[i + 2 : i + 2 + width], 16)))
            i += 2 + width
        elif kind in "01234567":
            out.append(chr(int(text[i + 1 : i + 4], 8)))
            i += 4
        else:
            raise ValueError(f"unknown escape sequence \\{kind}")
    return "".join(out)


def _number(text: str) -> int | float:
    clean = text.replace("_", "")
    sign = -1 if clean.startswith("-") else 1
    body = clean.lstrip("+-")
    if body[:2].lower() in ("0x", "0b", "0o"):
        return sign * int(body, 0)
    if re.fullmatch(r"\d+", body):
        return sign * int(body, 8 if len(body) > 1 and body[0] == "0" else 10)
    return sign * float(body)


@dataclass(slots=True)
class _Token:
    kind: str
    text: str
    fields: tuple[str, ...] = ()  # `.a.b` following a `)` or a variable


def _tokens(action: str, line: int, construct: str) -> list[_Token]:
    out: list[_Token] = []
    pos = 0
    while pos < len(action):
        m = _TOKEN.match(action, pos)
        if m is None:
            raise TemplateSyntaxError(line, construct, f"unexpected {action[pos]!r} in action")
        pos = m.end()
        kind = m.lastgroup
        assert kind is not None
        if kind == "space":
            continue
        token = _Token(kind, m.group())
        if kind == "number" and pos < len(action) and (action[pos].isalnum() or action[pos] == "_"):
            tail = re.match(r"\w*", action[pos:]).group()
            raise TemplateSyntaxError(line, construct, f'bad number syntax: "{m.group()}{tail}"')
        if (kind == "variable" or token.text == ")") and (chain := _FIELDS_AFTER.match(action, pos)) is not None:
            token.fields = tuple(chain.group().split(".")[1:])  # `$x.a.b`, `(pipeline).a`
            pos = chain.end()
        out.append(token)
    return out


# --- parsing ---------------------------------------------------------------------------------------------

_TRIM_SPACE = " \t\r\n"


def parse_template(source: str) -> GoTemplate:
    """Parse once; raises TemplateSyntaxError with the line and the action's text."""
    return GoTemplate(_Parser(source).parse())


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.scopes: list[set[str]] = [{"$"}]

    def line_at(self, offset: int) -> int:
        return self.source.count("\n", 0, offset) + 1

    def actions(self) -> list[str | tuple[int, str, str]]:
        """Text pieces (trimmed) and (line, construct, action text) triples."""
        src, pos = self.source, 0
        items: list[str | tuple[int, str, str]] = []
        trim_next = False
        while True:
            start = src.find("{{", pos)
            text = src[pos:] if start < 0 else src[pos:start]
            if trim_next:
                text = text.lstrip(_TRIM_SPACE)
            if start < 0:
                items.append(text)
                return items
            inner_start = start + 2
            left_trim = src.startswith("-", inner_start) and src[inner_start + 1 : inner_start + 2] in tuple(_TRIM_SPACE)
            if left_trim:
                text = text.rstrip(_TRIM_SPACE)
                inner_start += 2
            items.append(text)
            line = self.line_at(start)
            if src.startswith("/*", inner_start):  # a comment: `{{/* ... */}}`, trim markers allowed
                close = src.find("*/", inner_start + 2)
                if close < 0:
                    raise TemplateSyntaxError(line, src[start:start + 40], "unclosed comment")
                rest = close + 2
                trim_next = src[rest : rest + 1] in tuple(_TRIM_SPACE) and src.startswith("-}}", rest + 1)
                if not trim_next and not src.startswith("}}", rest):
                    raise TemplateSyntaxError(line, src[start : rest + 2], "comment ends before closing delimiter")
                pos = rest + (4 if trim_next else 2)
                continue
            end = self._action_end(inner_start, line, start)
            right_trim = end >= 2 and src[end - 1] == "-" and src[end - 2] in _TRIM_SPACE
            inner = src[inner_start : end - 1 if right_trim else end]
            construct = src[start : end + 2]
            items.append((line, construct, inner))
            trim_next = right_trim
            pos = end + 2

    def _action_end(self, pos: int, line: int, start: int) -> int:
        """Where the action's `}}` is, skipping quoted text."""
        src = self.source
        while pos < len(src):
            ch = src[pos]
            if src.startswith("}}", pos):
                return pos
            if ch in "\"'`":
                closing = src.find(ch, pos + 1) if ch == "`" else _close_quote(src, pos)
                if closing < 0:
                    raise TemplateSyntaxError(line, src[start:start + 40], "unterminated quoted string")
                pos = closing + 1
                continue
            pos += 1
        raise TemplateSyntaxError(line, src[start:start + 40], "unclosed action")

    def parse(self) -> list[Node]:
        root: list[Node] = []
        stack: list[tuple[Control, bool, list[Node]]] = []  # (control, chained by `else if`, where it was added)
        target = root
        for item in self.actions():
            if isinstance(item, str):
                if item:
                    target.append(item)
                continue
            line, construct, inner = item
            tokens = _tokens(inner, line, construct)
            if not tokens:
                raise TemplateSyntaxError(line, construct, "missing value for command")
            head = tokens[0]
            keyword = head.text if head.kind == "ident" and head.text in _KEYWORDS else None
            if keyword in ("define", "template", "block"):
                raise TemplateSyntaxError(line, construct, f"{{{{{keyword}}}}} is outside the template subset bootd "
                                                           "renders (no named templates)")
            if keyword in ("if", "range", "with"):
                self.scopes.append(set())
                control = Control(keyword, line, construct, self.pipe(tokens[1:], line, construct, keyword))
                target.append(control)
                stack.append((control, False, target))
                target = control.body
            elif keyword == "else":
                if not stack or stack[-1][0].otherwise is not None:
                    raise TemplateSyntaxError(line, construct, "unexpected {{else}}")
                control = stack[-1][0]
                control.otherwise = []
                # what the branch declared is gone; what the control's pipeline declared stays
                self.scopes[-1] = set() if control.pipe.assign else set(control.pipe.declare)
                if len(tokens) > 1:  # else if / else with: a new control that ends with the same {{end}}
                    chained = tokens[1].text
                    if tokens[1].kind != "ident" or chained not in ("if", "with") or \
                            (chained == "with" and control.keyword != "with") or \
                            (chained == "if" and control.keyword != "if"):
                        raise TemplateSyntaxError(line, construct, "unexpected words after else")
                    self.scopes.append(set())
                    inner_control = Control(chained, line, construct, self.pipe(tokens[2:], line, construct, chained))
                    control.otherwise.append(inner_control)
                    stack.append((inner_control, True, control.otherwise))
                    target = inner_control.body
                else:
                    target = control.otherwise
            elif keyword == "end":
                if len(tokens) > 1:
                    raise TemplateSyntaxError(line, construct, "unexpected words after end")
                if not stack:
                    raise TemplateSyntaxError(line, construct, "unexpected {{end}}")
                while True:  # an `else if` chain ends with its first `if`
                    control, chained, parent = stack.pop()
                    self.scopes.pop()
                    if not chained:
                        break
                target = parent
            elif keyword in ("break", "continue"):
                if len(tokens) > 1:
                    raise TemplateSyntaxError(line, construct, f"unexpected words after {keyword}")
                if not any(c.keyword == "range" for c, _, _ in stack):
                    raise TemplateSyntaxError(line, construct, f"{{{{{keyword}}}}} outside {{{{range}}}}")
                target.append(LoopJump(keyword, line, construct))
            else:
                target.append(Action(line, construct, self.pipe(tokens, line, construct, None)))
        if stack:  # Go names the line of the end of the text; the construct says which block is open
            control = stack[-1][0]
            raise TemplateSyntaxError(self.line_at(len(self.source)), control.text, "unexpected EOF")
        return root

    # pipelines

    def pipe(self, tokens: list[_Token], line: int, construct: str, keyword: str | None) -> Pipe:
        declare: tuple[str, ...] = ()
        assign = False
        if keyword == "range" and len(tokens) >= 4 and tokens[0].kind == "variable" and tokens[1].text == "," \
                and tokens[2].kind == "variable" and tokens[3].kind == "declare":
            declare, tokens = (tokens[0].text, tokens[2].text), tokens[4:]
        elif len(tokens) >= 2 and tokens[0].kind == "variable" and not tokens[0].fields and \
                (tokens[1].kind == "declare" or tokens[1].text == "="):
            declare, assign, tokens = (tokens[0].text,), tokens[1].text == "=", tokens[2:]
            if assign and not any(declare[0] in scope for scope in self.scopes):
                raise TemplateSyntaxError(line, construct, f'undefined variable "{declare[0]}"')
        if not tokens:
            raise TemplateSyntaxError(line, construct, "missing value for command" if keyword is None
                                      else f"missing value for {keyword}")
        pipe, rest = self._pipeline(tokens, line, construct)
        if rest:
            raise TemplateSyntaxError(line, construct, f"unexpected {rest[0].text!r} in operand")
        if declare and not assign:
            self.scopes[-1].update(declare)
        return Pipe(declare, assign, pipe.commands)

    def _pipeline(self, tokens: list[_Token], line: int, construct: str) -> tuple[Pipe, list[_Token]]:
        commands: list[Command] = []
        while True:
            args: list[Operand] = []
            while tokens and tokens[0].text not in ("|", ")"):
                operand, tokens = self._operand(tokens, line, construct)
                args.append(operand)
            if not args:
                raise TemplateSyntaxError(line, construct, "missing value for command")
            commands.append(Command(tuple(args)))
            if tokens and tokens[0].text == "|":
                tokens = tokens[1:]
                continue
            return Pipe((), False, tuple(commands)), tokens

    def _operand(self, tokens: list[_Token], line: int, construct: str) -> tuple[Operand, list[_Token]]:
        token, rest = tokens[0], tokens[1:]
        kind, text = token.kind, token.text
        if kind == "field":
            return Chain(Dot(), tuple(text.split(".")[1:])), rest
        if kind == "dot":
            return Dot(), rest
        if kind == "variable":
            if not any(text in scope for scope in self.scopes):
                raise TemplateSyntaxError(line, construct, f'undefined variable "{text}"')
            return (Chain(Variable(text), token.fields) if token.fields else Variable(text)), rest
        if kind == "string":
            try:
                return Literal(_unquote(text[1:-1])), rest
            except (ValueError, IndexError) as exc:
                raise TemplateSyntaxError(line, construct, f"bad string {text}: {exc}") from None
        if kind == "raw":
            return Literal(text[1:-1]), rest
        if kind == "char":
            value = _unquote(text[1:-1])
            if len(value) != 1:
                raise TemplateSyntaxError(line, construct, f"bad character constant {text}")
            return Literal(ord(value)), rest
        if kind == "number":
            try:
                return Literal(_number(text)), rest
            except ValueError:
                raise TemplateSyntaxError(line, construct, f"bad number syntax: {text!r}") from None
        if kind == "ident":
            if text in ("true", "false"):
                return Literal(text == "true"), rest
            if text == "nil":
                return Literal(None), rest
            if text in _KEYWORDS:
                raise TemplateSyntaxError(line, construct, f"unexpected {text!r} in operand")
            if text in FUNCTIONS:
                return Function(text), rest
            if text in _OUTSIDE_SUBSET:
                raise TemplateSyntaxError(line, construct, f'function "{text}" is outside the template subset '
                                                       "bootd renders")
            raise TemplateSyntaxError(line, construct, f'function "{text}" not defined')
        if text == "(":
            inner, after = self._pipeline(rest, line, construct)
            if not after or after[0].text != ")":
                raise TemplateSyntaxError(line, construct, "unclosed left paren")
            closing = after[0]
            return (Chain(inner, closing.fields) if closing.fields else inner), after[1:]
        raise TemplateSyntaxError(line, construct, f"unexpected {text!r} in operand")


def _close_quote(src: str, pos: int) -> int:
    quote, i = src[pos], pos + 1
    while i < len(src):
        if src[i] == "\\":
            i += 2
            continue
        if src[i] == quote:
            return i
        if src[i] == "\n":
            return -1
        i += 1
    return -1


# --- execution -------------------------------------------------------------------------------------------

class _Break(Exception):
    pass


class _Continue(Exception):
    pass


def go_data(value: Any) -> Any:
    """JSON data as Go's encoding/json hands it to templates: every number a float64."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, Mapping):
        return {str(k): go_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [go_data(v) for v in value]
    return value


def truth(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value != 0
    if isinstance(value, (str, list, tuple, dict)):
        return len(value) > 0
    return True


@dataclass(frozen=True, slots=True)
class GoTemplate:
    tree: list[Node]

    def render(self, data: Any) -> str:
        """Render with data as Go would see it (numbers already float64: see `go_data`)."""
        out: list[str] = []
        _Exec(out, data).walk(self.tree, data)
        return "".join(out)


class _Exec:
    def __init__(self, out: list[str], root: Any) -> None:
        self.out = out
        self.vars: list[tuple[str, Any]] = [("$", root)]
        self.node: Action | Control | None = None

    def fail(self, message: str) -> TemplateExecError:
        node = self.node
        return TemplateExecError(node.line if node else 0, node.text if node else "", message)

    def walk(self, nodes: Sequence[Node], dot: Any) -> None:
        for node in nodes:
            if isinstance(node, str):
                self.out.append(node)
            elif isinstance(node, Action):
                self.node = node
                value = self.pipe(node.pipe, dot)
                if not node.pipe.declare:
                    self.out.append("<no value>" if value is None else format_value(value))
            elif isinstance(node, Control):
                self.control(node, dot)
            else:
                raise _Break() if node.keyword == "break" else _Continue()

    def scoped(self, nodes: Sequence[Node], dot: Any) -> None:
        mark = len(self.vars)
        try:
            self.walk(nodes, dot)
        finally:
            del self.vars[mark:]

    def control(self, node: Control, dot: Any) -> None:
        self.node = node
        mark = len(self.vars)
        try:
            if node.keyword == "range":
                self.range(node, dot)
                return
            value = self.pipe(node.pipe, dot)
            if truth(value):
                self.scoped(node.body, value if node.keyword == "with" else dot)
            elif node.otherwise is not None:
                self.scoped(node.otherwise, dot)
        finally:
            del self.vars[mark:]

    def range(self, node: Control, dot: Any) -> None:
        value = self.pipe(Pipe((), False, node.pipe.commands), dot)
        if isinstance(value, dict):
            items = [(k, value[k]) for k in sorted(value)]
        elif isinstance(value, (list, tuple)):
            items = list(enumerate(value))
        elif value is None:
            items = []
        else:
            raise self.fail(f"range can't iterate over {format_value(value)}")
        if not items:
            if node.otherwise is not None:
                self.scoped(node.otherwise, dot)
            return
        names = node.pipe.declare
        for key, element in items:
            mark = len(self.vars)
            if len(names) == 1:
                self.vars.append((names[0], element))
            elif len(names) == 2:
                self.vars += [(names[0], key), (names[1], element)]
            try:
                self.walk(node.body, element)
            except _Break:
                break
            except _Continue:
                continue
            finally:
                del self.vars[mark:]

    def pipe(self, pipe: Pipe, dot: Any) -> Any:
        value: Any = _NOTHING
        for command in pipe.commands:
            value = self.command(command, dot, value)
        if pipe.declare:
            if pipe.assign:
                name = pipe.declare[0]
                for i in range(len(self.vars) - 1, -1, -1):
                    if self.vars[i][0] == name:
                        self.vars[i] = (name, value)
                        break
            else:
                self.vars.append((pipe.declare[0], value))
        return value

    def command(self, command: Command, dot: Any, previous: Any) -> Any:
        first, args = command.args[0], list(command.args[1:])
        if isinstance(first, Function):
            return self.call(first.name, args, dot, previous)
        if args or previous is not _NOTHING:
            if isinstance(first, Chain) and isinstance(first.base, Dot):
                raise self.fail(f"{first.fields[-1]} is not a method but has arguments")
            raise self.fail(f"can't give argument to non-function {_describe(first)}")
        return self.operand(first, dot)

    def operand(self, operand: Operand, dot: Any) -> Any:
        if isinstance(operand, Literal):
            return operand.value
        if isinstance(operand, Dot):
            return dot
        if isinstance(operand, Variable):
            return self.variable(operand.name)
        if isinstance(operand, Function):
            return self.call(operand.name, [], dot, _NOTHING)
        if isinstance(operand, Pipe):
            return self.pipe(operand, dot)
        value = self.operand(operand.base, dot)
        for name in operand.fields:
            value = self.field(value, name)
        return value

    def variable(self, name: str) -> Any:
        for key, value in reversed(self.vars):
            if key == name:
                return value
        raise self.fail(f"undefined variable: {name}")

    def field(self, value: Any, name: str) -> Any:
        if isinstance(value, dict):
            if name not in value:
                raise self.fail(f"map has no entry for key {name!r}".replace("'", '"'))
            return value[name]
        if value is None:
            raise self.fail(f"nil pointer evaluating interface {{}}.{name}")
        raise self.fail(f"can't evaluate field {name} in type interface {{}}")  # data is all interface{}

    def call(self, name: str, args: list[Operand], dot: Any, previous: Any) -> Any:
        thunks: list[Callable[[], Any]] = [lambda a=a: self.operand(a, dot) for a in args]
        if previous is not _NOTHING:
            thunks.append(lambda: previous)
        if name in ("and", "or"):
            if not thunks:
                raise self.fail(f"wrong number of args for {name}: want at least 1 got 0")
            value = None
            for thunk in thunks:
                value = thunk()
                if truth(value) is (name == "or"):
                    return value
            return value
        values = [thunk() for thunk in thunks]
        try:
            return BUILTINS[name](*values)
        except _FunctionError as exc:
            raise self.fail(f"error calling {name}: {exc}") from None
        except TypeError:
            raise self.fail(f"wrong number of args for {name}: got {len(values)}") from None


_NOTHING = object()


def _describe(operand: Operand) -> str:
    if isinstance(operand, Chain):
        return ("" if isinstance(operand.base, Dot) else _describe(operand.base)) + "." + ".".join(operand.fields)
    if isinstance(operand, Variable):
        return operand.name
    if isinstance(operand, Literal):
        return format_value(operand.value)
    return "."


# --- the builtin functions -------------------------------------------------------------------------------

class _FunctionError(Exception):
    pass


def _kind(value: Any) -> str:
    """The basic kind Go's comparison functions compare; "other" cannot be compared."""
    kind = go_type(value)
    return kind if kind in ("bool", "int", "float64", "string") else "other"


def _eq(first: Any, *others: Any) -> bool:
    if not others:
        raise _FunctionError("missing argument for comparison")
    for value in (first, *others):
        if isinstance(value, (list, dict)):
            raise _FunctionError(f"non-comparable type {format_value(value)}: {go_type(value)}")
    for other in others:
        if first is None or other is None:
            if first is other:
                return True
            continue
        if _kind(first) != _kind(other):
            raise _FunctionError("incompatible types for comparison")
        if first == other:
            return True
    return False


def _ne(first: Any, second: Any) -> bool:
    return not _eq(first, second)


def _less(first: Any, second: Any) -> bool:
    kind = _kind(first)
    if kind in ("bool", "other") or first is None:
        raise _FunctionError("invalid type for comparison")
    if kind != _kind(second):
        raise _FunctionError("incompatible types for comparison")
    return first < second


def _len(value: Any) -> int:
    if isinstance(value, str):
        return len(value.encode())  # Go: bytes, not characters
    if isinstance(value, (list, tuple, dict)):
        return len(value)
    raise _FunctionError(f"len of type {go_type(value)}")


def _index(value: Any, *keys: Any) -> Any:
    for key in keys:
        if isinstance(value, (list, tuple, str)):
            if isinstance(key, bool) or not isinstance(key, int):
                raise _FunctionError(f"cannot index slice/array with type {go_type(key)}")
            if not 0 <= key < len(value if not isinstance(value, str) else value.encode()):
                raise _FunctionError(f"index out of range: {key}")
            value = value.encode()[key] if isinstance(value, str) else value[key]
        elif isinstance(value, dict):
            if not isinstance(key, str):
                raise _FunctionError(f"value has type {go_type(key)}; should be string")
            value = value.get(key)  # a missing key is the zero value here, not an error (as in Go)
        elif value is None:
            raise _FunctionError("index of untyped nil")
        else:
            raise _FunctionError(f"can't index item of type {go_type(value)}")
    return value


def _printf(form: Any, *args: Any) -> str:
    if not isinstance(form, str):
        raise _FunctionError(f"wrong type for value; expected string; got {go_type(form)}")
    return sprintf(form, *args)


BUILTINS: dict[str, Callable[..., Any]] = {
    "not": lambda value: not truth(value),
    "len": _len,
    "index": _index,
    "print": sprint,
    "printf": _printf,
    "println": sprintln,
    "eq": _eq,
    "ne": _ne,
    "lt": _less,
    "le": lambda a, b: _less(a, b) or _eq(a, b),
    "gt": lambda a, b: not (_less(a, b) or _eq(a, b)),
    "ge": lambda a, b: not _less(a, b),
}
