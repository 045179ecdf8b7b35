"""The read-write API through `bootd run` with real TLS: bootd's CLI, and a client generated from the
unmodified upstream .proto files making terraform-provider-matchbox's calls (tests/reference/matchbox_client.py,
in its own process). After each write the HTTP API serves the change; refused clients change nothing."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import urllib.request

from tests.bootd_process import BootdProcess

ROOT = Path(__file__).parents[2]


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "appliance", *args], capture_output=True, text=True, timeout=60,
                          input=stdin, cwd=ROOT)


def reference(bootd: BootdProcess, calls: list, *, cert: str | None = "client", ca: str = "ca") -> list[dict]:
    tls = bootd.root / "tls"
    argv = [sys.executable, "-m", "tests.reference.matchbox_client", "--endpoint", bootd.api_endpoint,
            "--ca", str(tls / f"{ca}.crt")]
    if cert:
        argv += ["--cert", str(tls / f"{cert}.crt"), "--key", str(tls / f"{cert}.key")]
    result = subprocess.run([*argv, "calls"], input=json.dumps(calls), capture_output=True, text=True, timeout=120,
                            cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def data_dir_digest(data: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(data.rglob("*")):
        digest.update(str(path.relative_to(data)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def http_get(bootd: BootdProcess, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(bootd.url(path), timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def start(root: Path, extra: str = "", port: int = 0) -> BootdProcess:
    (root / "bootd.yaml").write_text(
        f"http: {{address: 127.0.0.1, port: 0, data_dir: {root / 'data'}}}\n"
        f"api:\n  address: 127.0.0.1\n  port: {port}\n  cert_file: {root / 'tls/server.crt'}\n"
        f"  key_file: {root / 'tls/server.key'}\n  ca_file: {root / 'tls/ca.crt'}\n{extra}")
    bootd = BootdProcess(root / "bootd.yaml").start()
    bootd.root, bootd.data = root, root / "data"
    bootd.api_endpoint = next(a for a in bootd.addresses if a.startswith("grpcs://"))[len("grpcs://"):]
    return bootd


def make_certs(root: Path) -> None:
    result = cli("certs", "init", "--san", "DNS:matchbox.example.com,IP:127.0.0.1", "--out", str(root / "tls"))
    assert result.returncode == 0, result.stderr
    assert cli("certs", "client", "laptop", "--dir", str(root / "tls")).returncode == 0
    # a second CA with its own client, and an expired client of the right CA
    other = root / "other"
    assert cli("certs", "init", "--san", "IP:127.0.0.1", "--out", str(other)).returncode == 0
    for name in ("client.crt", "client.key"):
        (root / "tls" / f"other-{name}").write_bytes((other / name).read_bytes())
    from appliance.api.certs import issue, load_ca, write_pair

    ca_key, ca_cert = load_ca(root / "tls")
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=30)
    write_pair(root / "tls", "expired", *issue(ca_key, ca_cert, "expired", client=True, days=1, not_before=past),
               force=False)


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    (root / "data").mkdir()
    make_certs(root)
    bootd = start(root, "  max_message_bytes: 65536\n")
    yield bootd
    assert bootd.stop() == 0


def client_args(bootd: BootdProcess, name: str = "client") -> list[str]:
    tls = bootd.root / "tls"
    return ["--endpoint", bootd.api_endpoint, "--ca-file", str(tls / "ca.crt"), "--cert-file", str(tls / f"{name}.crt"),
            "--key-file", str(tls / f"{name}.key")]


# --- certificates ---------------------------------------------------------------------------------------

def test_certs_init_writes_keys_0600_and_usable_certificates(api):
    from cryptography import x509

    tls = api.root / "tls"
    for name in ("ca", "server", "client", "laptop"):
        assert (tls / f"{name}.key").stat().st_mode & 0o777 == 0o600
    server = x509.load_pem_x509_certificate((tls / "server.crt").read_bytes())
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["matchbox.example.com"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    again = cli("certs", "init", "--san", "IP:127.0.0.1", "--out", str(tls))
    assert again.returncode == 1 and "exists" in again.stderr  # never overwrites without --force
    assert cli("certs", "init", "--san", "URI:x", "--out", str(api.root / "x")).returncode == 1


# --- the CLI round-trips every kind ------------------------------------------------------------------------

def test_cli_round_trips_every_kind_and_http_serves_each_change(api, tmp_path):
    push = tmp_path / "push"
    (push / "profiles").mkdir(parents=True)
    (push / "groups").mkdir()
    (push / "ignition").mkdir()
    (push / "generic").mkdir()
    (push / "profiles/web.json").write_text(json.dumps({"id": "web", "ignition_id": "web.ign", "generic_id": "web.env",
                                                         "boot": {"kernel": "/k", "initrd": ["/i"], "args": ["a=b"]}}))
    (push / "groups/web1.json").write_text(json.dumps({"id": "web1", "profile": "web", "selector": {
        "mac": "52-54-00-00-00-11"}, "metadata": {"role": "web"}}))
    (push / "ignition/web.ign").write_text('{"ignition": {"version": "3.4.0"}}')
    (push / "generic/web.env").write_text("ROLE={{.role}}\n")
    result = cli("apply", *client_args(api), "-f", str(push))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("applied") == 4
    assert http_get(api, "/ipxe?mac=52:54:00:00:00:11") == (200, "#!ipxe\nkernel /k a=b\ninitrd /i\nboot\n")
    assert http_get(api, "/ignition?mac=52:54:00:00:00:11") == (200, '{"ignition":{"version":"3.4.0"}}')
    assert http_get(api, "/generic?mac=52:54:00:00:00:11") == (200, "ROLE=web\n")
    # get: lists and single objects, in matchbox's file format
    listed = cli("get", *client_args(api), "groups")
    assert "web1\tweb\tmac=52:54:00:00:00:11" in listed.stdout
    profile = json.loads(cli("get", *client_args(api), "profile", "web").stdout)
    assert profile["boot"] == {"kernel": "/k", "initrd": ["/i"], "args": ["a=b"]}
    assert cli("get", *client_args(api), "generic", "web.env").stdout == "ROLE={{.role}}\n"
    # a single file, recognised by its content
    (tmp_path / "web2.json").write_text(json.dumps({"id": "web2", "profile": "web", "selector": {"uuid": "w2"}}))
    assert cli("apply", *client_args(api, "laptop"), "-f", str(tmp_path / "web2.json")).returncode == 0
    assert http_get(api, "/ipxe?uuid=w2")[0] == 200
    # delete: gone for HTTP at once
    for kind, name in (("group", "web2"), ("generic", "web.env")):
        result = cli("delete", *client_args(api), kind, name)
        assert result.returncode == 0, result.stderr
    assert http_get(api, "/ipxe?uuid=w2")[0] == 404
    assert http_get(api, "/generic?mac=52:54:00:00:00:11")[0] == 404
    missing = cli("delete", *client_args(api), "group", "web2")
    assert missing.returncode == 1 and "UNKNOWN: group 'web2' does not exist" in missing.stderr
    assert str(api.data) not in missing.stderr  # no server paths in messages
    line = api.wait_for_log(lambda l: l.get("stage") == "data" and "group 'web1' written" in l.get("message", ""))
    assert "client 'bootd-client'" in line["message"]


# --- terraform-provider-matchbox's calls, from the upstream protos -------------------------------------------

def test_terraform_calls_from_upstream_protos(api):
    profile = {"id": "tf-worker", "ignition_id": "tf-worker.yaml.tmpl",
               "boot": {"kernel": "/assets/flatcar/vmlinuz", "initrd": ["/assets/flatcar/initrd"],
                        "args": ["initrd=initrd", "flatcar.first_boot=yes"]}}
    butane = "variant: flatcar\nversion: 1.0.0\nstorage:\n  files:\n    - path: /etc/hostname\n" \
             "      contents: {inline: '{{.domain_name}}'}\n"
    metadata = json.dumps({"domain_name": "tf1.example.com"}).encode()
    import base64

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    puts = [
        ["Profiles", "ProfilePut", {"profile": profile}],
        ["Ignition", "IgnitionPut", {"name": "tf-worker.yaml.tmpl", "config": b64(butane.encode())}],
        ["Generic", "GenericPut", {"name": "tf-worker", "config": b64(b"generic {{.domain_name}}\n")}],
        ["Groups", "GroupPut", {"group": {"id": "tf1", "profile": "tf-worker", "selector": {"mac": "52:54:00:00:00:21"},
                                          "metadata": b64(metadata)}}],
    ]
    assert all("ok" in r for r in reference(api, puts)), reference
    got = reference(api, [["Profiles", "ProfileGet", {"id": "tf-worker"}],
                          ["Ignition", "IgnitionGet", {"name": "tf-worker.yaml.tmpl"}],
                          ["Generic", "GenericGet", {"name": "tf-worker"}],
                          ["Groups", "GroupGet", {"id": "tf1"}],
                          ["Select", "SelectProfile", {"labels": {"mac": "52-54-00-00-00-21"}}],
                          ["Select", "SelectGroup", {"labels": {"mac": "52:54:00:ff:ff:ff"}}]])
    assert got[0]["ok"]["profile"] == profile
    assert base64.b64decode(got[1]["ok"]["config"]).decode() == butane
    assert base64.b64decode(got[2]["ok"]["config"]) == b"generic {{.domain_name}}\n"
    assert got[3]["ok"]["group"]["selector"] == {"mac": "52:54:00:00:00:21"}
    assert json.loads(base64.b64decode(got[3]["ok"]["group"]["metadata"])) == {"domain_name": "tf1.example.com"}
    assert got[4]["ok"]["profile"]["id"] == "tf-worker"
    assert got[5] == {"code": "NOT_FOUND", "details": "matchbox: No matching Group"}
    status, body = http_get(api, "/ignition?mac=52:54:00:00:00:21")
    assert status == 200 and json.loads(body)["storage"]["files"][0]["contents"]["source"] == "data:,tf1.example.com"
    deleted = reference(api, [["Groups", "GroupDelete", {"id": "tf1"}],
                              ["Ignition", "IgnitionDelete", {"name": "tf-worker.yaml.tmpl"}],
                              ["Generic", "GenericDelete", {"name": "tf-worker"}],
                              ["Profiles", "ProfileDelete", {"id": "tf-worker"}],
                              ["Profiles", "ProfileGet", {"id": "tf-worker"}]])
    assert all("ok" in r for r in deleted[:4])
    assert deleted[4]["code"] == "UNKNOWN"  # Terraform reads any Get error as "deleted"
    assert http_get(api, "/ignition?mac=52:54:00:00:00:21")[0] == 404


@pytest.mark.parametrize("calls, code, details", [
    pytest.param([["Groups", "GroupPut", {"group": {"id": "g", "profile": "p", "metadata": "bm90IGpzb24="}}]],
                 "UNKNOWN", "metadata is not valid JSON", id="invalid-json-metadata"),
    pytest.param([["Groups", "GroupPut", {"group": {"id": "g"}}]], "UNKNOWN", "profile is required",
                 id="group-without-profile"),
    pytest.param([["Profiles", "ProfilePut", {"profile": {"name": "no id"}}]], "UNKNOWN", "id is required",
                 id="profile-without-id"),
    pytest.param([["Profiles", "ProfilePut", {"profile": {"id": "../groups/x"}}]], "UNKNOWN", "slash is not allowed",
                 id="slash-in-id"),
    pytest.param([["Ignition", "IgnitionPut", {"name": "../profiles/x.json", "config": ""}]], "UNKNOWN",
                 "'..'", id="dotdot"),
    pytest.param([["Ignition", "IgnitionPut", {"name": "a\u0000b", "config": ""}]], "UNKNOWN", "NUL",
                 id="nul"),
    pytest.param([["Generic", "GenericPut", {"name": "/etc/passwd", "config": ""}]], "UNKNOWN", "empty", id="absolute"),
    pytest.param([["Groups", "GroupPut", {"group": {"id": "g", "profile": "p", "selector": {"mac": "nope"}}}]],
                 "UNKNOWN", "invalid MAC address", id="bad-mac-selector"),
    pytest.param([["Ignition", "IgnitionPut", {"name": "big.ign", "config": "eHh4" * 30000}]],  # 90 KB > 64 KiB
                 "RESOURCE_EXHAUSTED", "", id="message-too-large"),
])
def test_bad_writes_are_clear_errors_and_change_nothing(api, calls, code, details):
    before = data_dir_digest(api.data)
    result, = reference(api, calls)
    assert result.get("code") == code and details in result.get("details", ""), result
    assert str(api.root) not in result.get("details", "")
    assert data_dir_digest(api.data) == before


def test_a_group_whose_profile_is_missing_is_accepted_and_check_warns(api):
    result, = reference(api, [["Groups", "GroupPut", {"group": {"id": "orphan", "profile": "nowhere"}}]])
    assert "ok" in result
    check = cli("check", "-c", str(api.root / "bootd.yaml"))
    assert "group 'orphan': profile 'nowhere' is missing" in check.stdout
    reference(api, [["Groups", "GroupDelete", {"id": "orphan"}]])


@pytest.mark.parametrize("cert, ca", [
    pytest.param(None, "ca", id="no-client-certificate"),
    pytest.param("other-client", "ca", id="another-ca"),
    pytest.param("expired", "ca", id="expired"),
    pytest.param("server", "ca", id="server-certificate-as-client"),
])
def test_refused_clients_read_and_write_nothing(api, cert, ca):
    before = data_dir_digest(api.data)
    results = reference(api, [["Profiles", "ProfilePut", {"profile": {"id": "intruder"}}],
                              ["Profiles", "ProfileList", {}]], cert=cert, ca=ca)
    assert [r.get("code") for r in results] == ["UNAVAILABLE", "UNAVAILABLE"], results
    assert data_dir_digest(api.data) == before
    assert not (api.data / "profiles/intruder.json").exists()


def test_http_api_never_writes(api):
    before = data_dir_digest(api.data)
    for method in ("PUT", "POST", "DELETE"):
        request = urllib.request.Request(api.url("/ignition?uuid=x"), method=method, data=b"{}")
        try:
            urllib.request.urlopen(request, timeout=5)
        except urllib.error.HTTPError as exc:
            assert exc.code == 405
    assert data_dir_digest(api.data) == before


def test_missing_certificate_files_stop_the_start_with_the_file_named(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "bootd.yaml").write_text(f"http: {{data_dir: {tmp_path / 'data'}}}\napi:\n  ca_file: {tmp_path}/no-ca.crt\n")
    result = cli("run", "-c", str(tmp_path / "bootd.yaml"))
    assert result.returncode == 2 and f"api.ca_file: {tmp_path}/no-ca.crt does not exist" in result.stderr


# --- crash safety --------------------------------------------------------------------------------------------

def test_kill_9_during_1000_writes_leaves_every_file_old_or_new(tmp_path):
    (tmp_path / "data").mkdir()
    make_certs(tmp_path)
    bootd = start(tmp_path)
    endpoint, port = bootd.api_endpoint, int(bootd.api_endpoint.rsplit(":", 1)[1])
    bootd.stop()  # a fixed port from here on, so the writer reconnects to the restarted daemon
    bootd = start(tmp_path, port=port)
    data = tmp_path / "data"
    sent = {f"node{n}": {i for i in range(1000) if i % 5 == n} for n in range(5)}
    tls = tmp_path / "tls"
    writer = subprocess.Popen([sys.executable, "-m", "tests.reference.matchbox_client", "--endpoint", endpoint,
                               "--ca", str(tls / "ca.crt"), "--cert", str(tls / "client.crt"), "--key",
                               str(tls / "client.key"), "stream", "--count", "1000", "--names", "5"],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    kills = 0
    rng = random.Random(9)
    try:
        acked = []
        deadline = time.monotonic() + 240
        while writer.poll() is None and time.monotonic() < deadline:
            time.sleep(rng.uniform(0.2, 1.5))
            if writer.poll() is not None or kills >= 6:
                continue
            os.kill(bootd.proc.pid, signal.SIGKILL)  # at a random moment of the stream
            bootd.proc.wait()
            kills += 1
            bootd = start(tmp_path, port=port)
            check_old_or_new(data, sent)
        out, _ = writer.communicate(timeout=240)
        acked = [json.loads(line) for line in out.splitlines()]
        assert writer.returncode == 0 and len(acked) == 1000 and "gave_up" not in out, out[-500:]
        assert kills >= 3
    finally:
        if writer.poll() is None:
            writer.kill()
        bootd.stop()
    for n in range(5):  # the last write of each name was acknowledged, so it is what the file holds
        config = json.loads((data / f"ignition/node{n}.ign").read_text())
        assert config["version"] == max(sent[f"node{n}"])
        profile = json.loads((data / f"profiles/node{n}.json").read_text())
        assert profile == {"id": f"node{n}", "ignition_id": f"v{max(sent[f'node{n}'])}"}
    print(f"{kills} kills during 1000 acknowledged write pairs")


def check_old_or_new(data: Path, sent: dict[str, set[int]]) -> None:
    """Right after a restart: every file parses and holds one of the versions sent for its name; no
    partial temp file is left (the restart swept them)."""
    for path in (data / "ignition").glob("*.ign"):
        assert json.loads(path.read_text())["version"] in sent[path.stem]
    for path in (data / "profiles").glob("*.json"):
        profile = json.loads(path.read_text())
        assert int(profile["ignition_id"][1:]) in sent[path.stem]
    leftovers = [p.name for p in data.rglob(".*") if p.is_file()]
    assert leftovers == [], leftovers
