"""Go's `fmt` %v printing of JSON values, as matchbox's templates and /metadata print them.

JSON numbers are float64 in Go, so 3 prints `3`, 2.5 `2.5` and 1000000 `1e+06` (strconv's shortest 'g'
form switches to an exponent from 1e+06 up and below 1e-04, so 1234567 prints `1.234567e+06`). Lists print as `[a b]`, objects as `map[k:v]` with
sorted keys, null as `<nil>`.
"""

from __future__ import annotations

import math
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
