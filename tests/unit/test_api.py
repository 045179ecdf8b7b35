"""The read-write API's pure parts: names, file formats, model <-> proto, SANs, and the generated modules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.api.certs import CertError, parse_sans
from appliance.api.service import group_from_proto, group_to_proto, profile_from_proto, profile_to_proto
from appliance.store import Group, NetBoot, Profile, parse_group, parse_profile
from appliance.store.writes import DataWriter, Kind, NotStored, WriteRefused, check_name

ROOT = Path(__file__).parents[2]


@pytest.mark.parametrize("kind, name", [
    (Kind.PROFILE, "worker"), (Kind.GROUP, "node1.example.com"), (Kind.IGNITION, "worker.yaml.tmpl"),
    (Kind.IGNITION, "clusters/a/worker.ign"), (Kind.GENERIC, "x"),
])
def test_good_names(kind, name):
    assert check_name(kind, name) == name


@pytest.mark.parametrize("kind, name, message", [
    (Kind.PROFILE, "", "required"), (Kind.PROFILE, "a/b", "slash"), (Kind.GROUP, "..", "'..'"),
    (Kind.IGNITION, "../profiles/x.json", "'..'"), (Kind.IGNITION, "/etc/passwd", "empty"),
    (Kind.IGNITION, "a//b", "empty"), (Kind.GENERIC, "a\0b", "NUL"), (Kind.GENERIC, "a\\b", "backslash"),
    (Kind.GENERIC, ".hidden", "hidden"), (Kind.PROFILE, "x" * 300, "too long"),
])
def test_bad_names(kind, name, message):
    with pytest.raises(WriteRefused, match=message):
        check_name(kind, name)


def test_files_in_matchbox_format_and_read_back_by_the_http_side(tmp_path):
    writer = DataWriter(tmp_path)
    profile = Profile(id="p", ignition_id="p.ign", boot=NetBoot(kernel="/k", initrd=("/i",), args=("a=b",)))
    writer.put_profile(profile)
    text = (tmp_path / "profiles/p.json").read_text()
    assert text == '{\n\t"id": "p",\n\t"ignition_id": "p.ign",\n\t"boot": {\n\t\t"kernel": "/k",\n\t\t"initrd": [\n' \
                   '\t\t\t"/i"\n\t\t],\n\t\t"args": [\n\t\t\t"a=b"\n\t\t]\n\t}\n}'
    assert parse_profile(text.encode()) == profile
    group = Group(id="g", profile="p", selector={"mac": "52:54:00:00:00:01"}, metadata={"n": 1})
    writer.put_group(group)
    assert parse_group((tmp_path / "groups/g.json").read_bytes()) == group
    assert (tmp_path / "groups/g.json").stat().st_mode & 0o777 == 0o644
    assert writer.list(Kind.GROUP) == ["g"]
    with pytest.raises(NotStored):
        writer.delete(Kind.GROUP, "nope")


def test_a_symlinked_subdirectory_cannot_lead_out(tmp_path):
    (tmp_path / "outside").mkdir()
    (tmp_path / "data/ignition").mkdir(parents=True)
    (tmp_path / "data/ignition/link").symlink_to(tmp_path / "outside")
    with pytest.raises(WriteRefused, match="outside"):
        DataWriter(tmp_path / "data").put(Kind.IGNITION, "link/x.ign", b"{}")
    assert not (tmp_path / "outside/x.ign").exists()


def test_temp_files_of_a_crash_are_swept(tmp_path):
    writer = DataWriter(tmp_path)
    writer.put(Kind.IGNITION, "a.ign", b"{}")
    (tmp_path / "ignition/.a.ign.k2j4_x9z").write_bytes(b"{partial")
    (tmp_path / "ignition/.keep-me").write_bytes(b"user file")
    assert writer.sweep_temp_files() == ["ignition/.a.ign.k2j4_x9z"]
    assert (tmp_path / "ignition/.keep-me").exists()


def test_model_and_proto_round_trip():
    profile = Profile(id="p", name="P", ignition_id="i", cloud_id="c", generic_id="g",
                      boot=NetBoot(kernel="/k", initrd=("/a", "/b"), args=("x",)))
    assert profile_from_proto(profile_to_proto(profile)) == profile
    assert profile_from_proto(profile_to_proto(Profile(id="noboot"))).boot is None
    group = Group(id="g", name="G", profile="p", selector={"uuid": "u"}, metadata={"k": [1, "v"]})
    assert group_from_proto(group_to_proto(group)) == group
    assert json.loads(group_to_proto(group).metadata) == {"k": [1, "v"]}


def test_sans():
    names = parse_sans("DNS:matchbox.example.com,IP:10.77.0.1,DNS.2:other,IP.2:fd00::1")
    assert [str(n.value) for n in names] == ["matchbox.example.com", "10.77.0.1", "other", "fd00::1"]
    for bad in ("", "matchbox.example.com", "IP:300.1.1.1", "URI:http://x"):
        with pytest.raises(CertError):
            parse_sans(bad)


def test_bootd_protos_are_the_upstream_protos():
    ours = ROOT / "appliance/api/proto"
    upstream = ROOT / "tests/reference/matchbox-protos"
    for path in upstream.rglob("*.proto"):
        assert (ours / path.relative_to(upstream)).read_bytes() == path.read_bytes()


def test_generated_modules_are_up_to_date():
    from appliance.api.generate import generate

    for name, text in generate().items():
        assert (ROOT / "appliance/api/pb" / name).read_text() == text, f"{name}: run python -m appliance.api.generate"


def test_generated_services_are_matchboxs():
    from appliance.api.pb import rpc_pb2

    services = {s.full_name: sorted(m.name for m in s.methods) for s in rpc_pb2.DESCRIPTOR.services_by_name.values()}
    assert services == {
        "rpcpb.Groups": ["GroupDelete", "GroupGet", "GroupList", "GroupPut"],
        "rpcpb.Profiles": ["ProfileDelete", "ProfileGet", "ProfileList", "ProfilePut"],
        "rpcpb.Select": ["SelectGroup", "SelectProfile"],
        "rpcpb.Ignition": ["IgnitionDelete", "IgnitionGet", "IgnitionPut"],
        "rpcpb.Generic": ["GenericDelete", "GenericGet", "GenericPut"],
    }
