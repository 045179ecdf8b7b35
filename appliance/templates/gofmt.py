"""Go's `fmt` %v printing of JSON values, as matchbox's templates and /metadata print them.

JSON numbers are float64 in Go, so 3 prints `3`, 2.5 `2.5` and 1000000 `1e+06` (strconv's shortest 'g'
form switches to an exponent from 1e+06 up and below 1e-04, so 1234567 prints `1.234567e+06`). Lists print as `[a b]`, objects as `map[k:v]` with
sorted keys, null as `<nil>`.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Any


def format_value(value: Any) -> str:
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return format_float(float(value))
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{format_value(value[k])}" for k in sorted(value)) + "]"
    return str(value)


def format_float(f: float) -> str:
    """strconv.FormatFloat(f, 'g', -1, 64)."""
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    if f == 0:
        return "-0" if math.copysign(1.0, f) < 0 else "0"
    sign, digit_tuple, exponent = Decimal(repr(f)).normalize().as_tuple()
    digits = "".join(map(str, digit_tuple))
    point = len(digits) + int(exponent)  # digits[:point] is the integer part
    prefix = "-" if sign else ""
    x = point - 1
    if x < -4 or x >= 6:  # shortest form: strconv decides with precision 6
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{prefix}{mantissa}e{'-' if x < 0 else '+'}{abs(x):02d}"
    if point <= 0:
        return f"{prefix}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return prefix + digits + "0" * (point - len(digits))
    return f"{prefix}{digits[:point]}.{digits[point:]}"


def go_type(value: Any) -> str:
    """The Go type a JSON value has in a template, for error messages (`%T`)."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "[]interface {}"
    if isinstance(value, dict):
        return "map[string]interface {}"
    return type(value).__name__


def _element(value: Any) -> str:
    return "<nil>" if value is None else format_value(value)


def sprint(*args: Any) -> str:
    """fmt.Sprint: a space between operands when neither side is a string."""
    out: list[str] = []
    for i, arg in enumerate(args):
        if i > 0 and not isinstance(arg, str) and not isinstance(args[i - 1], str):
            out.append(" ")
        out.append(_element(arg))
    return "".join(out)


def sprintln(*args: Any) -> str:
    return " ".join(_element(a) for a in args) + "\n"


_VERB = re.compile(r"%([-+# 0]*)(\*|\d+)?(?:\.(\*|\d*))?([a-zA-Z%])")


def sprintf(form: str, *args: Any) -> str:
    """fmt.Sprintf for the verbs templates use: v s d f F e E g G x X o b c q t and %%, with flags, width and
    precision; Go's `%!verb(type=value)` for a wrong type, `%!verb(MISSING)`, `%!(EXTRA ...)`."""
    out: list[str] = []
    used, pos = 0, 0
    for m in _VERB.finditer(form):
        out.append(form[pos : m.start()])
        pos = m.end()
        flags, width_text, precision_text, verb = m.groups()
        if verb == "%":
            out.append("%")
            continue
        width = precision = None
        if width_text == "*":
            width, used = (args[used] if used < len(args) else 0), used + 1
        elif width_text:
            width = int(width_text)
        if precision_text == "*":
            precision, used = (args[used] if used < len(args) else 0), used + 1
        elif precision_text is not None:
            precision = int(precision_text or 0)
        if used >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        arg = args[used]
        used += 1
        text = _format_one(verb, arg, flags, precision)
        if width is not None and isinstance(width, int) and len(text) < width:
            if "-" in flags:
                text = text.ljust(width)
            elif "0" in flags and verb in "dfFeEgGxXob" and not isinstance(arg, str):
                sign = text[0] if text[:1] in "+-" else ""
                text = sign + text[len(sign):].rjust(width - len(sign), "0")
            else:
                text = text.rjust(width)
        out.append(text)
    out.append(form[pos:])
    if used < len(args):
        extra = ", ".join(f"{go_type(a)}={_element(a)}" for a in args[used:])
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


def _format_one(verb: str, arg: Any, flags: str, precision: int | None) -> str:
    bad = f"%!{verb}({go_type(arg)}={_element(arg)})" if arg is not None else f"%!{verb}(<nil>)"
    if verb == "v":
        return _element(arg)
    if isinstance(arg, (list, tuple)) and verb != "T":
        return "[" + " ".join(_format_one(verb, a, flags, precision) for a in arg) + "]"
    if verb == "T":
        return go_type(arg)
    if verb == "s":
        if isinstance(arg, str):
            return arg if precision is None else arg[:precision]
        return bad
    if verb == "q":
        if isinstance(arg, str):
            return _go_quote(arg)
        if isinstance(arg, int) and not isinstance(arg, bool):
            return "'" + chr(arg) + "'"
        return bad
    if verb == "t":
        return ("true" if arg else "false") if isinstance(arg, bool) else bad
    if isinstance(arg, bool) or arg is None:
        return bad
    if verb in "dxXobc":
        if isinstance(arg, str) and verb in "xX":
            text = arg.encode().hex()
            return text.upper() if verb == "X" else text
        if not isinstance(arg, int):
            return bad
        sign = "+" if "+" in flags and arg >= 0 else (" " if " " in flags and arg >= 0 else "")
        if verb == "c":
            return chr(arg)
        body = {"d": "d", "x": "x", "X": "X", "o": "o", "b": "b"}[verb]
        prefix = {"x": "0x", "X": "0X", "o": "0", "b": "0b"}.get(verb, "") if "#" in flags else ""
        digits = format(abs(arg), body)
        return ("-" if arg < 0 else sign) + prefix + digits
    if verb in "fFeEgG":
        if not isinstance(arg, float):
            return bad
        sign = "+" if "+" in flags and arg >= 0 else (" " if " " in flags and arg >= 0 else "")
        if verb in "gG" and precision is None:
            text = format_float(arg)
            return sign + (text.upper() if verb == "G" else text)
        if verb in "eE":
            text = format(arg, f".{6 if precision is None else precision}e")
            return sign + (text.upper() if verb == "E" else text)
        if verb in "gG":
            return sign + format(arg, f".{precision}{verb.lower()}")
        return sign + format(arg, f".{6 if precision is None else precision}f")
    return bad


def _go_quote(text: str) -> str:
    """strconv.Quote: Go escapes, printable Unicode kept."""
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return "".join(out) + '"'
