# Shared by bench/run.sh and bench/footprint.sh (sourced, not run): the lab with 126 LAN
# clients and a natwarden daemon in it. The caller sets repo, wan_net, sources and
# prefixes (the labs to remove on exit) and defines die.

lab_up() { # PREFIX
  prefixes+=("$1")
  LAB_WAN_NET=$wan_net bash "$repo/lab/netns.sh" up "$1" >&2
  # AnyIP: every address of the range is local on the LAN host and answers ARP, so one
  # host stands for 126 clients (the gateway's replies come back to each of them).
  ip -n "$1-lan" route add local "$sources" dev lo
}

lab_down() { bash "$repo/lab/netns.sh" down "$1" >/dev/null 2>&1 || true; }

start_natwarden() { # PREFIX DIR BINARY -> pid on stdout
  local p=$1 dir=$2 bin=$3
  # The example config, with limits out of the way of a load test: no per-client rate
  # limit, a quota above the ~410 mappings each source makes, state and control here.
  sed -e "s#^max_per_client = [0-9]*#max_per_client = 65535#" \
    -e "s#^requests_per_second_per_client = [0-9]*#requests_per_second_per_client = 0#" \
    -e "s#^file = .*#file = \"$dir/state.json\"#" \
    -e "s#^socket = .*#socket = \"$dir/control.sock\"#" \
    "$repo/examples/natwarden.toml" >"$dir/natwarden.toml"
  for want in "max_per_client = 65535" "requests_per_second_per_client = 0" \
    "file = \"$dir/state.json\"" "socket = \"$dir/control.sock\""; do
    grep -q "^$want" "$dir/natwarden.toml" || die "bench config: could not set \`$want\` in examples/natwarden.toml"
  done
  ip netns exec "$p-gw" "$bin" check-config --config "$dir/natwarden.toml" >&2
  # stdout too: this runs inside $(...), which would otherwise wait for the daemon.
  ip netns exec "$p-gw" "$bin" serve --config "$dir/natwarden.toml" >/dev/null 2>"$dir/natwarden.log" &
  local pid=$!
  for _ in $(seq 1 50); do
    grep -q "serving NAT-PMP" "$dir/natwarden.log" && { echo "$pid"; return 0; }
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  cat "$dir/natwarden.log" >&2
  die "natwarden did not start"
}
