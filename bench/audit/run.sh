#!/usr/bin/env bash
# `natwarden audit` against zmap 2.1.1 (its natpmp_5351.pkt probe) on the same /16 of the
# lab population (lab/population.sh + the `population` binary), at the same probe rates,
# plus `nmap -sU -p 5351 --script nat-pmp-info` on a /24 sample. Scores every run against
# the population's truth file with bench/audit/check.py and prints a Markdown table:
# zmap's responders found, our findings right/wrong/missing/extra, wall time and peak RSS
# (/usr/bin/time -v) and the ratios ours/zmap.
#
# Run as root: bench/audit/run.sh. Installs zmap, nmap and time with apt-get if missing,
# builds the release binaries. All traffic stays in the two namespaces it creates
# (PREFIX-scan, PREFIX-pop), removed on exit (trap), also after Ctrl-C. Every wait and
# every tool run is bounded (timeout). Tunables (environment; defaults = the README run):
#   AUDIT_BENCH_RATES="20000 50000 100000 200000"  probes/s for both tools
#   AUDIT_BENCH_CIDR=100.64.0.0/16                the scanned range (inside 100.64.0.0/16)
#   AUDIT_BENCH_COOLDOWN=1      zmap -c, and our --timeout and --cooldown (seconds)
#   AUDIT_BENCH_RETRIES=0       our --retries (zmap sends each target one probe, once)
#   AUDIT_BENCH_SEED=1          population --seed, our --seed, zmap -e
#   AUDIT_BENCH_INTRUSIVE_RATE=20000   rate of the one --intrusive run ("" skips it)
#   AUDIT_BENCH_NMAP_CIDR=100.64.0.0/24  the nmap sample ("" skips nmap)
#   AUDIT_BENCH_PREFIX=nwaudb   namespace prefix
#   AUDIT_BENCH_KEEP=1          keep the work directory (outputs, truth, logs)
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD

rates=(${AUDIT_BENCH_RATES:-20000 50000 100000 200000})
cidr=${AUDIT_BENCH_CIDR:-100.64.0.0/16}
cooldown=${AUDIT_BENCH_COOLDOWN:-1}
seed=${AUDIT_BENCH_SEED:-1}
intrusive_rate=${AUDIT_BENCH_INTRUSIVE_RATE-20000}
nmap_cidr=${AUDIT_BENCH_NMAP_CIDR-100.64.0.0/24}
prefix=${AUDIT_BENCH_PREFIX:-nwaudb}
scan=$prefix-scan pop=$prefix-pop
run_budget=600   # seconds any one tool run may take
probe=/usr/share/doc/zmap/examples/udp-probes/natpmp_5351.pkt

die() { echo "bench/audit/run.sh: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root (it creates network namespaces)"

need=()
command -v zmap >/dev/null || need+=(zmap)
command -v nmap >/dev/null || need+=(nmap)
[ -x /usr/bin/time ] || need+=(time)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}" >&2
  apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >&2
fi
[ -f "$probe" ] || die "$probe missing (Debian's zmap package ships it)"

cargo build --release -p natwarden -p natwarden-population >&2
natwarden=$repo/target/release/natwarden
population=$repo/target/release/population

