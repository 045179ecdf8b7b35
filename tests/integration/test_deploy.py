"""deploy/: what can be checked of a deployment without a Kubernetes cluster or a systemd to run it.

- The Kubernetes manifests against Kubernetes' own OpenAPI-derived JSON schemas, offline and strict (unknown
  fields are errors), for the oldest and the newest version kubernetes-validate bundles (1.25 and 1.37).
- The DaemonSet agrees with bootd: the capabilities are bootd.service's, the probes hit bootd.yaml's HTTP
  port, every file bootd.yaml names is mounted, the image is the one image/build --container tags.
- The ConfigMap's bootd.yaml and deploy/systemd/rack1.yaml pass `bootd check` (the real CLI, which reads
  etcd with store.backend etcd) against a real etcd over TLS with a client certificate: the files the Secrets
  hold are laid out under a directory of the test at the paths bootd.yaml names, and the endpoints are the
  test's etcd; nothing else of the config is changed.
- deploy/systemd/bootd@.service passes systemd-analyze verify and keeps every line of bootd.service.
- image/build --container without podman stops at once with one line naming the package.
The container image itself is built and run in tests/e2e/test_container.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.etcd_cluster import ServerTls, etcd_cluster  # noqa: F401  (the fixture)

ROOT = Path(__file__).parents[2]
KUBE = ROOT / "deploy/kubernetes"
SYSTEMD = ROOT / "deploy/systemd"
BOOTD = [sys.executable, "-m", "appliance"]
VALIDATE = Path(sys.executable).parent / "kubernetes-validate"
MANIFESTS = sorted(KUBE.glob("*.yaml"))
# the resources deploy/kubernetes/ defines, as kubernetes-validate names them
RESOURCES = {"namespace/bootd", "secret/bootd-etcd-client", "secret/bootd-api-tls", "configmap/bootd-config",
             "daemonset/bootd"}


def documents() -> dict[str, dict]:
    found = {}
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            found[f"{doc['kind'].lower()}/{doc['metadata']['name']}"] = doc
    return found


def configmap_bootd_yaml() -> str:
    return documents()["configmap/bootd-config"]["data"]["bootd.yaml"]


def daemonset_container() -> dict:
    return documents()["daemonset/bootd"]["spec"]["template"]["spec"]["containers"][0]


# --- schemas ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", ["1.25.0", "1.37.0"])
def test_the_manifests_pass_kubernetes_schemas_strictly(version):
    result = subprocess.run([str(VALIDATE), "--strict", "-k", version, *map(str, MANIFESTS)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    passed = set(re.findall(r"passed for resource (\S+) against version", result.stdout + result.stderr))
    assert passed == RESOURCES, result.stdout + result.stderr


def test_the_schema_check_refuses_a_misspelt_field_and_a_wrong_type(tmp_path):
    """The checker is not a rubber stamp: a field Kubernetes does not know and a string where it wants an
    integer are each refused, naming the field."""
    text = (KUBE / "daemonset.yaml").read_text()
    for wrong, field in (("hostNetwork: true", "hostNetwrok: true"),
                         ("periodSeconds: 5", 'periodSeconds: "5"')):
        assert wrong in text
        bad = tmp_path / "daemonset.yaml"
        bad.write_text(text.replace(wrong, field, 1))
        result = subprocess.run([str(VALIDATE), "--strict", "-k", "1.37.0", str(bad)],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 1, result.stdout + result.stderr
        assert field.split(":")[0].strip('"') in result.stdout + result.stderr


# --- the DaemonSet agrees with bootd ----------------------------------------------------------------------

def test_the_daemonset_runs_bootd_on_the_nodes_network_with_bootd_services_capabilities_only():
    spec = documents()["daemonset/bootd"]["spec"]["template"]["spec"]
    container = daemonset_container()
    assert spec["hostNetwork"] is True
    assert "bootd.io/segment" in spec["nodeSelector"]
    service = (ROOT / "appliance/data/bootd.service").read_text()
    ambient = re.search(r"^AmbientCapabilities=(.*)$", service, re.M)[1].split()
    security = container["securityContext"]
    assert security["capabilities"] == {"drop": ["ALL"], "add": [c.removeprefix("CAP_") for c in ambient]}
    assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
    config = yaml.safe_load(configmap_bootd_yaml())
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] == config["http"]["port"]
    assert container["args"][:3] == ["run", "-c", "/etc/bootd/bootd.yaml"]
    assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    version = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M)[1]
    assert container["image"] == f"localhost/bootd:{version}"  # what image/build --container tags


def test_every_file_the_configmaps_bootd_yaml_names_is_mounted_from_the_secret_that_holds_it():
    spec = documents()["daemonset/bootd"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in daemonset_container()["volumeMounts"]}
    secrets = {name: set(doc["stringData"]) for name, doc in documents().items() if name.startswith("secret/")}
    config = yaml.safe_load(configmap_bootd_yaml())
    named = [*config["store"]["tls"].values(),
             *(config["api"][k] for k in ("cert_file", "key_file", "ca_file"))]
    for path in map(Path, named):
        volume = mounts[str(path.parent)]
        assert path.name in secrets[f"secret/{volume['secret']['secretName']}"], path
    assert "/etc/bootd" in mounts and mounts["/etc/bootd"]["configMap"]["name"] == "bootd-config"
    for directory in (config["state_dir"], config["http"]["data_dir"]):
        assert directory in mounts and "hostPath" in mounts[directory]


# --- bootd check on the deployment's configs, against a real etcd over TLS --------------------------------

@pytest.fixture
def etcd_tls(tmp_path, etcd_cluster):  # noqa: F811
    """One etcd member serving https that asks for a client certificate; the set `bootd certs init` makes."""
    tls = tmp_path / "tls"
    made = subprocess.run([*BOOTD, "certs", "init", "--san", "IP:127.0.0.1", "--out", str(tls)],
                          capture_output=True, text=True, cwd=ROOT)
    assert made.returncode == 0, made.stderr
    cluster = etcd_cluster(size=1, tls=ServerTls(ca=tls / "ca.crt", cert=tls / "server.crt", key=tls / "server.key",
                                                 client_cert=tls / "client.crt", client_key=tls / "client.key"))
    return cluster, tls


def rooted(text: str, root: Path, endpoints: list[str]) -> str:
    """The config with its absolute paths under `root` and the test's etcd as the endpoints."""
    config = yaml.safe_load(text)
    out = re.sub(r"(?<=[\s:])/(etc|var|usr)/", lambda m: f"{root}/{m[1]}/", text)
    for listed in config["store"]["endpoints"]:
        out = re.sub(rf"^\s*- {re.escape(listed)}\s*\n", "", out, count=1, flags=re.M)
    return out.replace("  endpoints:", "  endpoints: [" + ", ".join(endpoints) + "]", 1)


