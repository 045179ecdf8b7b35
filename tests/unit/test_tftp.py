"""TFTP: request codec, option negotiation (RFC 2347/2348/2349/7440) and one transfer driven with explicit
times (no sleeping): lock-step, windowed, loss, duplicate ACKs, backoff, a tsize probe, block wrap."""

from __future__ import annotations

import errno
import os

import pytest

from appliance.tftp.protocol import (
    DATA, OACK, RRQ, WRQ, Accept, ErrorCode, Limits, MalformedPacket, Outcome, ReadTransfer, Refuse,
    encode_ack, encode_error, encode_request, negotiate, parse_reply, parse_request, to_netascii,
)

LIMITS = Limits(max_blksize=1468, max_windowsize=16, default_timeout=1.0)


def request(options: dict[str, str] | None = None, *, opcode: int = RRQ, mode: str = "octet"):
    return parse_request(encode_request(opcode, "ipxe.efi", mode, options))


# --- codec ---------------------------------------------------------------------------------------------

def test_request_round_trip_lowercases_option_names_and_mode():
    r = parse_request(encode_request(RRQ, "Dir/File.bin", "OCTET", {"BLKSIZE": "1468", "tsize": "0"}))
    assert (r.filename, r.mode, dict(r.options)) == ("Dir/File.bin", "octet", {"blksize": "1468", "tsize": "0"})


@pytest.mark.parametrize("data, reason", [
    (b"\x00\x01", "short"),
    (b"\x00\x03abc\x00octet\x00", "not-a-request"),
    (b"\x00\x01file\x00octet", "no-nul-terminator"),
    (b"\x00\x01file\x00", "bad-fields"),
    (b"\x00\x01file\x00octet\x00blksize\x00", "bad-fields"),
    (b"\x00\x01fi\xffle\x00octet\x00", "not-ascii"),
    (b"\x00\x01" + b"a" * 600 + b"\x00octet\x00", "request-too-long"),
])
def test_malformed_requests(data, reason):
    with pytest.raises(MalformedPacket) as info:
        parse_request(data)
    assert info.value.reason == reason


# --- negotiation ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("options, blksize, windowsize, timeout, oack", [
    pytest.param({}, 512, 1, 1.0, None, id="no-options-no-oack"),
    pytest.param({"blksize": "1468", "tsize": "0"}, 1468, 1, 1.0, {"blksize": "1468", "tsize": "5000"}, id="pxe-rom"),
    pytest.param({"blksize": "9000"}, 1468, 1, 1.0, {"blksize": "1468"}, id="blksize-clamped-to-mtu"),
    pytest.param({"blksize": "8"}, 8, 1, 1.0, {"blksize": "8"}, id="blksize-minimum"),
    pytest.param({"windowsize": "4", "blksize": "1468"}, 1468, 4, 1.0, {"windowsize": "4", "blksize": "1468"},
                 id="edk2-windowsize"),
    pytest.param({"windowsize": "64"}, 512, 16, 1.0, {"windowsize": "16"}, id="windowsize-clamped"),
    pytest.param({"timeout": "3"}, 512, 1, 3.0, {"timeout": "3"}, id="timeout-echoed"),
    pytest.param({"timeout": "10"}, 512, 1, 10.0, {"timeout": "10"}, id="timeout-at-the-cap"),
    # 255 s x 5 retries would hold a slot 25 minutes: left out of the OACK, the server's own timeout applies
    pytest.param({"timeout": "255", "blksize": "1024"}, 1024, 1, 1.0, {"blksize": "1024"}, id="timeout-over-the-cap"),
    pytest.param({"multicast": "", "foo": "1"}, 512, 1, 1.0, None, id="unknown-options-left-out"),
])
def test_negotiation(options, blksize, windowsize, timeout, oack):
    accept = negotiate(request(options), 5000, LIMITS)
    assert isinstance(accept, Accept)
    assert (accept.blksize, accept.windowsize, accept.timeout) == (blksize, windowsize, timeout)
    assert (dict(accept.oack) if accept.oack else None) == oack


