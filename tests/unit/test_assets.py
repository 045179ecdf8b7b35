"""The assets room's pure parts: gpgv's status lines, the mirrors' metadata, prune decisions, progress text,
the config section, and the shipped keys (the distributions' real ones, by fingerprint)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from appliance.assets.download import Transfer
from appliance.assets.progress import progress_text
from appliance.assets.sources import (ReleaseError, check_version, flatcar_base, flatcar_release, parse_fcos_stream,
                                      parse_flatcar_version, version_key)
from appliance.assets.store import prunable
from appliance.assets.verify import OsName, key_bytes, read_status, shipped_keys
from appliance.config import ConfigInvalid, parse_config

FPR = "F88CFEDEFF29A5B4D9523864E25D9AED0593B34A"
SUB = "52F145DFD00BBDCD928CBB5A32DA80F91EF52974"


@pytest.mark.parametrize("status, code, ok, reason", [
    pytest.param(f"[GNUPG:] GOODSIG 32DA80F91EF52974 Flatcar\n[GNUPG:] VALIDSIG {SUB} 2026-01-01 1 0 4 0 1 10 00 {FPR}",
                 0, True, f"good signature by key {FPR} (subkey {SUB})", id="good-by-subkey"),
    pytest.param(f"[GNUPG:] EXPKEYSIG 32DA80F91EF52974 Flatcar\n[GNUPG:] VALIDSIG {SUB} 2024-01-01 1 0 4 0 1 10 00 {FPR}",
                 0, True, "a key that has expired since", id="signed-before-the-subkey-expired"),
    pytest.param("[GNUPG:] BADSIG 32DA80F91EF52974 Flatcar", 1, False, "BAD signature", id="changed-file"),
    pytest.param("[GNUPG:] ERRSIG 1234567890ABCDEF 22 8 00 1700000000 9 -\n[GNUPG:] NO_PUBKEY 1234567890ABCDEF", 2,
                 False, "signed by key 1234567890ABCDEF, which is not the distribution's signing key", id="other-key"),
    pytest.param("[GNUPG:] REVKEYSIG 32DA80F91EF52974 Flatcar", 0, False, "revoked", id="revoked"),
    pytest.param("[GNUPG:] NODATA 1\n[GNUPG:] NODATA 2", 2, False, "holds no OpenPGP signature", id="not-a-signature"),
    pytest.param(f"[GNUPG:] VALIDSIG {SUB} 2026-01-01 1 0 4 0 1 10 00 {FPR}", 2, False, "exit 2", id="nonzero-exit"),
])
def test_gpgv_status_lines(status, code, ok, reason):
    verdict = read_status(status, code)
    assert verdict.ok is ok and reason in verdict.reason
    assert verdict.signer == (FPR if ok else "")


@pytest.mark.parametrize("text", ["../etc", "1.0/..", "", "4081.2.0 ", "current", "1." * 8 + "1", "-1.0"])
def test_only_dotted_numbers_are_versions(text):
    with pytest.raises(ReleaseError):
        check_version(text)


def test_versions_sort_as_numbers():
    assert sorted(["4081.10.0", "4081.9.0", "3975.2.2"], key=version_key) == ["3975.2.2", "4081.9.0", "4081.10.0"]


def test_flatcar_version_txt_and_layout():
    assert parse_flatcar_version("FLATCAR_BUILD=4081\nFLATCAR_VERSION=4081.2.0\nFLATCAR_VERSION_ID=4081.2.0\n") == "4081.2.0"
    with pytest.raises(ReleaseError, match="no FLATCAR_VERSION"):
        parse_flatcar_version("<html>")
    with pytest.raises(ReleaseError):
        parse_flatcar_version("FLATCAR_VERSION=../../x")
    assert flatcar_base(None, "beta") == "https://beta.release.flatcar-linux.net"
    assert flatcar_base("http://m.example/flatcar/", "beta") == "http://m.example/flatcar/beta"
    assert flatcar_base("https://{channel}.m.example", "lts") == "https://lts.m.example"
    release = flatcar_release("https://stable.release.flatcar-linux.net", "stable", "arm64", "4081.2.0", install=True)
    assert [f.url for f in release.files] == [
        "https://stable.release.flatcar-linux.net/arm64-usr/4081.2.0/flatcar_production_pxe.vmlinuz",
        "https://stable.release.flatcar-linux.net/arm64-usr/4081.2.0/flatcar_production_pxe_image.cpio.gz",
        "https://stable.release.flatcar-linux.net/arm64-usr/4081.2.0/flatcar_production_image.bin.bz2"]
    assert all(f.signature_url == f.url + ".sig" for f in release.files)


def _stream(**metal) -> bytes:
    base = "https://builds.coreos.fedoraproject.org/prod/streams/stable/builds/41.20241109.3.0/x86_64/"
    pxe = {role: {"location": base + f"fedora-coreos-41.20241109.3.0-{name}",
                  "signature": base + f"fedora-coreos-41.20241109.3.0-{name}.sig", "sha256": "ab" * 32}
           for role, name in (("kernel", "live-kernel-x86_64"), ("initramfs", "live-initramfs.x86_64.img"),
                              ("rootfs", "live-rootfs.x86_64.img"))}
    doc = {"stream": "stable", "architectures": {"x86_64": {"artifacts": {"metal": {
        "release": "41.20241109.3.0", "formats": {"pxe": pxe}, **metal}}}}}
    return json.dumps(doc).encode()


def test_fcos_stream_gives_the_metal_pxe_artifacts_named_without_the_version():
    release = parse_fcos_stream(_stream(), "https://x/streams/stable.json", "stable", "amd64", install=False)
    assert release.version == "41.20241109.3.0"
    assert [f.name for f in release.files] == ["fedora-coreos-live-kernel-x86_64",
                                               "fedora-coreos-live-initramfs.x86_64.img",
                                               "fedora-coreos-live-rootfs.x86_64.img"]
    assert all(f.sha256 == "ab" * 32 for f in release.files)


@pytest.mark.parametrize("data, message", [
    pytest.param(b"<html>", "not JSON", id="html"),
    pytest.param(_stream(release="../../etc"), "not a release version", id="version-path"),
    pytest.param(json.dumps({"architectures": {}}).encode(), "no architectures.x86_64", id="no-arch"),
    pytest.param(_stream().replace(b'"ab', b'"zz'), "is not 64 hex digits", id="bad-sha"),
    pytest.param(_stream().replace(b"https://builds", b"file:///builds"), "is not http(s)", id="file-url"),
])
def test_fcos_stream_problems_are_named(data, message):
    with pytest.raises(ReleaseError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_fcos_stream(data, "https://x/streams/stable.json", "stable", "amd64", install=False)


def test_fcos_stream_without_the_install_image_refuses_install():
    with pytest.raises(ReleaseError, match="raw.xz"):
        parse_fcos_stream(_stream(), "https://x/streams/stable.json", "stable", "amd64", install=True)


@pytest.mark.parametrize("keep, pointed, referenced, removed", [
    pytest.param(1, {"3.0.0"}, set(), ["2.0.0", "1.0.0"], id="keep-newest"),
    pytest.param(0, {"1.0.0"}, {"2.0.0"}, ["3.0.0"], id="pointer-and-profile-protect-old-ones"),
    pytest.param(5, set(), set(), [], id="fewer-than-keep"),
])
def test_prune_decisions(keep, pointed, referenced, removed):
    decisions = prunable(["1.0.0", "3.0.0", "2.0.0"], pointed, referenced, keep)
    assert [d.version for d in decisions if d.remove] == removed
    assert [d.version for d in decisions] == ["3.0.0", "2.0.0", "1.0.0"]


def test_progress_text_on_a_terminal_and_piped():
    transfer = Transfer(name="kernel", total=4 << 20, done=1 << 20)
    assert progress_text(transfer, 1.0, bar=True) == "kernel [######------------------] 1.0 MiB / 4.0 MiB, 1.0 MiB/s, 3 s left"
    assert progress_text(transfer, 1.0, bar=False) == "kernel 25% 1.0 MiB / 4.0 MiB, 1.0 MiB/s, 3 s left"
    resumed = Transfer(name="kernel", total=4 << 20, done=3 << 20, resumed_from=2 << 20)
    assert progress_text(resumed, 2.0, bar=False) == "kernel 75% 3.0 MiB / 4.0 MiB (resumed at 2.0 MiB), 512.0 KiB/s, 2 s left"


@pytest.mark.parametrize("os_name, fingerprints", [
    (OsName.FLATCAR, ["F88CFEDEFF29A5B4D9523864E25D9AED0593B34A"]),
    (OsName.FCOS, ["C6E7F081CF80E13146676E88829B606631645531", "36F612DCF27F7D1A48A835E4DBFCF71C6D9F90A6",
                   "4F50A6114CD5C6976A7F1179655A4B02F577861E"]),
])
def test_the_shipped_keys_are_the_distributions_keys(tmp_path, os_name, fingerprints):
    """The primary keys' fingerprints, as gpg reads the keyring bootd builds from the shipped files."""
    keyring = tmp_path / "keyring.gpg"
    keyring.write_bytes(shipped_keys(os_name))
    listing = subprocess.run(["gpg", "--homedir", str(tmp_path), "--show-keys", "--with-colons", str(keyring)],
                             capture_output=True, text=True, check=True).stdout
    lines = listing.splitlines()
    primaries = [lines[i + 1].split(":")[9] for i, line in enumerate(lines) if line.startswith("pub:")]
    assert primaries == fingerprints
    if os_name is OsName.FLATCAR:  # the signing subkey of 2025-2027
        assert SUB in listing