def lay_out(root: Path, config_text: str, tls: Path) -> None:
    """The files the config names, where it names them: the etcd client set and the API's server set (what
    the Secrets hold), empty state and data dirs, and the iPXE binaries' directory."""
    config = yaml.safe_load(config_text)
    etcd = config["store"]["tls"]
    for key, source in (("ca", "ca.crt"), ("cert", "client.crt"), ("key", "client.key")):
        target = root / etcd[key].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tls / source, target)
    if "api" in config:
        for key, source in (("ca_file", "ca.crt"), ("cert_file", "server.crt"), ("key_file", "server.key")):
            target = root / config["api"][key].lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(tls / source, target)
    for directory in (config["state_dir"], config["http"]["data_dir"] + "/assets"):
        (root / directory.lstrip("/")).mkdir(parents=True, exist_ok=True)


@pytest.mark.parametrize("which", ["kubernetes-configmap", "systemd-rack1"])
def test_the_deployment_configs_pass_bootd_check_against_etcd_over_tls(tmp_path, etcd_tls, which):
    cluster, tls = etcd_tls
    text = configmap_bootd_yaml() if which == "kubernetes-configmap" else (SYSTEMD / "rack1.yaml").read_text()
    assert yaml.safe_load(text)["store"]["backend"] == "etcd"
    root = tmp_path / "root"
    lay_out(root, text, tls)
    config = tmp_path / "bootd.yaml"
    config.write_text(rooted(text, root, cluster.endpoints))
    result = subprocess.run([*BOOTD, "check", "-c", str(config)], capture_output=True, text=True, timeout=60,
                            cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    # (no warning: bootd reached etcd with the client certificate and read the store, empty here)
    assert result.stdout.splitlines()[-1] == "bootd.yaml: 0 errors, 0 warnings, 0 machines", result.stdout

    # the same config with another CA's client certificate: etcd refuses it, and bootd check says so, naming
    # the endpoint (a warning: bootd check does not need etcd to check the config itself)
    other = tmp_path / "other"
    subprocess.run([*BOOTD, "certs", "init", "--san", "IP:127.0.0.1", "--out", str(other)], check=True,
                   capture_output=True, cwd=ROOT)
    etcd = yaml.safe_load(text)["store"]["tls"]
    for key, source in (("cert", "client.crt"), ("key", "client.key")):
        shutil.copy(other / source, root / etcd[key].lstrip("/"))
    refused = subprocess.run([*BOOTD, "check", "-c", str(config)], capture_output=True, text=True, timeout=60,
                             cwd=ROOT)
    assert refused.returncode == 0, refused.stdout + refused.stderr
    assert f"warning: store: etcd unreachable: {cluster.endpoints[0]}: cannot connect" in refused.stdout
    assert refused.stdout.splitlines()[-1] == "bootd.yaml: 0 errors, 1 warnings, 0 machines", refused.stdout


# --- systemd ------------------------------------------------------------------------------------------

def test_the_template_unit_keeps_every_line_of_bootd_service_but_the_per_segment_ones():
    service = (ROOT / "appliance/data/bootd.service").read_text().splitlines()
    template = (SYSTEMD / "bootd@.service").read_text().splitlines()
    directives = [line for line in service if re.match(r"^[A-Z]\w+=", line)]
    per_segment = {"Description", "ExecStart", "StateDirectory", "ConfigurationDirectory"}
    for line in directives:
        key = line.split("=", 1)[0]
        if key not in per_segment:
            assert line in template, line
    for key in per_segment:
        [line] = [t for t in template if t.startswith(f"{key}=")]
        assert "%i" in line, line
    assert "ExecStart=/opt/bootd/bin/bootd run -c /etc/bootd/%i/bootd.yaml" in template


def test_the_template_unit_passes_systemd_analyze_verify(tmp_path):
    """verify loads the instance bootd@rack1 from the template as systemd would, checks every key and value
    and that ExecStart's binary is executable; the binary is this checkout's bootd (as `--bin`)."""
    bootd = shutil.which("bootd", path=str(Path(sys.executable).parent))
    assert bootd is not None
    text = (SYSTEMD / "bootd@.service").read_text().replace("/opt/bootd/bin/bootd", bootd)
    (tmp_path / "bootd@.service").write_text(text)
    (tmp_path / "bootd@rack1.service").symlink_to("bootd@.service")
    result = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "bootd@rack1.service")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr
    # and a key systemd does not know is reported (verify is not silent about everything)
    (tmp_path / "bootd@.service").write_text(text.replace("UMask=0077", "UMask=0077\nProtectSystem=stricter"))
    result = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "bootd@rack1.service")],
                            capture_output=True, text=True, timeout=60)
    assert "stricter" in result.stdout + result.stderr


# --- image/build --container: what it cannot do, said at once ------------------------------------------------

def test_image_build_container_names_a_missing_podman_in_one_line(tmp_path):
    """A PATH with every command of this host but podman: one line naming the package, nothing made."""
    if os.geteuid() != 0:
        pytest.skip("image/build needs root")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for directory in ("/usr/local/bin", "/usr/sbin", "/usr/bin"):
        for tool in Path(directory).iterdir():
            if tool.name != "podman" and not (bin_dir / tool.name).exists():
                (bin_dir / tool.name).symlink_to(tool)
    result = subprocess.run([str(ROOT / "image/build"), "--container", "--out", str(tmp_path / "cache")],
                            capture_output=True, text=True, timeout=60, env={**os.environ, "PATH": str(bin_dir)})
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["image/container/build: missing tools: apt-get install podman"], \
        result.stderr
    assert not (tmp_path / "cache").exists()
