"""`bootd assets fetch | list | prune` through the real CLI against a mirror of the tests' own on loopback
(tests/assets_mirror.py): Flatcar's and Fedora CoreOS's layouts, signed at test time with a key handed to
bootd with --keyring. Bad input (a flipped byte, another key's signature, a truncated file, a 404, an HTML
page, a cut connection, a full disk) must leave the served channel as it was and say in one line which file
failed and why."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.assets_mirror import Mirror, SigningKey, payload, publish_fcos, publish_flatcar

ROOT = Path(__file__).parents[2]
KERNEL, INITRD = "flatcar_production_pxe.vmlinuz", "flatcar_production_pxe_image.cpio.gz"
ENV = {**{k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")},
       "NO_PROXY": "127.0.0.1,localhost"}


def bootd(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "appliance", *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env=env or ENV, check=False)


@pytest.fixture(scope="module")
def key():
    key = SigningKey()
    yield key
    key.close()


@pytest.fixture(scope="module")
def other_key():
    key = SigningKey("someone else")
    yield key
    key.close()


@pytest.fixture
def mirror(tmp_path):
    mirror = Mirror(tmp_path / "mirror").start()
    (tmp_path / "mirror").mkdir()
    yield mirror
    mirror.close()


def flatcar_files(version: str, size: int = 300_000) -> dict[str, bytes]:
    return {KERNEL: payload(f"kernel {version}", size), INITRD: payload(f"initrd {version}", size * 2)}


def fetch(data: Path, mirror: Mirror, key: SigningKey, *extra: str, os_name: str = "flatcar",
          env: dict | None = None) -> subprocess.CompletedProcess:
    return bootd("assets", "fetch", os_name, "--data-dir", str(data), "--mirror", mirror.url,
                 "--keyring", str(key.public), *extra, env=env)


def stable(data: Path, os_name: str = "flatcar") -> Path:
    return data / "assets" / os_name / "amd64" / "stable"


def tree(path: Path) -> dict[str, bytes]:
    """Every file below `path` (symlinks as their target), to show nothing changed."""
    out = {}
    for item in sorted(path.rglob("*")):
        if item.is_symlink():
            out[str(item.relative_to(path))] = os.readlink(item).encode()
        elif item.is_file():
            out[str(item.relative_to(path))] = item.read_bytes()
    return out


@pytest.fixture
def fetched_v1(tmp_path, mirror, key):
    """A data dir whose flatcar stable is 1.0.0, fetched and verified; the mirror's current is 1.0.0."""
    publish_flatcar(mirror.root, key, "1.0.0", flatcar_files("1.0.0"))
    data = tmp_path / "data"
    result = fetch(data, mirror, key)
    assert result.returncode == 0, result.stderr
    return data


def test_fetch_flatcar_verifies_each_file_and_points_stable_at_the_version(tmp_path, mirror, key, fetched_v1):
    data = fetched_v1
    assert os.readlink(stable(data)) == "1.0.0"
    for name, content in flatcar_files("1.0.0").items():
        assert (stable(data) / name).read_bytes() == content
    manifest = json.loads((stable(data) / ".bootd-release.json").read_bytes())
    assert manifest["signer"] == key.fingerprint and manifest["version"] == "1.0.0"
    assert manifest["files"][KERNEL] == hashlib.sha256(flatcar_files("1.0.0")[KERNEL]).hexdigest()
    # the layout Flatcar's mirror has: version.txt from current/, each file and its .sig from the version
    paths = [path for path, _ in mirror.requests]
    assert paths[0] == "/stable/amd64-usr/current/version.txt"
    assert f"/stable/amd64-usr/1.0.0/{KERNEL}.sig" in paths and f"/stable/amd64-usr/1.0.0/{INITRD}" in paths


def test_fetch_output_piped_is_plain_lines_with_the_signer(tmp_path, mirror, key):
    publish_flatcar(mirror.root, key, "1.0.0", flatcar_files("1.0.0"))
    result = fetch(tmp_path / "data", mirror, key)
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stdout and "\x1b" not in result.stdout  # no terminal control when piped
    assert f"{KERNEL} 100% 293.0 KiB / 293.0 KiB" in result.stdout
    assert f"{KERNEL}: 300000 bytes, sha256 " in result.stdout
    assert f"good signature by key {key.fingerprint}" in result.stdout
    assert "flatcar/amd64/stable -> 1.0.0 (was nothing)" in result.stdout


