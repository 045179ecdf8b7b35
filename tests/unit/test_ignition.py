import json

import pytest

from appliance.ignition import InvalidIgnition, check_raw_ignition

MINIMAL = {"ignition": {"version": "3.4.0"}, "systemd": {"units": [{"name": "a.service", "enabled": True}]}}


def test_34_is_served_compact_and_equal():
    out = check_raw_ignition(json.dumps(MINIMAL, indent=2).encode())
    assert json.loads(out.body) == MINIMAL and b" " not in out.body and out.served_version == "3.4.0"


def test_31_is_served_as_34_like_matchbox():
    config = {**MINIMAL, "ignition": {"version": "3.1.0"}}
    out = check_raw_ignition(json.dumps(config).encode())
    assert json.loads(out.body) == {**MINIMAL, "ignition": {"version": "3.4.0"}} and out.version == "3.1.0"


def test_35_is_served_as_35():
    out = check_raw_ignition(json.dumps({"ignition": {"version": "3.5.0"}}).encode())
    assert out.served_version == "3.5.0"


@pytest.mark.parametrize("data, reason", [
    (b"{nope", "not valid JSON"),
    (b"[]", "not a JSON object"),
    (b'{"passwd": {}}', "no ignition.version"),
    (b'{"ignition": {"version": "2.2.0"}}', "spec 2.2.0 is not served"),
    (b'{"ignition": {"version": "3.9.0"}}', "unknown Ignition spec version"),
    (b'{"ignition": {"version": "3.4.0"}, "storage": []}', "storage: expected an object"),
    (b'{"ignition": {"version": "3.4.0"}, "systemd": {"units": [{"enabled": true}]}}', r"units\[0\]: name is required"),
    (b'{"ignition": {"version": "3.4.0"}, "storage": {"files": ["x"]}}', r"files\[0\]: expected an object"),
    (b'{"ignition": {"version": "3.2.0"}, "kernelArguments": {}}', "kernelArguments needs spec 3.3.0"),
])
def test_invalid_configs_are_refused_with_a_reason(data, reason):
    with pytest.raises(InvalidIgnition, match=reason):
        check_raw_ignition(data)
