"""`bootd lab` runs as root and trusts its directory (it signals the process ids lab.json lists, and serves the
payload it caches): a directory another local user made first, or a symlink put in its place, is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab runs as root; the test chowns to another uid")
ROOT = Path(__file__).parents[2]
NOBODY = 65534


def bootd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "appliance", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


@pytest.fixture
def victim():
    """A process the planted lab.json names: it must survive `lab down`."""
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def planted(directory: Path, pid: int) -> Path:
    directory.mkdir()
    (directory / "lab.json").write_text(json.dumps({"namespace": "bootd-lab-test-none", "pids": [pid]}))
    return directory


def test_a_directory_of_another_user_is_refused_by_up_and_down(tmp_path, victim):
    directory = planted(tmp_path / "lab", victim.pid)
    os.chown(directory, NOBODY, NOBODY)
    os.chown(directory / "lab.json", NOBODY, NOBODY)
    down = bootd("lab", "down", "--dir", str(directory))
    assert down.returncode == 2 and "belongs to uid 65534" in down.stderr, down.stderr
    assert victim.poll() is None  # not signalled
    (directory / "lab.json").unlink()
    up = bootd("lab", "up", "--dir", str(directory), "--timeout", "1")
    assert up.returncode == 2 and "belongs to uid 65534" in up.stderr, up.stderr
    assert os.listdir(directory) == []  # nothing written into it
    assert "Traceback" not in up.stderr + down.stderr


def test_a_directory_others_can_write_is_refused(tmp_path, victim):
    directory = planted(tmp_path / "lab", victim.pid)
    directory.chmod(0o777)
    down = bootd("lab", "down", "--dir", str(directory))
    assert down.returncode == 2 and "writable by others" in down.stderr, down.stderr
    assert victim.poll() is None


def test_a_symlink_in_place_of_the_directory_is_refused(tmp_path, victim):
    target = planted(tmp_path / "elsewhere", victim.pid)
    link = tmp_path / "lab"
    link.symlink_to(target)
    down = bootd("lab", "down", "--dir", str(link))
    assert down.returncode == 2 and "symlink" in down.stderr, down.stderr
    assert victim.poll() is None


def test_a_new_lab_directory_is_private(tmp_path):
    from appliance.lab import own_directory

    directory = own_directory(tmp_path / "new" / "lab")
    assert directory.stat().st_mode & 0o777 == 0o700 and directory.stat().st_uid == os.geteuid()
