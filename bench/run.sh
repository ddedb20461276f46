#!/usr/bin/env bash
# natwarden and miniupnpd 2.3.1 side by side, in one run: each daemon in a fresh lab of
# its own (lab/netns.sh, WAN link in a non-reserved net so miniupnpd serves), driven by
# bench/loadgen from 126 LAN source addresses. Measures mapping throughput and latency at
# growing table sizes, CPU per mapping, idle and loaded memory and binary size; prints a
# table with ratios and writes the raw numbers to bench/results/latest.json.
#
# Run as root from anywhere: bench/run.sh. Needs what lab/setup.sh installs, plus
# miniupnpd-nftables (not installed here: the script says so and exits 1).
# Every loop is bounded in count and time; everything runs in the namespaces it creates,
# which are removed on exit. Tunables (environment):
#   BENCH_SIZES="0 2500 10000 50000"  table sizes to measure at
#   BENCH_BATCH=1000                  new mappings timed at each size
#   BENCH_WINDOW=128                  requests in flight (same for both daemons)
#   BENCH_LATENCY_SAMPLES=25          sequential requests for the latency median
#   BENCH_STEP_BUDGET=60              seconds a fill or batch may take; a daemon that
#                                     needs more stops growing there
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

sizes=(${BENCH_SIZES:-0 2500 10000 50000})
batch=${BENCH_BATCH:-1000}
window=${BENCH_WINDOW:-128}
latency_samples=${BENCH_LATENCY_SAMPLES:-25}
budget=${BENCH_STEP_BUDGET:-60}
idle_wait=3
wan_net=45.45.45 # not reserved (miniupnpd refuses reserved ones); never leaves the namespaces
sources=192.168.1.128/25
first_port=1024
lifetime=7200

