"""Garbage at the read-write API's port (found by bench/fuzz.py): refused without a line in bootd's log per
connection (gRPC's core logged each failed handshake at INFO on stderr), and the API still answers."""

import socket

from tests.integration.test_api import make_certs, reference, start


def test_garbage_connections_leave_no_log_line_and_the_api_still_answers(tmp_path):
    (tmp_path / "data").mkdir()
    make_certs(tmp_path)
    bootd = start(tmp_path)
    host, port = bootd.api_endpoint.rsplit(":", 1)
    try:
        for garbage in (b"GET / HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x00\x05hello", b"\x00" * 64):
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                sock.sendall(garbage)
                while sock.recv(4096):  # bootd ends the handshake: the connection closes
                    pass
        assert "ok" in reference(bootd, [["Profiles", "ProfileList", {}]])[0]
    finally:
        assert bootd.stop() == 0
    bootd.wait_for_log(lambda line: line.get("message") == "bootd stopped")  # every line before it was read
    assert not [line for line in bootd.lines if "Handshake failed" in line.get("message", "")], bootd.log_text()
