"""`bootd certs` killed (SIGKILL) at any moment leaves every certificate and key whole: the old one or the new
one, never half of one; the next run removes what a cut-short write left."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

ROOT = Path(__file__).parents[2]
NAMES = ("ca", "server", "client")


def certs_init(out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "appliance", "certs", "init", "--san", "IP:127.0.0.1", "--out",
                             str(out), "--force"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def assert_whole(out: Path) -> None:
    for name in NAMES:
        x509.load_pem_x509_certificate((out / f"{name}.crt").read_bytes())
        serialization.load_pem_private_key((out / f"{name}.key").read_bytes(), password=None)


def test_kill_9_during_certs_init_never_leaves_half_a_certificate(tmp_path):
    out = tmp_path / "tls"
    assert certs_init(out).wait(60) == 0
    assert_whole(out)
    for delay in (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.2, 1.5, 2.0):  # wherever the kill lands
        proc = certs_init(out)
        time.sleep(delay)
        proc.kill()
        proc.wait(60)
        assert_whole(out)
    assert certs_init(out).wait(60) == 0
    assert_whole(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.{kind}" for n in NAMES for kind in ("crt", "key"))
