"""Lease persistence (journal + snapshot, group commit) and O(1) allocation, through the table's and the
writer's real interfaces: a real event loop, real files, the authoritative decision over a /16."""

from __future__ import annotations

import asyncio
import json
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from appliance.dhcp.authoritative import AddressPolicy, decide_dhcp
from appliance.dhcp.leases import Bind, HoldOffer, Lease, LeaseTable, LeaseWriter, Release
from appliance.dhcp.packet import DhcpPacket, MessageType
from appliance.dhcp.pxe import PxePolicy
from appliance.mac import MacAddress

SERVER = IPv4Address("10.99.0.1")


def mac(i: int) -> MacAddress:
    return MacAddress(":".join(f"{b:02x}" for b in (2, 0, *i.to_bytes(4, "big"))))


def lease(i: int, ip: str) -> Lease:
    return Lease(ip=IPv4Address(ip), mac=mac(i), expires=5000.0 + i, hostname=f"h{i}")


def commit_all(table: LeaseTable, changes: list) -> tuple[list[bool], int, list]:
    """Apply and commit `changes` at once on a real loop; returns each callback's ok, the fsyncs, and what the
    journal held when each callback ran."""
    async def run() -> tuple[list[bool], int, list]:
        writer = LeaseWriter(table, asyncio.get_running_loop())
        done: list[bool] = []
        seen: list[str] = []
        finished = asyncio.Event()

        def then(ok: bool) -> None:
            done.append(ok)
            seen.append(table.path.with_suffix(".journal").read_text())
            if len(done) == len(changes):
                finished.set()

        for change in changes:
            table.apply(change)
            writer.commit(change, then)
        await asyncio.wait_for(finished.wait(), 10)
        fsyncs = writer.fsyncs
        writer.stop()
        return done, fsyncs, seen
    return asyncio.run(run())


def test_each_change_is_in_the_journal_before_its_callback_and_changes_share_fsyncs(tmp_path: Path):
    table = LeaseTable(tmp_path / "leases.json")
    changes = [Bind(lease(i, f"10.99.0.{10 + i}")) for i in range(100)]
    done, fsyncs, seen = commit_all(table, changes)
    assert done == [True] * 100
    # the first change is written at once; the 99 that came while it was written share the next write
    assert fsyncs == 2
    for i, journal in enumerate(seen):
        assert f'"ip":"10.99.0.{10 + i}"' in journal
    reloaded = LeaseTable.load(tmp_path / "leases.json")
    assert reloaded.leases(0) == table.leases(0) and len(reloaded.leases(0)) == 100


def test_releases_replay_and_a_line_cut_short_is_skipped(tmp_path: Path):
    table = LeaseTable(tmp_path / "leases.json")
    changes = [Bind(lease(1, "10.99.0.10")), Bind(lease(2, "10.99.0.11")), Release(IPv4Address("10.99.0.10"), mac(1))]
    commit_all(table, changes)
    journal = tmp_path / "leases.journal"
    with open(journal, "ab") as f:
        f.write(b'{"ip":"10.99.0.12","mac":"02:00:00:00:00:03","exp')  # a crash in the middle of a line
    reloaded = LeaseTable.load(tmp_path / "leases.json")
    assert [l.ip for l in reloaded.leases(0)] == [IPv4Address("10.99.0.11")]


def test_a_snapshot_replaces_the_journal_and_an_older_journal_is_never_replayed_over_it(tmp_path: Path):
    path = tmp_path / "leases.json"
    table = LeaseTable(path)
    commit_all(table, [Bind(lease(1, "10.99.0.10")), Release(IPv4Address("10.99.0.10"), mac(1))])
    old_journal = (tmp_path / "leases.journal").read_bytes()
    table.apply(Bind(lease(1, "10.99.0.20")))
    table.save()  # snapshot: generation + 1
    assert json.loads(path.read_text())["generation"] == table.generation
    # a crash between the new snapshot and its new journal leaves the old journal: it is in the snapshot already
    (tmp_path / "leases.journal").write_bytes(old_journal)
    reloaded = LeaseTable.load(path)
    assert [(l.ip, l.mac) for l in reloaded.leases(0)] == [(IPv4Address("10.99.0.20"), mac(1))]