work=$(mktemp -d /tmp/natwarden-audit-bench.XXXXXX)
pop_pid=
cleanup() {
  if [ -n "$pop_pid" ]; then kill -TERM "$pop_pid" 2>/dev/null || true; fi
  bash "$repo/lab/population.sh" down "$prefix" || true
  if [ -n "${AUDIT_BENCH_KEEP:-}" ]; then
    echo "bench/audit/run.sh: kept $work" >&2
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The population answers for all of 100.64.0.0/16 (siblings in 100.65/16) whatever $cidr is.
bash "$repo/lab/population.sh" up "$prefix" 100.64.0.0/15
mac=$(bash "$repo/lab/population.sh" mac "$prefix")
[ -n "$mac" ] || die "no MAC for $pop eth0"
: >"$work/empty-blocklist"
results=$work/results.jsonl
: >"$results"

# A fresh population for each run (same seed, so the same truth): no state carries over.
start_pop() {
  local tag=$1
  stop_pop
  rm -f "$work/leftover-$tag.json"
  ip netns exec "$pop" "$population" --v4 100.64.0.0/16 --seed "$seed" \
    --truth "$work/truth.json" --leftover "$work/leftover-$tag.json" \
    >"$work/pop-$tag.out" 2>&1 &
  pop_pid=$!
  for _ in $(seq 1 100); do
    grep -q '^ready' "$work/pop-$tag.out" 2>/dev/null && return 0
    kill -0 "$pop_pid" 2>/dev/null || break
    sleep 0.1
  done
  cat "$work/pop-$tag.out" >&2
  die "population did not become ready"
}
stop_pop() {
  if [ -n "$pop_pid" ]; then
    kill -TERM "$pop_pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pop_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pop_pid" 2>/dev/null || true
    wait "$pop_pid" 2>/dev/null || true
    pop_pid=
  fi
}

check() { python3 "$repo/bench/audit/check.py" "$@" >>"$results"; }

run_zmap() {
  local rate=$1 tag=zmap-$1
  start_pop "$tag"
  echo "zmap at $rate p/s" >&2
  ip netns exec "$scan" timeout "$run_budget" /usr/bin/time -v -o "$work/$tag.time" \
    zmap -M udp -p 5351 --probe-args="file:$probe" -r "$rate" -b "$work/empty-blocklist" \
    -G "$mac" -i eth0 -S 203.0.113.1 -c "$cooldown" -e "$seed" --disable-syslog \
    -o "$work/$tag.csv" "$cidr" >"$work/$tag.log" 2>&1 || true
  check zmap "$work/truth.json" "$work/$tag.csv" --cidr "$cidr" --rate "$rate" --time "$work/$tag.time" \
    --zmap-log "$work/$tag.log"
}

run_ours() {
  local rate=$1 tag=ours-$1 extra=()
  if [ "${2:-}" = intrusive ]; then tag=ours-intrusive-$1 extra=(--intrusive); fi
  start_pop "$tag"
  echo "natwarden audit${extra:+ ${extra[*]}} at $rate p/s" >&2
  # Exit status 1 means "findings reported": expected here.
  ip netns exec "$scan" timeout "$run_budget" /usr/bin/time -v -o "$work/$tag.time" \
    "$natwarden" audit "$cidr" "${extra[@]}" --rate "$rate" --timeout "$cooldown" \
    --retries "${AUDIT_BENCH_RETRIES:-0}" \
    --cooldown "$cooldown" --seed "$seed" --json --output "$work/$tag.json" \
    >"$work/$tag.log" 2>&1 || true
  if [ ${#extra[@]} -gt 0 ]; then
    # SIGUSR1: the population rewrites its leftover file (live mappings); wait for it.
    rm -f "$work/leftover-$tag.json"
    kill -USR1 "$pop_pid"
    for _ in $(seq 1 100); do [ -f "$work/leftover-$tag.json" ] && break; sleep 0.1; done
    [ -f "$work/leftover-$tag.json" ] || die "no leftover file after SIGUSR1"
    check audit "$work/truth.json" "$work/$tag.json" --cidr "$cidr" --intrusive --rate "$rate" \
      --time "$work/$tag.time" --leftover "$work/leftover-$tag.json"
  else
    check audit "$work/truth.json" "$work/$tag.json" --cidr "$cidr" --rate "$rate" --time "$work/$tag.time"
  fi
}

run_nmap() {
  local tag=nmap
  start_pop "$tag"
  echo "nmap nat-pmp-info on $nmap_cidr" >&2
  ip netns exec "$scan" timeout 1200 /usr/bin/time -v -o "$work/$tag.time" \
    nmap -n -sU -p 5351 --script nat-pmp-info -oN "$work/$tag.txt" "$nmap_cidr" \
    >"$work/$tag.log" 2>&1 || true
  check nmap "$work/truth.json" "$work/$tag.txt" --cidr "$nmap_cidr" --time "$work/$tag.time"
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for rate in "${rates[@]}"; do
  run_zmap "$rate"
  run_ours "$rate"
done
if [ -n "$intrusive_rate" ]; then run_ours "$intrusive_rate" intrusive; fi
if [ -n "$nmap_cidr" ]; then run_nmap; fi
stop_pop
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

echo
echo "natwarden audit vs zmap on $cidr (cooldown/timeout ${cooldown}s, seed $seed), $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load average before/after: $load_before / $load_after"
echo
python3 "$repo/bench/audit/check.py" table "$results"
cp "$results" "$repo/bench/audit/latest.jsonl"
echo
echo "raw results: bench/audit/latest.jsonl"
