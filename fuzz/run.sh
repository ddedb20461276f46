#!/usr/bin/env bash
# Bounded fuzzing run: every cargo-fuzz target for SECONDS each, starting from the committed
# seed corpus (fuzz/corpus-seed/<target>) copied into the working corpus (fuzz/corpus/<target>,
# git-ignored). Exits non-zero on any crash, leak, timeout or out-of-memory; the input that
# failed is left in fuzz/artifacts/<target>/.
#
#   bash fuzz/run.sh 60        # CI: one minute per target
#   bash fuzz/run.sh 900       # a long run (see fuzz/README.md)
set -euo pipefail
cd "$(dirname "$0")"

seconds=${1:?usage: fuzz/run.sh SECONDS}
[[ $seconds =~ ^[1-9][0-9]*$ ]] || { echo "fuzz/run.sh: SECONDS must be a positive integer, got '$seconds'" >&2; exit 2; }

# cargo-fuzz needs a nightly toolchain (-Z sanitizer flags); the main workspace does not.
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: no nightly Rust toolchain: 'cargo +nightly' does not work." >&2
    echo "  install one with: rustup toolchain install nightly --profile minimal" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: installing cargo-fuzz"
    start=$SECONDS
    cargo install cargo-fuzz --locked
    echo "fuzz/run.sh: cargo-fuzz installed in $((SECONDS - start)) s"
fi

# No AddressSanitizer: natwarden-wire and natwarden-core hold no unsafe code, so ASan could
# only slow the search (about 2x here); panics and failed assertions abort without it.
sanitizer=(--sanitizer none)
targets=$(cargo +nightly fuzz list)
start=$SECONDS
cargo +nightly fuzz build "${sanitizer[@]}"
echo "fuzz/run.sh: targets built in $((SECONDS - start)) s"

failed=()
for target in $targets; do
    mkdir -p "corpus/$target" "artifacts/$target"
    if [[ -d "corpus-seed/$target" ]]; then
        cp -n corpus-seed/"$target"/* "corpus/$target/" 2>/dev/null || true
    fi
    echo "fuzz/run.sh: $target for $seconds s"
    log="artifacts/$target.log"
    # -timeout: one input taking 10 s is a hang, reported like a crash.
    if cargo +nightly fuzz run "${sanitizer[@]}" "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
        grep -E '^(Done|stat::number_of_executed_units|stat::average_exec_per_sec)' "$log" || true
    else
        # The panic message, then cargo-fuzz's summary (the input, how to reproduce).
        grep -A8 -E 'panicked at|^==[0-9]+==|ERROR: libFuzzer' "$log" | head -n 40 || true
        tail -n 20 "$log"
        echo "fuzz/run.sh: $target FAILED; the input is in fuzz/artifacts/$target/, the log in fuzz/$log" >&2
        failed+=("$target")
    fi
done

if ((${#failed[@]})); then
    echo "fuzz/run.sh: crashes in: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz/run.sh: no crashes in $(wc -w <<<"$targets") targets x $seconds s"
