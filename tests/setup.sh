#!/usr/bin/env bash
# Installs what the test suite needs on Debian 12, as root: Debian packages, then bootd and its test
# dependencies into .venv (Debian's system Python refuses `pip install`). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Third-party clients: curl (HTTP, TFTP), busybox (udhcpc), tftp-hpa and atftp (TFTP), bind9-dnsutils (dig);
# iproute2: namespaces; dnsmasq-base: the DHCP/TFTP/DNS benchmarks' peer, a plain DHCP server and a DNS
# upstream in tests; nginx-light, wrk: the HTTP benchmark; dnsperf: the DNS benchmark (the benchmarks'
# smoke passes run with the tests); dpkg-dev tools come with Debian (bootd firmware fetch uses apt-get download).
# qemu-system-x86, ovmf, ipxe-qemu: the end-to-end VMs (SeaBIOS with iPXE NIC ROMs, OVMF); busybox-static and
# cpio build their payload (it also provides udhcpc for the DHCP tests). golang-go: Go's own text/template, the
# reference bootd's template engine is checked against (tests/reference/). systemd: systemd-analyze verify and
# security on bootd.service, systemd-sysusers for install-service; strace: the unit's system-call filter
# checked against what bootd calls. mmdebstrap, gdisk, dosfstools, mtools, grub-pc-bin, grub-efi-amd64-bin,
# qemu-utils, e2fsprogs, python3-pip: image/build (the appliance image the e2e tests boot).
# chromium, fonts-dejavu-core: the live page's browser test (headless, over the DevTools pipe); tmux: `bootd
# status --watch` in a real terminal. gnupg, gpgv: bootd assets (test keys, signatures). openipmi: ipmi_sim,
# the IPMI BMC of the power tests. vagrant, vagrant-libvirt, libvirt-daemon, libvirt-daemon-driver-qemu,
# libvirt-clients, iptables: the Vagrant network and the Redfish emulator's libvirt, each libvirtd started by
# its test inside its own namespace (not libvirt-daemon-system: that would start one on this machine);
# libvirt-dev, pkg-config, gcc, python3-dev: pip builds libvirt-python for the venv. isc-dhcp-relay: the relay
# between the relayed clients' segment and bootd; qemu-system-arm, qemu-efi-aarch64: the ARM64 machine.
# kea-admin (perfdhcp), kea-dhcp4-server: bench/kea.py's smoke pass. etcd-server, etcd-client: the etcd
# clusters of the replica tests (each started by its test); podman, runc: the container image's build and run (runc named:
# the tests run podman with --runtime runc). isc-dhcp-client, dhcpcd-base: dhclient and dhcpcd, two of the real
# DHCP clients the authoritative server is tested with (busybox's udhcpc is the third).
# Tests start every server they use themselves (in their namespaces), so no package's service is started here:
# a policy-rc.d that refuses (only while installing, and only if the machine has none of its own).
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\n# tests/setup.sh: no service starts while it installs packages\nexit 101\n' >/usr/sbin/policy-rc.d
  chmod 0755 /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get install -y -qq --no-install-recommends \
  python3 python3-venv ca-certificates curl busybox-static cpio iproute2 dnsmasq-base nginx-light wrk tftp-hpa \
  atftp bind9-dnsutils dnsperf qemu-system-x86 ovmf ipxe-qemu golang-go systemd strace \
  mmdebstrap gdisk dosfstools mtools grub-pc-bin grub-efi-amd64-bin qemu-utils e2fsprogs python3-pip \
  chromium fonts-dejavu-core tmux gnupg gpgv openipmi \
  vagrant vagrant-libvirt libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients iptables \
  libvirt-dev pkg-config gcc python3-dev isc-dhcp-relay qemu-system-arm qemu-efi-aarch64 \
  kea-admin kea-dhcp4-server etcd-server etcd-client podman runc isc-dhcp-client dhcpcd-base >/dev/null
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test]'
# promtool (tests/integration/test_metrics.py) from Debian's prometheus package, unpacked beside the venv's
# python: installing the package would also start a Prometheus server on this machine.
if [ ! -x .venv/bin/promtool ]; then
  work=$(mktemp -d)
  (cd "$work" && apt-get download -q prometheus >/dev/null 2>&1 && dpkg-deb -x prometheus_*.deb root) && \
    install -m 0755 "$work/root/usr/bin/promtool" .venv/bin/promtool
  rm -rf "$work"
fi
# The mark tells tests/conftest.py that everything is installed: from now on a skipped test fails.
touch .venv/bootd-test-setup-done
