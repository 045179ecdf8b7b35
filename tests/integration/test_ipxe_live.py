"""/ipxe is never stale: bootd keeps what it read from the data dir between requests (issue 16), and every
kind of edit an operator or a tool makes is seen by the very next request, with no pause in between:
in-place rewrites of the same size (same mtime tick), atomic renames, a symlinked profile whose target (in profiles/shared/) is
edited or repointed, a hard link edited from outside the data dir, groups added and removed, and the whole
profiles/ directory swapped."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import aiohttp
import pytest

from tests.bootd_process import BootdProcess

CONFIG = "http:\n  address: 127.0.0.1\n  port: 0\n  data_dir: {data}\n"


def profile_json(kernel: str) -> str:
    return json.dumps({"id": "p", "boot": {"kernel": kernel, "args": ["console=ttyS0"]}})


def atomic(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text)
    os.replace(temp, path)


@pytest.fixture
def live(tmp_path):
    data = tmp_path / "data"
    (data / "groups").mkdir(parents=True)
    (data / "profiles").mkdir()
    (data / "groups/default.json").write_text(json.dumps({"id": "default", "profile": "p"}))
    (data / "profiles/p.json").write_text(profile_json("/k0000"))
    (tmp_path / "bootd.yaml").write_text(CONFIG.format(data=data))
    bootd = BootdProcess(tmp_path / "bootd.yaml").start()
    bootd.data = data
    yield bootd
    assert bootd.stop() == 0


async def test_every_edit_is_seen_by_the_next_request(live, tmp_path):
    data: Path = live.data
    async with aiohttp.ClientSession() as session:
        async def kernel(query: str = "mac=52-54-00-00-00-01") -> str | int:
            async with session.get(live.url(f"/ipxe?{query}")) as resp:
                if resp.status != 200:
                    return resp.status
                return (await resp.text()).split("\n")[1].split()[1]

        assert await kernel() == "/k0000"
        profile = data / "profiles/p.json"
        for i in range(1, 40):  # same size each time: mtime and size may well not change between two
            profile.write_text(profile_json(f"/k{i:04d}"))
            assert await kernel() == f"/k{i:04d}"
        for i in range(40, 60):
            atomic(profile, profile_json(f"/k{i:04d}"))
            assert await kernel() == f"/k{i:04d}"

        outside = data / "profiles/shared"  # a symlink out of profiles/ is refused (confinement)
        outside.mkdir()
        (outside / "a.json").write_text(profile_json("/ka"))
        (outside / "b.json").write_text(profile_json("/kb"))
        profile.unlink()
        profile.symlink_to(outside / "a.json")
        assert await kernel() == "/ka"
        (outside / "a.json").write_text(profile_json("/kA"))  # the symlink's target edited in place
        assert await kernel() == "/kA"
        link = data / "profiles/.p.json.new"
        link.symlink_to(outside / "b.json")
        os.replace(link, profile)  # the symlink repointed
        assert await kernel() == "/kb"

        profile.unlink()
        (tmp_path / "a.json").write_text(profile_json("/kA"))
        os.link(tmp_path / "a.json", profile)  # a hard link, edited through its other name outside the data dir
        assert await kernel() == "/kA"
        with open(tmp_path / "a.json", "r+") as f:
            f.write(profile_json("/kH"))
        assert await kernel() == "/kH"

        (data / "profiles/q.json").write_text(json.dumps({"id": "q", "boot": {"kernel": "/kq"}}))
        (data / "groups/one.json").write_text(json.dumps({"id": "one", "profile": "q",
                                                          "selector": {"mac": "52:54:00:00:00:02"}}))
        assert await kernel("mac=52-54-00-00-00-02") == "/kq"
        (data / "groups/one.json").unlink()
        assert await kernel("mac=52-54-00-00-00-02") == "/kH"
        (data / "groups/default.json").unlink()
        assert await kernel() == 404

        (data / "groups/default.json").write_text(json.dumps({"id": "default", "profile": "p"}))
        swapped = tmp_path / "profiles2"
        swapped.mkdir()
        (swapped / "p.json").write_text(profile_json("/kswap"))
        os.rename(data / "profiles", tmp_path / "profiles-old")
        os.rename(swapped, data / "profiles")  # the whole directory replaced
        assert await kernel() == "/kswap"
        (data / "profiles/p.json").write_text(profile_json("/kSWAP"))  # and the new one is watched too
        assert await kernel() == "/kSWAP"


BUTANE = """\
variant: flatcar
version: 1.1.0
storage:
  files:
    - path: /etc/hostname
      contents:
        inline: {{.request.query.mac}}-VERSION