@pytest.mark.parametrize("req, code, reason", [
    pytest.param(request({"blksize": "7"}), ErrorCode.OPTION_REFUSED, "bad-blksize", id="blksize-too-small"),
    pytest.param(request({"blksize": "big"}), ErrorCode.OPTION_REFUSED, "bad-blksize", id="blksize-not-a-number"),
    pytest.param(request({"timeout": "0"}), ErrorCode.OPTION_REFUSED, "bad-timeout", id="timeout-zero"),
    pytest.param(request({"timeout": "256"}), ErrorCode.OPTION_REFUSED, "bad-timeout", id="timeout-too-long"),
    pytest.param(request({"windowsize": "0"}), ErrorCode.OPTION_REFUSED, "bad-windowsize", id="windowsize-zero"),
    pytest.param(request({"windowsize": "99999"}), ErrorCode.OPTION_REFUSED, "bad-windowsize", id="windowsize-huge"),
    pytest.param(request({"tsize": "-1"}), ErrorCode.OPTION_REFUSED, "bad-tsize", id="tsize-negative"),
    pytest.param(request(opcode=WRQ), ErrorCode.ACCESS_VIOLATION, "write-refused", id="write"),
    pytest.param(request(mode="mail"), ErrorCode.ILLEGAL_OPERATION, "bad-mode", id="mail-mode"),
])
def test_refusals(req, code, reason):
    refusal = negotiate(req, 10, LIMITS)
    assert isinstance(refusal, Refuse) and (refusal.code, refusal.reason) == (code, reason)


def test_netascii_conversion():
    assert to_netascii(b"a\nb\rc") == b"a\r\nb\r\0c"


# --- transfers with a fake clock ---------------------------------------------------------------------------

def blocks_of(packets: list[bytes]) -> list[int]:
    return [parse_reply(p)[1] for p in packets if parse_reply(p)[0] == DATA]


def transfer(size: int, **accept) -> tuple[ReadTransfer, bytes]:
    content = bytes(i % 251 for i in range(size))
    defaults = {"blksize": 512, "windowsize": 1, "timeout": 1.0, "oack": None}
    return ReadTransfer(content, Accept(**{**defaults, **accept})), content


def test_lockstep_transfer_with_exact_multiple_ends_with_an_empty_block():
    t, content = transfer(1024)
    assert blocks_of(t.start(0.0)) == [1]
    assert blocks_of(t.receive(encode_ack(1), 0.1)) == [2]
    last = t.receive(encode_ack(2), 0.2)
    assert blocks_of(last) == [3] and parse_reply(last[0])[2] == b""
    assert t.receive(encode_ack(3), 0.3) == [] and t.outcome is Outcome.DONE and t.deadline is None
    assert t.stats.retransmitted == 0


def test_oack_first_then_data_after_ack_0():
    t, _ = transfer(100, oack={"tsize": "100"})
    [oack] = t.start(0.0)
    assert parse_reply(oack)[0] == OACK
    assert blocks_of(t.receive(encode_ack(0), 0.1)) == [1]


def test_tsize_probe_abort_is_a_clean_end():
    t, _ = transfer(100, oack={"tsize": "100"})
    t.start(0.0)
    t.receive(encode_error(ErrorCode.OPTION_REFUSED, "User aborted the transfer"), 0.1)
    assert t.outcome is Outcome.REFUSED and t.error == "User aborted the transfer" and t.acked == 0


def test_duplicate_acks_never_cause_data_sorcerers_apprentice():
    t, _ = transfer(5000)
    t.start(0.0)
    t.receive(encode_ack(1), 0.1)
    for _ in range(5):
        assert t.receive(encode_ack(1), 0.2) == []
    assert t.stats.duplicate_acks == 5 and t.stats.data_sent == 2


def test_ack_for_a_block_never_sent_is_ignored():
    t, _ = transfer(5000)
    t.start(0.0)
    assert t.receive(encode_ack(7), 0.1) == [] and t.stats.future_acks == 1 and t.acked == 0


def test_retransmission_on_timeout_with_backoff_and_a_bounded_number_of_retries():
    t, _ = transfer(5000)
    t.start(0.0)
    assert t.on_timeout(0.5) == []  # not due yet
    times = []
    now = 1.0
    while t.outcome is Outcome.RUNNING:
        packets = t.on_timeout(now)
        if packets:
            assert blocks_of(packets) == [1]
            times.append(now)
        now = t.deadline if t.deadline is not None else now
    assert t.outcome is Outcome.TIMED_OUT and len(times) == 5
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert gaps == [2.0, 4.0, 8.0, 8.0]  # doubling, capped at 8 s


def test_windowed_transfer_sends_a_window_per_ack_and_recovers_from_a_gap():
    t, content = transfer(512 * 10 + 1, windowsize=4)
    assert blocks_of(t.start(0.0)) == [1, 2, 3, 4]
    assert blocks_of(t.receive(encode_ack(4), 0.1)) == [5, 6, 7, 8]
    # block 6 was lost: the client acknowledges 5, the window restarts after it
    assert blocks_of(t.receive(encode_ack(5), 0.2)) == [6, 7, 8, 9]
    assert t.stats.retransmitted == 3
    assert blocks_of(t.receive(encode_ack(9), 0.3)) == [10, 11]
    t.receive(encode_ack(11), 0.4)
    assert t.outcome is Outcome.DONE


