"""Labels from a request and the group they select, exactly as matchbox decides.

- Labels are every query parameter (key case kept, first value wins, blank values kept). Only a key that
  lower-cases to `mac` is special: its value is normalised, and a bad MAC drops the label.
- The query string is split the way Go's `url.ParseQuery` splits it: a pair holding `;` or a bad `%`
  escape is skipped, `+` is a space.
- Selection: the group with the most selectors that all equal their labels wins; among groups with as many
  selectors, the greatest `selector_string` wins; among identical selector sets, the one listed first. The
  chosen group's profile is then used or not at all: there is no fallback to the next group.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from appliance.mac import try_parse_mac
from appliance.store.model import Group

_HEX = "0123456789abcdefABCDEF"


def parse_query(raw_query: str) -> dict[str, str]:
    """Go's url.ParseQuery, keeping the first value of each key."""
    values: dict[str, str] = {}
    for pair in raw_query.split("&"):
        if not pair or ";" in pair:
            continue
        key, _, value = pair.partition("=")
        key_text, value_text = _unescape(key), _unescape(value)
        if key_text is None or value_text is None:
            continue
        values.setdefault(key_text, value_text)
    return values


@dataclass(frozen=True, slots=True)
class RequestLabels:
    labels: Mapping[str, str]
    rejected: tuple[tuple[str, str], ...] = ()  # MAC labels dropped because the value is not a MAC


def labels_from_query(raw_query: str) -> RequestLabels:
    return labels_from_pairs(parse_query(raw_query))


def labels_from_pairs(pairs: Mapping[str, str]) -> RequestLabels:
    """Labels as given (a query's first values, or the gRPC Select call's map): MAC values normalised, a
    bad MAC dropped."""
    labels: dict[str, str] = {}
    rejected: list[tuple[str, str]] = []
    for key, value in pairs.items():
        if key.lower() == "mac":
            mac = try_parse_mac(value)
            if mac is None:
                rejected.append((key, value))
                continue
            value = mac
        labels[key] = value
    return RequestLabels(labels, tuple(rejected))


def order_groups(groups: Iterable[Group]) -> list[Group]:
    """Selection order: most selectors first, then greatest selector string; stable among ties."""
    return sorted(groups, key=lambda g: (len(g.selector), g.selector_string), reverse=True)


def select_group(ordered_groups: Sequence[Group], labels: Mapping[str, str]) -> Group | None:
    """The first group, in `order_groups` order, whose selectors all match `labels`."""
    for group in ordered_groups:
        if group.matches(labels):
            return group
    return None


def _unescape(text: str) -> str | None:
    """Go's url.QueryUnescape: `+` is a space, `%XX` a byte; a malformed escape is an error (None)."""
    if "%" not in text:
        return text.replace("+", " ")
    out = bytearray()
    i = 0
    raw = text.encode("utf-8", "surrogateescape")
    while i < len(raw):
        c = raw[i]
        if c == 0x25:  # '%'
            hexpair = raw[i + 1 : i + 3].decode("ascii", "replace")
            if len(hexpair) != 2 or any(ch not in _HEX for ch in hexpair):
                return None
            out.append(int(hexpair, 16))
            i += 3
        else:
            out.append(0x20 if c == 0x2B else c)
            i += 1
    return out.decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class MatchScope:
    """Which clients some group could ever select, judged from the MAC alone (for DHCP, before any label
    is known). `any_mac`: some group could select a client whatever its MAC; else only `macs` can match."""

    macs: frozenset[str]
    any_mac: bool

    def could_match(self, mac: str) -> bool:
        return self.any_mac or mac in self.macs


def match_scope(groups: Iterable[Group], sent_labels: Iterable[str]) -> MatchScope:
    """The clients `groups` could select when a client sends only the label keys `sent_labels` (what bootd's
    own script sends: uuid, mac, domain, ...), with any values.

    A selector key the client never sends reads as "" (matchbox's rule), so a group selecting on such a key
    with a non-empty value can never match and pins nothing. A group with a `mac` selector (any key case:
    its value is a normalised MAC, as a `mac` label's is) can match that MAC only. Any other group could
    match every MAC."""
    sent = frozenset(sent_labels)
    macs: set[str] = set()
    any_mac = False
    for group in groups:
        if any(value != "" and key not in sent for key, value in group.selector.items()):
            continue
        pinned = [value for key, value in group.selector.items() if key.lower() == "mac"]
        if pinned:
            macs.update(pinned)
        else:
            any_mac = True
    return MatchScope(frozenset(macs), any_mac)
