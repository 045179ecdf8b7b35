"""Butane -> Ignition against hand-checked Ignition (the Butane specs, coreos/butane docs/config-*.md)."""

from __future__ import annotations

import base64
import gzip
import urllib.parse

import pytest

from appliance.ignition.butane import VERSIONS, ButaneError, make_data_url, translate_butane

FLATCAR = """\
variant: flatcar
version: 1.1.0
passwd:
  users:
    - name: core
      ssh_authorized_keys:
        - ssh-ed25519 AAAA core@lab
      groups: [sudo, docker]
      password_hash: "$6$x$y"
  groups:
    - name: ops
      gid: 1500
storage:
  files:
    - path: /etc/hostname
      mode: 0644
      contents:
        inline: node1
    - path: /opt/bin/tool
      mode: 0o755
      overwrite: true
      contents:
        source: https://example.com/tool
        verification:
          hash: sha256-{sha}
    - path: /etc/motd
      append:
        - inline: "hello world & more\\n"
  directories:
    - path: /opt/data
      mode: 0750
      user: {{name: core}}
  links:
    - path: /etc/localtime
      target: /usr/share/zoneinfo/UTC
  disks:
    - device: /dev/sdb
      wipe_table: true
      partitions:
        - label: data
          number: 1
          size_mib: 1024
          start_mib: 0
          type_guid: 0FC63DAF-8483-4772-8E79-3D69D8477DE4
  filesystems:
    - device: /dev/disk/by-partlabel/data
      format: ext4
      path: /var/data
      wipe_filesystem: true
      mount_options: [noatime]
systemd:
  units:
    - name: etcd.service
      enabled: true
      contents: |
        [Unit]
        Description=etcd
    - name: docker.service
      dropins:
        - name: 10-proxy.conf
          contents: "[Service]\\nEnvironment=HTTP_PROXY=http://proxy"
kernel_arguments:
  should_exist: [console=ttyS0]
  should_not_exist: [quiet]
""".format(sha="a" * 64)

EXPECTED = {
    "ignition": {"version": "3.4.0"},
    "passwd": {
        "users": [{"name": "core", "sshAuthorizedKeys": ["ssh-ed25519 AAAA core@lab"], "groups": ["sudo", "docker"],
                   "passwordHash": "$6$x$y"}],
        "groups": [{"name": "ops", "gid": 1500}],
    },
    "storage": {
        "files": [
            {"path": "/etc/hostname", "mode": 420, "contents": {"source": "data:,node1", "compression": ""}},
            {"path": "/opt/bin/tool", "mode": 493, "overwrite": True,
             "contents": {"source": "https://example.com/tool", "verification": {"hash": "sha256-" + "a" * 64}}},
            {"path": "/etc/motd", "append": [{"source": "data:,hello%20world%20&%20more%0A", "compression": ""}]},
        ],
        "directories": [{"path": "/opt/data", "mode": 488, "user": {"name": "core"}}],
        "links": [{"path": "/etc/localtime", "target": "/usr/share/zoneinfo/UTC"}],
        "disks": [{"device": "/dev/sdb", "wipeTable": True, "partitions": [
            {"label": "data", "number": 1, "sizeMiB": 1024, "startMiB": 0,
             "typeGuid": "0FC63DAF-8483-4772-8E79-3D69D8477DE4"}]}],
        "filesystems": [{"device": "/dev/disk/by-partlabel/data", "format": "ext4", "path": "/var/data",
                         "wipeFilesystem": True, "mountOptions": ["noatime"]}],
    },
    "systemd": {"units": [
        {"name": "etcd.service", "enabled": True, "contents": "[Unit]\nDescription=etcd\n"},
        {"name": "docker.service", "dropins": [{"name": "10-proxy.conf",
                                                "contents": "[Service]\nEnvironment=HTTP_PROXY=http://proxy"}]},
    ]},
    "kernelArguments": {"shouldExist": ["console=ttyS0"], "shouldNotExist": ["quiet"]},
}


def test_flatcar_translation_field_by_field():
    result = translate_butane(FLATCAR)
    assert (result.variant, result.version, result.spec, result.warnings) == ("flatcar", "1.1.0", "3.4.0", ())
    assert result.config == EXPECTED


@pytest.mark.parametrize("variant, version, spec", [(v, n, s) for (v, n), s in VERSIONS.items()])
def test_each_variant_and_version_gives_its_spec(variant, version, spec):
    result = translate_butane(f"variant: {variant}\nversion: {version}\nstorage:\n  files:\n"
                              f"    - path: /etc/issue\n      contents: {{inline: hi}}\n")
    assert result.config["ignition"] == {"version": spec}
    assert result.config["storage"]["files"][0]["contents"]["source"] == "data:,hi"


