#!/usr/bin/env bash
# A throw-away three-host lab in network namespaces, shared by the demo and the tests.
#
#   PREFIX-lan  eth0 192.168.1.10/24 ---- br-lan 192.168.1.1/24  PREFIX-gw
#                                          eth0   198.51.100.7/24 ---- eth0 198.51.100.100/24  PREFIX-wan
#
#   and IPv6, all addresses `nodad` so they work at once:
#   PREFIX-lan  eth0 2001:db8:1::10/64 -- br-lan 2001:db8:1::1/64  PREFIX-gw
#                                          eth0   2001:db8:100::7/64 -- eth0 2001:db8:100::100/64  PREFIX-wan
#
# The gateway forwards and masquerades LAN traffic out of eth0 (its own `lab_nat` table,
# not natwarden's); the WAN host stands for the Internet and has no IPv4 route to the LAN.
# IPv6 is routed, not translated: the WAN host reaches 2001:db8:1::/64 via the gateway,
# as an ISP routes a delegated prefix, so only a firewall keeps it out.
# LAB_WAN_NET=A.B.C puts the WAN link in A.B.C.0/24 instead (gateway .7, WAN host .100):
# miniupnpd refuses to serve with a reserved external address such as 198.51.100.7. The
# addresses never leave the namespaces.
# Usage: lab/netns.sh up PREFIX | down PREFIX
set -euo pipefail

cmd=${1:?usage: netns.sh up|down PREFIX}
p=${2:?usage: netns.sh up|down PREFIX}
lan=$p-lan gw=$p-gw wan=$p-wan
wan_net=${LAB_WAN_NET:-198.51.100}

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
    # The kernel's own link-local addresses cannot be given `nodad`; without duplicate
    # address detection they too are usable at once (with it, routed IPv6 stalls ~2 s).
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.default.accept_dad=0 net.ipv6.conf.all.accept_dad=0
  done
  ip link add eth0 netns "$lan" type veth peer name lanport netns "$gw"
  ip link add eth0 netns "$wan" type veth peer name eth0 netns "$gw"

  ip -n "$gw" link add br-lan type bridge
  ip -n "$gw" link set lanport master br-lan
  ip -n "$gw" link set lanport up
  ip -n "$gw" link set br-lan up
  ip -n "$gw" addr add 192.168.1.1/24 dev br-lan
  ip -n "$gw" link set eth0 up
  ip -n "$gw" addr add "$wan_net.7/24" dev eth0
  ip -n "$gw" route add default via "$wan_net.100"
  ip netns exec "$gw" sysctl -qw net.ipv4.ip_forward=1
  ip -n "$gw" addr add 2001:db8:1::1/64 dev br-lan nodad
  ip -n "$gw" addr add 2001:db8:100::7/64 dev eth0 nodad
  ip -n "$gw" -6 route add default via 2001:db8:100::100
  ip netns exec "$gw" sysctl -qw net.ipv6.conf.all.forwarding=1
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
  ip -n "$lan" addr add 2001:db8:1::10/64 dev eth0 nodad
  ip -n "$lan" -6 route add default via 2001:db8:1::1

  ip -n "$wan" link set eth0 up
  ip -n "$wan" addr add "$wan_net.100/24" dev eth0
  ip -n "$wan" addr add 2001:db8:100::100/64 dev eth0 nodad
  ip -n "$wan" -6 route add 2001:db8:1::/64 via 2001:db8:100::7

  # Wait until the bridge settles and IPv6 is routed end to end (bounded).
  local v4=false
  for _ in $(seq 1 50); do
    if ! $v4 && ip netns exec "$lan" ping -c1 -W1 -q 192.168.1.1 >/dev/null 2>&1; then
      v4=true
    fi
    if $v4 && ip netns exec "$lan" ping -6 -c1 -W1 -q 2001:db8:100::100 >/dev/null 2>&1; then
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
