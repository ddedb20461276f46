#!/usr/bin/env bash
# The demo: builds natwarden, starts it in a throw-away namespace lab with the example
# config (examples/natwarden.toml), maps a port from the LAN host with natpmpc, shows
# the kernel's table and a TCP connection from the WAN host through the mapping, shows
# that the WAN host gets nothing, then tears everything down. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "demo.sh: run as root (it creates network namespaces)" >&2; exit 1; }
bash lab/setup.sh

p=nwdemo
bin=$PWD/target/release/natwarden
log=$(mktemp /tmp/natwarden-demo.XXXXXX)
cleanup() {
  [ -n "${daemon:-}" ] && kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null
  bash lab/netns.sh down $p
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "lab: LAN host 192.168.1.10 -- gateway (br-lan 192.168.1.1 | eth0 198.51.100.7) -- WAN host 198.51.100.100"
bash lab/netns.sh up $p
cfg=$(mktemp /tmp/natwarden-demo-config.XXXXXX)
sed -e "s#/var/lib/natwarden/state.json#/tmp/natwarden-demo-state.json#" \
    -e "s#/run/natwarden/control.sock#/tmp/natwarden-demo-control.sock#" examples/natwarden.toml >"$cfg"
rm -f /tmp/natwarden-demo-state.json

step "natwarden check-config --config examples/natwarden.toml"
ip netns exec $p-gw "$bin" check-config --config "$cfg"

step "natwarden serve (log: $log)"
ip netns exec $p-gw "$bin" serve --config "$cfg" 2>"$log" &
daemon=$!
for _ in $(seq 1 50); do grep -q "serving NAT-PMP" "$log" && break; sleep 0.1; done
cat "$log"

step "LAN host: natpmpc -g 192.168.1.1 -a 8080 8080 tcp 3600"
ip netns exec $p-lan timeout 5 natpmpc -g 192.168.1.1 -a 8080 8080 tcp 3600

step "gateway: nft list table inet natwarden"
ip netns exec $p-gw nft list table inet natwarden

step "WAN host -> 198.51.100.7:8080 reaches the LAN host's listener"
ip netns exec $p-lan timeout 5 nc -l -p 8080 &
sleep 0.3
echo "hello from the WAN, via natwarden's mapping" | ip netns exec $p-wan nc -N -w 3 198.51.100.7 8080
wait $! || true

step "LAN host, natwarden's own client (PCP): natwarden map 9090 --protocol udp --lifetime 600"
ip netns exec $p-lan "$bin" map 9090 --protocol udp --lifetime 600 --timeout 10
ip netns exec $p-lan "$bin" external-address --timeout 10

step "gateway: natwarden status"
ip netns exec $p-gw "$bin" status --config "$cfg"

step "WAN host: natpmpc -g 198.51.100.7 (must get no answer)"
if ip netns exec $p-wan timeout 3 natpmpc -g 198.51.100.7 | grep -q "Public IP"; then
  echo "UNEXPECTED: the WAN host got an answer" >&2; exit 1
else
  echo "no answer from the WAN side, as it must be"
fi

step "daemon log"
tail -n 5 "$log"
step "stopping natwarden: its table goes with it"
kill "$daemon"; wait "$daemon" || true; daemon=
ip netns exec $p-gw nft list tables
