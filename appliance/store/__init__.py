"""Profiles, groups, selection and the matchbox data directory."""

from appliance.store.datadir import DataDir, machine_groups
from appliance.store.model import Group, InvalidDocument, NetBoot, Profile, parse_group, parse_profile
from appliance.store.selection import (
    MatchScope, RequestLabels, labels_from_pairs, labels_from_query, match_scope, order_groups, parse_query,
    select_group,
)

__all__ = [
    "DataDir", "Group", "InvalidDocument", "MatchScope", "NetBoot", "Profile", "RequestLabels",
    "labels_from_pairs", "labels_from_query", "machine_groups", "match_scope", "order_groups", "parse_group", "parse_profile", "parse_query",
    "select_group",
]