def test_fetch_fcos_checks_the_streams_sha256_and_each_signature(tmp_path, mirror, key):
    contents = publish_fcos(mirror.root, mirror.url, key, "41.20241109.3.0", install=True)
    data = tmp_path / "data"
    result = fetch(data, mirror, key, "--install", os_name="fcos")
    assert result.returncode == 0, result.stderr
    pointer = stable(data, "fcos")
    assert os.readlink(pointer) == "41.20241109.3.0"
    assert (pointer / "fedora-coreos-live-kernel-x86_64").read_bytes() == contents["kernel"]
    assert (pointer / "fedora-coreos-live-initramfs.x86_64.img").read_bytes() == contents["initramfs"]
    assert (pointer / "fedora-coreos-live-rootfs.x86_64.img").read_bytes() == contents["rootfs"]
    assert (pointer / "fedora-coreos-metal.x86_64.raw.xz").read_bytes() == contents["raw.xz"]
    assert mirror.requests[0][0] == "/streams/stable.json"


@pytest.mark.parametrize("damage", ["flipped-byte", "truncated", "other-key", "missing-signature"])
def test_a_bad_file_is_refused_by_name_and_stable_is_untouched(tmp_path, mirror, key, other_key, fetched_v1, damage):
    data = fetched_v1
    before = tree(data / "assets")
    directory = publish_flatcar(mirror.root, key, "2.0.0", flatcar_files("2.0.0"))
    kernel = directory / KERNEL
    if damage == "flipped-byte":
        content = bytearray(kernel.read_bytes())
        content[1000] ^= 0x01
        kernel.write_bytes(bytes(content))
    elif damage == "truncated":
        kernel.write_bytes(kernel.read_bytes()[:100_000])
    elif damage == "other-key":
        other_key.sign(kernel)
    else:
        (directory / f"{KERNEL}.sig").unlink()
    result = fetch(data, mirror, key)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    reason = {"flipped-byte": "BAD signature", "truncated": "BAD signature",
              "other-key": "which is not the distribution's signing key", "missing-signature": "HTTP 404"}[damage]
    assert lines[0].startswith(f"bootd assets fetch: {KERNEL}: ") and reason in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    after = tree(data / "assets")
    assert {k: v for k, v in after.items() if not k.startswith("flatcar/amd64/.2.0.0.partial")} == before
    assert not (data / "assets/flatcar/amd64/2.0.0").exists()
    assert not (data / f"assets/flatcar/amd64/.2.0.0.partial/{KERNEL}").exists()  # a bad file is not kept


def test_fcos_file_that_differs_from_the_streams_sha256_is_refused(tmp_path, mirror, key):
    publish_fcos(mirror.root, mirror.url, key, "41.20241109.3.0")
    data = tmp_path / "data"
    assert fetch(data, mirror, key, os_name="fcos").returncode == 0
    publish_fcos(mirror.root, mirror.url, key, "41.20241123.3.0")
    initramfs = mirror.root / "prod/streams/stable/builds/41.20241123.3.0/x86_64" / \
        "fedora-coreos-41.20241123.3.0-live-initramfs.x86_64.img"
    initramfs.write_bytes(initramfs.read_bytes()[:-10])  # truncated on the mirror, its signature left as it was
    result = fetch(data, mirror, key, os_name="fcos")
    assert result.returncode == 1
    assert result.stderr.startswith("bootd assets fetch: fedora-coreos-live-initramfs.x86_64.img: sha256 ")
    assert "is not the stream's" in result.stderr and len(result.stderr.splitlines()) == 1
    assert os.readlink(stable(data, "fcos")) == "41.20241109.3.0"


@pytest.mark.parametrize("answer", ["404", "html"])
def test_a_mirror_answering_404_or_html_changes_nothing(tmp_path, mirror, key, fetched_v1, answer):
    data = fetched_v1
    before = tree(data / "assets")
    publish_flatcar(mirror.root, key, "2.0.0", flatcar_files("2.0.0"))
    path = f"/stable/amd64-usr/2.0.0/{INITRD}"
    (mirror.missing if answer == "404" else mirror.html).add(path)
    result = fetch(data, mirror, key)
    assert result.returncode == 1
    expected = "HTTP 404 Not Found" if answer == "404" else "the mirror answered an HTML page, not the file"
    assert result.stderr == f"bootd assets fetch: {INITRD}: {mirror.url}{path}: {expected}\n"
    after = tree(data / "assets")
    assert {k: v for k, v in after.items() if ".partial" not in k} == before


def test_version_txt_answered_by_html_is_refused(tmp_path, mirror, key, fetched_v1):
    mirror.html.add("/stable/amd64-usr/current/version.txt")
    result = fetch(fetched_v1, mirror, key)
    assert result.returncode == 1 and "the mirror answered an HTML page" in result.stderr
    assert os.readlink(stable(fetched_v1)) == "1.0.0"


