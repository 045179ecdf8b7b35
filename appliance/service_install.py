"""`bootd install-service`: the packaged unit (appliance/data/bootd.service) filled in for this install, and its
system user declared in sysusers.d and created by systemd-sysusers (which also works on an image's root
directory, where useradd would need the target's tools and databases).

Everything is written under `root` ("/" on a live host, the root file system of an image being built), so
the same command serves both; nothing is started or enabled here, the printed next steps say how.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from appliance.atomic import write_atomically

UNIT_PATH = Path("etc/systemd/system/bootd.service")
SYSUSERS_PATH = Path("etc/sysusers.d/bootd.conf")
STATE_DIRECTORY = Path("/var/lib/bootd")  # the unit's StateDirectory=bootd: writable under ProtectSystem=strict
_USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,30}")
# systemd's ExecStart has its own quoting and expands % and $; paths that need neither stay readable.
_PLAIN_PATH = re.compile(r"/[A-Za-z0-9._+@:/-]*")


class InstallError(Exception):
    """Why the service cannot be installed, as one line."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceSettings:
    binary: Path  # the bootd console script the unit runs
    config: Path
    user: str
    writable: tuple[Path, ...] = ()  # ReadWritePaths= beyond the StateDirectory (a state_dir elsewhere)

    def __post_init__(self) -> None:
        for what, path in (("--bin", self.binary), ("--config", self.config), *(("state", p) for p in self.writable)):
            if not _PLAIN_PATH.fullmatch(str(path)):
                raise ValueError(f"{what} {path}: expected an absolute path of letters, digits and ._+@:/- "
                                 "(systemd would expand or split anything else)")
        if not _USER_NAME.fullmatch(self.user):
            raise ValueError(f"--user {self.user!r}: expected a system user name (lower-case letters, digits, _ -)")


def packaged_unit() -> str:
    return resources.files("appliance").joinpath("data/bootd.service").read_text(encoding="utf-8")


def render_unit(template: str, settings: ServiceSettings) -> str:
    """The packaged unit with this install's ExecStart, User= and Group= (and ReadWritePaths=, if any)."""
    out = []
    for line in template.splitlines():
        key = line.split("=", 1)[0] if "=" in line and not line.startswith("#") else None
        if key == "ExecStart":
            line = f"ExecStart={settings.binary} run -c {settings.config}"
        elif key in ("User", "Group"):
            line = f"{key}={settings.user}"
        elif key == "StateDirectory" and settings.writable:
            out.append(line)
            line = "ReadWritePaths=" + " ".join(str(p) for p in settings.writable)
        out.append(line)
    return "\n".join(out) + "\n"


def sysusers_entry(user: str) -> str:
    """sysusers.d(5): a system user with its own group, home in the state directory, no login shell."""
    return (f"# written by bootd install-service\n"
            f'u {user} - "bootd network-boot daemon" {STATE_DIRECTORY} -\n')


def default_binary() -> Path:
    """This environment's bootd: the console script beside the running Python (a venv or pipx), else PATH."""
    beside = Path(sys.executable).parent / "bootd"
    if beside.is_file():
        return beside
    found = shutil.which("bootd")
    if found is None:
        raise InstallError("cannot find the bootd command beside this Python or on PATH: give --bin")
    return Path(found)


def writable_paths(config: Path) -> tuple[Path, ...]:
    """state_dir (and the api's data dir), when the config exists and puts them outside the StateDirectory."""
    from appliance.config import ConfigInvalid, load_config

    try:
        loaded = load_config(config)
    except (ConfigInvalid, OSError):
        return ()
    wanted = [loaded.state_dir] + ([loaded.http.data_dir] if loaded.api.enabled else [])
    return tuple(p for p in wanted if not p.is_relative_to(STATE_DIRECTORY))


def install(root: Path, settings: ServiceSettings) -> list[str]:
    """Write the unit and the sysusers.d entry under `root`, create the user; what was done, line by line."""
    done = []
    unit = root / UNIT_PATH
    write_atomically(unit, render_unit(packaged_unit(), settings).encode(), mode=0o644)
    done.append(f"wrote {unit} (runs {settings.binary} run -c {settings.config} as {settings.user})")
    sysusers = root / SYSUSERS_PATH
    write_atomically(sysusers, sysusers_entry(settings.user).encode(), mode=0o644)
    done.append(f"wrote {sysusers}")
    done.append(create_user(root, settings.user, sysusers))
    if not (root / settings.binary.relative_to("/")).is_file():
        done.append(f"warning: {root / settings.binary.relative_to('/')} does not exist yet: the unit will not start "
                    "until it does")
    for path in (settings.config, *settings.writable):
        if path.is_relative_to("/home") or path.is_relative_to("/root"):
            done.append(f"warning: {path} is under a home directory, which ProtectHome=yes hides from the service")
    if root == Path("/"):
        done += ["next: systemctl daemon-reload && systemctl enable --now bootd",
                 "then: systemctl status bootd (what it serves), journalctl -u bootd, systemctl reload bootd (SIGHUP)"]
    else:
        done.append(f"next: systemctl --root={root} enable bootd.service (or the image's own preset)")
    return done


def create_user(root: Path, user: str, sysusers: Path) -> str:
    tool = shutil.which("systemd-sysusers")
    if tool is not None:
        argv = [tool, *([f"--root={root}"] if root != Path("/") else []), str(sysusers)]
    elif (useradd := shutil.which("useradd")) is not None:
        if _user_exists(root, user):
            return f"user {user} exists"
        argv = [useradd, "--system", "--user-group", "--home-dir", str(STATE_DIRECTORY), "--no-create-home",
                "--shell", "/usr/sbin/nologin", "--comment", "bootd network-boot daemon",
                *(["--root", str(root)] if root != Path("/") else []), user]
    else:
        raise InstallError("neither systemd-sysusers nor useradd is installed: apt-get install systemd")
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise InstallError(f"{' '.join(argv)} failed: {(result.stderr or result.stdout).strip()}")
    if not _user_exists(root, user):
        raise InstallError(f"{' '.join(argv)} ran but {root / 'etc/passwd'} has no user {user}")
    return f"user {user}: present in {root / 'etc/passwd'} ({Path(argv[0]).name})"


def _user_exists(root: Path, user: str) -> bool:
    try:
        lines = (root / "etc/passwd").read_text().splitlines()
    except OSError:
        return False
    return any(line.split(":", 1)[0] == user for line in lines)
