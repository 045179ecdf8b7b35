"""What `bootd run` loads to start: the heavy libraries only when the config uses them (start time and idle RSS,
issue 16). grpc (the read-write API, the etcd store) costs about 0.4 s and 10 MB; scapy is `bootd probe`'s."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_starting_without_api_or_etcd_imports_neither_grpc_nor_scapy():
    probe = ("import sys; from appliance import cli, daemon; "
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'grpc', 'scapy', 'google'}))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert loaded.returncode == 0 and loaded.stdout.strip() == "[]", loaded
