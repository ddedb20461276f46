#!/usr/bin/env bash
# miniupnpd (Debian's miniupnpd-nftables) as the gateway of a lab made by netns.sh, for
# testing the client against a second implementation. The lab must be made with LAB_WAN_NET
# set to a non-reserved network (miniupnpd refuses to serve behind a reserved external
# address); the addresses never leave the namespaces.
#
# start: creates miniupnpd's nftables tables in PREFIX-gw, writes DIR/miniupnpd.conf
#        (NAT-PMP and PCP on br-lan only, no UPnP IGD), starts miniupnpd, which daemonizes,
#        and prints its pid (also in DIR/miniupnpd.pid).
# stop:  SIGTERM to the pid in DIR/miniupnpd.pid, then SIGKILL if it lingers (bounded).
# MINIUPNPD_MIN_LIFETIME sets min_lifetime (default 1 s, so tests can use short leases).
# MINIUPNPD_SWAPPED=1 misconfigures it as CERT VU#184540 describes, for the auditor's tests:
# interfaces swapped (ext_ifname=br-lan, listening_ip=eth0: the WAN link must then be
# private, see netns.sh LAB_WAN_NET), every port allowed to everyone, and with
# MINIUPNPD_EXT_IP set, `ext_ip` (a public address it then reports as its own).
# Usage: lab/miniupnpd.sh start|stop PREFIX DIR
set -euo pipefail

cmd=${1:?usage: miniupnpd.sh start|stop PREFIX DIR}
p=${2:?usage: miniupnpd.sh start|stop PREFIX DIR}
dir=${3:?usage: miniupnpd.sh start|stop PREFIX DIR}
gw=$p-gw
pidfile=$dir/miniupnpd.pid

start() {
  command -v miniupnpd >/dev/null || { echo "miniupnpd.sh: miniupnpd is not installed (apt-get install miniupnpd-nftables)" >&2; exit 1; }
  # The tables the config names; the package's nft_init.sh needs a helper it lacks.
  ip netns exec "$gw" nft -f - <<'NFT'
table inet miniupnpd {
  chain forward {
    type filter hook forward priority filter; policy accept;
    jump miniupnpd
  }
  chain miniupnpd {
  }
}
table inet miniupnpd_nat {
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    jump prerouting_miniupnpd
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    jump postrouting_miniupnpd
  }
  chain prerouting_miniupnpd {
  }
  chain postrouting_miniupnpd {
  }
}
NFT
  local ext_if=eth0 listen_if=br-lan
  local rules="allow 1024-65535 192.168.1.0/24 1024-65535
deny 0-65535 0.0.0.0/0 0-65535"
  if [ "${MINIUPNPD_SWAPPED:-}" = 1 ]; then
    ext_if=br-lan listen_if=eth0 rules="allow 1-65535 0.0.0.0/0 1-65535"
  fi
  cat >"$dir/miniupnpd.conf" <<EOF
ext_ifname=$ext_if
listening_ip=$listen_if
${MINIUPNPD_EXT_IP:+ext_ip=$MINIUPNPD_EXT_IP}
enable_upnp=no
enable_natpmp=yes
secure_mode=yes
system_uptime=no
lease_file=$dir/miniupnpd.leases
min_lifetime=${MINIUPNPD_MIN_LIFETIME:-1}
max_lifetime=86400
upnp_table_name=miniupnpd
upnp_nat_table_name=miniupnpd_nat
upnp_forward_chain=miniupnpd
upnp_nat_chain=prerouting_miniupnpd
upnp_nat_postrouting_chain=postrouting_miniupnpd
uuid=3d3cec3a-8cf0-11e0-98ee-001a6bd2d07b
$rules
EOF
  rm -f "$pidfile"
  # Without -d it forks into the background and writes the pid file.
  ip netns exec "$gw" timeout 10 miniupnpd -f "$dir/miniupnpd.conf" -P "$pidfile"
  for _ in $(seq 1 50); do
    if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      # Serving once its NAT-PMP/PCP socket is bound.
      for _ in $(seq 1 50); do
        if ip netns exec "$gw" ss -Hlun 'sport = :5351' | grep -q .; then
          cat "$pidfile"
          return 0
        fi
        sleep 0.1
      done
      break
    fi
    sleep 0.1
  done
  echo "miniupnpd.sh: miniupnpd did not start (see the system log)" >&2
  return 1
}

stop() {
  [ -s "$pidfile" ] || return 0
  local pid
  pid=$(cat "$pidfile")
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; return 0; }
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: miniupnpd.sh start|stop PREFIX DIR" >&2; exit 2 ;;
esac