def test_block_numbers_wrap_after_65535():
    t, _ = transfer(8 * 70000, blksize=8, windowsize=1)
    t.start(0.0)
    for block in range(1, 65536):
        packets = t.receive(encode_ack(block), 0.0)
    assert t.acked == 65535
    assert blocks_of(packets) == [0]  # block 65536 goes out numbered 0
    t.receive(encode_ack(0), 0.0)
    assert t.acked == 65536


@pytest.mark.parametrize("windowsize", [1, 3, 8])
@pytest.mark.parametrize("oack", [None, {"blksize": "8"}])
def test_acked_windows_deliver_the_file_across_the_block_wrap(windowsize, oack):
    """ACKs of whole windows (the per-block fast path in `receive`) deliver every byte once, in order,
    across the 16-bit block wrap and a short last window, with the timer re-armed at each window."""
    t, content = transfer(8 * 65540 + 3, blksize=8, windowsize=windowsize, oack=oack)
    packets = t.start(0.0)
    if oack is not None:
        assert parse_reply(packets[0])[0] == OACK
        packets = t.receive(encode_ack(0), 0.0)
    received = bytearray()
    now = 0.0
    while t.outcome is Outcome.RUNNING:
        assert len(packets) == min(windowsize, t.blocks - t.acked)
        for packet in packets:
            opcode, number, payload = parse_reply(packet)
            assert opcode == DATA and number == (len(received) // 8 + 1) & 0xFFFF
            received += payload
        assert t.deadline == now + 1.0
        now += 0.001
        packets = t.receive(encode_ack(number), now)
    assert t.outcome is Outcome.DONE and bytes(received) == content
    assert (t.stats.data_sent, t.stats.retransmitted, t.stats.duplicate_acks) == (t.blocks, 0, 0)


def test_client_error_mid_transfer_is_an_abort():
    t, _ = transfer(5000)
    t.start(0.0)
    t.receive(encode_ack(1), 0.1)
    t.receive(encode_error(ErrorCode.NOT_DEFINED, "gone"), 0.2)
    assert t.outcome is Outcome.ABORTED and t.deadline is None


def test_a_client_error_message_cannot_forge_log_lines():
    # Found by the fuzz campaign: the message went to the log as sent, newlines and all.
    t, _ = transfer(5000)
    t.start(0.0)
    t.receive(encode_error(ErrorCode.NOT_DEFINED, "gone")[:-1] + b"\n2026 ERROR forged\x1b[31m" + b"x" * 500 + b"\0", 0.1)
    assert t.outcome is Outcome.ABORTED
    assert t.error == "gone?2026 ERROR forged?[31m" + "x" * 73


def test_garbage_to_a_transfer_is_counted_not_fatal():
    t, _ = transfer(5000)
    t.start(0.0)
    assert t.receive(b"\x00", 0.1) == [] and t.receive(b"\x00\x09\x00\x01", 0.1) == []
    assert t.stats.stray == 2 and t.outcome is Outcome.RUNNING


def test_a_missing_last_ack_still_counts_as_delivered():
    t, _ = transfer(1000)
    t.start(0.0)
    t.receive(encode_ack(1), 0.1)  # block 2, the last, goes out; its ACK never comes
    now = 0.1
    while t.outcome is Outcome.RUNNING:
        now = t.deadline
        t.on_timeout(now)
    assert t.outcome is Outcome.DONE and t.last_ack_missing


def test_client_gone_mid_transfer_is_an_abort_but_after_the_last_block_is_delivered():
    t, _ = transfer(5000)
    t.start(0.0)
    t.peer_gone("Connection refused")
    assert t.outcome is Outcome.ABORTED
    t, _ = transfer(600)
    t.start(0.0)
    t.receive(encode_ack(1), 0.1)
    t.peer_gone("Connection refused")
    assert t.outcome is Outcome.DONE and t.last_ack_missing


def test_a_window_never_acknowledged_is_not_delivered():
    # 101 blocks in windows of 64: the client acknowledged the first window, the second (37 blocks) never
    t, _ = transfer(512 * 100 + 1, windowsize=64)
    t.start(0.0)
    assert blocks_of(t.receive(encode_ack(64), 0.1)) == list(range(65, 102))
    now = 0.1
    while t.outcome is Outcome.RUNNING:
        now = t.deadline
        t.on_timeout(now)
    assert t.outcome is Outcome.TIMED_OUT and not t.last_ack_missing and t.acked == 64
    t, _ = transfer(512 * 100 + 1, windowsize=64)
    t.start(0.0)
    t.receive(encode_ack(64), 0.1)
    t.peer_gone("Connection refused")
    assert t.outcome is Outcome.ABORTED


def test_only_the_final_blocks_ack_may_be_missing_in_a_window_too():
    t, _ = transfer(512 * 7 + 1, windowsize=4)  # 8 blocks: windows 1-4, 5-8
    t.start(0.0)
    t.receive(encode_ack(4), 0.1)
    t.receive(encode_ack(7), 0.2)  # the client saw 5-7; 8 goes again, its ACK never comes
    t.peer_gone("Connection refused")
    assert t.outcome is Outcome.DONE and t.last_ack_missing


def test_a_client_is_heard_from_its_first_ack_on():
    t, _ = transfer(5000, oack={"blksize": "512"})
    t.start(0.0)
    assert not t.heard
    t.receive(b"\x00\x05\x00\x00", 0.05)  # an ERROR ends the transfer; it is no answer to keep a slot for
    assert not t.heard and t.outcome is Outcome.ABORTED
    t, _ = transfer(5000, oack={"blksize": "512"})
    t.start(0.0)
    t.receive(encode_ack(0), 0.1)
    assert t.heard


# --- the transport's window sends (UDP GSO) ----------------------------------------------------------------

class _Sock:
    """A transfer socket that records what goes out; `refuse` is the errno sendmsg fails with (GSO refused)."""

    def __init__(self, refuse: int = 0) -> None:
        self.refuse, self.sendmsgs, self.sends = refuse, [], []

    def sendmsg(self, buffers, ancillary):
        if self.refuse:
            raise OSError(self.refuse, os.strerror(self.refuse))
        self.sendmsgs.append((b"".join(buffers), ancillary))
        return sum(map(len, buffers))

    def send(self, packet):
        self.sends.append(packet)
        return len(packet)


def _gso_session(sock, blksize: int, windowsize: int, content: bytes):
    from appliance.tftp.server import Session, TftpServer
    server = TftpServer(files=None, publisher=None)  # type: ignore[arg-type]  # _send uses neither
    transfer = ReadTransfer(content, Accept(blksize=blksize, windowsize=windowsize, timeout=1.0, oack=None))
    session = Session(("127.0.0.1", 1), "f", sock, transfer, 0.0)  # type: ignore[arg-type]
    size = 4 + blksize
    session.gso, session.gso_size = [(17, 103, size.to_bytes(2, "little"))], size
    session.gso_segments = min(64, 65507 // size)
    return server, session, transfer


def test_a_window_goes_in_one_gso_send_and_a_long_one_is_split_at_64_segments():
    content = (bytes(range(256)) * 40)[:10140]  # 101 blocks of 100 and a short last one of 40
    sock = _Sock()
    server, session, transfer = _gso_session(sock, 100, 102, content)
    packets = transfer.start(0.0)
    assert len(packets) == 102
    server._send(session, packets)
    assert [len(buf) for buf, _ in sock.sendmsgs] == [64 * 104, 37 * 104 + 44] and not sock.sends
    assert b"".join(buf for buf, _ in sock.sendmsgs) == b"".join(packets)  # the same bytes, in order


def test_a_window_bigger_than_64_kb_is_split_by_bytes():
    sock = _Sock()
    server, session, transfer = _gso_session(sock, 8000, 16, b"x" * 8000 * 16)
    server._send(session, transfer.start(0.0))
    assert [len(buf) // 8004 for buf, _ in sock.sendmsgs] == [8, 8] and all(len(b) <= 65507 for b, _ in sock.sendmsgs)


@pytest.mark.parametrize("refusal", [errno.EIO, errno.EINVAL])
def test_gso_refused_falls_back_to_one_send_per_packet_and_is_remembered(refusal):
    sock = _Sock(refusal)
    server, session, transfer = _gso_session(sock, 100, 8, bytes(2000))
    packets = transfer.start(0.0)
    server._send(session, packets)
    assert sock.sends == packets and server.gso is False and transfer.outcome is Outcome.RUNNING
    sock.sends.clear()
    server._send(session, packets)  # no second try
    assert sock.sends == packets and not sock.sendmsgs
