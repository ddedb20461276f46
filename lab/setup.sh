#!/usr/bin/env bash
# Installs what natwarden's lab and demo need on a Debian machine (as root), and with
# --tests what the tests need too (the peers they test against: nmap, miniupnpd...),
# then builds natwarden. Safe to run again.
# Usage: lab/setup.sh [--tests]
set -euo pipefail

packages=(nftables iproute2 natpmpc netcat-openbsd iputils-ping procps)
if [ "${1:-}" = "--tests" ]; then
  # miniupnpd-nftables is the second implementation the client is tested against; its
  # service for the host is left disabled (Debian's default), the tests start their own.
  packages+=(nmap util-linux systemd miniupnpd-nftables)
fi
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
