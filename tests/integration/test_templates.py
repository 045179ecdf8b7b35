"""Templated configs through `bootd run`, `bootd render` and `bootd check`: matchbox's conformance rows 8, 9,
11 and 12 (research/matchbox.md §7), and a data dir laid out the way terraform-provider-matchbox writes it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bootd_process import BootdProcess
from tests.integration.test_http import fetch, run_cli, write

BUTANE_ROW8 = """\
variant: flatcar
version: 1.1.0
systemd:
  units:
    - name: {{.uuid}}.service
      contents: {{.pod_network}}
    - name: {{.request.query.foo}}.service
      contents: {{.request.raw_query}}
"""
GENERIC_ROW11 = "#foo-bar-baz template\nUUID={{.uuid}}\nSERVICE={{.service_name}}\nFOO={{.request.query.foo}}\n"
# terraform-provider-matchbox: matchbox_profile.container_linux_config -> ignition/<profile>.yaml.tmpl,
# matchbox_group.metadata -> flat string metadata
TERRAFORM_TMPL = """\
---
variant: flatcar
version: 1.0.0
passwd:
  users:
    - name: core
      ssh_authorized_keys:
        - "{{.ssh_authorized_key}}"
storage:
  files:
    - path: /etc/hostname
      mode: 0644
      contents:
        inline: {{.domain_name}}
{{- if index . "etcd_initial_cluster"}}
    - path: /etc/etcd/cluster
      contents:
        inline: "{{.etcd_initial_cluster}}"
{{- end}}
systemd:
  units:
    - name: kubelet.service
      enabled: true
      contents: |
        [Service]
        Environment=KUBELET_NODE={{.domain_name}}