def test_a_binary_keyring_is_taken_as_it_is_and_text_is_refused():
    packets = shipped_keys(OsName.FLATCAR)
    assert key_bytes(packets) == packets
    with pytest.raises(ValueError):
        key_bytes(b"not a key")


@pytest.mark.parametrize("text, error", [
    ("assets:\n  check: often\n", "b.yaml:2: assets.check: 'often' is not hourly, daily, weekly or a duration"),
    ("assets:\n  track:\n    - {os: ubuntu}\n", "b.yaml:3: assets.track[0].os: 'ubuntu' is not one of: flatcar, fcos"),
    ("assets:\n  track:\n    - {os: flatcar, channel: next}\n", "assets.track[0].channel: 'next' is not a flatcar channel"),
    ("assets:\n  track:\n    - {os: fcos, mirror: 'ftp://m'}\n", "is not an http:// or https:// URL"),
    ("assets:\n  track:\n    - {os: fcos}\n    - {os: fcos, channel: stable}\n",
     "b.yaml:4: assets.track[1]: fcos amd64 stable is already tracked on line 3"),
])
def test_assets_config_errors_name_line_and_field(text, error):
    with pytest.raises(ConfigInvalid) as info:
        parse_config(text, Path("/tmp/b.yaml"))
    assert error in str(info.value)


def test_assets_config_defaults():
    config = parse_config("assets:\n  check: 6h\n  track:\n    - {os: flatcar}\n", Path("/tmp/b.yaml"))
    assert config.assets.check_seconds == 6 * 3600
    (tracked,) = config.assets.track
    assert (tracked.os, tracked.channel, tracked.arch, tracked.mirror, tracked.install) == \
        ("flatcar", "stable", "amd64", None, False)
    assert parse_config("http: {port: 1}\n", Path("/tmp/b.yaml")).assets.track == ()