die() { echo "bench/run.sh: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root (it creates network namespaces)"
for c in ip nft cargo awk timeout; do
  command -v "$c" >/dev/null || die "$c not found: run lab/setup.sh first"
done
miniupnpd_bin=$(command -v miniupnpd || true)
[ -n "$miniupnpd_bin" ] || die "miniupnpd not found: apt-get install miniupnpd-nftables (the anchor this benchmark compares with)"

work=$(mktemp -d /tmp/natwarden-bench.XXXXXX)
prefixes=()
pids=()
cleanup() {
  local pid p
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for p in "${prefixes[@]}"; do
    bash "$repo/lab/netns.sh" down "$p" || true
  done
  if [ -n "${BENCH_KEEP:-}" ]; then
    echo "bench/run.sh: kept $work"
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '\033[1m== %s\033[0m\n' "$*" >&2; }

say "building release binaries"
cargo build --release --locked -p natwarden -p natwarden-bench >&2
# Copies: others may rebuild target/ while the benchmark runs.
mkdir "$work/bin"
cp target/release/natwarden target/release/loadgen "$work/bin/"
nw_bin=$work/bin/natwarden
loadgen=$work/bin/loadgen

# ---- helpers ----

# jget JSON KEY: a number (or null) from loadgen's flat JSON line.
jget() { sed -n "s/.*\"$2\":\([^,}]*\).*/\1/p" <<<"$1"; }
# CPU time of every thread of PID, in nanoseconds (scheduler accounting, ns resolution).
cpu_ns() { cat /proc/"$1"/task/*/schedstat | awk '{s += $1} END {printf "%.0f\n", s}'; }

# settle PID: waits (at most 30 s) until the daemon is idle, so that nothing left over
# from the previous run (e.g. late duplicates of resent requests) is measured.
settle() {
  local c0 c1
  for _ in $(seq 1 150); do
    c0=$(cpu_ns "$1")
    sleep 0.2
    c1=$(cpu_ns "$1")
    [ $((c1 - c0)) -lt 10000000 ] && return 0
  done
  echo "bench/run.sh: daemon $1 still busy after 30 s; measuring anyway" >&2
}

# loadgen PREFIX COUNT START WINDOW DEADLINE [OPTION...]: one run from the LAN host,
# once the daemon is idle; prints its JSON.
run_loadgen() {
  local out
  settle "$pid"
  out=$(ip netns exec "$1-lan" timeout $(($5 + 20)) "$loadgen" --gateway 192.168.1.1 \
    --count "$2" --start-index "$3" --window "$4" --deadline "$5" --sources "$sources" \
    --first-port "$first_port" --lifetime "$lifetime" "${@:6}" 2>"$work/loadgen.err") || true
  if [ -z "$out" ]; then
    cat "$work/loadgen.err" >&2
    die "loadgen produced no result (see above)"
  fi
  echo "$out"
}

# lab_up, lab_down, start_natwarden
. "$repo/bench/lab.sh"

# lab/miniupnpd.sh with the config's usual 120 s minimum lifetime: its own nftables
# tables, NAT-PMP/PCP on br-lan only, no UPnP IGD, secure mode, the same permission
# rule natwarden's config has. Prints the pid.
start_miniupnpd() { # PREFIX DIR -> pid on stdout
  MINIUPNPD_MIN_LIFETIME=120 bash "$repo/lab/miniupnpd.sh" start "$1" "$2" || die "miniupnpd did not start"
}

# mem_json PID: resident memory as {"rss_kb","anon_kb","pss_kb"}. VmRSS counts every
# mapped page, shared libc and clean binary pages too; RssAnon is the heap and stacks
# alone; Pss splits shared pages among the processes that map them.
mem_json() {
  local rss anon pss
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$1/status")
  anon=$(awk '/^RssAnon:/ {print $2}' "/proc/$1/status")
  pss=$(awk '/^Pss:/ {print $2}' "/proc/$1/smaps_rollup")
  printf '{"rss_kb":%s,"anon_kb":%s,"pss_kb":%s}' "$rss" "$anon" "$pss"
}

# bench NAME PREFIX: one daemon in its own lab; writes $work/NAME.json.
bench() {
  local name=$1 p=$2 dir=$work/$1 pid
  mkdir -p "$dir"
  say "$name: lab $p (WAN $wan_net.0/24), daemon, ${sizes[*]} mappings"
  lab_up "$p"
  pid=$("start_$name" "$p" "$dir" "$nw_bin")
  pids+=("$pid")
  sleep "$idle_wait"
  local mem_idle mem_2500=null have=0 stopped=null steps=() size load
  load=$(cut -d' ' -f1-3 /proc/loadavg)
  mem_idle=$(mem_json "$pid")
  # The AnyIP check: every source gets an answer from the gateway (loadgen's preflight,
  # which every later run repeats as a warm-up: 126 external-address round trips that
  # change nothing). One mapping, counted like any other.
  local check
  check=$(run_loadgen "$p" 1 0 1 10)
  [ "$(jget "$check" acknowledged)" = 1 ] || die "$name: the check mapping failed: $check"
  have=1
  for size in "${sizes[@]}"; do
    local fill=null fill_rate=null
    if [ "$size" -gt "$have" ]; then
      say "$name: filling $have -> $size (budget ${budget} s)"
      fill=$(run_loadgen "$p" $((size - have)) "$have" "$window" "$budget")
      fill_rate=$(jget "$fill" per_second)
      have=$((have + $(jget "$fill" acknowledged)))
      if [ "$have" -lt "$size" ]; then
        # What it reached is still worth a latency sample.
        local lat reached=$have
        lat=$(run_loadgen "$p" "$latency_samples" "$have" 1 "$budget")
        have=$((have + $(jget "$lat" acknowledged)))
        stopped="\"filling to $size took over ${budget} s: reached $reached, the last $(jget "$fill" acknowledged) at $fill_rate/s; latency p50 there $(jget "$lat" p50) ms\""
        steps+=("{\"size\":$size,\"reached\":$reached,\"fill\":$fill,\"latency\":$lat,\"memory\":$(mem_json "$pid"),\"fill_per_second\":$fill_rate,\"per_second\":null,\"latency_p50_ms\":null,\"reached_latency_p50_ms\":$(jget "$lat" p50),\"cpu_us_per_mapping\":null}")
        say "$name: $stopped"
        break
      fi
    fi
    local mem at=$have thr lat c0 c1 ack cpu=null
    mem=$(mem_json "$pid")
    [ "$size" -eq 2500 ] && mem_2500=$mem
    say "$name: at $have mappings: $batch new ones, window $window"
    c0=$(cpu_ns "$pid")
    thr=$(run_loadgen "$p" "$batch" "$have" "$window" "$budget")
    c1=$(cpu_ns "$pid")
    ack=$(jget "$thr" acknowledged)
    have=$((have + ack))
    [ "$ack" -gt 0 ] && cpu=$(awk -v d=$((c1 - c0)) -v n="$ack" 'BEGIN {printf "%.2f", d / n / 1000}')
    lat=$(run_loadgen "$p" "$latency_samples" "$have" 1 "$budget")
    have=$((have + $(jget "$lat" acknowledged)))
    # Summary fields last: jget finds the last occurrence of a key.
    steps+=("{\"size\":$size,\"reached\":$at,\"fill\":$fill,\"throughput\":$thr,\"latency\":$lat,\"memory\":$mem,\"fill_per_second\":$fill_rate,\"per_second\":$(jget "$thr" per_second),\"latency_p50_ms\":$(jget "$lat" p50),\"cpu_us_per_mapping\":$cpu}")
    say "$name: $(jget "$thr" per_second) mappings/s, p50 $(jget "$lat" p50) ms, $cpu us CPU per mapping"
    if [ "$ack" -lt "$batch" ]; then
      stopped="\"the batch at $at took over ${budget} s\""
      break
    fi
  done
  local bin_path binary joined
  if [ "$name" = natwarden ]; then bin_path=$nw_bin; else bin_path=$miniupnpd_bin; fi
  binary=$(stat -c %s "$bin_path")
  joined=$(IFS=,; echo "${steps[*]}")
  printf '{"binary_bytes":%s,"loadavg_at_start":"%s","memory_idle":%s,"memory_2500":%s,"mappings_at_end":%s,"stopped":%s,"steps":[%s]}\n' \
    "$binary" "$load" "$mem_idle" "$mem_2500" "$have" "$stopped" "$joined" >"$work/$name.json"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  bash "$repo/lab/netns.sh" down "$p" >&2
}

started=$(date +%s)
bench natwarden "nwb$$n"
bench miniupnpd "nwb$$m"
elapsed=$(($(date +%s) - started))

mkdir -p bench/results
{
  printf '{"date":"%s","host":{"cpus":%s,"kernel":"%s"},' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(nproc)" "$(uname -r)"
  printf '"settings":{"sizes":[%s],"batch":%s,"window":%s,"latency_samples":%s,"step_budget_s":%s,"sources":"%s","lifetime":%s},' \
    "$(IFS=,; echo "${sizes[*]}")" "$batch" "$window" "$latency_samples" "$budget" "$sources" "$lifetime"
  printf '"seconds":%s,"natwarden":%s,"miniupnpd":%s}\n' "$elapsed" "$(cat "$work/natwarden.json")" "$(cat "$work/miniupnpd.json")"
} >bench/results/latest.json

# ---- the table ----
# step_value DAEMON SIZE KEY: a summary number of the step at SIZE, or "-".
step_value() {
  local step v
  step=$(sed 's/},{"size"/}\n{"size"/g' "$work/$1.json" | grep "\"size\":$2," || true)
  v=$(jget "$step" "$3")
  if [ -n "$v" ] && [ "$v" != null ]; then echo "$v"; else echo -; fi
}
top() { jget "$(cat "$work/$1.json")" "$2"; }
# mem DAEMON idle|2500 KEY
mem() { jget "$(sed -n "s/.*\"memory_$2\":\({[^}]*}\).*/\1/p" "$work/$1.json")" "$3"; }

row() { # LABEL NATWARDEN MINIUPNPD
  awk -v l="$1" -v a="$2" -v b="$3" 'BEGIN {
    if (a == "null" || a == "") a = "-"
    if (b == "null" || b == "") b = "-"
    r = (a != "-" && b != "-" && b + 0 != 0) ? sprintf("%.3g", a / b) : "-"
    printf "%-44s %14s %14s %10s\n", l, a, b, r }'
}
echo
echo "natwarden vs miniupnpd $("$miniupnpd_bin" --version 2>&1 | head -n1 | awk '{print $2}'), $(nproc) CPUs, $(date -u +%Y-%m-%d);" \
  "window $window, batch $batch, $latency_samples sequential requests for latency, ${budget} s per step;" \
  "load average at start: $(sed -n 's/.*"loadavg_at_start":"\([^"]*\)".*/\1/p' "$work/natwarden.json") / $(sed -n 's/.*"loadavg_at_start":"\([^"]*\)".*/\1/p' "$work/miniupnpd.json")"
