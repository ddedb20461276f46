#!/usr/bin/env bash
# The router binary's size budget: builds the daemon alone (`--no-default-features`:
# serve, check-config, status; no client, no auditor) in release and fails when the
# stripped binary is over 900 KB (900,000 bytes). Called by lab/test.sh; run it alone
# from anywhere. Usage: lab/size.sh [TARGET] (default: the host, x86_64-unknown-linux-gnu).
set -euo pipefail
cd "$(dirname "$0")/.."
limit=900000
target=${1:-}
# Its own target directory, so the full build (client, auditor) in target/release that
# the demo and the benchmarks use is not replaced by the daemon-only one.
args=(--release --locked -p natwarden --no-default-features --target-dir target/router)
dir=target/router/release
if [ -n "$target" ]; then
  args+=(--target "$target")
  dir=target/router/$target/release
fi
cargo build "${args[@]}"
# profile.release strips already; strip again in case a local profile does not.
bin=$(mktemp /tmp/natwarden-size.XXXXXX)
trap 'rm -f "$bin"' EXIT
cp "$dir/natwarden" "$bin"
if command -v strip >/dev/null && [ -z "$target" ]; then
  strip "$bin"
fi
size=$(stat -c %s "$bin")
if [ "$size" -gt "$limit" ]; then
  echo "lab/size.sh: the router binary (${target:-host}, --no-default-features) is $size bytes stripped, over the budget of $limit: see bench/README.md, \"Footprint\", for where the bytes go" >&2
  exit 1
fi
echo "lab/size.sh: the router binary (${target:-host}, --no-default-features) is $size bytes stripped (budget $limit)"
