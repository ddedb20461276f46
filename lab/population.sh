#!/usr/bin/env bash
# A scanner and a whole population of gateways in two network namespaces, for the auditor.
#
#   PREFIX-scan  eth0 203.0.113.1/24    ---- eth0 203.0.113.2/24    PREFIX-pop
#                eth0 2001:db8:ff::1/64 ---- eth0 2001:db8:ff::2/64
#
# PREFIX-scan routes 100.64.0.0/10 and 2001:db8:64::/48 to PREFIX-pop, where every address
# of 100.64.0.0/15 and 2001:db8:64::/47 is local (AnyIP routes on lo): the targets in
# 100.64/16 and 2001:db8:64::/48, their "other source" siblings in 100.65/16 and
# 2001:db8:65::/48. lab/population (the `population` binary) answers for them all.
# Usage: lab/population.sh up PREFIX [V4CIDR] | down PREFIX | mac PREFIX
#   up:   V4CIDR (default 100.64.0.0/15) is the IPv4 range made local in PREFIX-pop.
#   mac:  prints the MAC of PREFIX-pop's eth0, the scan side's next hop (zmap -G).
set -euo pipefail

usage="usage: population.sh up PREFIX [V4CIDR] | down PREFIX | mac PREFIX"
cmd=${1:?$usage}
p=${2:?$usage}
v4cidr=${3:-100.64.0.0/15}
scan=$p-scan pop=$p-pop

down() {
  for ns in "$scan" "$pop"; do
    if ip netns pids "$ns" >/dev/null 2>&1; then
      ip netns pids "$ns" | xargs -r kill -9 2>/dev/null || true
    fi
    ip netns del "$ns" 2>/dev/null || true
  done
}

up() {
  down
  for ns in "$scan" "$pop"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    # Without duplicate address detection the link-local and nodad addresses work at once.
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.default.accept_dad=0 net.ipv6.conf.all.accept_dad=0
    # Replies leave from addresses the scanner's routes do not tie to one link.
    ip netns exec "$ns" sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
  done
  ip link add eth0 netns "$scan" type veth peer name eth0 netns "$pop"
  ip netns exec "$scan" sysctl -qw net.ipv4.conf.eth0.rp_filter=0
  ip netns exec "$pop" sysctl -qw net.ipv4.conf.eth0.rp_filter=0 net.ipv4.conf.lo.rp_filter=0

  ip -n "$scan" link set eth0 up
  ip -n "$scan" addr add 203.0.113.1/24 dev eth0
  ip -n "$scan" addr add 2001:db8:ff::1/64 dev eth0 nodad
  ip -n "$scan" route add 100.64.0.0/10 via 203.0.113.2
  ip -n "$scan" -6 route add 2001:db8:64::/48 via 2001:db8:ff::2

  ip -n "$pop" link set eth0 up
  ip -n "$pop" addr add 203.0.113.2/24 dev eth0
  ip -n "$pop" addr add 2001:db8:ff::2/64 dev eth0 nodad
  # AnyIP: `local` routes go to the local table, so the whole range is this host's.
  ip -n "$pop" route add local "$v4cidr" dev lo
  ip -n "$pop" -6 route add local 2001:db8:64::/47 dev lo

  # Bounded wait until a target answers ping over both families.
  local v4=false
  for _ in $(seq 1 50); do
    if ! $v4 && ip netns exec "$scan" ping -c1 -W1 -q 100.64.0.1 >/dev/null 2>&1; then
      v4=true
    fi
    if $v4 && ip netns exec "$scan" ping -6 -c1 -W1 -q 2001:db8:64::1 >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.1
  done
  echo "population.sh: lab $p did not come up" >&2
  return 1
}

mac() {
  ip -n "$pop" -o link show eth0 | sed -n 's/.*link\/ether \([0-9a-f:]*\).*/\1/p'
}

case "$cmd" in
  up) up ;;
  down) down ;;
  mac) mac ;;
  *) echo "$usage" >&2; exit 2 ;;
esac