"""
CONFIG = "http:\n  address: 127.0.0.1\n  port: 0\n  data_dir: {data}\n"


def make_templated_data_dir(root: Path) -> Path:
    data = root / "data"
    meta = {"pod_network": "10.2.0.0/16", "service_name": "etcd2"}
    write(data / "profiles/butane.json", {"id": "butane", "ignition_id": "butane.yaml", "generic_id": "generic.tmpl",
                                          "cloud_id": "cloud.tmpl"})
    write(data / "groups/test-group.json", {"id": "test-group", "profile": "butane", "selector": {"uuid": "a1b2c3d4"},
                                             "metadata": meta})
    write(data / "ignition/butane.yaml", BUTANE_ROW8)
    write(data / "generic/generic.tmpl", GENERIC_ROW11)
    write(data / "cloud/cloud.tmpl", "#cloud-config\nhostname: {{.uuid}}\n")
    # row 9 and 12: a template using a key the data does not have
    write(data / "profiles/missing.json", {"id": "missing", "ignition_id": "missing.yaml", "generic_id": "missing.tmpl"})
    write(data / "groups/missing.json", {"id": "missing", "profile": "missing", "selector": {"uuid": "missing"}})
    write(data / "ignition/missing.yaml", "variant: flatcar\nversion: 1.1.0\n# {{.missing_key}}\n")
    write(data / "generic/missing.tmpl", "a\nb={{.missing_key}}\n")
    # terraform-provider-matchbox's layout: one profile and template per role, one group per machine
    write(data / "profiles/worker.json", {"id": "worker", "ignition_id": "worker.yaml.tmpl", "boot": {
        "kernel": "/assets/flatcar/vmlinuz", "initrd": ["/assets/flatcar/initrd"], "args": ["flatcar.first_boot=yes"]}})
    write(data / "ignition/worker.yaml.tmpl", TERRAFORM_TMPL)
    for name, mac, cluster in (("node1", "52:54:00:a1:9c:01", "node1=http://10.0.0.1:2380"),
                               ("node2", "52:54:00:a1:9c:02", "")):
        write(data / f"groups/{name}.json", {"id": name, "profile": "worker", "selector": {"mac": mac}, "metadata": {
            "domain_name": f"{name}.example.com", "ssh_authorized_key": f"ssh-ed25519 AAAA {name}",
            "etcd_initial_cluster": cluster}})
    # broken ones: each serves a 404 and every other machine is still served
    for name, text in (("syntax", "variant: flatcar\nversion: 1.1.0\n{{if .uuid}}\n"),
                       ("version", "variant: flatcar\nversion: 9.9.9\n"),
                       ("notalist", "variant: flatcar\nversion: 1.1.0\n{{range .uuid}}{{.}}{{end}}\n"),
                       ("yaml", "variant: flatcar\nversion: 1.1.0\nstorage: [\n"),
                       ("invalid", "variant: flatcar\nversion: 1.1.0\nstorage:\n  files:\n    - path: etc/x\n")):
        write(data / f"profiles/{name}.json", {"id": name, "ignition_id": f"{name}.yaml"})
        write(data / f"groups/{name}.json", {"id": name, "profile": name, "selector": {"uuid": name}})
        write(data / f"ignition/{name}.yaml", text)
    return data


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("templates")
    data = make_templated_data_dir(root)
    (root / "bootd.yaml").write_text(CONFIG.format(data=data))
    bootd = BootdProcess(root / "bootd.yaml").start()
    bootd.root, bootd.data = root, data
    yield bootd
    assert bootd.stop() == 0


async def test_row8_butane_template_with_selectors_metadata_and_request(server):
    status, headers, body = await fetch(server, "/ignition?uuid=a1b2c3d4&foo=some-param&bar=b")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    config = json.loads(body)
    assert config["ignition"]["version"] == "3.4.0"
    assert config["systemd"]["units"] == [
        {"name": "a1b2c3d4.service", "contents": "10.2.0.0/16"},
        {"name": "some-param.service", "contents": "uuid=a1b2c3d4&foo=some-param&bar=b"}]


async def test_row11_generic(server):
    status, headers, body = await fetch(server, "/generic?uuid=a1b2c3d4&foo=some-param")
    assert (status, headers["Content-Type"]) == (200, "text/plain; charset=utf-8")
    assert body.decode() == "#foo-bar-baz template\nUUID=a1b2c3d4\nSERVICE=etcd2\nFOO=some-param\n"
    status, _, body = await fetch(server, "/cloud?uuid=a1b2c3d4")
    assert (status, body.decode()) == (200, "#cloud-config\nhostname: a1b2c3d4\n")


@pytest.mark.parametrize("path, reason", [
    pytest.param("/ignition?uuid=missing", 'ignition/missing.yaml:3: {{.missing_key}}: map has no entry for key '
                                           '"missing_key"', id="row9-ignition-missing-key"),
    pytest.param("/generic?uuid=missing", 'generic/missing.tmpl:2: {{.missing_key}}: map has no entry for key '
                                          '"missing_key"', id="row12-generic-missing-key"),
    pytest.param("/generic?uuid=a1b2c3d4", "request.query", id="row12-request-key-not-sent"),
    pytest.param("/ignition?uuid=syntax", "ignition/syntax.yaml:4: {{if .uuid}}: unexpected EOF", id="syntax"),
    pytest.param("/ignition?uuid=version", "unsupported variant/version flatcar 9.9.9", id="butane-version"),
    pytest.param("/ignition?uuid=notalist", "range can't iterate over notalist", id="range-over-string"),
    pytest.param("/ignition?uuid=yaml", "invalid YAML", id="bad-yaml"),
    pytest.param("/ignition?uuid=invalid", "line 5: storage.files[0].path: path 'etc/x' is not absolute",
                 id="invalid-translation"),
])
async def test_template_and_butane_errors_are_404s_with_file_line_and_reason(server, path, reason):
    status, _, body = await fetch(server, path)
    assert (status, body) == (404, b"404 page not found\n")
    line = server.wait_for_log(lambda l: l.get("ok") is False and reason in l.get("message", ""), timeout=5)
    assert line["stage"] in ("ignition", "generic")
    # and every other machine is still served
    status, _, _ = await fetch(server, "/ignition?uuid=a1b2c3d4&foo=x")
    assert status == 200


async def test_terraform_layout_serves_each_machine_its_own_ignition(server):
    configs = {}
    for name, mac in (("node1", "52-54-00-a1-9c-01"), ("node2", "52-54-00-a1-9c-02")):
        status, _, body = await fetch(server, f"/ignition?mac={mac}")
        assert status == 200, body
        configs[name] = json.loads(body)
    node1, node2 = configs["node1"], configs["node2"]
    assert node1["ignition"]["version"] == "3.4.0"  # flatcar 1.0.0 is spec 3.3.0, served as 3.4.0 like matchbox
    assert node1["passwd"]["users"] == [{"name": "core", "sshAuthorizedKeys": ["ssh-ed25519 AAAA node1"]}]
    assert node1["storage"]["files"] == [
        {"path": "/etc/hostname", "mode": 420, "contents": {"source": "data:,node1.example.com", "compression": ""}},
        {"path": "/etc/etcd/cluster", "contents": {"source": "data:,node1=http://10.0.0.1:2380", "compression": ""}}]
    assert [f["path"] for f in node2["storage"]["files"]] == ["/etc/hostname"]  # the `if` left it out
    assert node2["systemd"]["units"][0]["contents"] == "[Service]\nEnvironment=KUBELET_NODE=node2.example.com\n"


async def test_render_prints_what_the_route_serves(server):
    config = str(server.root / "bootd.yaml")
    for mac in ("52:54:00:a1:9c:01", "52:54:00:a1:9c:02"):
        result = run_cli("render", "-c", config, "--mac", mac, "ignition")
        assert result.returncode == 0, result.stderr
        _, _, served = await fetch(server, f"/ignition?mac={mac}")
        assert result.stdout.encode() == served
        assert f"group 'node{mac[-1]}'" in result.stderr and "chosen" in result.stderr
    result = run_cli("render", "-c", config, "--label", "uuid=a1b2c3d4", "--label", "foo=bar", "generic")
    assert result.stdout == "#foo-bar-baz template\nUUID=a1b2c3d4\nSERVICE=etcd2\nFOO=bar\n"
    result = run_cli("render", "-c", config, "--mac", "52:54:00:a1:9c:01", "ipxe")
    assert result.stdout == "#!ipxe\nkernel /assets/flatcar/vmlinuz flatcar.first_boot=yes\n" \
                            "initrd /assets/flatcar/initrd\nboot\n"
    result = run_cli("render", "-c", config, "--label", "uuid=missing", "ignition")
    assert result.returncode == 1 and 'map has no entry for key "missing_key"' in result.stderr
    result = run_cli("render", "-c", config, "--mac", "52:54:00:ff:ff:ff", "metadata")
    assert result.returncode == 1 and "no group matches" in result.stderr


def test_check_reports_template_errors_with_file_line_and_construct(tmp_path):
    data = make_templated_data_dir(tmp_path)
    write(data / "generic/named.tmpl", 'ok\n{{template "other" .}}\n')
    (tmp_path / "bootd.yaml").write_text(CONFIG.format(data=data))
    result = run_cli("check", "-c", str(tmp_path / "bootd.yaml"))
    assert result.returncode == 1, result.stdout
    assert "data dir: ignition/syntax.yaml:4: {{if .uuid}}: unexpected EOF" in result.stdout
    assert 'data dir: generic/named.tmpl:2: {{template "other" .}}: {{template}} is outside the template subset' \
        in result.stdout
