"""Where `bootd appliance` looks by default: the appliance image's layout (appliance/onboot.py uses them).

Apart from onboot so that the CLI can offer them as defaults without importing onboot: the parser is built
for every command, `bootd run` included, and onboot's import costs about 60 ms and 2-3 MB that a running
daemon never uses (issue 16's start and idle targets; tests/unit/test_imports.py)."""

from pathlib import Path

DEFAULT_BOOTD_DIR = Path("/media/BOOTD")
DEFAULT_CONFIG_DIR = Path("/var/lib/bootd/config")
DEFAULT_STATE_DIR = Path("/var/lib/bootd")
DEFAULT_FIRMWARE_DIR = Path("/usr/lib/bootd/firmware")
DEFAULT_NETWORK_DIR = Path("/run/systemd/network")
DEFAULT_RUN_DIR = Path("/run/bootd")
DEFAULT_SYS_CLASS_NET = Path("/sys/class/net")
DEFAULT_SERVICE_USER = "bootd"
DEFAULT_JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
