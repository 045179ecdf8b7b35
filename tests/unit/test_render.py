"""Byte-exact boot scripts, /metadata flattening and Go's value printing (conformance rows 2, 5, 13, 14)."""

import pytest

from appliance.http.boot import BOOT_IPXE, render_bootd_script, render_grub, render_ipxe
from appliance.http.configs import render_env_file
from appliance.store import NetBoot, parse_group
from appliance.templates import format_value
from appliance.templates.data import template_data

BOOT = NetBoot(kernel="/image/kernel", initrd=("/image/initrd_a", "/image/initrd_b"), args=("a=b", "c"))


def test_boot_ipxe_is_matchbox_bootstrap():
    assert BOOT_IPXE == ("#!ipxe\nchain ipxe?uuid=${uuid}&mac=${mac:hexhyp}&domain=${domain}&hostname=${hostname}"
                         "&serial=${serial}&arch=${buildarch:uristring}\n")


@pytest.mark.parametrize("boot, expected", [
    pytest.param(BOOT, "#!ipxe\nkernel /image/kernel a=b c\ninitrd /image/initrd_a\ninitrd /image/initrd_b\nboot\n",
                 id="matchbox-test"),
    pytest.param(NetBoot(kernel="/k"), "#!ipxe\nkernel /k\nboot\n", id="no-initrd-no-args"),
    pytest.param(NetBoot(), "#!ipxe\nkernel \nboot\n", id="empty-kernel"),
    pytest.param(NetBoot(kernel="/k", initrd=("--name main /assets/i.img",)),
                 "#!ipxe\nkernel /k\ninitrd --name main /assets/i.img\nboot\n", id="initrd-with-options"),
])
def test_render_ipxe(boot, expected):
    assert render_ipxe(boot) == expected


def test_render_grub_is_byte_exact():
    assert render_grub(BOOT) == (
        'default=0\nfallback=1\ntimeout=1\n'
        'menuentry "CoreOS (EFI)" {\necho "Loading kernel"\nlinuxefi "/image/kernel" a=b c\n'
        'echo "Loading initrd"\ninitrdefi  "/image/initrd_a" "/image/initrd_b"\n}\n'
        'menuentry "CoreOS (BIOS)" {\necho "Loading kernel"\nlinux "/image/kernel" a=b c\n'
        'echo "Loading initrd"\ninitrd  "/image/initrd_a" "/image/initrd_b"\n}\n')


def test_bootd_script_sets_bootd_and_chains_with_retry():
    script = render_bootd_script("10.77.0.1:8080")
    assert script.startswith("#!ipxe\n")
    assert "set bootd http://10.77.0.1:8080\n" in script
    assert "chain --autofree ${bootd}/bootd/ipxe?uuid=${uuid}&mac=${mac:hexhyp}&" in script
    assert "|| goto retry" in script and script.rstrip().endswith("goto chain")


def test_metadata_conformance_row_13():
    group = parse_group(b'{"id": "g", "profile": "p", "selector": {"mac": "52:54:00:a1:9c:ae"},'
                        b' "metadata": {"meta": "data", "etcd": {"name": "node1"}, "some": {"nested": {"data": "some-value"}}}}')
    raw = "mac=52-54-00-a1-9c-ae&foo=bar&count=3&gate=true"
    labels = {"mac": "52:54:00:a1:9c:ae", "foo": "bar", "count": "3", "gate": "true"}
    lines = set(render_env_file(template_data(group, labels, raw)).splitlines())
    assert lines == {
        "META=data", "ETCD_NAME=node1", "SOME_NESTED_DATA=some-value", "MAC=52:54:00:a1:9c:ae",
        "REQUEST_QUERY_MAC=52:54:00:a1:9c:ae", "REQUEST_QUERY_FOO=bar", "REQUEST_QUERY_COUNT=3",
        "REQUEST_QUERY_GATE=true", f"REQUEST_RAW_QUERY={raw}",
    }


@pytest.mark.parametrize("metadata, line", [
    (b'{"num": 3}', "NUM=3"), (b'{"yes": true}', "YES=true"), (b'{"no": false}', "NO=false"),
    (b'{"big": 1000000}', "BIG=1e+06"), (b'{"half": 2.5}', "HALF=2.5"),
])
def test_metadata_values_print_as_go(metadata, line):
    group = parse_group(b'{"id": "g", "metadata": ' + metadata + b"}")
    assert line in render_env_file(template_data(group, {}, "")).splitlines()


def test_metadata_leaves_out_lists_and_nulls():
    group = parse_group(b'{"id": "g", "metadata": {"list": [1, 2], "null": null, "s": "x"}}')
    assert render_env_file(template_data(group, {}, "")) == "REQUEST_RAW_QUERY=\nS=x\n"


def test_selectors_override_metadata_and_request_overrides_both():
    group = parse_group(b'{"id": "g", "selector": {"Role": "w"}, "metadata": {"role": "m", "request": "m"}}')
    data = template_data(group, {"a": "1"}, "a=1")
    assert data["role"] == "w" and data["request"] == {"query": {"a": "1"}, "raw_query": "a=1"}


@pytest.mark.parametrize("value, text", [
    (3, "3"), (2.5, "2.5"), (1e6, "1e+06"), (123456, "123456"), (1234567, "1.234567e+06"), (0.0001, "0.0001"),
    (0.00001, "1e-05"), (-0.5, "-0.5"), (True, "true"), (None, "<nil>"), (["a", 1], "[a 1]"),
    ({"b": 1, "a": "x"}, "map[a:x b:1]"),
])
def test_format_value_matches_go(value, text):
    assert format_value(value) == text
