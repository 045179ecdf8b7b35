"""matchbox's label parsing and group selection (research/matchbox.md §1.2, §3; conformance rows 15-18)."""

import json

import pytest

from appliance.mac import parse_mac
from appliance.store import InvalidDocument, labels_from_query, order_groups, parse_group, parse_profile, select_group
from appliance.store.model import Group


@pytest.mark.parametrize("query, labels", [
    pytest.param("uuid=a1b2c3", {"uuid": "a1b2c3"}, id="plain"),
    pytest.param("mac=52-da-00-89-d8-10", {"mac": "52:da:00:89:d8:10"}, id="mac-hyphens"),
    pytest.param("UUID=a1b2c3&MAC=52:DA:00:89:d8:10", {"UUID": "a1b2c3", "MAC": "52:da:00:89:d8:10"}, id="key-case-kept"),
    pytest.param("mac=x:x:x:x:x:x", {}, id="bad-mac-dropped"),
    pytest.param("hostname=&serial=", {"hostname": "", "serial": ""}, id="blank-values-kept"),
    pytest.param("a=1&a=2", {"a": "1"}, id="first-value-wins"),
    pytest.param("a=b+c&d=%41%2f", {"a": "b c", "d": "A/"}, id="unescape"),
    pytest.param("a=1;b=2&c=3", {"c": "3"}, id="semicolon-pair-dropped"),
    pytest.param("a=%zz&c=3", {"c": "3"}, id="bad-escape-dropped"),
    pytest.param("mac=aabb.ccdd.eeff", {"mac": "aa:bb:cc:dd:ee:ff"}, id="mac-dots"),
])
def test_labels_from_query(query, labels):
    assert dict(labels_from_query(query).labels) == labels


def test_rejected_mac_is_reported():
    assert labels_from_query("mac=nope&x=1").rejected == (("mac", "nope"),)


@pytest.mark.parametrize("text, ok", [
    ("52:54:00:a1:9c:ae", True), ("52-54-00-A1-9C-AE", True), ("5254.00a1.9cae", True),
    ("00:00:00:00:fe:80:00:00:00:00:00:00:02:00:5e:10:00:00:00:01", True),  # IPoIB, 20 bytes
    ("02:00:5e:10:00:00:00:01", True),  # EUI-64
    ("525400a19cae", False), ("52:54:00:a1:9c", False), ("52:54-00:a1:9c:ae", False),
    ("5:54:00:a1:9c:ae:1", False), ("", False), ("52:54:00:a1:9c:ag", False),
])
def test_mac_forms_match_go(text, ok):
    if ok:
        assert parse_mac(text) == parse_mac(text).lower()
    else:
        with pytest.raises(ValueError):
            parse_mac(text)


def group(selector: dict[str, str], gid: str = "") -> Group:
    return parse_group(json.dumps({"id": gid or json.dumps(selector), "profile": "p", "selector": selector}).encode())


@pytest.mark.parametrize("labels, selector, matches", [
    ({"a": "b"}, {"a": "b"}, True),
    ({"a": "b"}, {"a": "c"}, False),
    ({"uuid": "a", "mac": "b"}, {"uuid": "a"}, True),
    ({"uuid": "a"}, {"uuid": "a", "mac": "52:54:00:00:00:01"}, False),
    ({}, {}, True),
    ({}, {"serial": ""}, True),  # an absent label reads as "" in Go
    ({"MAC": "52:54:00:00:00:01"}, {"mac": "52:54:00:00:00:01"}, False),  # keys are case-sensitive
])
def test_group_matches(labels, selector, matches):
    assert group(selector).matches(labels) is matches


def test_order_is_most_selectors_then_greatest_selector_string():
    ascending = [
        group({"region": "a"}),
        group({"uuid": "a1b2c3d4"}),
        group({"mac": "52:da:00:89:d8:10", "uuid": "a1b2c3d4"}),
        group({"region": "a", "zone": "z"}),
        group({"region": "b", "zone": "z"}),
    ]
    assert order_groups(ascending) == list(reversed(ascending))


def test_selection_picks_most_specific_and_never_falls_back():
    default, by_uuid, by_both = group({}, "default"), group({"uuid": "u1"}, "uuid"), group(
        {"uuid": "u1", "mac": "52:54:00:00:00:01"}, "both")
    ordered = order_groups([default, by_uuid, by_both])
    assert select_group(ordered, {"uuid": "u1", "mac": "52:54:00:00:00:01"}).id == "both"
    assert select_group(ordered, {"uuid": "u1"}).id == "uuid"
    assert select_group(ordered, {"uuid": "other"}).id == "default"
    assert select_group(order_groups([by_uuid]), {}) is None


def test_identical_selectors_keep_listing_order():
    first, second = group({}, "first"), group({}, "second")
    assert select_group(order_groups([first, second]), {}).id == "first"


def test_group_mac_selector_is_normalised_and_key_case_kept():
    g = parse_group(b'{"id": "g", "selector": {"MAC": "52-DA-00-89-D8-10"}}')
    assert dict(g.selector) == {"MAC": "52:da:00:89:d8:10"}
    with pytest.raises(InvalidDocument, match="invalid MAC"):
        parse_group(b'{"id": "g", "selector": {"mac": "not-a-mac"}}')


@pytest.mark.parametrize("data, reason", [
    (b"{", "invalid JSON"), (b"[]", "expected a JSON object"),
    (b'{"selector": {"a": 1}}', "selector"), (b'{"metadata": [1]}', "metadata"),
])
def test_group_files_matchbox_would_not_load(data, reason):
    with pytest.raises(InvalidDocument, match=reason):
        parse_group(data)


def test_profile_fields_fold_case_and_unknown_fields_are_ignored():
    p = parse_profile(b'{"ID": "p1", "Ignition_Id": "x.ign", "cmdline": {"old": 1},'
                      b' "boot": {"Kernel": "/k", "initrd": ["/i"], "args": ["a=b"]}}')
    assert (p.id, p.ignition_id, p.boot.kernel, p.boot.initrd, p.boot.args) == ("p1", "x.ign", "/k", ("/i",), ("a=b",))
    assert parse_profile(b'{"id": "p2"}').boot is None
    with pytest.raises(InvalidDocument, match="boot.kernel"):
        parse_profile(b'{"id": "p3", "boot": {"kernel": 5}}')
