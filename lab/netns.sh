#!/usr/bin/env bash
# A throw-away three-host lab in network namespaces, shared by the demo and the tests.
#
#   PREFIX-lan  eth0 192.168.1.10/24 ---- br-lan 192.168.1.1/24  PREFIX-gw
#                                          eth0   198.51.100.7/24 ---- eth0 198.51.100.100/24  PREFIX-wan
#
# The gateway forwards and masquerades LAN traffic out of eth0 (its own `lab_nat` table,
# not natwarden's); the WAN host stands for the Internet and has no route to the LAN.
# Usage: lab/netns.sh up PREFIX | down PREFIX
set -euo pipefail

cmd=${1:?usage: netns.sh up|down PREFIX}
p=${2:?usage: netns.sh up|down PREFIX}
lan=$p-lan gw=$p-gw wan=$p-wan

down() {
  for ns in "$lan" "$gw" "$wan"; do
    if ip netns pids "$ns" >/dev/null 2>&1; then
      ip netns pids "$ns" | xargs -r kill -9 2>/dev/null || true
    fi
    ip netns del "$ns" 2>/dev/null || true
  done
}

up() {
  down
  for ns in "$lan" "$gw" "$wan"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
  done
  ip link add eth0 netns "$lan" type veth peer name lanport netns "$gw"
  ip link add eth0 netns "$wan" type veth peer name eth0 netns "$gw"

  ip -n "$gw" link add br-lan type bridge
  ip -n "$gw" link set lanport master br-lan
  ip -n "$gw" link set lanport up
  ip -n "$gw" link set br-lan up
  ip -n "$gw" addr add 192.168.1.1/24 dev br-lan
  ip -n "$gw" link set eth0 up
  ip -n "$gw" addr add 198.51.100.7/24 dev eth0
  ip -n "$gw" route add default via 198.51.100.100
  ip netns exec "$gw" sysctl -qw net.ipv4.ip_forward=1
  ip netns exec "$gw" nft -f - <<'NFT'
table ip lab_nat {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "eth0" masquerade
  }
}
NFT

  ip -n "$lan" link set eth0 up
  ip -n "$lan" addr add 192.168.1.10/24 dev eth0
  ip -n "$lan" route add default via 192.168.1.1

  ip -n "$wan" link set eth0 up
  ip -n "$wan" addr add 198.51.100.100/24 dev eth0

  # Wait until duplicate address detection and the bridge settle (bounded).
  for _ in $(seq 1 50); do
    if ip netns exec "$lan" ping -c1 -W1 -q 192.168.1.1 >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.1
  done
  echo "netns.sh: lab $p did not come up" >&2
  return 1
}

case "$cmd" in
  up) up ;;
  down) down ;;
  *) echo "usage: netns.sh up|down PREFIX" >&2; exit 2 ;;
esac