def test_an_interrupted_download_resumes_where_it_stopped(tmp_path, mirror, key, fetched_v1):
    data = fetched_v1
    publish_flatcar(mirror.root, key, "2.0.0", flatcar_files("2.0.0", size=2_000_000))
    path = f"/stable/amd64-usr/2.0.0/{INITRD}"
    mirror.cut_once[path] = 1_500_000
    first = fetch(data, mirror, key)
    assert first.returncode == 1
    assert f"{INITRD}: " in first.stderr and "kept for resume" in first.stderr, first.stderr
    assert os.readlink(stable(data)) == "1.0.0"
    part = data / f"assets/flatcar/amd64/.2.0.0.partial/{INITRD}.part"
    assert part.stat().st_size == 1_500_000
    second = fetch(data, mirror, key)
    assert second.returncode == 0, second.stderr
    ranges = [rng for p, rng in mirror.requests if p == path]
    assert ranges == [None, "bytes=1500000-"]
    assert "(resumed at 1.4 MiB)" in second.stdout
    assert os.readlink(stable(data)) == "2.0.0"
    assert (stable(data) / INITRD).read_bytes() == flatcar_files("2.0.0", size=2_000_000)[INITRD]
    kernel_requests = [p for p, _ in mirror.requests if p == f"/stable/amd64-usr/2.0.0/{KERNEL}"]
    assert len(kernel_requests) == 1  # verified the first time, kept, checked again; not downloaded again


def test_a_full_disk_removes_the_partial_version_and_keeps_stable(tmp_path, mirror, key, fetched_v1):
    """The assets dir on a 2 MiB tmpfs of a private mount namespace: 1.0.0 fits, 2.0.0 does not."""
    if os.geteuid() != 0:
        pytest.skip("a tmpfs in a mount namespace needs root")
    data = fetched_v1
    publish_flatcar(mirror.root, key, "2.0.0", flatcar_files("2.0.0", size=1_000_000))
    small = tmp_path / "small"
    small.mkdir()
    script = (f"set -e; mount -t tmpfs -o size=2m tmpfs {small}; cp -a {data}/. {small}/; "
              f"{sys.executable} -m appliance assets fetch flatcar --data-dir {small} --mirror {mirror.url} "
              f"--keyring {key.public} 2>{small}/err >/dev/null && echo fetched || true; "
              f"cat {small}/err; readlink {small}/assets/flatcar/amd64/stable; echo $(ls -A {small}/assets/flatcar/amd64); "
              f"sha256sum {small}/assets/flatcar/amd64/stable/{KERNEL}")
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                            capture_output=True, text=True, timeout=120, cwd=ROOT, env=ENV, check=False)
    lines = result.stdout.splitlines()
    assert "fetched" not in lines, result.stdout
    assert lines[0].startswith("bootd assets fetch: ") and "no space left on device" in lines[0], result.stdout
    assert "(the partial version was removed)" in lines[0]
    assert lines[1] == "1.0.0"
    assert lines[2].split() == [".bootd-lock", "1.0.0", "stable"]  # no 2.0.0, no partial left taking the space
    assert lines[3].split()[0] == hashlib.sha256(flatcar_files("1.0.0")[KERNEL]).hexdigest()


def test_list_shows_versions_pointers_and_profiles_and_prune_keeps_what_is_named(tmp_path, mirror, key, fetched_v1):
    data = fetched_v1
    for version in ("2.0.0", "3.0.0"):
        publish_flatcar(mirror.root, key, version, flatcar_files(version))
        assert fetch(data, mirror, key).returncode == 0
    (data / "profiles").mkdir()
    (data / "profiles/pinned.json").write_text(json.dumps({"id": "pinned", "boot": {
        "kernel": "${bootd}/assets/flatcar/amd64/1.0.0/" + KERNEL, "initrd": ["/assets/flatcar/amd64/1.0.0/" + INITRD]}}))
    (data / "profiles/follows.json").write_text(json.dumps({"id": "follows", "boot": {
        "kernel": "${bootd}/assets/flatcar/amd64/stable/" + KERNEL, "initrd": ["/assets/flatcar/amd64/stable/" + INITRD]}}))
    (data / "profiles/beta.json").write_text(json.dumps({"id": "beta", "boot": {
        "kernel": "/assets/flatcar/amd64/beta/" + KERNEL, "initrd": []}}))
    listing = bootd("assets", "list", "--data-dir", str(data))
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0] == "flatcar/amd64:"
    assert lines[1].split()[0] == "3.0.0" and lines[1].endswith("current for stable, used by follows")
    assert lines[2].split()[0] == "2.0.0" and "used by" not in lines[2] and "current" not in lines[2]
    assert lines[3].split()[0] == "1.0.0" and lines[3].endswith(", used by pinned")
    assert f"by key {key.fingerprint}" in lines[1]
    assert "  stable -> 3.0.0" in lines
    assert (f"warning: profile 'beta' boots /assets/flatcar/amd64/beta/{KERNEL}, which is missing "
            "(bootd assets fetch flatcar --channel beta --arch amd64)") in lines
    pruned = bootd("assets", "prune", "--keep", "0", "--data-dir", str(data))
    assert pruned.returncode == 0, pruned.stderr
    assert pruned.stdout.splitlines() == ["kept flatcar/amd64/3.0.0 (a channel points at it)",
                                          "removed flatcar/amd64/2.0.0 (older than the 0 newest)",
                                          "kept flatcar/amd64/1.0.0 (a profile names it)"]
    assert sorted(p.name for p in (data / "assets/flatcar/amd64").iterdir()) == [".bootd-lock", "1.0.0", "3.0.0",
                                                                                 "stable"]


