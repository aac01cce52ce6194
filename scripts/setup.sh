#!/usr/bin/env bash
# Installs everything Ostiary's jobs and tests need on a Debian 12 machine (run as root):
# Debian packages (without starting their stock services) and a virtual environment in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  python3 python3-venv python3-dev gcc libffi-dev
  redis-server redis-tools nginx wrk chrony iptables iproute2 apparmor openssh-server
  openssl systemd procps ca-certificates kmod
  qemu-system-x86 qemu-utils mmdebstrap vde2 e2fsprogs
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  # Stock services (redis on 6379, nginx on 80, chronyd) must not start just because they were
  # installed: a policy-rc.d that denies starts, removed again afterwards if we created it.
  created_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 0755 /usr/sbin/policy-rc.d
    created_policy=1
  fi
  trap '[[ $created_policy == 1 ]] && rm -f /usr/sbin/policy-rc.d' EXIT
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating virtual environment .venv"
  python3 -m venv .venv
fi
stamp=.venv/.ostiary-installed
if [[ ! -e $stamp || pyproject.toml -nt $stamp ]]; then
  echo "setup: installing Python packages into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[deploy,test,dev]'
  touch "$stamp"
fi
echo "setup: ready"
