"""systemd without a dependency: sd_notify(3) over $NOTIFY_SOCKET, the watchdog, and dropping root after binding.

Invariants:
- Without $NOTIFY_SOCKET every notification is a no-op; a failed send is logged at DEBUG and never raises
  (a service manager that went away must not stop the daemon).
- The watchdog is pinged from the event loop itself (a timer on the loop), so a stuck loop stops the pings
  and systemd notices. It pings every WATCHDOG_USEC / 2, and only in the process WATCHDOG_PID names.
- The privilege drop keeps exactly KEPT_CAPABILITIES, permitted and effective, across setuid, so a later
  SIGHUP can still bind a port below 1024 (and open the ICMPv6 raw socket): nothing else survives, and the
  bounding set is reduced to the same two.

Which sockets need which capability (checked against the code, kernel 5.7+):
- CAP_NET_BIND_SERVICE: binding DHCP 67, TFTP 69, DNS 53, and HTTP/API below 1024.
- CAP_NET_RAW: only the ICMPv6 raw socket of `dhcp.router_advertisement` (net.RouterAdvertiser). bootd sets
  no SO_BINDTODEVICE (the DHCP and TFTP transports choose the interface with IP_PKTINFO), and `bootd probe`
  (scapy, AF_PACKET) is not part of the daemon.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import grp
import logging
import os
import pwd
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

# <linux/capability.h>
CAP_NET_BIND_SERVICE = 10
CAP_NET_RAW = 13
KEPT_CAPABILITIES = (CAP_NET_BIND_SERVICE, CAP_NET_RAW)
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
# <linux/prctl.h>
_PR_SET_KEEPCAPS = 8
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38


def capability_mask(capabilities: Iterable[int]) -> int:
    """The bit mask /proc/PID/status shows (CapEff, CapPrm, CapBnd) for these capability numbers."""
    mask = 0
    for cap in capabilities:
        mask |= 1 << cap
    return mask


# --- sd_notify ------------------------------------------------------------------------------------------

def notify_address(value: str | None) -> str | bytes | None:
    """$NOTIFY_SOCKET as a socket address: a path, or an abstract name ('@name' -> b'\\0name'); None if unset
    or not a form sd_notify(3) knows (vsock addresses are not used for a host daemon)."""
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between watchdog pings: half of WATCHDOG_USEC (sd_watchdog_enabled(3) advises pinging at
    half the timeout), or None when no watchdog is asked of this process."""
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    if "WATCHDOG_PID" in environ:
        try:
            if int(environ["WATCHDOG_PID"]) != pid:
                return None  # meant for another process (a wrapper that exec'd us, or our parent)
        except ValueError:
            return None
    return usec / 2 / 1_000_000


def notify_message(*assignments: str) -> bytes:
    """One datagram: newline-separated VAR=value lines (newlines inside a value would start a new field)."""
    return "\n".join(a.replace("\n", " ") for a in assignments).encode()


