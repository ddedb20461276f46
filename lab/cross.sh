#!/usr/bin/env bash
# Built for routers: the daemon alone (`--no-default-features`) as static musl binaries
# for x86_64 and aarch64, linked with the toolchain's rust-lld (.cargo/config.toml), and
# the wire and core test suites run for aarch64 under qemu-user. Prints each binary's
# size. Run as root from anywhere (it installs qemu-user with apt and adds the rustup
# targets); .ci/run calls it after the tests.
#
# Exit status: non-zero for real failures only (a build, a test or a size check that
# fails). When this machine cannot fetch a rustup target or qemu-user, that part is
# reported as SKIPPED on stderr, loudly, and the rest still runs; CROSS_REQUIRED=1 turns
# a skip into a failure (for a CI that must prove the cross build).
set -euo pipefail
cd "$(dirname "$0")/.."
targets=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl)
skipped=()
skip() {
  echo "lab/cross.sh: SKIPPED: $*" >&2
  skipped+=("$*")
}

# The targets: added when missing (rustup fetches them; this can fail offline).
available=()
for t in "${targets[@]}"; do
  if rustup target list --installed 2>/dev/null | grep -qx "$t"; then
    available+=("$t")
  elif rustup target add "$t"; then
    available+=("$t")
  else
    skip "rustup could not fetch the $t standard library (no network or no mirror?); $t is not built"
  fi
done

# qemu-user for the aarch64 tests.
if ! command -v qemu-aarch64 >/dev/null; then
  if command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-user ||
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-user; } ||
      true
  fi
fi

sizes=()
for t in "${available[@]}"; do
  cargo build --release --locked -p natwarden --no-default-features --target "$t"
  bin=target/$t/release/natwarden
  # Static: no program interpreter (dynamic loader) in the ELF program headers.
  if command -v readelf >/dev/null && readelf -l "$bin" | grep -q "program interpreter"; then
    echo "lab/cross.sh: $bin is dynamically linked; a router build must be static" >&2
    exit 1
  fi
  sizes+=("$(printf '%-28s %9s bytes (natwarden --no-default-features, static, stripped)' "$t" "$(stat -c %s "$bin")")")
done

if [[ " ${available[*]} " == *" aarch64-unknown-linux-musl "* ]]; then
  if command -v qemu-aarch64 >/dev/null; then
    # The runner (qemu-aarch64) comes from .cargo/config.toml.
    cargo test --locked -p natwarden-wire -p natwarden-core --target aarch64-unknown-linux-musl
    # And the daemon itself starts and answers on the emulated CPU.
    qemu-aarch64 target/aarch64-unknown-linux-musl/release/natwarden --version
  else
    skip "qemu-aarch64 not found and qemu-user could not be installed; the aarch64 tests did not run"
  fi
fi

echo "lab/cross.sh: router binaries:"
printf '  %s\n' "${sizes[@]}"
if [ ${#skipped[@]} -gt 0 ]; then
  echo "lab/cross.sh: ${#skipped[@]} part(s) SKIPPED (see above)" >&2
  [ -z "${CROSS_REQUIRED:-}" ] || exit 1
fi
