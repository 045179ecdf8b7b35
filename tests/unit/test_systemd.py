"""systemd's pure parts: $NOTIFY_SOCKET and WATCHDOG_* read as sd_notify(3) and sd_watchdog_enabled(3) say,
capability masks as /proc shows them, the STATUS= line, the unit as install-service fills it in, and the
`user:` field of bootd.yaml."""

import re
from pathlib import Path

import pytest

from appliance.config import ConfigInvalid, parse_config
from appliance.daemon import describe_serving
from appliance.service_install import ServiceSettings, packaged_unit, render_unit, sysusers_entry
from appliance.systemd import CAP_NET_BIND_SERVICE, CAP_NET_RAW, capability_mask, notify_address, notify_message, \
    watchdog_interval


@pytest.mark.parametrize("value, address", [
    pytest.param("/run/systemd/notify", "/run/systemd/notify", id="path"),
    pytest.param("@bootd/notify", b"\0bootd/notify", id="abstract"),
    pytest.param("", None, id="empty"),
    pytest.param(None, None, id="unset"),
    pytest.param("vsock:2:1234", None, id="vsock-not-for-a-host-daemon"),
    pytest.param("relative/path", None, id="relative"),
])
def test_notify_socket_address(value, address):
    assert notify_address(value) == address


@pytest.mark.parametrize("environ, pid, seconds", [
    pytest.param({"WATCHDOG_USEC": "30000000"}, 7, 15.0, id="half-the-timeout"),
    pytest.param({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, 7, 15.0, id="pid-is-ours"),
    pytest.param({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "8"}, 7, None, id="pid-is-another-process"),
    pytest.param({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, 7, None, id="pid-garbage"),
    pytest.param({"WATCHDOG_USEC": "0"}, 7, None, id="zero"),
    pytest.param({"WATCHDOG_USEC": "soon"}, 7, None, id="garbage"),
    pytest.param({}, 7, None, id="unset"),
])
def test_watchdog_interval(environ, pid, seconds):
    assert watchdog_interval(environ, pid) == seconds


def test_notify_message_keeps_one_field_per_line():
    assert notify_message("READY=1", "STATUS=a\nb") == b"READY=1\nSTATUS=a b"


def test_kept_capabilities_are_bits_10_and_13():
    assert (CAP_NET_BIND_SERVICE, CAP_NET_RAW) == (10, 13)  # <linux/capability.h>
    assert capability_mask([CAP_NET_BIND_SERVICE, CAP_NET_RAW]) == 0x2400


@pytest.mark.parametrize("kw, status", [
    pytest.param(dict(dhcp_mode="proxy", interfaces=("eth0",), tftp_port=69, dns_port=None, domain=None,
                      http_port=8080, api_port=None, machines=3),
                 "proxy-DHCP on eth0, TFTP :69, HTTP :8080, 3 machines", id="proxy"),
    pytest.param(dict(dhcp_mode="authoritative", interfaces=(), tftp_port=69, dns_port=53, domain="lab.test",
                      http_port=80, api_port=8081, machines=0),
                 "authoritative-DHCP on every interface, TFTP :69, DNS :53 (lab.test), HTTP :80, API :8081, "
                 "0 machines", id="everything"),
    pytest.param(dict(dhcp_mode=None, interfaces=(), tftp_port=None, dns_port=None, domain=None, http_port=None,
                      api_port=None, machines=0), "0 machines", id="nothing"),
])
def test_status_line_says_what_is_served(kw, status):
    assert describe_serving(**kw) == status


def test_unit_gets_this_installs_command_and_user():
    settings = ServiceSettings(binary=Path("/opt/bootd/bin/bootd"), config=Path("/var/lib/bootd/config/bootd.yaml"),
                               user="pxe", writable=(Path("/srv/bootd/state"),))
    unit = render_unit(packaged_unit(), settings)
    lines = unit.splitlines()
    assert "ExecStart=/opt/bootd/bin/bootd run -c /var/lib/bootd/config/bootd.yaml" in lines
    assert "User=pxe" in lines and "Group=pxe" in lines
    assert "ReadWritePaths=/srv/bootd/state" in lines
    assert [l for l in lines if l.startswith(("AmbientCapabilities=", "CapabilityBoundingSet="))] == [
        "AmbientCapabilities=CAP_NET_BIND_SERVICE CAP_NET_RAW", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE CAP_NET_RAW"]
    assert sysusers_entry("pxe").splitlines()[-1] == 'u pxe - "bootd network-boot daemon" /var/lib/bootd -'


@pytest.mark.parametrize("kw, message", [
    pytest.param(dict(binary=Path("bootd")), "--bin bootd: expected an absolute path", id="relative-bin"),
    pytest.param(dict(config=Path("/etc/my bootd.yaml")), "--config /etc/my bootd.yaml", id="space"),
    pytest.param(dict(config=Path("/etc/%h.yaml")), "--config /etc/%h.yaml", id="specifier"),
    pytest.param(dict(user="Root Admin"), "--user 'Root Admin'", id="user"),
])
def test_install_settings_refuse_what_systemd_would_mangle(kw, message):
    base = dict(binary=Path("/opt/bootd/bin/bootd"), config=Path("/etc/bootd/bootd.yaml"), user="bootd")
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        ServiceSettings(**{**base, **kw})


def test_config_user_must_exist():
    assert parse_config("user: nobody\n", Path("/etc/bootd/bootd.yaml")).user == "nobody"
    with pytest.raises(ConfigInvalid) as caught:
        parse_config("domain: lab.test\nuser: no-such-bootd-user\n", Path("/etc/bootd/bootd.yaml"))
    assert [str(e) for e in caught.value.errors] == [
        "bootd.yaml:2: user: no user 'no-such-bootd-user' on this host (bootd install-service creates one; or "
        "useradd --system)"]
