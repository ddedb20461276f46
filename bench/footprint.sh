#!/usr/bin/env bash
# Footprint, natwarden against miniupnpd 2.3.1 in one run: binary size, idle memory, and
# natwarden's memory holding 10,000 mappings. natwarden is measured as a router runs it,
# the daemon alone (`--no-default-features`), built for the host (glibc, dynamic) and,
# when the target is installed, as a static musl binary; each daemon in a fresh lab of its
# own (lab/netns.sh), the mappings made by bench/loadgen from 126 LAN addresses.
#
# Run as root from anywhere: bench/footprint.sh. Needs what lab/setup.sh --tests installs
# (miniupnpd-nftables among it). Bounded: each step has a time limit; the namespaces are
# removed on exit. FOOTPRINT_MAPPINGS=10000 sets the loaded size.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
mappings=${FOOTPRINT_MAPPINGS:-10000}
idle_wait=3
wan_net=45.45.45 # not reserved (miniupnpd refuses reserved ones); never leaves the namespaces
sources=192.168.1.128/25
musl=x86_64-unknown-linux-musl

die() { echo "bench/footprint.sh: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root (it creates network namespaces)"
miniupnpd_bin=$(command -v miniupnpd || true)
[ -n "$miniupnpd_bin" ] || die "miniupnpd not found: apt-get install miniupnpd-nftables"

work=$(mktemp -d /tmp/natwarden-footprint.XXXXXX)
prefixes=()
pids=()
cleanup() {
  local pid p
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for p in "${prefixes[@]}"; do bash "$repo/lab/netns.sh" down "$p" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
say() { printf '\033[1m== %s\033[0m\n' "$*" >&2; }

say "building: natwarden (default and router build), loadgen"
mkdir "$work/bin"
cargo build --release --locked -p natwarden >&2
cp target/release/natwarden "$work/bin/natwarden-default"
cargo build --release --locked -p natwarden --no-default-features -p natwarden-bench >&2
cp target/release/natwarden "$work/bin/natwarden-router"
cp target/release/loadgen "$work/bin/"
variants=(router)
if rustup target list --installed 2>/dev/null | grep -qx "$musl"; then
  cargo build --release --locked -p natwarden --no-default-features --target "$musl" >&2
  cp "target/$musl/release/natwarden" "$work/bin/natwarden-musl"
  variants+=(musl)
else
  echo "bench/footprint.sh: $musl not installed (rustup target add $musl): no static row" >&2
fi

rss() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
anon() { awk '/^RssAnon:/ {print $2}' "/proc/$1/status"; }

# lab_up, lab_down, start_natwarden
. "$repo/bench/lab.sh"

stop() { # PID
  kill -TERM "$1" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
}

declare -A size idle idle_anon loaded loaded_anon
n=0
for v in default "${variants[@]}"; do
  n=$((n + 1))
  p=nwf$$$n dir=$work/$v
  mkdir -p "$dir"
  bin=$work/bin/natwarden-$v
  size[$v]=$(stat -c %s "$bin")
  say "natwarden ($v build): idle, then $mappings mappings"
  lab_up "$p"
  pid=$(start_natwarden "$p" "$dir" "$bin")
  pids+=("$pid")
  sleep "$idle_wait"
  idle[$v]=$(rss "$pid") idle_anon[$v]=$(anon "$pid")
  out=$(ip netns exec "$p-lan" timeout 120 "$work/bin/loadgen" --gateway 192.168.1.1 \
    --count "$mappings" --window 128 --deadline 100 --sources "$sources" \
    --first-port 1024 --lifetime 7200 2>&1) || die "loadgen: $out"
  sleep 1
  loaded[$v]=$(rss "$pid") loaded_anon[$v]=$(anon "$pid")
  stop "$pid"
  lab_down "$p"
done

say "miniupnpd: idle"
p=nwf$$m dir=$work/miniupnpd
mkdir -p "$dir"
lab_up "$p"
mpid=$(MINIUPNPD_MIN_LIFETIME=120 bash lab/miniupnpd.sh start "$p" "$dir") || die "miniupnpd did not start"
pids+=("$mpid")
sleep "$idle_wait"
m_idle=$(rss "$mpid") m_anon=$(anon "$mpid")
m_size=$(stat -c %s "$miniupnpd_bin")
m_libs=0
for lib in $(ldd "$miniupnpd_bin" | awk '/libnftnl|libmnl/ {print $3}'); do
  m_libs=$((m_libs + $(stat -L -c %s "$lib")))
done
bash lab/miniupnpd.sh stop "$p" "$dir" >/dev/null 2>&1 || true
lab_down "$p"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
echo
echo "natwarden footprint vs miniupnpd 2.3.1 ($(date -u +%Y-%m-%d), $(nproc) CPUs, kernel $(uname -r))"
printf '%-44s %12s %12s %9s\n' metric natwarden miniupnpd "ratio n/m"
printf '%-44s %12s %12s %9s\n' ------ --------- --------- ---------
row() { printf '%-44s %12s %12s %9s\n' "$1" "$2" "$3" "$(ratio "$2" "$3")"; }
row "binary bytes, default build (+client, audit)" "${size[default]}" "$m_size"
for v in "${variants[@]}"; do
  row "binary bytes, router build ($v)" "${size[$v]}" "$m_size"
done
echo "  (miniupnpd also loads libnftnl + libmnl: $m_libs bytes; binary + those: $((m_size + m_libs)))"
for v in default "${variants[@]}"; do
  row "VmRSS kB idle ($v)" "${idle[$v]}" "$m_idle"
  row "  RssAnon kB idle ($v)" "${idle_anon[$v]}" "$m_anon"
done
for v in default "${variants[@]}"; do
  row "VmRSS kB with $mappings mappings ($v)" "${loaded[$v]}" "-"
  row "  RssAnon kB with $mappings mappings ($v)" "${loaded_anon[$v]}" "-"
done
echo
echo "targets: router binary <= 900000 bytes; idle VmRSS <= miniupnpd's; VmRSS with 10k mappings <= 4096 kB"
for v in "${variants[@]}"; do
  ok() { [ "$1" ] && echo met || echo "NOT met"; }
  echo "  $v: size ${size[$v]} ($(ok "$([ "${size[$v]}" -le 900000 ] && echo y)")), idle ${idle[$v]} kB vs ${m_idle} kB ($(ok "$([ "${idle[$v]}" -le "$m_idle" ] && echo y)")), ${loaded[$v]} kB at $mappings ($(ok "$([ "${loaded[$v]}" -le 4096 ] && echo y)"))"
done
