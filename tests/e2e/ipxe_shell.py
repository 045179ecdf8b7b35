"""Make QEMU's iPXE NIC ROM act like a plain (non-iPXE) PXE ROM by typing into its shell over the serial
socket (tools.md §6.2: QEMU has no other BIOS PXE ROM). In the shell it sets a user class other than `iPXE`,
asks for an address, clears the user class again and chains the file DHCP named over TFTP: the server must
hand it `undionly.kpxe`, whose own DHCP then says `iPXE` and gets the HTTP script.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

# The ROM still sends option 175 with this user class: only `ipxe_detection: user-class` tells it apart.
# With a DHCP server that gives the boot file (authoritative bootd):
DHCP_AND_CHAIN = ("set user-class FirmwarePXE", "dhcp", "clear user-class", "chain tftp://${next-server}/${filename}")
# Beside a plain DHCP server (proxy bootd): only `autoboot` does the PXE boot-server step on 4011. The user
# class leaks into the first undionly.kpxe through the PXE API's cached packets (tools.md §6.2), so it is
# handed undionly.kpxe once more before a second round says `iPXE`.
AUTOBOOT = ("set user-class FirmwarePXE", "autoboot")


class PlainPxeRom(threading.Thread):
    def __init__(self, serial_socket: Path, serial_log: Path, commands: tuple[str, ...] = DHCP_AND_CHAIN,
                 timeout: float = 180) -> None:
        super().__init__(daemon=True)
        self.socket_path, self.log, self.timeout = serial_socket, serial_log, timeout
        self.commands = commands
        self.error: str | None = None
        self.typed = False

    def run(self) -> None:
        try:
            self._drive()
            self.typed = True
        except Exception as exc:  # reported by the test, with the serial log
            self.error = f"{type(exc).__name__}: {exc}"

    def _text(self) -> bytes:
        try:
            return self.log.read_bytes()
        except FileNotFoundError:
            return b""

    def _wait(self, predicate, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self._text()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {what} on the serial line within {timeout:.0f} s")
            time.sleep(0.05)

    @staticmethod
    def _drain(sock: socket.socket) -> None:
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass  # closed when the typing is done

    def _drive(self) -> None:
        self._wait(lambda t: b"Ctrl-B" in t, "iPXE banner", self.timeout)
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(self.socket_path))
            # read everything QEMU sends: a client that does not read was seen to stall the guest
            threading.Thread(target=self._drain, args=(sock,), daemon=True).start()
            deadline = time.monotonic() + 30
            while b"iPXE>" not in self._text():
                if time.monotonic() > deadline:
                    raise TimeoutError("Ctrl-B did not open the iPXE shell")
                sock.send(b"\x02")
                time.sleep(0.1)
            for command in self.commands:
                prompts = self._text().count(b"iPXE>")
                for char in command:  # SeaBIOS's sercon polls the UART: one character at a time
                    sock.send(char.encode())
                    time.sleep(0.06)
                sock.send(b"\r")
                if not command.startswith(("chain", "autoboot")):
                    self._wait(lambda t, n=prompts: t.count(b"iPXE>") > n, f"prompt after {command!r}", 90)
            time.sleep(1)  # let the last characters reach the guest before the socket closes
