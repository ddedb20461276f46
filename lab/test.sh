#!/usr/bin/env bash
# The test command: formatting, lints, then every test (unit, property and the
# namespace end-to-end tests, which need root), then the router binary's size budget.
# Run as root from the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
bash lab/setup.sh --tests
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
# The router binary (daemon alone, release, stripped) stays within its 900 KB budget.
bash lab/size.sh