def test_the_journal_is_folded_into_a_snapshot_when_it_outgrows_the_table(tmp_path: Path):
    path = tmp_path / "leases.json"
    table = LeaseTable(path)
    # one client renewing its lease over and over: the table stays at one lease, the journal would grow forever
    renewals = [Bind(Lease(ip=IPv4Address("10.99.0.10"), mac=mac(1), expires=1000.0 + i)) for i in range(5000)]
    commit_all(table, renewals)
    assert path.exists() and len((tmp_path / "leases.journal").read_text().splitlines()) < 4200
    assert LeaseTable.load(path).leases(0) == [renewals[-1].lease]


class CountingTable(LeaseTable):
    """Counts the addresses the decision looks at (`holder` is asked once per candidate it checks)."""

    probes = 0

    def holder(self, ip, now):
        self.probes += 1
        return super().holder(ip, now)


def discover(i: int) -> DhcpPacket:
    return DhcpPacket(op=1, xid=i, chaddr=bytes((2, 0, *i.to_bytes(4, "big"))).ljust(16, b"\0"),
                      options={53: bytes((MessageType.DISCOVER,))})


def test_filling_a_slash_16_costs_the_same_per_client_at_the_end_as_at_the_start():
    """60,000 new clients on a /16 (the decision and the table, no sockets): a new client's address is found
    by looking at about one address, whether the range is empty or 90% full (a scan from the start of the
    range looked at 54,000 for the last clients)."""
    policy = AddressPolicy(subnet=IPv4Network("10.99.0.0/16"), first=IPv4Address("10.99.0.10"),
                           last=IPv4Address("10.99.255.250"), router=SERVER)
    table = CountingTable()
    # a returning client's lease (loaded from disk) in the middle of the range: skipped, never offered to others
    table.apply(Bind(Lease(ip=IPv4Address("10.99.0.12"), mac=mac(10**6), expires=10**9)))
    probes: list[int] = []
    seen: set[IPv4Address] = set()
    for i in range(60_000):
        before = table.probes
        answer = decide_dhcp(discover(i), table, policy, PxePolicy(), SERVER, 1000.0 + i * 0.0001)
        assert isinstance(answer.change, HoldOffer)
        table.apply(answer.change)
        seen.add(answer.ip)
        probes.append(table.probes - before)
    assert len(seen) == 60_000 and IPv4Address("10.99.0.12") not in seen
    first, last = probes[:6000], probes[-6000:]
    assert sum(last) <= sum(first) * 1.1 and sum(last) / 6000 <= 2.5, (sum(first), sum(last))


def test_a_freed_address_is_offered_again_and_an_exhausted_range_is_walked_again_later():
    policy = AddressPolicy(subnet=IPv4Network("10.99.0.0/24"), first=IPv4Address("10.99.0.10"),
                           last=IPv4Address("10.99.0.12"))
    table = LeaseTable()
    offers = []
    for i in range(3):
        answer = decide_dhcp(discover(i), table, policy, PxePolicy(), SERVER, 1000.0)
        table.apply(answer.change)
        offers.append(answer.ip)
    assert offers == [IPv4Address("10.99.0.10"), IPv4Address("10.99.0.11"), IPv4Address("10.99.0.12")]
    table.apply(Release(IPv4Address("10.99.0.11"), mac(1)))  # client 1 withdraws (it chose another server)
    again = decide_dhcp(discover(7), table, policy, PxePolicy(), SERVER, 1000.0)
    assert again.ip == IPv4Address("10.99.0.11")
    table.apply(again.change)
    assert decide_dhcp(discover(8), table, policy, PxePolicy(), SERVER, 1000.0).reason == "pool-exhausted"
    # 40 s on, the offers' hold (30 s) ran out: the next walk finds the addresses free again
    assert decide_dhcp(discover(8), table, policy, PxePolicy(), SERVER, 1040.0).ip == IPv4Address("10.99.0.10")
