"""The bootd container image (image/build --container) runs what deploy/kubernetes/ describes, under podman.

The image is built (or taken from the cache when its inputs are unchanged) and run as the DaemonSet runs it:
the node's network, here a network namespace this test makes with a veth pair to a client namespace (the
segment) and the server's end named eth1 as the ConfigMap's bootd.yaml expects; a read-only root, only
NET_BIND_SERVICE and NET_RAW, the ConfigMap's bootd.yaml at /etc/bootd/bootd.yaml, the Secrets' files at the
paths it names, and a one-member etcd (Debian's, on the namespace's loopback) serving https that asks for a
client certificate. The ConfigMap's bootd.yaml is used as it is but for the etcd endpoints.

Checked: `bootd --version` and `bootd check` inside the image (the image's verified iPXE binaries servable,
etcd reached over TLS); `bootd store import` inside the image puts a matchbox data dir into etcd; the
default command (`bootd run -c /etc/bootd/bootd.yaml`) serves /boot.ipxe and the imported profile's iPXE
script to the client namespace over the segment, answers a PXE client's proxy-DHCP DISCOVER, runs with
exactly the two capabilities, and exits 0 on SIGTERM (podman stop).

Podman as root in this sandbox (Debian 12, podman 4.3): cgroups are v1 with a v2 hierarchy holding a
controller ("hybrid"), which crun refuses, so the OCI runtime is runc (Debian's runc package); the cgroup
manager is cgroupfs and events go to a file (no systemd here); the process lacks CAP_SYS_RESOURCE, so rlimits
podman would raise (nofile 1048576, nproc) are set explicitly at or below this process's own.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.etcd_cluster import EtcdCluster, MemberPlace, ServerTls
from tests.netns import NetLab

pytestmark = [pytest.mark.e2e, pytest.mark.netns]

ROOT = Path(__file__).parents[2]
BOOTD = [sys.executable, "-m", "appliance"]
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "file"]
_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
LIMITS = ["--ulimit", f"nofile={_hard}:{_hard}", "--ulimit", "nproc=4096:4096"]
# the ports and capabilities of the DaemonSet (deploy/kubernetes/daemonset.yaml)
CAPABILITIES = ["--cap-drop", "ALL", "--cap-add", "NET_BIND_SERVICE", "--cap-add", "NET_RAW"]
CAP_NET_BIND_SERVICE, CAP_NET_RAW = 10, 13


def log(message: str) -> None:
    print(f"[test_container] {message}", file=sys.stderr, flush=True)


@pytest.fixture(scope="module")
def image() -> str:
    if os.geteuid() != 0:
        pytest.skip("image/build --container and network namespaces need root")
    assert shutil.which("runc"), "runc is missing (podman runs the image with it here): apt-get install runc"
    started = time.monotonic()
    result = subprocess.run([str(ROOT / "image/build"), "--container"], capture_output=True, text=True,
                            timeout=1500)
    assert result.returncode == 0, f"image/build --container failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    log(f"image/build --container: {time.monotonic() - started:.1f} s ({result.stdout.splitlines()[0]})")
    [reference] = re.findall(r"^image:\s+(\S+)$", result.stdout, re.M)
    return reference


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"podman {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def test_bootd_version_inside_the_image_is_this_checkouts(image):
    from appliance import __version__
    result = podman("run", "--rm", "--network", "none", *LIMITS, image, "--version")
    assert result.stdout.strip() == f"bootd {__version__}"


def test_the_image_holds_no_apt_source_of_the_build_host(image):
    """The host's mirror is read at build time and left behind: no apt source in the image, and the mirror's
    host name in none of its configuration or state files."""
    sources = "\n".join(p.read_text() for p in [Path("/etc/apt/sources.list"),
                                                 *Path("/etc/apt/sources.list.d").glob("*")] if p.is_file())
    hosts = sorted(set(re.findall(r"^(?:URIs:|deb(?:-src)?)\s.*?[a-z]+://([^/\s]+)", sources, re.M)))
    assert hosts, "no mirror in the host's apt sources"
    script = 'ls /etc/apt; for h in "$@"; do grep -rlF "$h" /etc /var /opt/bootd/pyvenv.cfg; done; true'
    result = podman("run", "--rm", "--network", "none", *LIMITS, "--entrypoint", "sh", image, "-c", script,
                    "sh", *hosts)
    assert sorted(result.stdout.split()) == ["apt.conf.d", "preferences.d"], result.stdout


def configmap_bootd_yaml() -> str:
    for doc in yaml.safe_load_all((ROOT / "deploy/kubernetes/configmap.yaml").read_text()):
        return doc["data"]["bootd.yaml"]
    raise AssertionError("no ConfigMap")


def with_endpoints(text: str, endpoints: list[str]) -> str:
    for listed in yaml.safe_load(text)["store"]["endpoints"]:
        text = re.sub(rf"^\s*- {re.escape(listed)}\s*\n", "", text, count=1, flags=re.M)
    return text.replace("  endpoints:", "  endpoints: [" + ", ".join(endpoints) + "]", 1)


def matchbox_data(root: Path) -> Path:
    """A matchbox data dir with one profile and the default group (every machine boots it)."""
    for sub in ("profiles", "groups"):
        (root / sub).mkdir(parents=True)
    (root / "profiles/ram.json").write_text(json.dumps(
        {"id": "ram", "boot": {"kernel": "/assets/vmlinuz", "initrd": ["/assets/initrd.img"],
                               "args": ["console=ttyS0", "deployed-by-container"]}}))
    (root / "groups/default.json").write_text(json.dumps({"id": "default", "name": "every machine",
                                                          "profile": "ram"}))
    return root


def pxe_discover(mac: str) -> bytes:
    from scapy.layers.dhcp import BOOTP, DHCP
    options = [("message-type", "discover"), ("vendor_class_id", b"PXEClient:Arch:00000:UNDI:002001"),
               (93, (0).to_bytes(2, "big")), (94, b"\x01\x02\x01"), (97, b"\x00" + bytes(range(16))),
               ("param_req_list", [1, 3, 6, 43, 60, 66, 67]), "end"]
    return bytes(BOOTP(op=1, chaddr=bytes.fromhex(mac.replace(":", "")), xid=0x5EED, flags=0x8000)
                 / DHCP(options=options))


def test_the_image_runs_the_configmaps_bootd_yaml_on_a_segment_with_etcd_over_tls(image, tmp_path):
    name = f"ctr{os.getpid() % 100000}"
    container = f"bootd-e2e-{os.getpid()}"
    lab = NetLab(name, server_address="192.0.2.1/24").create()
    cluster = None
    try:
        client = lab.add_client("192.0.2.10/24")
        # the segment's NIC is eth1 in the ConfigMap's bootd.yaml, as on a node
        for argv in (["ip", "link", "set", client.server_ifname, "down"],
                     ["ip", "link", "set", client.server_ifname, "name", "eth1"],
                     ["ip", "link", "set", "eth1", "up"]):
            assert lab.run(lab.server_ns, argv).returncode == 0

        tls = tmp_path / "tls"
        made = subprocess.run([*BOOTD, "certs", "init", "--san", "IP:127.0.0.1", "--out", str(tls)],
                              capture_output=True, text=True, cwd=ROOT)
        assert made.returncode == 0, made.stderr
        cluster = EtcdCluster(tmp_path / "etcd", 1, lab=lab, tls=ServerTls(
            ca=tls / "ca.crt", cert=tls / "server.crt", key=tls / "server.key",
            client_cert=tls / "client.crt", client_key=tls / "client.key"),
            places=[MemberPlace(host="127.0.0.1", ns=lab.server_ns, client_port=2379, peer_port=2380)]).start()

        # what the DaemonSet mounts: the ConfigMap, the two Secrets (their key names), state and data
        etc = tmp_path / "etc-bootd"
        etc.mkdir()
        (etc / "bootd.yaml").write_text(with_endpoints(configmap_bootd_yaml(), cluster.endpoints))
        secrets = {"etcd": {"ca.crt": "ca.crt", "tls.crt": "client.crt", "tls.key": "client.key"},
                   "api": {"ca.crt": "ca.crt", "tls.crt": "server.crt", "tls.key": "server.key"}}
        for secret, keys in secrets.items():
            (tmp_path / f"secret-{secret}").mkdir()
            for key, source in keys.items():
                shutil.copy(tls / source, tmp_path / f"secret-{secret}" / key)
        for sub in ("state", "data/assets"):
            (tmp_path / sub).mkdir(parents=True)
        matchbox_data(tmp_path / "import/data")
        mounts = ["-v", f"{etc}:/etc/bootd:ro",
                  "-v", f"{tmp_path / 'secret-etcd'}:/var/run/secrets/bootd/etcd:ro",
                  "-v", f"{tmp_path / 'secret-api'}:/var/run/secrets/bootd/api:ro",
                  "-v", f"{tmp_path / 'state'}:/var/lib/bootd/state", "-v", f"{tmp_path / 'data'}:/var/lib/bootd/data"]
        like_the_daemonset = ["--network", f"ns:/run/netns/{lab.server_ns}", "--read-only", "--tmpfs", "/tmp",
                              *CAPABILITIES, "--security-opt", "no-new-privileges", *LIMITS, *mounts]

        check = podman("run", "--rm", *like_the_daemonset, image, "check", "-c", "/etc/bootd/bootd.yaml",
                       check=False)
        assert check.returncode == 0, check.stdout + check.stderr
        assert check.stdout.splitlines()[-1] == "bootd.yaml: 0 errors, 0 warnings, 0 machines", check.stdout
        assert re.search(r"arch  0 BIOS\s+undionly\.kpxe\s+servable", check.stdout), check.stdout

        imported = podman("run", "--rm", *like_the_daemonset, "-v", f"{tmp_path / 'import'}:/import:ro", image,
                          "store", "import", "/import/data", "-c", "/etc/bootd/bootd.yaml", check=False)
        assert imported.returncode == 0, imported.stdout + imported.stderr

        podman("run", "-d", "--name", container, *like_the_daemonset, image)
        deadline = time.monotonic() + 120  # until ready, as the readiness probe polls; not a timing expectation
        while True:
            fetched = lab.run(client.ns, ["curl", "-sf", "--max-time", "5", "http://192.0.2.1:8080/boot.ipxe"])
            if fetched.returncode == 0 or time.monotonic() > deadline:
                break
            state = podman("inspect", "-f", "{{.State.Running}}", container).stdout.strip()
            assert state == "true", podman("logs", container, check=False).stderr[-4000:]
            time.sleep(1)
        assert fetched.returncode == 0, podman("logs", container, check=False).stderr[-4000:]
        assert fetched.stdout.startswith("#!ipxe"), fetched.stdout

        script = lab.run(client.ns, ["curl", "-sf", "--max-time", "30",
                                     "http://192.0.2.1:8080/ipxe?mac=52:54:00:12:34:56"])
        assert script.returncode == 0, script.stderr
        assert "kernel /assets/vmlinuz" in script.stdout and "deployed-by-container" in script.stdout, script.stdout

        offer = lab.run(client.ns, [sys.executable, "-m", "tests.udp_probe", "--bind", "0.0.0.0:68", "--to",
                                    "255.255.255.255:67", "--iface", client.ifname, "--wait", "20", "--expect", "1",
                                    pxe_discover("52:54:00:12:34:56").hex()], cwd=ROOT, timeout=60)
        assert offer.returncode == 0, offer.stderr
        answers = json.loads(offer.stdout)
        assert answers and answers[0]["from"].startswith("192.0.2.1:"), answers

        alive = lab.run(client.ns, ["curl", "-sf", "--max-time", "30", "-o", "/dev/null", "http://192.0.2.1:8080/"])
        assert alive.returncode == 0, alive.stderr  # the liveness probe's request

        pid = podman("inspect", "-f", "{{.State.Pid}}", container).stdout.strip()
        status = Path(f"/proc/{pid}/status").read_text()
        effective = int(re.search(r"^CapEff:\s+([0-9a-f]+)$", status, re.M)[1], 16)
        assert effective == (1 << CAP_NET_BIND_SERVICE) | (1 << CAP_NET_RAW), hex(effective)
        rss_mib = int(re.search(r"^VmRSS:\s+(\d+) kB$", status, re.M)[1]) // 1024
        log(f"bootd in the container: RSS {rss_mib} MiB after check, import, a boot script and an offer")
        assert rss_mib < 512, rss_mib  # the DaemonSet's memory limit

        podman("stop", "-t", "20", container, timeout=60)
        assert podman("inspect", "-f", "{{.State.ExitCode}}", container).stdout.strip() == "0"
        logs = podman("logs", container).stderr
        assert "Traceback" not in logs, logs[-4000:]
    finally:
        podman("rm", "-f", "-t", "0", container, check=False)
        if cluster is not None:
            cluster.close()
        lab.close()
