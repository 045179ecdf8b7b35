"""`bmc:` in bootd.yaml through `bootd check`: a password is never inline, a password file readable by every
user is refused, each error names the file, the line and the field; and bootd's start never imports the BMC
libraries."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
SECRET = "check-Secret-2718"


def check(tmp: Path, machines: str) -> subprocess.CompletedProcess:
    (tmp / "data").mkdir(exist_ok=True)
    config = tmp / "bootd.yaml"
    config.write_text(f"state_dir: {tmp}\nhttp: {{data_dir: {tmp / 'data'}}}\nmachines:\n{machines}")
    return subprocess.run([sys.executable, "-m", "appliance", "check", "-c", str(config)], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)


def password_file(tmp: Path, mode: int) -> Path:
    path = tmp / f"bmc-{mode:o}.password"
    path.write_text(SECRET + "\n")
    path.chmod(mode)
    return path


@pytest.mark.parametrize("bmc, line, field, words", [
    pytest.param("{protocol: ipmi, address: 10.0.0.5, username: admin, password: " + SECRET + "}", 5,
                 "machines[1].bmc.password", "never written in bootd.yaml", id="inline-password"),
    pytest.param("{protocol: ipmi, address: 10.0.0.5, username: admin, password_file: PUBLIC}", 5,
                 "machines[1].bmc.password_file", "readable by every user (mode 0644): chmod 600", id="world-readable"),
    pytest.param("{protocol: ipmi, address: 10.0.0.5, username: admin, password_file: /nonexistent/pw}", 5,
                 "machines[1].bmc.password_file", "No such file or directory", id="missing-file"),
    pytest.param("{protocol: ipmi, address: 10.0.0.5, username: admin}", 5,
                 "machines[1].bmc.password_file", "give password_file", id="no-password"),
    pytest.param("{protocol: snmp, address: 10.0.0.5, username: admin, password_env: X}", 5,
                 "machines[1].bmc.protocol", "not one of: ipmi, redfish", id="protocol"),
    pytest.param("{protocol: redfish, username: admin, password_env: 'A B'}", 5,
                 "machines[1].bmc.address", "required", id="address-required"),
    pytest.param("{protocol: redfish, address: bmc, username: admin, password_env: 'A B'}", 5,
                 "machines[1].bmc.password_env", "not an environment variable's name", id="env-name"),
])
def test_bad_bmc_is_a_config_error_naming_file_line_field(tmp_path, bmc, line, field, words):
    public = password_file(tmp_path, 0o644)
    bmc = bmc.replace("PUBLIC", str(public))
    result = check(tmp_path, '  - {name: a, mac: "52:54:00:00:00:01"}\n'
                             f'  - {{name: b, mac: "52:54:00:00:00:02", bmc: {bmc}}}\n')
    assert result.returncode == 1, result
    errors = [l for l in result.stdout.splitlines() + result.stderr.splitlines() if l.startswith("bootd.yaml:")]
    assert any(l.startswith(f"bootd.yaml:{line}: {field}: ") and words in l for l in errors), result
    assert SECRET not in result.stdout + result.stderr


def test_good_bmc_checks_and_start_imports_no_bmc_library(tmp_path):
    private = password_file(tmp_path, 0o600)
    result = check(tmp_path, f'  - {{name: b, mac: "52:54:00:00:00:02", bmc: {{protocol: ipmi, address: 10.0.0.5, '
                             f'username: admin, password_file: {private}}}}}\n'
                             f'  - {{name: c, mac: "52:54:00:00:00:03", bmc: {{protocol: redfish, address: bmc.example, '
                             f'username: admin, password_env: BMC_PASSWORD, system: "1"}}}}\n')
    assert result.returncode == 0, result
    # what `bootd run` imports to start, with machines that have a bmc: none of the BMC libraries
    probe = ("import sys; from appliance import cli, daemon, config; from appliance.api import service; "
             "from appliance.power import service as power; "
             f"c = config.load_config({str(tmp_path / 'bootd.yaml')!r}); "
             "assert [m.bmc.port for m in c.machines] == [623, 443], c.machines; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pyipmi', 'sushy', 'requests')))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert loaded.returncode == 0 and loaded.stdout.strip() == "[]", loaded
