//! Faults of a real router, end to end in the namespace lab: someone flushes the
//! ruleset or deletes natwarden's table, the WAN interface is re-created with a new
//! index (a PPPoE reconnect), the LAN address changes. Service must go on unaided.

mod common;

use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const NFT_LIST_FWD4: [&str; 7] = ["nft", "-j", "list", "map", "inet", "natwarden", "fwd4"];

/// Whether `nft -j list map ... fwd4` output holds a tcp forward of external `port`.
fn holds_tcp_forward(nft_json: &[u8], port: u16) -> bool {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(nft_json) else {
        return false;
    };
    v["nftables"].as_array().into_iter().flatten().any(|item| {
        item["map"]["elem"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| {
                let key = &e[0]["concat"];
                key[0] == "tcp" && key[1].as_u64() == Some(u64::from(port))
            })
    })
}

fn kernel_holds(lab: &Lab, port: u16) -> bool {
    holds_tcp_forward(&lab.run(Host::Gw, 10, &NFT_LIST_FWD4).stdout, port)
}

fn natpmpc_map(lab: &Lab, gateway: &str, port: u16) -> String {
    let p = port.to_string();
    all_output(&lab.run(
        Host::Lan,
        4,
        &["natpmpc", "-g", gateway, "-a", &p, &p, "tcp", "3600"],
    ))
}

/// A real TCP connection from the WAN host to the gateway's `external` address and
/// `port`, forwarded to a listener on the LAN host.
fn wan_reaches_lan(lab: &Lab, external: &str, port: u16) -> bool {
    let p = port.to_string();
    let lan = lab
        .cmd(Host::Lan, &["timeout", "5", "nc", "-l", "-p", &p])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("LAN listener");
    std::thread::sleep(Duration::from_millis(300));
    let sent = lab.sh(
        Host::Wan,
        5,
        &format!("echo through-the-forward | nc -N -w 2 {external} {port}"),
    );
    let got = lan.wait_with_output().expect("listener");
    sent.status.success() && stdout(&got).trim() == "through-the-forward"
}

fn epoch(lab: &Lab) -> u64 {
    lab.status()["epoch"].as_u64().expect("epoch")
}

fn mapped_internal_ports(lab: &Lab) -> Vec<u64> {
    lab.status()["mappings"]
        .as_array()
        .expect("mappings")
        .iter()
        .filter_map(|m| m["internal_port"].as_u64())
        .collect()
}

/// Someone else breaks the table with `fault` while a mapping lives: the forward works
/// again within 2 s, the mapping and the epoch stay, and a renewal sent right after the
/// fault is answered only once the kernel holds its element again.
fn table_fault_is_repaired_without_losing_anything(fault: &str) {
    let lab = Lab::up();
    let d = lab.start(&lab.config("gw.toml", &[]));
    let out = natpmpc_map(&lab, GW_LAN, 8080);
    assert!(out.contains("Mapped public port 8080"), "{out}");
    assert!(
        wan_reaches_lan(&lab, GW_WAN, 8080),
        "forward before the fault"
    );
    // Old enough that a new epoch (which starts at 0) would show.
    assert!(lab.eventually(10, || epoch(&lab) >= 3));
    let epoch_before = epoch(&lab);

    let gw_ns = lab.ns(Host::Gw);
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let renewal = lab.spawn_in(Host::Lan, move || {
        let sock = UdpSocket::bind("0.0.0.0:0").expect("bind");
        sock.connect((GW_LAN, 5351)).expect("connect");
        sock.set_read_timeout(Some(Duration::from_millis(250)))
            .expect("timeout");
        let mut buf = [0u8; 32];
        // The renewal leaves the moment the fault is done.
        go_rx.recv().ok()?;
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            sock.send(&map_request(8080, 3600)).expect("send");
            if let Ok(16) = sock.recv(&mut buf) {
                // Look at the kernel the moment the answer is here.
                let held = Command::new("ip")
                    .args(["netns", "exec", &gw_ns])
                    .args(NFT_LIST_FWD4)
                    .output()
                    .map(|o| holds_tcp_forward(&o.stdout, 8080))
                    .unwrap_or(false);
                let result = u16::from_be_bytes([buf[2], buf[3]]);
                let epoch = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
                let ext = u16::from_be_bytes([buf[10], buf[11]]);
                return Some((result, epoch, ext, held));
            }
        }
        None
    });
    let broken = Instant::now();
    let o = lab.sh(Host::Gw, 5, fault);
    assert!(o.status.success(), "{fault}: {}", all_output(&o));
    go_tx.send(()).expect("renewal thread");
    let (result, reply_epoch, ext, held) = renewal
        .join()
        .expect("renewal thread")
        .expect("the renewal was never answered");
    assert_eq!((result, ext), (0, 8080), "renewal refused");
    assert!(
        held,
        "the renewal was acknowledged while the kernel did not hold the forward\n{}",
        d.log_text()
    );
    assert!(
        u64::from(reply_epoch) >= epoch_before,
        "the renewal's epoch went back from {epoch_before} to {reply_epoch}"
    );

    assert!(
        lab.eventually(2, || kernel_holds(&lab, 8080)),
        "the forward was not back in the kernel 2 s after `{fault}`\n{}",
        d.log_text()
    );
    assert!(broken.elapsed() < Duration::from_secs(3));
    assert!(
        wan_reaches_lan(&lab, GW_WAN, 8080),
        "the WAN does not reach the LAN through the rebuilt forward"
    );
    assert_eq!(mapped_internal_ports(&lab), vec![8080]);
    let epoch_after = epoch(&lab);
    assert!(
        epoch_after >= epoch_before,
        "new epoch after `{fault}`: {epoch_before} -> {epoch_after}"
    );
    assert!(
        !d.log_text().contains("resetting all mappings"),
        "{}",
        d.log_text()
    );
    // The whole table is back, not just the map.
    let table = lab.table("natwarden").expect("table");
    for part in [
        "chain prerouting",
        "chain forward",
        "chain postrouting",
        "chain input",
        "set allow4",
    ] {
        assert!(table.contains(part), "{part} missing:\n{table}");
    }
}

