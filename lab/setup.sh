#!/usr/bin/env bash
# Installs what natwarden's lab, demo and tests need on a Debian machine (as root),
# then builds natwarden. Safe to run again.
set -euo pipefail

packages=(nftables iproute2 natpmpc nmap netcat-openbsd iputils-ping procps util-linux systemd miniupnpd-nftables)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "lab/setup.sh: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if ! command -v cargo >/dev/null; then
  echo "lab/setup.sh: cargo not found: install a Rust toolchain (https://rustup.rs)" >&2
  exit 1
fi
cd "$(dirname "$0")/.."
cargo build --release --locked -p natwarden
