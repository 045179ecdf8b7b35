"""The daemon's assets tracker (`assets: {track: [...], check: ...}`, the interval shortened to 1 s) against
the tests' mirror: it fetches the channel at start, switches to a newly published version, refuses a
tampered one (an `assets` event with ok false names the file; /assets/ keeps serving the old version), and
serves through the channel pointer; plus HTTPS with the system CA store and a proxy from the environment."""

from __future__ import annotations

import json
import os
import signal
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from appliance.api.certs import init as make_certificates
from tests.assets_mirror import Mirror, SigningKey, publish_flatcar
from tests.bootd_process import BootdProcess
from tests.integration.test_assets import ENV, INITRD, KERNEL, fetch, flatcar_files, stable


@pytest.fixture(scope="module")
def key():
    key = SigningKey()
    yield key
    key.close()


def point_current(mirror_root: Path, version: str) -> None:
    link = mirror_root / "stable/amd64-usr/current"
    temp = link.with_name("current.new")
    temp.symlink_to(version)
    os.replace(temp, link)


def get(bootd: BootdProcess, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(bootd.url(path), timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def assets_line(text: str, ok: bool = True):
    return lambda line: line.get("stage") == "assets" and line.get("ok") is ok and text in line.get("message", "")


def test_the_tracker_switches_to_a_new_version_and_refuses_a_tampered_one(tmp_path, key):
    mirror = Mirror(tmp_path / "mirror").start()
    try:
        publish_flatcar(mirror.root, key, "1.0.0", flatcar_files("1.0.0"))
        data = tmp_path / "data"
        (data / "assets").mkdir(parents=True)
        (tmp_path / "bootd.yaml").write_text(
            f"state_dir: {tmp_path / 'state'}\nhttp: {{address: 127.0.0.1, port: 0, data_dir: {data}}}\n"
            f"assets:\n  check: 1s\n  track:\n"
            f"    - {{os: flatcar, channel: stable, arch: amd64, mirror: '{mirror.url}', keyring: {key.public}}}\n")
        bootd = BootdProcess(tmp_path / "bootd.yaml").start()
        try:
            bootd.wait_for_log(assets_line("flatcar/amd64/stable: switched to 1.0.0 (was nothing), verified by key "
                                           + key.fingerprint), timeout=30)
            assert get(bootd, f"/assets/flatcar/amd64/stable/{KERNEL}") == (200, flatcar_files("1.0.0")[KERNEL])

            # 2.0.0 is published with a byte of its initrd changed after signing: refused, 1.0.0 still served
            directory = publish_flatcar(mirror.root, key, "2.0.0", flatcar_files("2.0.0"), current=False)
            tampered = bytearray((directory / INITRD).read_bytes())
            tampered[5000] ^= 0xFF
            (directory / INITRD).write_bytes(bytes(tampered))
            start = len(bootd.lines)
            point_current(mirror.root, "2.0.0")
            failed = bootd.wait_for_log(assets_line("check failed", ok=False), timeout=30, start=start)
            assert f"{INITRD}: BAD signature" in failed["message"] and "still serving 1.0.0" in failed["message"]
            assert failed["level"] == "warning"
            assert get(bootd, f"/assets/flatcar/amd64/stable/{INITRD}") == (200, flatcar_files("1.0.0")[INITRD])

            # 3.0.0, whole and signed: the pointer moves, the next request gets it
            publish_flatcar(mirror.root, key, "3.0.0", flatcar_files("3.0.0"), current=False)
            start = len(bootd.lines)
            point_current(mirror.root, "3.0.0")
            bootd.wait_for_log(assets_line("switched to 3.0.0 (was 1.0.0)"), timeout=30, start=start)
            assert get(bootd, f"/assets/flatcar/amd64/stable/{INITRD}") == (200, flatcar_files("3.0.0")[INITRD])
            assert get(bootd, f"/assets/flatcar/amd64/1.0.0/{KERNEL}") == (200, flatcar_files("1.0.0")[KERNEL])
            bootd.wait_for_log(assets_line("3.0.0 is current"), timeout=30, start=start)

            _, body = get(bootd, "/api/v1/stats")
            stats = json.loads(body)["assets"]
            assert stats["switches"] == 2 and stats["failures"] >= 1 and stats["checks"] >= 4, stats

            # the pointer is a link to a sibling inside the assets root (served); a link out of it is not
            (data / "assets/flatcar/amd64/escape").symlink_to("/etc")
            assert get(bootd, "/assets/flatcar/amd64/escape/hostname")[0] == 404
            assert get(bootd, "/assets/flatcar/amd64/stable/")[0] == 200
        finally:
            assert bootd.stop() == 0
    finally:
        mirror.close()


def test_https_is_checked_against_the_system_ca_store(tmp_path, key):
    certs = tmp_path / "tls"
    make_certificates(certs, "IP:127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)  # a server's context
    context.load_cert_chain(certs / "server.crt", certs / "server.key")
    mirror = Mirror(tmp_path / "mirror", ssl_context=context).start()
    try:
        publish_flatcar(mirror.root, key, "1.0.0", flatcar_files("1.0.0"))
        untrusted = fetch(tmp_path / "data", mirror, key)
        assert untrusted.returncode == 1
        assert untrusted.stderr.startswith(f"bootd assets fetch: {mirror.url}/stable/amd64-usr/current/version.txt: "
                                           "TLS certificate not trusted"), untrusted.stderr
        assert not (tmp_path / "data/assets/flatcar/amd64/stable").exists()
        # the same CA put where OpenSSL's default store is looked up (SSL_CERT_FILE, as for every OpenSSL client)
        trusted = fetch(tmp_path / "data", mirror, key, env={**ENV, "SSL_CERT_FILE": str(certs / "ca.crt")})
        assert trusted.returncode == 0, trusted.stderr
        assert os.readlink(stable(tmp_path / "data")) == "1.0.0"
    finally:
        mirror.close()


def test_an_http_proxy_from_the_environment_is_used(tmp_path, key):
    """The mirror's name (.invalid, RFC 6761) resolves nowhere: only the proxy (the tests' mirror, answering
    absolute-form requests as a forward proxy does) can have answered."""
    mirror = Mirror(tmp_path / "mirror").start()
    try:
        publish_flatcar(mirror.root, key, "1.0.0", flatcar_files("1.0.0"))
        proxied = {**ENV, "HTTP_PROXY": mirror.url, "NO_PROXY": ""}
        result = fetch(tmp_path / "data", _named(mirror, "http://mirror.invalid"), key, env=proxied)
        assert result.returncode == 0, result.stderr
        assert ("/stable/amd64-usr/1.0.0/" + KERNEL, None) in mirror.requests
        assert os.readlink(stable(tmp_path / "data")) == "1.0.0"
    finally:
        mirror.close()


class _named:
    """A mirror reached by another URL (through a proxy)."""

    def __init__(self, mirror: Mirror, url: str) -> None:
        self.url = url
        self.requests = mirror.requests


def test_a_reload_that_adds_the_assets_section_starts_tracking(tmp_path, key):
    mirror = Mirror(tmp_path / "mirror").start()
    try:
        publish_flatcar(mirror.root, key, "1.0.0", flatcar_files("1.0.0"))
        data = tmp_path / "data"
        (data / "assets").mkdir(parents=True)
        config = tmp_path / "bootd.yaml"
        plain = f"state_dir: {tmp_path / 'state'}\nhttp: {{address: 127.0.0.1, port: 0, data_dir: {data}}}\n"
        config.write_text(plain)
        bootd = BootdProcess(config).start()
        try:
            config.write_text(plain + f"assets:\n  track:\n    - {{os: flatcar, mirror: '{mirror.url}', "
                                      f"keyring: {key.public}}}\n")
            bootd.send(signal.SIGHUP)
            bootd.wait_for_log(assets_line("flatcar/amd64/stable: switched to 1.0.0 (was nothing)"), timeout=30)
            assert get(bootd, f"/assets/flatcar/amd64/stable/{KERNEL}") == (200, flatcar_files("1.0.0")[KERNEL])
        finally:
            assert bootd.stop() == 0
    finally:
        mirror.close()