def test_prune_keeps_the_newest_n_and_removes_nothing_when_a_profile_cannot_be_read(tmp_path, mirror, key, fetched_v1):
    data = fetched_v1
    for version in ("2.0.0", "3.0.0"):
        publish_flatcar(mirror.root, key, version, flatcar_files(version))
        assert fetch(data, mirror, key).returncode == 0
    (data / "profiles").mkdir()
    (data / "profiles/broken.json").write_text("{not json")
    refused = bootd("assets", "prune", "--keep", "1", "--data-dir", str(data))
    assert refused.returncode == 1 and "profiles/broken.json" in refused.stderr and "nothing removed" in refused.stderr
    assert (data / "assets/flatcar/amd64/1.0.0").is_dir()
    (data / "profiles/broken.json").unlink()
    dry = bootd("assets", "prune", "--keep", "2", "--dry-run", "--data-dir", str(data))
    assert "would remove flatcar/amd64/1.0.0 (older than the 2 newest)" in dry.stdout
    assert (data / "assets/flatcar/amd64/1.0.0").is_dir()
    pruned = bootd("assets", "prune", "--keep", "2", "--data-dir", str(data))
    assert pruned.stdout.splitlines() == ["kept flatcar/amd64/3.0.0 (a channel points at it)",
                                          "kept flatcar/amd64/2.0.0 (one of the 2 newest)",
                                          "removed flatcar/amd64/1.0.0 (older than the 2 newest)"]


def test_an_existing_directory_where_the_pointer_goes_is_not_replaced(tmp_path, mirror, key):
    publish_flatcar(mirror.root, key, "1.0.0", flatcar_files("1.0.0"))
    data = tmp_path / "data"
    (stable(data)).mkdir(parents=True)
    (stable(data) / KERNEL).write_bytes(b"copied by hand")
    result = fetch(data, mirror, key)
    assert result.returncode == 1
    assert "is a directory, not a channel pointer: move it away" in result.stderr
    assert (stable(data) / KERNEL).read_bytes() == b"copied by hand"


def test_a_keyring_that_is_not_a_key_is_one_line(tmp_path, mirror, key):
    bad = tmp_path / "bad.asc"
    bad.write_text("hello")
    result = bootd("assets", "fetch", "flatcar", "--data-dir", str(tmp_path), "--mirror", mirror.url,
                   "--keyring", str(bad))
    assert result.returncode == 1
    assert result.stderr == f"bootd assets fetch: {bad}: not an OpenPGP key (neither armored nor binary packets)\n"


def test_on_a_terminal_the_progress_is_a_bar_redrawn_in_place(tmp_path, mirror, key):
    import pty

    publish_flatcar(mirror.root, key, "1.0.0", flatcar_files("1.0.0"))
    controller, terminal = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "appliance", "assets", "fetch", "flatcar", "--data-dir",
                                str(tmp_path / "data"), "--mirror", mirror.url, "--keyring", str(key.public)],
                               stdout=terminal, stderr=subprocess.PIPE, cwd=ROOT, env=ENV)
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)
    assert process.wait(60) == 0, process.stderr.read()
    process.stderr.close()
    text = output.decode()
    assert f"\r\x1b[K{KERNEL} [{'#' * 24}] 293.0 KiB / 293.0 KiB, " in text
    assert f"{KERNEL} 100%" not in text  # the plain lines are for pipes only


def test_an_assets_dir_bootd_cannot_write_is_one_line(tmp_path, mirror, key):
    publish_flatcar(mirror.root, key, "1.0.0", flatcar_files("1.0.0"))
    data = tmp_path / "data"
    (data / "assets").mkdir(parents=True)
    (data / "assets/flatcar").write_text("a file where the directory goes")
    result = fetch(data, mirror, key)
    assert result.returncode == 1
    assert result.stderr == f"bootd assets fetch: {data}/assets/flatcar/amd64: Not a directory\n"
