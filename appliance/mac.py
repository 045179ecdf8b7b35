"""MAC addresses as matchbox (Go's net.ParseMAC) reads them.

Accepted forms, any hex case: 6-, 8- (EUI-64) or 20-byte (IPoIB) addresses written as
`aa:bb:cc:dd:ee:ff`, `aa-bb-cc-dd-ee-ff` or `aabb.ccdd.eeff`. The canonical form is lower-case and
colon-separated. Rejected, as Go rejects them: bare `aabbccddeeff`, single-digit groups, mixed
separators, the empty string.
"""

from __future__ import annotations

from typing import NewType

MacAddress = NewType("MacAddress", str)

_HEX = frozenset("0123456789abcdefABCDEF")
_LENGTHS = (6, 8, 20)


def parse_mac(text: str) -> MacAddress:
    """Return the canonical form of `text`, or raise ValueError."""
    if len(text) < 14:
        raise ValueError(f"{text!r} is not a MAC address")
    if text[2] in ":-":
        sep, width = text[2], 2
    elif text[4] == ".":
        sep, width = ".", 4
    else:
        raise ValueError(f"{text!r} is not a MAC address")
    groups = text.split(sep)
    if any(len(g) != width or not _HEX.issuperset(g) for g in groups):
        raise ValueError(f"{text!r} is not a MAC address")
    digits = "".join(groups).lower()
    if len(digits) // 2 not in _LENGTHS:
        raise ValueError(f"{text!r} is not a MAC address")
    return MacAddress(":".join(digits[i : i + 2] for i in range(0, len(digits), 2)))


def try_parse_mac(text: str) -> MacAddress | None:
    try:
        return parse_mac(text)
    except ValueError:
        return None
