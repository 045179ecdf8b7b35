"""The data dir is read live, leniently, and confined to its subdirectories."""

import json
import os
from pathlib import Path

import pytest

from appliance.config import parse_config
from appliance.paths import OutsideRoot, confine
from appliance.store import DataDir, machine_groups


def write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))


@pytest.fixture
def data(tmp_path: Path) -> Path:
    write(tmp_path / "profiles/p.json", {"id": "p", "boot": {"kernel": "/k"}, "ignition_id": "p.ign"})
    write(tmp_path / "groups/default.json", {"id": "default", "profile": "p"})
    write(tmp_path / "ignition/p.ign", '{"ignition": {"version": "3.4.0"}}')
    return tmp_path


def test_edits_are_seen_and_bad_files_skipped(data: Path):
    store = DataDir(data)
    assert [g.id for g in store.groups()] == ["default"]
    write(data / "groups/x.json", {"id": "x", "profile": "p", "selector": {"os": "installed"}})
    write(data / "groups/broken.json", "{not json")
    assert [g.id for g in store.groups()] == ["x", "default"]
    write(data / "groups/x.json", {"id": "x2", "profile": "p", "selector": {"os": "installed"}, "name": "longer"})
    assert [g.id for g in store.groups()] == ["x2", "default"]
    os.unlink(data / "groups/x.json")
    assert [g.id for g in store.groups()] == ["default"]
    assert any("broken.json: invalid JSON" in p for p in store.check())


def test_profile_lookup_is_by_file_name(data: Path):
    write(data / "profiles/foo.json", {"id": "bar"})
    assert DataDir(data).profile("foo").id == "bar"


@pytest.mark.parametrize("name", ["../profiles/p.json", "/etc/passwd", "a/../../x", "a\0b", "", "a\\..\\b", "./p.ign"])
def test_names_cannot_leave_their_directory(data: Path, name: str):
    with pytest.raises(OutsideRoot):
        confine(data / "ignition", name)
    assert DataDir(data).ignition(name) is None


def test_symlink_out_of_the_directory_is_refused_and_inside_is_served(data: Path):
    (data / "ignition/out.ign").symlink_to(data / "profiles/p.json")
    (data / "ignition/in.ign").symlink_to(data / "ignition/p.ign")
    store = DataDir(data)
    assert store.ignition("out.ign") is None
    assert store.ignition("in.ign") == (data / "ignition/p.ign").read_bytes()


def test_check_reports_missing_profile_and_duplicate_selectors(data: Path):
    write(data / "groups/other-default.json", {"id": "other", "profile": "missing"})
    problems = DataDir(data).check()
    assert any("profile 'missing' is missing" in p for p in problems)
    assert any("same selectors" in p for p in problems)


def test_configured_machines_become_groups_that_win_ties(data: Path):
    config = parse_config("domain: example.com\nmachines:\n  - {name: n1, mac: '52:54:00:00:00:01', ip: 10.0.0.1,"
                          " role: worker, profile: p}\n", data / "bootd.yaml")
    write(data / "groups/same-mac.json", {"id": "dup", "profile": "p", "selector": {"mac": "52:54:00:00:00:01"}})
    groups = machine_groups(config)
    assert dict(groups[0].metadata) == {"name": "n1", "fqdn": "n1.example.com", "domain": "example.com",
                                        "ip": "10.0.0.1", "role": "worker"}
    assert DataDir(data, groups).groups()[0].id == "n1"


def test_readers_in_threads_take_turns(tmp_path):
    """The read-write API reads the data dir in worker threads while the HTTP side reads it on the loop; both
    fill the same caches, so one reader at a time: a second reader waits while the first is inside."""
    import threading

    (tmp_path / "profiles").mkdir()
    (tmp_path / "groups").mkdir()
    (tmp_path / "profiles/a.json").write_text('{"id": "a"}')
    (tmp_path / "groups/g.json").write_text('{"id": "g", "profile": "a"}')
    store = DataDir(tmp_path)
    inside, leave = threading.Event(), threading.Event()
    parse = store._profiles._parse

    def slow_parse(data, path):
        inside.set()
        leave.wait(10)
        return parse(data, path)

    store._profiles._parse = slow_parse
    first = threading.Thread(target=store.profile, args=("a",))
    first.start()
    assert inside.wait(10)
    second_done = threading.Event()
    second = threading.Thread(target=lambda: (store.groups(), second_done.set()))
    second.start()
    second.join(0.5)
    assert not second_done.is_set()  # waiting for the first reader, not filling the caches beside it
    leave.set()
    first.join(10)
    second.join(10)
    assert second_done.is_set() and [g.id for g in store.groups()] == ["g"]


def test_generation_holds_while_nothing_changes_and_moves_at_an_edit(data: Path):
    """What the HTTP side keeps between requests (a query's chosen group and profile) is kept per
    generation: the same number while nothing under groups/ and profiles/ changed, another one (after a
    None for the request that saw the change) at any edit, and None while a file read was not watched."""
    store = DataDir(data)
    store.groups(), store.profile("p")
    first = store.generation()
    assert first is not None
    store.groups(), store.profile("p")
    assert store.generation() == first
    write(data / "profiles/p.json", {"id": "p", "boot": {"kernel": "/k2"}})
    assert store.generation() is None  # the request that sees the change keeps nothing
    assert store.profile("p").boot.kernel == "/k2"
    second = store.generation()
    assert second is not None and second != first
    write(data / "groups/new.json", {"id": "new", "profile": "p", "selector": {"os": "x"}})
    assert store.generation() is None
    assert [g.id for g in store.groups()] == ["new", "default"]
    assert store.generation() not in (None, first, second)
    store.profile("../outside")  # a name that cannot be watched: nothing may be kept in this generation
    assert store.generation() is None
