"""The etcd store (store.backend etcd) through its real interfaces: `bootd store import/export` (the CLI),
`bootd run` daemons serving HTTP from one real etcd 3.4 cluster (tests/etcd_cluster.py), and writes through a
daemon's mTLS gRPC API by a client generated from matchbox's own .proto files (tests/reference)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.bootd_process import BootdProcess
from tests.etcd_cluster import EtcdCluster, etcd_cluster  # noqa: F401 - the fixture

ROOT = Path(__file__).parents[2]
MAC = "52:54:00:00:18:01"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "appliance", *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT)


def store_yaml(cluster: EtcdCluster, extra: str = "") -> str:
    endpoints = ", ".join(cluster.endpoints)
    return f"store:\n  backend: etcd\n  endpoints: [{endpoints}]\n  prefix: /bootd\n  timeout: 2\n{extra}"


def write_config(root: Path, cluster: EtcdCluster, *, tls: Path | None = None, extra: str = "") -> Path:
    (root / "data").mkdir(parents=True, exist_ok=True)
    text = f"http: {{address: 127.0.0.1, port: 0, data_dir: {root / 'data'}}}\n" + store_yaml(cluster, extra)
    if tls is not None:  # the read-write API, with these certificates
        text += (f"api:\n  address: 127.0.0.1\n  port: 0\n  cert_file: {tls / 'server.crt'}\n"
                 f"  key_file: {tls / 'server.key'}\n  ca_file: {tls / 'ca.crt'}\n")
    (root / "bootd.yaml").write_text(text)
    return root / "bootd.yaml"


def matchbox_data(root: Path, groups: int = 3) -> Path:
    """A matchbox data dir: profiles, groups (more than one etcd txn holds), Butane, raw Ignition, generic,
    cloud, a nested template name, and assets/ (which stays on disk)."""
    for sub in ("profiles", "groups", "ignition/nested", "generic", "cloud", "assets"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "profiles/worker.json").write_bytes(json.dumps(
        {"id": "worker", "ignition_id": "worker.yaml", "generic_id": "worker.txt",
         "boot": {"kernel": "/assets/kernel-v1", "initrd": ["/assets/initrd"], "args": ["console=ttyS0"]}},
        indent="\t").encode())
    (root / "profiles/other.json").write_bytes(b'{"id":"other","boot":{"kernel":"/assets/other"}}\n')
    (root / "groups/worker.json").write_bytes(json.dumps(
        {"id": "worker", "profile": "worker", "selector": {"mac": MAC}, "metadata": {"domain": "w.example"}}).encode())
    for i in range(groups):
        (root / f"groups/g{i:03}.json").write_bytes(json.dumps(
            {"id": f"g{i:03}", "profile": "other", "selector": {"mac": f"52:54:00:01:{i // 256:02x}:{i % 256:02x}"}}
        ).encode())
    (root / "ignition/worker.yaml").write_bytes(b"variant: flatcar\nversion: 1.0.0\nstorage:\n  files:\n"
                                                b"    - path: /etc/hostname\n      contents: {inline: '{{.domain}}'}\n")
    (root / "ignition/raw.ign").write_bytes(b'{"ignition": {"version": "3.3.0"}}')
    (root / "ignition/nested/deep.yaml").write_bytes(b"variant: fcos\nversion: 1.4.0\n")
    (root / "generic/worker.txt").write_bytes(b"generic for {{.domain}}\n\xe2\x9c\x93 trailing bytes \t\n")
    (root / "cloud/worker.yaml").write_bytes(b"#cloud-config\nhostname: {{.domain}}\n")
    (root / "assets/kernel-v1").write_bytes(b"\x7fELF not really")
    return root


def tree(root: Path, skip: tuple[str, ...] = ("assets",)) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] not in skip}


def http_get(bootd: BootdProcess, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(bootd.url(path), timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def reference(bootd: BootdProcess, tls: Path, calls: list) -> list[dict]:
    """matchbox's gRPC calls through the reference client (its own process), over mTLS."""
    argv = [sys.executable, "-m", "tests.reference.matchbox_client", "--endpoint", bootd.api_endpoint,
            "--ca", str(tls / "ca.crt"), "--cert", str(tls / "client.crt"), "--key", str(tls / "client.key"), "calls"]
    result = subprocess.run(argv, input=json.dumps(calls), capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def start_bootd(config: Path) -> BootdProcess:
    bootd = BootdProcess(config).start()
    grpcs = [a for a in bootd.addresses if a.startswith("grpcs://")]
    bootd.api_endpoint = grpcs[0][len("grpcs://"):] if grpcs else None
    return bootd


def put_profile(kernel: str) -> list:
    profile = {"id": "worker", "ignition_id": "worker.yaml", "generic_id": "worker.txt",
               "boot": {"kernel": kernel, "initrd": ["/assets/initrd"], "args": ["console=ttyS0"]}}
    return [["Profiles", "ProfilePut", {"profile": profile}]]


# --- import / export ------------------------------------------------------------------------------------

def test_import_then_export_gives_the_same_bytes_back_and_a_second_import_replaces_all(tmp_path, etcd_cluster):  # noqa: F811
    cluster = etcd_cluster(size=1)
    config = write_config(tmp_path / "cli", cluster)
    data = matchbox_data(tmp_path / "matchbox", groups=150)  # 150 + 8 files: more than one transaction holds
    for i in range(4):  # 1.6 MB of raw Ignition: more bytes than one etcd request takes
        (data / f"ignition/big{i}.ign").write_bytes(b'{"ignition": {"version": "3.3.0"}, "pad": "%s"}' % (
            b"x" * 400_000))
    imported = cli("store", "import", str(data), "-c", str(config))
    assert imported.returncode == 0, imported.stderr
    assert "imported 162 files" in imported.stdout and "skipped assets/" in imported.stdout
    out = tmp_path / "exported"
    exported = cli("store", "export", str(out), "-c", str(config))
    assert exported.returncode == 0, exported.stderr
    assert tree(out) == tree(data)  # byte for byte, every file, the same names
    assert not (out / "assets").exists()
    # a second import replaces everything at once: what it lacks is gone, the old generation is deleted
    smaller = matchbox_data(tmp_path / "smaller", groups=1)
    (smaller / "cloud/worker.yaml").unlink()
    assert cli("store", "import", str(smaller), "-c", str(config)).returncode == 0
    again = tmp_path / "again"
    assert cli("store", "export", str(again), "-c", str(config)).returncode == 0
    assert tree(again) == tree(smaller)
    keys = cluster.etcdctl(0, "get", "/bootd/data/", "--prefix", "--keys-only").stdout.split()
    assert len(keys) == len(tree(smaller)) + 2  # the live generation's files, the pointer, `written`: nothing else
    # export refuses a directory that holds something
    refused = cli("store", "export", str(again), "-c", str(config))
    assert refused.returncode == 1 and "not an empty directory" in refused.stderr


def test_an_import_with_bad_files_writes_nothing_and_names_each(tmp_path, etcd_cluster):  # noqa: F811
    cluster = etcd_cluster(size=1)
    config = write_config(tmp_path / "cli", cluster)
    good = matchbox_data(tmp_path / "good")
    assert cli("store", "import", str(good), "-c", str(config)).returncode == 0
    before = cluster.etcdctl(0, "get", "/bootd/", "--prefix", "-w", "json").stdout
    bad = matchbox_data(tmp_path / "bad", groups=200)
    (bad / "profiles/broken.json").write_bytes(b'{"id": "broken",')
    (bad / "groups/badmac.json").write_bytes(b'{"id": "badmac", "profile": "worker", "selector": {"mac": "nope"}}')
    (bad / "generic/broken.tmpl").write_bytes(b"{{ if .x }} never closed\n")
    (bad / "groups/sub").mkdir()
    (bad / "ignition/huge.ign").write_bytes(b"{}" + b" " * 1_500_000)  # more than etcd takes in one value
    refused = cli("store", "import", str(bad), "-c", str(config))
    assert refused.returncode == 1
    for name in ("profiles/broken.json", "groups/badmac.json", "generic/broken.tmpl", "groups/sub",
                 "ignition/huge.ign: 1500002 bytes"):
        assert name in refused.stderr, refused.stderr
    assert "nothing was written (5 bad files)" in refused.stderr
    after = cluster.etcdctl(0, "get", "/bootd/", "--prefix", "-w", "json").stdout
    assert json.loads(after)["kvs"] == json.loads(before)["kvs"]  # not one key written, moved or removed
    assert json.loads(after)["header"]["revision"] == json.loads(before)["header"]["revision"]
    # bootd render shows what the replicas would serve from etcd
    rendered = cli("render", "-c", str(config), "--mac", MAC, "ipxe")
    assert rendered.returncode == 0 and "kernel /assets/kernel-v1" in rendered.stdout, rendered.stderr
    # bootd check reads the store's data in etcd: an edit made there behind bootd's back is found
    assert cli("check", "-c", str(config)).returncode == 0
    generation = cluster.etcdctl(0, "get", "/bootd/data/current", "--print-value-only").stdout.strip()
    assert cluster.etcdctl(0, "put", f"/bootd/data/{generation}/generic/edited.tmpl", "{{ if .x }}").returncode == 0
    checked = cli("check", "-c", str(config))
    assert checked.returncode == 1 and "etcd /bootd/data/: generic/edited.tmpl" in checked.stdout, checked.stdout


# --- replicas on one cluster ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("etcd-api") / "tls"
    made = cli("certs", "init", "--san", "IP:127.0.0.1", "--out", str(out))
    assert made.returncode == 0, made.stderr
    return out


def test_two_replicas_serve_an_edit_made_through_either_api_at_the_next_request(tmp_path, etcd_cluster, tls):  # noqa: F811
    cluster = etcd_cluster(size=3)
    a_config = write_config(tmp_path / "a", cluster, tls=tls)
    b_config = write_config(tmp_path / "b", cluster, tls=tls)
    assert cli("store", "import", str(matchbox_data(tmp_path / "matchbox")), "-c", str(a_config)).returncode == 0
    a, b = start_bootd(a_config), start_bootd(b_config)
    try:
        for bootd in (a, b):
            status, script = http_get(bootd, f"/ipxe?mac={MAC}")
            assert status == 200 and "kernel /assets/kernel-v1" in script
        # written through A's API, served by B at the very next request (no wait in between)
        assert all("ok" in r for r in reference(a, tls, put_profile("/assets/kernel-v2")))
        assert "kernel /assets/kernel-v2" in http_get(b, f"/ipxe?mac={MAC}")[1]
        assert "kernel /assets/kernel-v2" in http_get(a, f"/ipxe?mac={MAC}")[1]
        # and the templates too: an Ignition edit through B, rendered by A
        butane = b"variant: flatcar\nversion: 1.0.0\nstorage:\n  files:\n    - path: /etc/motd\n" \
                 b"      contents: {inline: 'edited {{.domain}}'}\n"
        done = reference(b, tls, [["Ignition", "IgnitionPut", {"name": "worker.yaml",
                                                               "config": base64.b64encode(butane).decode()}]])
        assert "ok" in done[0]
        status, body = http_get(a, f"/ignition?mac={MAC}")
        assert status == 200 and json.loads(body)["storage"]["files"][0]["path"] == "/etc/motd"

        # one member killed (kill -9): nothing stops; writes and reads go on through the others
        cluster.kill(0)
        done = reference(b, tls, put_profile("/assets/kernel-v3"))
        assert all("ok" in r for r in done), done
        assert "kernel /assets/kernel-v3" in http_get(a, f"/ipxe?mac={MAC}")[1]
        cluster.restart(0)

        # a member that hangs without closing its connections (SIGSTOP): the replicas move their reads,
        # writes and watches to the others; B serves A's write once its watch has moved (bounded)
        cluster.pause(1)
        cluster.pause(0)  # and the one both replicas' clients talk to first
        cluster.resume(1)
        assert all("ok" in r for r in reference(a, tls, put_profile("/assets/kernel-v3b")))
        deadline = time.monotonic() + 20
        while "kernel /assets/kernel-v3b" not in http_get(b, f"/ipxe?mac={MAC}")[1]:
            assert time.monotonic() < deadline, "B never served the write made while a member hung"
            time.sleep(0.2)
        assert "kernel /assets/kernel-v3b" in http_get(a, f"/ipxe?mac={MAC}")[1]
        cluster.resume(0)
        cluster.wait_healthy()

        # etcd stopped altogether: reads serve from the copy, API writes fail naming the endpoints
        cluster.stop_all()
        mark = len(a.lines)
        status, script = http_get(a, f"/ipxe?mac={MAC}")
        assert status == 200 and "kernel /assets/kernel-v3b" in script
        a.wait_for_log(lambda line: line.get("message", "").startswith("store: etcd unreachable"), start=mark)
        assert http_get(a, f"/ipxe?mac={MAC}")[0] == 200
        failed = reference(a, tls, put_profile("/assets/kernel-v4"))
        assert failed[0]["code"] == "UNAVAILABLE", failed
        for endpoint in cluster.endpoints:
            assert endpoint in failed[0]["details"]
        said = [line["message"] for line in a.lines[mark:] if line.get("message", "").startswith("store: etcd unr")]
        assert len(said) == 1, said  # said once per outage, not per request

        # etcd back: writes work again and every replica follows (the watch resumed on its own)
        cluster.start_all()
        assert all("ok" in r for r in reference(a, tls, put_profile("/assets/kernel-v5")))
        assert "kernel /assets/kernel-v5" in http_get(b, f"/ipxe?mac={MAC}")[1]
        assert "kernel /assets/kernel-v5" in http_get(a, f"/ipxe?mac={MAC}")[1]
        a.wait_for_log(lambda line: "etcd answers again" in line.get("message", ""), start=mark)
    finally:
        assert a.stop() == 0
        assert b.stop() == 0


async def test_fresh_brings_a_write_the_watch_has_not_delivered_yet(etcd_cluster):  # noqa: F811
    """The mirror's watch resumed from an older revision (after an outage) has not sent the writes made since:
    etcd 3.4.23 answers a progress request on such a watch with its current revision before those events
    (etcd-io/etcd#15220), which once served the old profile. fresh() proves the copy current by reads instead:
    puts, deletes and a generation switch are there right after it, with no watch running at all."""
    from appliance.etcd import EtcdClient
    from appliance.store.etcd_store import EtcdMirror, EtcdWriter, Layout, import_files

    cluster = etcd_cluster(size=1)
    layout = Layout("/bootd")
    async with EtcdClient(cluster.endpoints, timeout=3) as client:
        writer = EtcdWriter(client, layout, asyncio.get_running_loop())  # its coroutines, awaited here
        await import_files(client, layout, {"profiles/a.json": b'{"id":"a"}', "groups/old.json": b"{}",
                                            "generic/t": b"1"})
        mirror = EtcdMirror(client, layout)
        await mirror.load()
        assert await mirror.fresh()  # nothing written since
        await writer._put("profiles/a.json", b'{"id":"a","v":2}')
        await writer._delete("groups/old.json")
        await client.put("/bootd/machines/x", b"elsewhere")  # etcd's revision runs ahead of the data's
        assert await mirror.fresh()
        files = mirror.view.files
        assert files["profiles/a.json"].data == b'{"id":"a","v":2}' and "groups/old.json" not in files
        done = await import_files(client, layout, {"profiles/b.json": b'{"id":"b"}'})
        assert await mirror.fresh()
        assert set(mirror.view.files) == {"profiles/b.json"} and mirror.view.generation == done.generation
        # the watch, resumed from where load() left it, delivers all of that again: skipped, nothing undone
        mirror.start()
        try:
            await writer._put("generic/t", b"2")
            assert await mirror.fresh() and mirror.view.files["generic/t"].data == b"2"
            view = mirror.view
            deadline = asyncio.get_running_loop().time() + 30
            while mirror._watched < mirror.revision:  # the watch delivers everything since load(), in order
                assert asyncio.get_running_loop().time() < deadline, "the watch never caught up"
                await asyncio.sleep(0.05)
            assert mirror.view is view  # every event was already in the copy: none applied again
        finally:
            await mirror.stop()


# --- etcd unreachable at start ----------------------------------------------------------------------------

def test_unreachable_at_start_refuses_naming_the_endpoint_or_waits_until_it_answers(tmp_path, etcd_cluster):  # noqa: F811
    cluster = etcd_cluster(size=1)
    cluster.stop_all()
    refuse = write_config(tmp_path / "refuse", cluster, extra="  on_unreachable: refuse\n")
    refused = cli("run", "-c", str(refuse))
    assert refused.returncode == 2
    assert cluster.endpoints[0] in refused.stderr and "cannot connect" in refused.stderr, refused.stderr
    assert "on_unreachable: refuse" in refused.stderr

    waiting = BootdProcess(write_config(tmp_path / "wait", cluster))  # on_unreachable: wait (the default)
    try:
        _start_without_waiting(waiting)
        first = waiting.wait_for_log(lambda line: "waiting for it (attempt 1," in line.get("message", ""), timeout=20)
        assert cluster.endpoints[0] in first["message"] and "cannot connect" in first["message"]
        waiting.wait_for_log(lambda line: "waiting for it (attempt 2," in line.get("message", ""), timeout=20)
        # stopped while it waits: a clean exit (systemctl stop is not a failure)
        assert waiting.stop() == 0
        mark = len(waiting.lines)
        _start_without_waiting(waiting)
        waiting.wait_for_log(lambda line: "waiting for it (attempt 1," in line.get("message", ""), timeout=20,
                             start=mark)
        cluster.start_all()
        ready = waiting.wait_for_log(lambda line: line.get("message", "").startswith("bootd ready"), timeout=30)
        waiting.addresses = ready["addresses"].split(",")
        assert http_get(waiting, f"/ipxe?mac={MAC}")[0] == 404  # serving (an empty store selects nobody)
        # an import into the running store is served at the next request
        assert cli("store", "import", str(matchbox_data(tmp_path / "matchbox")), "-c", str(waiting.config)).returncode == 0
        assert "kernel /assets/kernel-v1" in http_get(waiting, f"/ipxe?mac={MAC}")[1]
        # a reload (SIGHUP) keeps the store and takes the config's machines as groups over it
        machine = "52:54:00:00:18:99"
        with waiting.config.open("a") as f:
            f.write(f"machines:\n  - {{name: m1, mac: '{machine}', profile: other}}\n")
        mark = len(waiting.lines)
        waiting.send(signal.SIGHUP)
        waiting.wait_for_log(lambda line: line.get("message", "").startswith("reloaded"), timeout=20, start=mark)
        assert "kernel /assets/other" in http_get(waiting, f"/ipxe?mac={machine}")[1]
        assert "kernel /assets/kernel-v1" in http_get(waiting, f"/ipxe?mac={MAC}")[1]
    finally:
        assert waiting.stop() == 0


def _start_without_waiting(bootd: BootdProcess) -> BootdProcess:
    """BootdProcess.start without its wait for "bootd ready" (this daemon waits for etcd first)."""
    bootd.proc = subprocess.Popen(bootd.argv, start_new_session=True, stderr=subprocess.PIPE,
                                  stdout=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    BootdProcess.live.add(bootd)
    bootd._reader = threading.Thread(target=bootd._read, daemon=True)
    bootd._reader.start()
    return bootd


# --- TLS to etcd, and the config section ------------------------------------------------------------------

def test_tls_with_a_client_certificate_and_without_one(tmp_path, tls):
    from tests.etcd_cluster import ServerTls

    cluster = EtcdCluster(tmp_path / "etcd", 1, tls=ServerTls(ca=tls / "ca.crt", cert=tls / "server.crt",
                                                              key=tls / "server.key", client_cert=tls / "client.crt",
                                                              client_key=tls / "client.key"))
    with cluster:
        assert cluster.endpoints[0].startswith("https://")
        good = write_config(tmp_path / "good", cluster, extra=f"  tls: {{ca: {tls / 'ca.crt'}, cert: "
                                                              f"{tls / 'client.crt'}, key: {tls / 'client.key'}}}\n")
        assert cli("store", "import", str(matchbox_data(tmp_path / "matchbox")), "-c", str(good)).returncode == 0
        bootd = start_bootd(good)
        try:
            status, script = http_get(bootd, f"/ipxe?mac={MAC}")
            assert status == 200 and "kernel /assets/kernel-v1" in script
        finally:
            assert bootd.stop() == 0
        # no client certificate: etcd refuses the handshake; bootd says which endpoint and refuses to start
        bare = write_config(tmp_path / "bare", cluster, extra=f"  tls: {{ca: {tls / 'ca.crt'}}}\n"
                                                              "  on_unreachable: refuse\n")
        refused = cli("run", "-c", str(bare))
        assert refused.returncode == 2 and cluster.endpoints[0] in refused.stderr, refused.stderr


def test_store_section_errors_name_file_line_and_field(tmp_path):
    config = tmp_path / "bootd.yaml"
    (tmp_path / "data").mkdir()
    config.write_text(f"http: {{data_dir: {tmp_path / 'data'}}}\n"
                      "store:\n"
                      "  backend: etcd\n"
                      "  endpoints:\n"
                      "    - http://127.0.0.1:2379\n"
                      "    - not a url\n"
                      "    - https://etcd2:2379\n"
                      "  prefix: bootd\n"
                      "  on_unreachable: maybe\n"
                      "  tls: {cert: c.pem}\n")
    checked = cli("check", "-c", str(config))
    assert checked.returncode == 1
    for line in ("bootd.yaml:6: store.endpoints[1]: 'not a url'", "bootd.yaml:8: store.prefix: 'bootd'",
                 "bootd.yaml:9: store.on_unreachable: 'maybe' is not one of: wait, refuse",
                 "bootd.yaml:10: store.tls.ca: required"):
        assert line in checked.stderr, checked.stderr
    config.write_text(f"http: {{data_dir: {tmp_path / 'data'}}}\nstore:\n  backend: etcd\n")
    checked = cli("check", "-c", str(config))
    assert "bootd.yaml:3: store.endpoints: required with backend etcd" in checked.stderr, checked.stderr
    config.write_text(f"http: {{data_dir: {tmp_path / 'data'}}}\nstore:\n  endpoints: [h:1]\n")
    checked = cli("check", "-c", str(config))
    assert "bootd.yaml:3: store.endpoints: only with backend: etcd" in checked.stderr, checked.stderr
