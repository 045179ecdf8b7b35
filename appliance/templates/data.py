"""The data a machine's templates and /metadata see: matchbox's collectVariables.

Precedence, lowest first: the group's metadata, then its selectors (keys lower-cased), then `request`
(`query`: the labels, MAC-normalised, key case kept; `raw_query`: the query string exactly as sent).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from appliance.store import Group


def template_data(group: Group, labels: Mapping[str, str], raw_query: str) -> dict[str, Any]:
    data: dict[str, Any] = copy.deepcopy(dict(group.metadata))
    for key, value in group.selector.items():
        data[key.lower()] = value
    data["request"] = {"query": dict(labels), "raw_query": raw_query}
    return data