#[test]
fn nft_flush_ruleset_with_live_mappings_is_repaired_within_2s_same_epoch() {
    if !require_root() {
        return;
    }
    table_fault_is_repaired_without_losing_anything("nft flush ruleset");
}

#[test]
fn nft_delete_table_with_live_mappings_is_repaired_within_2s_same_epoch() {
    if !require_root() {
        return;
    }
    table_fault_is_repaired_without_losing_anything("nft delete table inet natwarden");
}

fn ifindex(lab: &Lab, host: Host, name: &str) -> String {
    let o = lab.run(host, 5, &["cat", &format!("/sys/class/net/{name}/ifindex")]);
    stdout(&o).trim().to_string()
}

#[test]
fn wan_interface_recreated_with_a_new_index_is_served_again_without_sighup() {
    if !require_root() {
        return;
    }
    let lab = Lab::up();
    let d = lab.start(&lab.config("gw.toml", &[]));
    let out = all_output(&lab.run(Host::Lan, 4, &["natpmpc", "-g", GW_LAN]));
    assert!(
        out.contains(&format!("Public IP address : {GW_WAN}")),
        "{out}"
    );
    let before = ifindex(&lab, Host::Gw, "eth0");

    // What a PPPoE reconnect does to ppp0: the link goes, and comes back with the same
    // name and address but a new index.
    let (gw, wan) = (lab.ns(Host::Gw), lab.ns(Host::Wan));
    let recreate = format!(
        "ip -n {gw} link del eth0 && sleep 0.5 && \
         ip link add eth0 netns {gw} type veth peer name eth0 netns {wan} && \
         ip -n {gw} link set eth0 up && ip -n {gw} addr add {GW_WAN}/24 dev eth0 && \
         ip -n {gw} route add default via {WAN_HOST} && \
         ip -n {wan} link set eth0 up && ip -n {wan} addr add {WAN_HOST}/24 dev eth0"
    );
    let o = Command::new("timeout")
        .args(["10", "sh", "-c", &recreate])
        .output()
        .expect("re-creating the WAN link");
    assert!(o.status.success(), "{}", all_output(&o));
    let after = ifindex(&lab, Host::Gw, "eth0");
    assert_ne!(before, after, "the re-created interface kept its index");

    let served = lab.eventually(5, || {
        let o = lab.run(Host::Lan, 3, &["natpmpc", "-g", GW_LAN]);
        all_output(&o).contains(&format!("Public IP address : {GW_WAN}"))
    });
    assert!(
        served,
        "no external address after the WAN link came back\n{}",
        d.log_text()
    );
    let out = natpmpc_map(&lab, GW_LAN, 9090);
    assert!(
        out.contains("Mapped public port 9090"),
        "{out}\n{}",
        d.log_text()
    );
    assert!(
        lab.eventually(5, || wan_reaches_lan(&lab, GW_WAN, 9090)),
        "the WAN does not reach the LAN through a forward made after the reconnect"
    );
    assert!(!d.log_text().contains("configuration reloaded"));
}

#[test]
fn internal_ipv4_address_changed_at_runtime_is_served() {
    if !require_root() {
        return;
    }
    let lab = Lab::up();
    let d = lab.start(&lab.config("gw.toml", &[]));
    let out = natpmpc_map(&lab, GW_LAN, 8080);
    assert!(out.contains("Mapped public port 8080"), "{out}");

    // The LAN is given another gateway address: requests to it are served, the old one
    // is no longer the gateway's and is not answered.
    let o = lab.sh(
        Host::Gw,
        5,
        // (Deleting a primary address deletes its secondaries: remove first, then add.)
        "ip addr del 192.168.1.1/24 dev br-lan && ip addr add 192.168.1.2/24 dev br-lan",
    );
    assert!(o.status.success(), "{}", all_output(&o));
    let served = lab.eventually(5, || {
        natpmpc_map(&lab, "192.168.1.2", 9090).contains("Mapped public port 9090")
    });
    assert!(
        served,
        "the new LAN address is not served\n{}",
        d.log_text()
    );
    assert!(wan_reaches_lan(&lab, GW_WAN, 9090));
    // The LAN host's mapping from before the change is still there.
    let mut ports = mapped_internal_ports(&lab);
    ports.sort_unstable();
    assert_eq!(ports, vec![8080, 9090]);

    // An address removed and added back: not served while gone, served again after.
    let o = lab.sh(Host::Gw, 5, "ip addr del 192.168.1.2/24 dev br-lan");
    assert!(o.status.success(), "{}", all_output(&o));
    d.wait_for_log("not serving it until it returns", Duration::from_secs(5));
    let o = lab.sh(Host::Gw, 5, "ip addr add 192.168.1.3/24 dev br-lan");
    assert!(o.status.success(), "{}", all_output(&o));
    let served = lab.eventually(5, || {
        natpmpc_map(&lab, "192.168.1.3", 9191).contains("Mapped public port 9191")
    });
    assert!(
        served,
        "the re-added LAN address is not served\n{}",
        d.log_text()
    );
    assert_eq!(mapped_internal_ports(&lab).len(), 3);
}