class Notifier:
    """Sends sd_notify messages to the service manager; every method is a no-op outside systemd."""

    def __init__(self, address: str | bytes | None, watchdog: float | None = None) -> None:
        self.address = address
        self.watchdog_seconds = watchdog if address is not None else None
        self.sent = 0
        self.failures = 0
        self._sock: socket.socket | None = None
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        return cls(notify_address(environ.get("NOTIFY_SOCKET")), watchdog_interval(environ, os.getpid()))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> None:
        if self.address is None:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.settimeout(2.0)  # systemd reads its socket at once; never hang the loop on it
            self._sock.sendto(notify_message(*assignments), self.address)
            self.sent += 1
        except OSError as exc:
            self.failures += 1
            logger.debug("sd_notify %s failed: %s", assignments[0] if assignments else "", exc)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def reloading(self) -> None:
        # MONOTONIC_USEC is what Type=notify-reload (systemd 253+) requires; plain Type=notify ignores it.
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}", "STATUS=reloading")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping: draining requests in flight")

    def start_watchdog(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.watchdog_seconds is None:
            return
        logger.info("systemd watchdog: pinging every %.3g s", self.watchdog_seconds)
        self._ping(loop)

    def _ping(self, loop: asyncio.AbstractEventLoop) -> None:
        self.send("WATCHDOG=1")
        assert self.watchdog_seconds is not None
        self._timer = loop.call_later(self.watchdog_seconds, self._ping, loop)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None


# --- dropping root ----------------------------------------------------------------------------------------

class PrivilegeError(Exception):
    """The drop to the configured user failed; the daemon must not go on as root (exit code 2)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunAs:
    name: str
    uid: int
    gid: int


def lookup_user(name: str) -> RunAs | None:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    return RunAs(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise PrivilegeError(f"{what}: {os.strerror(err)}")


def _last_capability() -> int:
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        return 40  # CAP_CHECKPOINT_RESTORE, the last one as of Linux 5.9


def chown_tree(root: Path, user: RunAs) -> int:
    """Give `root` and everything under it to `user` (symlinks themselves, never what they point at).
    Returns how many entries changed owner."""
    changed = 0
    root.mkdir(parents=True, exist_ok=True)
    entries = [root]
    for directory, dirnames, filenames in os.walk(root):  # os.walk does not follow symlinked directories
        entries += [Path(directory, name) for name in dirnames + filenames]
    for path in entries:
        st = path.lstat()
        if (st.st_uid, st.st_gid) != (user.uid, user.gid):
            os.lchown(path, user.uid, user.gid)
            changed += 1
    return changed


def limit_bounding_set() -> None:
    """Reduce this thread's capability bounding set to KEPT_CAPABILITIES. The bounding set only limits what
    an execve could gain, so root keeps working until the drop; a thread inherits it from its creator, so
    done before any thread starts it reaches every thread (setuid, which glibc applies to all threads, then
    clears their capabilities; only the event loop's thread keeps the two)."""
    libc = _libc()
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    for cap in range(_last_capability() + 1):
        if cap not in KEPT_CAPABILITIES:
            _check(libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0), f"dropping capability {cap} from the bounding set")


def drop_privileges(user: RunAs, writable: Iterable[Path]) -> None:
    """From root to `user`, keeping KEPT_CAPABILITIES (permitted and effective) and nothing else.

    Order matters: the bounding set can only be reduced while CAP_SETPCAP is effective (before setuid);
    PR_SET_KEEPCAPS keeps the permitted set across setuid, which clears the effective set, so capset
    raises the two again afterwards. The bounding set, keep-caps and no-new-privs are per thread: this
    runs on the event loop's thread, the one that binds sockets; other threads (an executor, gRPC's) lose
    every capability at setuid, which glibc applies to all threads, and their bounding set is the one
    `limit_bounding_set` left before they started.
    """
    for path in writable:
        changed = chown_tree(path, user)
        if changed:
            logger.info("gave %s (%d entries) to user %s", path, changed, user.name)
    limit_bounding_set()
    libc = _libc()
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    _check(libc.prctl(_PR_SET_KEEPCAPS, 1, 0, 0, 0), "prctl(PR_SET_KEEPCAPS)")
    try:
        os.initgroups(user.name, user.gid)  # the user's own supplementary groups, as systemd's User= gives
        os.setresgid(user.gid, user.gid, user.gid)
        os.setresuid(user.uid, user.uid, user.uid)
    except OSError as exc:
        raise PrivilegeError(f"switching to user {user.name}: {exc.strerror}") from None
    mask = capability_mask(KEPT_CAPABILITIES)
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)(_CapData(mask & 0xFFFFFFFF, mask & 0xFFFFFFFF, 0),
                          _CapData(mask >> 32, mask >> 32, 0))
    _check(libc.capset(ctypes.byref(header), data), "capset")
    _check(libc.prctl(_PR_SET_KEEPCAPS, 0, 0, 0, 0), "prctl(PR_SET_KEEPCAPS, 0)")
    _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    if os.getuid() != user.uid or os.geteuid() != user.uid or os.getegid() != user.gid:
        raise PrivilegeError(f"still not user {user.name} after setuid")
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise PrivilegeError("could regain root after the drop")


def describe_user(uid: int, gid: int) -> str:
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    try:
        group = grp.getgrgid(gid).gr_name
    except KeyError:
        group = str(gid)
    return f"{name} (uid {uid}, gid {gid} {group})"