printf '%-44s %14s %14s %10s\n' "metric" natwarden miniupnpd "ratio n/m"
printf '%-44s %14s %14s %10s\n' "------" --------- --------- ---------
for size in "${sizes[@]}"; do
  row "mappings/s at $size (higher is better)" "$(step_value natwarden "$size" per_second)" "$(step_value miniupnpd "$size" per_second)"
done
for size in "${sizes[@]}"; do
  row "latency p50 ms at $size (lower is better)" "$(step_value natwarden "$size" latency_p50_ms)" "$(step_value miniupnpd "$size" latency_p50_ms)"
done
for size in "${sizes[@]}"; do
  row "CPU us per mapping at $size (lower)" "$(step_value natwarden "$size" cpu_us_per_mapping)" "$(step_value miniupnpd "$size" cpu_us_per_mapping)"
done
row "binary bytes (lower)" "$(top natwarden binary_bytes)" "$(top miniupnpd binary_bytes)"
for what in idle 2500; do
  label=$what; [ "$what" = idle ] || label="at $what mappings"
  row "VmRSS kB $label (lower)" "$(mem natwarden "$what" rss_kb)" "$(mem miniupnpd "$what" rss_kb)"
  row "  RssAnon kB $label (heap, stacks)" "$(mem natwarden "$what" anon_kb)" "$(mem miniupnpd "$what" anon_kb)"
  row "  Pss kB $label (shared pages split)" "$(mem natwarden "$what" pss_kb)" "$(mem miniupnpd "$what" pss_kb)"