def test_compressible_inline_contents_are_gzipped_as_butane_does():
    text = "line of a unit file that repeats\n" * 200
    result = translate_butane("variant: fcos\nversion: 1.5.0\nstorage:\n  files:\n    - path: /etc/big\n"
                              "      contents:\n        inline: |\n" + "".join(f"          {l}\n" for l in text.splitlines()))
    contents = result.config["storage"]["files"][0]["contents"]
    assert contents["compression"] == "gzip" and contents["source"].startswith("data:;base64,")
    assert gzip.decompress(base64.b64decode(contents["source"].split(",", 1)[1])).decode() == text


def test_data_url_picks_the_shortest_encoding():
    binary = bytes(range(256))
    url, compression = make_data_url(binary, None, allow_compression=False)
    assert url == "data:;base64," + base64.b64encode(binary).decode() and compression == ""
    url, compression = make_data_url(b"a b", "gzip", allow_compression=True)  # the config compressed it already
    assert url == "data:,a%20b" and compression is None
    assert urllib.parse.unquote(make_data_url("é/x?y=1;z".encode(), None, allow_compression=True)[0][6:]) == "é/x?y=1;z"


@pytest.mark.parametrize("text, line, message", [
    pytest.param("variant: fcos\nversion: 1.9.0\n", 2, "unsupported variant/version fcos 1.9.0", id="unknown-version"),
    pytest.param("variant: rhcos\nversion: 0.1.0\n", 2, "unsupported variant/version rhcos 0.1.0", id="unknown-variant"),
    pytest.param("version: 1.0.0\n", 1, "variant: required", id="no-variant"),
    pytest.param("variant: fcos\nversion: 1.5.0\nstorage:\n  files:\n    - path: /a\n      contents:\n"
                 "        source: https://x/y\n        inline: z\n", 8,
                 "only one of the following can be set: inline, local, source", id="inline-and-source"),
    pytest.param("variant: fcos\nversion: 1.5.0\nstorage:\n  files:\n    - path: /a\n      contents:\n"
                 "        local: file.txt\n", 7, "needs Butane's --files-dir", id="local"),
    pytest.param("variant: fcos\nversion: 1.5.0\nstorage:\n  trees:\n    - local: dir\n", 4, "--files-dir", id="trees"),
    pytest.param("variant: fcos\nversion: 1.3.0\nkernel_arguments:\n  should_exist: [a]\n", 3,
                 "needs spec 3.3.0 or later", id="kernel-arguments-too-new"),
    pytest.param("variant: fcos\nversion: 1.5.0\nstorage:\n  filesystems:\n    - device: /dev/sda\n"
                 "      format: ext4\n      with_mount_unit: true\n", 7, "generates a mount unit", id="mount-unit"),
    pytest.param("variant: fcos\nversion: 1.5.0\nboot_device:\n  mirror: {devices: [/dev/a, /dev/b]}\n", 3,
                 "boot_device: not supported", id="boot-device"),
    pytest.param("variant: fcos\nversion: 1.5.0\nstorage:\n  files:\n    - path: relative\n", 5, "is not absolute",
                 id="relative-path"),
    pytest.param("variant: fcos\nversion: 1.5.0\nstorage:\n  files:\n    - path: /a\n      mode: '0644'\n", 6,
                 "expected an integer", id="quoted-mode"),
    pytest.param("variant: fcos\nversion: 1.5.0\nsystemd:\n  units:\n    - name: nosuffix\n", 5,
                 "invalid unit name", id="unit-suffix"),
    pytest.param("variant: fcos\nversion: 1.5.0\nsystemd:\n  units:\n    - name: a.service\n      dropins:\n"
                 "        - name: x\n", 7, "must end with .conf", id="dropin-suffix"),
    pytest.param("variant: fcos\nversion: 1.5.0\nstorage:\n  files:\n    - path: /a\n    - path: /a\n", 6,
                 "duplicate path", id="duplicate-path"),
    pytest.param("variant: fcos\nversion: 1.5.0\nstorage:\n  files:\n    - path: /a\n      contents:\n"
                 "        source: https://x\n        verification: {hash: md5-abc}\n", 8, "sha256-", id="bad-hash"),
    pytest.param("variant: fcos\nversion: 1.5.0\nsystemd:\n  units:\n    - name: a.service\n      enabled: maybe\n",
                 6, "expected true or false", id="bad-bool"),
    pytest.param("variant: fcos\nversion: 1.5.0\npasswd:\n  users:\n    - name: a\n  - broken\n", 6,
                 "invalid YAML", id="bad-yaml"),
])
def test_butane_errors_name_line_and_field(text, line, message):
    with pytest.raises(ButaneError) as raised:
        translate_butane(text)
    assert raised.value.line == line and message in str(raised.value), str(raised.value)


def test_unknown_keys_are_warnings_and_dropped():
    result = translate_butane("variant: fcos\nversion: 1.5.0\npasswd:\n  users:\n    - name: a\n      colour: red\n")
    assert result.config["passwd"] == {"users": [{"name": "a"}]}
    assert result.warnings == ("line 6: passwd.users[0].colour: unknown key, ignored",)
