#!/usr/bin/env bash
# Installs what the test suite needs on Debian 12, as root: Debian packages, then bootd and its test
# dependencies into .venv (Debian's system Python refuses `pip install`). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# curl: a third-party HTTP client; busybox: udhcpc, a real DHCP client; iproute2: namespaces;
# dnsmasq-base: the DHCP benchmark's peer and a plain DHCP server beside bootd in `bootd probe`'s test;
# nginx-light, wrk: the HTTP benchmark's peer and load (the benchmarks' smoke passes run with the tests).
apt-get install -y -qq --no-install-recommends \
  python3 python3-venv ca-certificates curl busybox iproute2 dnsmasq-base nginx-light wrk >/dev/null
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test]'