done
row "mappings held at the end" "$(top natwarden mappings_at_end)" "$(top miniupnpd mappings_at_end)"
for d in natwarden miniupnpd; do
  s=$(sed -n 's/.*"stopped":"\([^"]*\)".*/\1/p' "$work/$d.json")
  [ -z "$s" ] || echo "$d stopped growing: $s"
done

# ---- the targets (from the project brief) ----
echo
nw_rates=()
for size in "${sizes[@]}"; do nw_rates+=("$(step_value natwarden "$size" per_second)"); done
awk -v rates="${nw_rates[*]}" -v sizes="${sizes[*]}" -v bin="$(top natwarden binary_bytes)" \
  -v rss="$(mem natwarden idle rss_kb)" -v mrss="$(mem miniupnpd idle rss_kb)" 'BEGIN {
  n = split(rates, r, " "); split(sizes, s, " "); min = -1; ok = 1
  for (i = 1; i <= n; i++) { if (r[i] == "-") { ok = 0; continue } if (min < 0 || r[i] + 0 < min) { min = r[i] + 0; at = s[i] } }
  printf "target >= 20000 mappings/s at every size to %s: %s (slowest %.0f/s at %s; slowest/fastest %.2f)\n",
    s[n], (ok && min >= 20000) ? "met" : "NOT met", min, at, min / max_of(r, n)
  printf "target binary <= 1.5 MB (1500000 bytes): %s (%d bytes)\n", (bin <= 1500000) ? "met" : "NOT met", bin
  printf "target idle VmRSS <= miniupnpd: %s (%d kB vs %d kB, %+d kB)\n", (rss <= mrss) ? "met" : "NOT met", rss, mrss, rss - mrss
}
function max_of(a, n,   i, m) { m = 0; for (i = 1; i <= n; i++) if (a[i] != "-" && a[i] + 0 > m) m = a[i] + 0; return m }'
echo
echo "raw numbers: bench/results/latest.json (run took ${elapsed} s)"