"""


async def test_ignition_translations_are_kept_but_never_stale(live):
    """The Butane translation is kept per rendered text: each machine still gets its own, an edited
    template is served at the next request, and going back to an earlier text serves that text's result."""
    data: Path = live.data
    (data / "ignition").mkdir()
    (data / "ignition/t.yaml").write_text(BUTANE.replace("VERSION", "v1"))
    (data / "profiles/p.json").write_text(json.dumps({"id": "p", "ignition_id": "t.yaml", "boot": {"kernel": "/k"}}))
    async with aiohttp.ClientSession() as session:
        async def hostname(mac: str) -> str:
            async with session.get(live.url(f"/ignition?mac={mac}")) as resp:
                assert resp.status == 200, await resp.text()
                source = (await resp.json())["storage"]["files"][0]["contents"]["source"]
                return source.split(",", 1)[1]

        for _ in range(3):
            assert await hostname("52-54-00-00-00-01") == "52:54:00:00:00:01-v1"
            assert await hostname("52-54-00-00-00-02") == "52:54:00:00:00:02-v1"
        (data / "ignition/t.yaml").write_text(BUTANE.replace("VERSION", "v2"))
        assert await hostname("52-54-00-00-00-01") == "52:54:00:00:00:01-v2"
        (data / "ignition/t.yaml").write_text(BUTANE.replace("VERSION", "v1"))
        assert await hostname("52-54-00-00-00-01") == "52:54:00:00:00:01-v1"



async def test_kept_choices_follow_edits_and_each_route(live):
    """The group and profile chosen for a query (and the script rendered from them) are kept between
    requests (issue 16): /ipxe, /grub and /bootd/ipxe for one query each render their own script, an edit
    is served by every route at the next request, and a bad MAC is still warned about on every request."""
    data: Path = live.data
    query = "mac=52-54-00-00-00-07"
    async with aiohttp.ClientSession() as session:
        async def get(path: str) -> str:
            async with session.get(live.url(path)) as resp:
                assert resp.status == 200, (path, resp.status)
                return await resp.text()

        for _ in range(2):  # the second time from what was kept
            assert (await get(f"/ipxe?{query}")).split("\n")[1] == "kernel /k0000 console=ttyS0"
            assert 'linux "/k0000" console=ttyS0' in await get(f"/grub?{query}")
            assert "kernel /k0000 console=ttyS0" in await get(f"/bootd/ipxe?{query}")
        (data / "profiles/p.json").write_text(profile_json("/k0001"))
        assert 'linux "/k0001" console=ttyS0' in await get(f"/grub?{query}")
        assert (await get(f"/ipxe?{query}")).split("\n")[1] == "kernel /k0001 console=ttyS0"
        assert "kernel /k0001 console=ttyS0" in await get(f"/bootd/ipxe?{query}")

        start = len(live.lines)
        for _ in range(2):
            await get("/ipxe?mac=not-a-mac")
        def warned(line) -> bool:
            return "dropping label mac='not-a-mac'" in line.get("message", "")
        first = live.wait_for_log(warned, start=start)
        live.wait_for_log(warned, start=next(i for i, line in enumerate(live.lines) if line is first) + 1)


async def test_kept_choices_follow_a_reload(live):
    """A reload that adds a machine to bootd.yaml (a group the data dir's watch never sees) selects it at
    the first request after "reloaded", though the data dir did not change."""
    data: Path = live.data
    query = "mac=52-54-00-00-00-07"
    async with aiohttp.ClientSession() as session:
        async def kernel(query: str) -> str:
            async with session.get(live.url(f"/ipxe?{query}")) as resp:
                assert resp.status == 200
                return (await resp.text()).split("\n")[1]

        (data / "profiles/m.json").write_text(json.dumps({"id": "m", "boot": {"kernel": "/kmachine"}}))
        for _ in range(2):
            assert await kernel(query) == "kernel /k0000 console=ttyS0"
        live.config.write_text(live.config.read_text()
                               + 'machines:\n  - {name: m7, mac: "52:54:00:00:00:07", profile: m}\n')
        start = len(live.lines)
        live.send(signal.SIGHUP)
        live.wait_for_log(lambda l: l.get("message", "").startswith("reloaded"), start=start)
        assert await kernel(query) == "kernel /kmachine"
        assert await kernel("mac=52-54-00-00-00-08") == "kernel /k0000 console=ttyS0"
