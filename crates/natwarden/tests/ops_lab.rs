//! Operations end to end: crashes, damaged state, address changes, reloads, the
//! status socket and privileges, in the namespace lab with the real kernel.

mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

/// Runs `f` on a thread inside the LAN host's network namespace.
/// Runs `f` on a thread inside the LAN host's network namespace.
fn in_lan<T: Send + 'static>(
    lab: &Lab,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    lab.spawn_in(Host::Lan, f)
}

/// Mapping (protocol, internal port) -> external port, from `status --json`.
fn status_mappings(v: &serde_json::Value) -> BTreeMap<(String, u16), u16> {
    v["mappings"]
        .as_array()
        .expect("mappings")
        .iter()
        .map(|m| {
            assert_eq!(m["client"], LAN_HOST);
            (
                (
                    m["protocol"].as_str().expect("protocol").to_string(),
                    m["internal_port"].as_u64().expect("port") as u16,
                ),
                m["external_port"].as_u64().expect("port") as u16,
            )
        })
        .collect()
}

/// The nft elements of `fwd4` as (protocol, external port) -> (address, internal port).
fn kernel_forwards(lab: &Lab) -> BTreeMap<(String, u16), (String, u16)> {
    let o = lab.run(
        Host::Gw,
        20,
        &["nft", "-j", "list", "map", "inet", "natwarden", "fwd4"],
    );
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("nft json");
    let mut out = BTreeMap::new();
    for item in v["nftables"].as_array().expect("nftables") {
        let Some(elems) = item["map"]["elem"].as_array() else {
            continue;
        };
        for e in elems {
            let key = &e[0]["concat"];
            let val = &e[1]["concat"];
            out.insert(
                (
                    key[0].as_str().expect("proto").to_string(),
                    key[1].as_u64().expect("port") as u16,
                ),
                (
                    val[0].as_str().expect("addr").to_string(),
                    val[1].as_u64().expect("port") as u16,
                ),
            );
        }
    }
    out
}

fn assert_table_matches_status(lab: &Lab) -> BTreeMap<(String, u16), u16> {
    let status = status_mappings(&lab.status());
    let kernel = kernel_forwards(lab);
    let from_status: BTreeMap<(String, u16), (String, u16)> = status
        .iter()
        .map(|((p, int), ext)| ((p.clone(), *ext), (LAN_HOST.to_string(), *int)))
        .collect();
    assert_eq!(
        kernel, from_status,
        "the kernel table and the daemon's table differ"
    );
    assert_eq!(lab.elements("allow4").len(), status.len());
    status
}

#[test]
fn kill_9_in_a_burst_of_thousands_loses_no_acknowledged_mapping() {
    if !require_root() {
        return;
    }
    let lab = Lab::up();
    let cfg = lab.config("gw.toml", &MANY_MAPPINGS);
    let d = lab.start(&cfg);
    let (reached_tx, reached_rx) = mpsc::channel();
    // The LAN host fires 4,000 requests, 64 in flight, and records every acknowledgement.
    let burst = in_lan(&lab, move || {
        let sock = UdpSocket::bind("0.0.0.0:0").expect("bind");
        sock.connect((GW_LAN, 5351)).expect("connect");
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        let mut acked: BTreeMap<u16, (u16, u32)> = BTreeMap::new();
        let (mut next, mut in_flight, mut signalled) = (20000u16, 0usize, false);
        let mut buf = [0u8; 32];
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            while in_flight < 64 && next < 24000 {
                if sock.send(&map_request(next, 3600)).is_err() {
                    break;
                }
                next += 1;
                in_flight += 1;
            }
            match sock.recv(&mut buf) {
                Ok(16) if buf[1] == 130 && buf[2..4] == [0, 0] => {
                    in_flight -= 1;
                    let int = u16::from_be_bytes([buf[8], buf[9]]);
                    let ext = u16::from_be_bytes([buf[10], buf[11]]);
                    let epoch = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
                    acked.insert(int, (ext, epoch));
                    if acked.len() == 1500 && !signalled {
                        signalled = true;
                        let _ = reached_tx.send(());
                    }
                }
                Ok(_) => in_flight = in_flight.saturating_sub(1),
                // Silence: the daemon is dead. Stop once it has been silent a while.
                Err(_) if signalled => break,
                Err(_) => in_flight = 0,
            }
        }
        acked
    });
    reached_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("1,500 acknowledgements");
    d.kill9();
    let acked = burst.join().expect("burst thread");
    assert!(
        acked.len() >= 1500 && acked.len() < 4000,
        "killed mid-burst: {} acked",
        acked.len()
    );
    let last_epoch = acked.values().map(|(_, e)| *e).max().unwrap_or(0);

    // kill -9 left the table in the kernel; the restart replaces it from the journal.
    let d = lab.start(&cfg);
    let restored = assert_table_matches_status(&lab);
    for (int, (ext, _)) in &acked {
        assert_eq!(
            restored.get(&("tcp".to_string(), *int)),
            Some(ext),
            "acknowledged mapping {int} lost"
        );
    }
    // Nothing appears that was never asked for.
    assert!(restored.keys().all(|(_, int)| (20000..24000).contains(int)));
    // The epoch continues: clients see no state loss.
    let epoch = lab.status()["epoch"].as_u64().expect("epoch");
    assert!(
        epoch >= u64::from(last_epoch),
        "epoch went back from {last_epoch} to {epoch}"
    );
    assert!(d.log_text().contains("epoch continues"), "{}", d.log_text());
}

#[test]
fn damaged_state_file_is_kept_aside_and_a_new_epoch_starts() {
    if !require_root() {
        return;
    }
    let lab = Lab::up();
    let cfg = lab.config("gw.toml", &[]);
    let d = lab.start(&cfg);
    let out = all_output(&lab.run(
        Host::Lan,
        4,
        &["natpmpc", "-g", GW_LAN, "-a", "8080", "8080", "tcp", "3600"],
    ));
    assert!(out.contains("Mapped public port 8080"), "{out}");
    assert_eq!(d.stop(), Some(0));
    assert!(lab.table("natwarden").is_none());

    // A clean restart restores the mapping.
    let d = lab.start(&cfg);
    assert_eq!(status_mappings(&lab.status()).len(), 1);
    assert_eq!(kernel_forwards(&lab).len(), 1);
    assert_eq!(d.stop(), Some(0));

    let mut bytes = std::fs::read(lab.state_file()).expect("state file");
    let mid = bytes.len() / 2;
    bytes[mid..mid + 4].copy_from_slice(b"\x00#!?");
    std::fs::write(lab.state_file(), &bytes).expect("damage");
    let d = lab.start(&cfg);
    assert!(d.log_text().contains("damaged"), "{}", d.log_text());
    let kept: Vec<_> = std::fs::read_dir(&lab.dir)
        .expect("lab dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("damaged"))
        .collect();
    assert_eq!(kept.len(), 1, "the damaged file is kept aside");
    assert_eq!(std::fs::read(kept[0].path()).expect("kept"), bytes);
    let status = lab.status();
    assert!(status["mappings"].as_array().expect("mappings").is_empty());
    assert!(
        status["epoch"].as_u64().expect("epoch") < 5,
        "a new epoch: {status}"
    );
    assert!(kernel_forwards(&lab).is_empty());
}

#[test]
fn wan_address_change_is_announced_within_a_second_and_forwards_follow() {
    if !require_root() {
        return;
    }
    let lab = Lab::up();
    let _d = lab.start(&lab.config("gw.toml", &[]));
    let out = all_output(&lab.run(
        Host::Lan,
        4,
        &["natpmpc", "-g", GW_LAN, "-a", "8080", "8080", "tcp", "3600"],
    ));
    assert!(out.contains("Mapped public port 8080"), "{out}");
    // Let the start-up announcements finish their first seconds.
    std::thread::sleep(Duration::from_millis(1500));

    let (ready_tx, ready_rx) = mpsc::channel();
    let listener = in_lan(&lab, move || {
        let sock = UdpSocket::bind("0.0.0.0:5350").expect("bind 5350");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let _ = ready_tx.send(());
        let start = Instant::now();
        let mut buf = [0u8; 64];
        while start.elapsed() < Duration::from_secs(8) {
            if let Ok((12, _)) = sock.recv_from(&mut buf) {
                let addr = Ipv4Addr::new(buf[8], buf[9], buf[10], buf[11]);
                if addr == Ipv4Addr::new(198, 51, 100, 8) {
                    return Some(Instant::now());
                }
            }
        }
        None
    });
    ready_rx.recv().expect("listener ready");
    let changed = Instant::now();
    let o = lab.sh(
        Host::Gw,
        5,
        "ip addr del 198.51.100.7/24 dev eth0 && ip addr add 198.51.100.8/24 dev eth0 && ip route add default via 198.51.100.100",
    );
    assert!(o.status.success(), "{}", all_output(&o));
    let heard = listener
        .join()
        .expect("listener")
        .expect("no announcement of the new address");
    assert!(
        heard - changed < Duration::from_secs(1),
        "announced after {:?}",
        heard - changed
    );
    assert_eq!(lab.status()["external_address"], "198.51.100.8");

    let lan = lab
        .cmd(Host::Lan, &["timeout", "10", "nc", "-l", "-p", "8080"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("LAN listener");
    std::thread::sleep(Duration::from_millis(300));
    let sent = lab.sh(
        Host::Wan,
        5,
        "echo on-the-new-address | nc -N -w 3 198.51.100.8 8080",
    );
    assert!(sent.status.success(), "{}", all_output(&sent));
    assert_eq!(
        stdout(&lan.wait_with_output().expect("listener")).trim(),
        "on-the-new-address"
    );

    // Without an address the gateway answers "network failure" (result 3).
    assert!(lab
        .run(
            Host::Gw,
            5,
            &["ip", "addr", "del", "198.51.100.8/24", "dev", "eth0"]
        )
        .status
        .success());
    let failure = lab.eventually(5, || {
        let o = lab.sh(
            Host::Lan,
            5,
            &format!("printf '\\0\\0' | nc -u -w 1 {GW_LAN} 5351 | od -An -tx1"),
        );
        stdout(&o).split_whitespace().collect::<Vec<_>>().get(..4)
            == Some(&["00", "80", "00", "03"])
    });
    assert!(
        failure,
        "no network-failure answer while the WAN has no address"
    );
}

#[test]
fn sighup_applies_a_good_config_and_keeps_the_running_one_on_a_bad_config() {
    if !require_root() {
        return;
    }
    let lab = Lab::up();
    let cfg = lab.config("gw.toml", &[]);
    let d = lab.start(&cfg);
    for port in ["8080", "9090"] {
        let out = all_output(&lab.run(
            Host::Lan,
            4,
            &["natpmpc", "-g", GW_LAN, "-a", port, port, "tcp", "3600"],
        ));
        assert!(out.contains(&format!("Mapped public port {port}")), "{out}");
    }
    assert_eq!(kernel_forwards(&lab).len(), 2);

    // Good: only external ports 9000-9999 from now on; the 8080 forward closes at once.
    let tighter = std::fs::read_to_string(&cfg).expect("config").replace(
        "external_ports = \"1024-65535\"",
        "external_ports = \"9000-9999\"",
    );
    std::fs::write(&cfg, tighter).expect("write config");
    d.signal(libc::SIGHUP);
    d.wait_for_log("configuration reloaded", Duration::from_secs(5));
    let kernel = kernel_forwards(&lab);
    assert_eq!(
        kernel.keys().map(|(_, ext)| *ext).collect::<Vec<_>>(),
        vec![9090],
        "{kernel:?}"
    );
    assert_table_matches_status(&lab);

    // Bad: an unknown key. Refused, and the tightened rules stay in force.
    let good = std::fs::read_to_string(&cfg).expect("config");
    std::fs::write(&cfg, format!("{good}\n[mappings2]\nx = 1\n")).expect("write config");
    d.signal(libc::SIGHUP);
    d.wait_for_log("reload refused", Duration::from_secs(5));
    let out = all_output(&lab.run(
        Host::Lan,
        4,
        &["natpmpc", "-g", GW_LAN, "-a", "8081", "8081", "tcp", "3600"],
    ));
    let mapped_ext: Vec<u16> = kernel_forwards(&lab).keys().map(|(_, e)| *e).collect();
    assert!(
        mapped_ext.iter().all(|e| (9000..=9999).contains(e)),
        "old rules lost: {mapped_ext:?}\n{out}"
    );
    assert_eq!(mapped_ext.len(), 2, "the daemon still serves: {out}");
}

#[test]
fn status_shows_the_table_deletes_on_request_and_is_root_only() {
    if !require_root() {
        return;
    }
    let lab = Lab::up();
    let d = lab.start(&lab.config("gw.toml", &[]));
    for (port, proto) in [("8080", "tcp"), ("8081", "tcp"), ("5000", "udp")] {
        let out = all_output(&lab.run(
            Host::Lan,
            4,
            &["natpmpc", "-g", GW_LAN, "-a", port, port, proto, "3600"],
        ));
        assert!(out.contains("Mapped public port"), "{out}");
    }
    let status = assert_table_matches_status(&lab);
    assert_eq!(status.len(), 3);
    let v = lab.status();
    assert_eq!(v["external_address"], GW_WAN);
    assert!(v["counters"]["requests"].as_u64().expect("requests") >= 6);
    assert_eq!(v["mappings"][0]["origin"], "nat-pmp");

    let sock = lab.control_socket();
    let sock = sock.to_string_lossy();
    let human = lab.natwarden(&["status", "--socket", &sock]);
    let text = stdout(&human);
    assert!(
        text.contains(&format!("external address: {GW_WAN}")) && text.contains("mappings: 3"),
        "{text}"
    );
    assert!(
        text.contains(&format!("tcp {LAN_HOST}:8080 <- external port 8080")),
        "{text}"
    );

    let del = lab.natwarden(&[
        "status",
        "--socket",
        &sock,
        "--delete",
        &format!("{LAN_HOST}:8080/tcp"),
    ]);
    assert!(stdout(&del).contains("deleted 1"), "{}", all_output(&del));
    assert_eq!(assert_table_matches_status(&lab).len(), 2);
    let del = lab.natwarden(&["status", "--socket", &sock, "--delete", LAN_HOST]);
    assert!(stdout(&del).contains("deleted 2"), "{}", all_output(&del));
    assert!(kernel_forwards(&lab).is_empty());

    // Nobody but root may open the socket.
    let nobody = lab.run(
        Host::Gw,
        10,
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            env!("CARGO_BIN_EXE_natwarden"),
            "status",
            "--socket",
            &sock,
        ],
    );
    assert!(!nobody.status.success(), "{}", all_output(&nobody));
    assert!(
        all_output(&nobody).contains("Permission denied"),
        "{}",
        all_output(&nobody)
    );

    // And the daemon itself kept only CAP_NET_ADMIN (bit 12).
    let pid = d.pid().expect("pid");
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let eff = st
        .lines()
        .find(|l| l.starts_with("CapEff:"))
        .expect("CapEff");
    assert_eq!(
        u64::from_str_radix(eff.trim_start_matches("CapEff:").trim(), 16),
        Ok(1 << 12),
        "{eff}"
    );
    let bnd = st
        .lines()
        .find(|l| l.starts_with("CapBnd:"))
        .expect("CapBnd");
    assert_eq!(
        u64::from_str_radix(bnd.trim_start_matches("CapBnd:").trim(), 16),
        Ok(1 << 12),
        "{bnd}"
    );
}

#[test]
fn swapped_interfaces_are_refused_without_a_default_route_unless_said_to_be_intended() {
    if !require_root() {
        return;
    }
    // A public WAN address, and no default route (the uplink's lease not yet there):
    // the default-route check has nothing to go on.
    let lab = Lab::up_public_wan();
    let o = lab.run(Host::Gw, 5, &["ip", "route", "del", "default"]);
    assert!(o.status.success(), "{}", all_output(&o));
    let swap: &[(&str, &str)] = &[
        ("external = \"eth0\"", "external = \"br-lan\""),
        ("internal = [\"br-lan\"]", "internal = [\"eth0\"]"),
    ];
    let cfg = lab.config("swapped.toml", swap);
    let o = lab.natwarden(&["check-config", "--config", &cfg.to_string_lossy()]);
    let text = all_output(&o);
    assert!(!o.status.success(), "accepted:\n{text}");
    assert!(
        text.contains("interfaces.internal[0]")
            && text.contains("look swapped")
            && text.contains("allow_private_external = true"),
        "{text}"
    );
    // The rule for 192.168.1.0/24 lies outside the (swapped) internal subnet.
    assert!(text.contains("rule[0].internal_addresses"), "{text}");
    let o = lab.natwarden(&["serve", "--config", &cfg.to_string_lossy()]);
    assert!(!o.status.success(), "serve started:\n{}", all_output(&o));
    assert!(lab.table("natwarden").is_none());

    // Said to be intended, with a rule for the hosts it serves: accepted, with warnings.
    let mut edits = swap.to_vec();
    edits.push((
        "# allow_private_external = false",
        "allow_private_external = true",
    ));
    edits.push(("192.168.1.0/24", "45.45.45.0/24"));
    let cfg = lab.config("intended.toml", &edits);
    let o = lab.natwarden(&["check-config", "--config", &cfg.to_string_lossy()]);
    let text = all_output(&o);
    assert!(o.status.success(), "{text}");
    assert!(
        text.contains("valid, with warnings") && !text.contains("valid and safe"),
        "{text}"
    );
}

#[test]
fn restart_after_downtime_restores_only_the_lifetime_left_and_expiry_removes_the_element() {
    if !require_root() {
        return;
    }
    let lab = Lab::up();
    let cfg = lab.config("gw.toml", &[("min_lifetime = 120", "min_lifetime = 1")]);
    let d = lab.start(&cfg);
    let out = all_output(&lab.run(
        Host::Lan,
        4,
        &["natpmpc", "-g", GW_LAN, "-a", "8080", "8080", "tcp", "6"],
    ));
    assert!(out.contains("Mapped public port 8080"), "{out}");
    assert_eq!(d.stop(), Some(0));
    // Three seconds of downtime.
    std::thread::sleep(Duration::from_secs(3));
    let d = lab.start(&cfg);
    let status = lab.status();
    let left = status["mappings"][0]["lifetime_left"]
        .as_u64()
        .unwrap_or_else(|| panic!("the mapping was not restored: {status}"));
    assert!(left <= 3, "downtime not counted: {left} s left\n{status}");
    assert_eq!(kernel_forwards(&lab).len(), 1);
    // It expires on time, and its kernel element goes with it.
    assert!(
        lab.eventually(6, || kernel_forwards(&lab).is_empty()),
        "the forward outlived its lifetime:\n{}",
        d.log_text()
    );
    assert!(status_mappings(&lab.status()).is_empty());

    // Restarted after it expired: nothing restored, nothing installed.
    assert_eq!(d.stop(), Some(0));
    let _d = lab.start(&cfg);
    assert!(status_mappings(&lab.status()).is_empty());
    assert!(kernel_forwards(&lab).is_empty());
}

/// Maps `count` TCP ports from `first` for the LAN host (NAT-PMP, 64 in flight), to
/// make the status reply large. Returns how many were acknowledged.
fn map_many(lab: &Lab, first: u16, count: u16) -> usize {
    in_lan(lab, move || {
        let sock = UdpSocket::bind("0.0.0.0:0").expect("bind");
        sock.connect((GW_LAN, 5351)).expect("connect");
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        let (mut next, mut in_flight, mut acked) = (first, 0usize, 0usize);
        let end = first + count;
        let mut buf = [0u8; 32];
        let deadline = Instant::now() + Duration::from_secs(60);
        while acked < usize::from(count) && Instant::now() < deadline {
            while in_flight < 64 && next < end {
                sock.send(&map_request(next, 3600)).expect("send");
                next += 1;
                in_flight += 1;
            }
            match sock.recv(&mut buf) {
                Ok(16) if buf[1] == 130 && buf[2..4] == [0, 0] => {
                    acked += 1;
                    in_flight -= 1;
                }
                Ok(_) => in_flight = in_flight.saturating_sub(1),
                // Lost in a burst: ask again for what is missing.
                Err(_) => {
                    in_flight = 0;
                    next = first + acked as u16;
                }
            }
        }
        acked
    })
    .join()
    .expect("mapping thread")
}

/// natpmpc from the LAN host; its output, and whether the first try was answered
/// (natpmpc prints "TRY AGAIN" each time its 250 ms retransmission timer fires).
fn natpmpc_first_try(lab: &Lab, port: u16) -> (String, bool) {
    let p = port.to_string();
    let out = all_output(&lab.run(
        Host::Lan,
        10,
        &["natpmpc", "-g", GW_LAN, "-a", &p, &p, "udp", "3600"],
    ));
    let first_try = out.contains(&format!("Mapped public port {p}")) && !out.contains("TRY AGAIN");
    (out, first_try)
}

#[test]
fn stalled_control_clients_delay_no_nat_pmp_reply_and_are_dropped_after_the_deadline() {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    if !require_root() {
        return;
    }
    let lab = Lab::up();
    let cfg = lab.config("gw.toml", &MANY_MAPPINGS);
    let d = lab.start(&cfg);
    // Enough mappings that the status reply is far larger than a socket buffer.
    assert_eq!(map_many(&lab, 20000, 3000), 3000);
    let full_reply = {
        let sock = lab.control_socket();
        let o = lab.natwarden(&["status", "--json", "--socket", &sock.to_string_lossy()]);
        assert!(o.status.success(), "{}", all_output(&o));
        o.stdout.len()
    };
    assert!(full_reply > 400_000, "status is only {full_reply} bytes");

    // One asks for the status and never reads it...
    let mut never_reads = UnixStream::connect(lab.control_socket()).expect("connect");
    never_reads.write_all(b"\"status\"\n").expect("request");
    // ...one trickles a request, a byte every 200 ms, and never finishes it.
    let socket = lab.control_socket();
    let trickler = std::thread::spawn(move || {
        let mut s = UnixStream::connect(socket).expect("connect");
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if s.write_all(b" ").is_err() {
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        None
    });
    std::thread::sleep(Duration::from_millis(300));

    // Meanwhile every NAT-PMP request is answered at the first try.
    for port in 6000..6006u16 {
        let (out, first_try) = natpmpc_first_try(&lab, port);
        assert!(first_try, "port {port} was not answered at once:\n{out}");
    }

    // The trickler is cut off at its deadline (3 s; generous bound here).
    let cut = trickler
        .join()
        .expect("trickler")
        .expect("the trickling connection was never dropped");
    assert!(cut < Duration::from_secs(10), "dropped after {cut:?}");
    d.wait_for_log("no complete request arrived", Duration::from_secs(5));
    // The reader that never read is dropped too: it gets part of the reply, then EOF.
    d.wait_for_log("its reply was not read", Duration::from_secs(10));
    never_reads
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut got = Vec::new();
    let _ = never_reads.read_to_end(&mut got);
    assert!(
        got.len() < full_reply,
        "the whole reply ({} bytes) was kept for a client that did not read",
        got.len()
    );
    // And the socket still serves whoever behaves.
    assert_eq!(status_mappings(&lab.status()).len(), 3006);
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

#[test]
fn accept_failing_with_emfile_does_not_spin_the_loop_or_delay_replies() {
    use std::os::unix::net::UnixStream;
    if !require_root() {
        return;
    }
    let lab = Lab::up();
    let d = lab.start(&lab.config("gw.toml", &[]));
    let pid = d.pid().expect("pid");
    // `ip netns exec` execs natwarden, so the child's pid is the daemon's.
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .count();
    // The soft limit only, so it can be raised again without CAP_SYS_RESOURCE.
    let limit = format!("--nofile={}:", open + 2);
    let o = lab.run(Host::Gw, 5, &["prlimit", "--pid", &pid.to_string(), &limit]);
    assert!(o.status.success(), "{}", all_output(&o));
    // Two connections fit; the rest make accept fail with EMFILE and wait in the backlog.
    let held: Vec<UnixStream> = (0..6)
        .map(|_| UnixStream::connect(lab.control_socket()).expect("connect"))
        .collect();
    d.wait_for_log(
        "accepting a control connection failed",
        Duration::from_secs(5),
    );
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(pid) - before;
    // A spinning loop burns ~200 ticks in 2 s; backing off burns next to nothing.
    assert!(
        used < 50,
        "the daemon used {used} ticks in 2 s while accept failed"
    );
    for port in 6000..6003u16 {
        let (out, first_try) = natpmpc_first_try(&lab, port);
        assert!(first_try, "port {port} was not answered at once:\n{out}");
    }
    drop(held);
    // Once fds are free again, the control socket serves again.
    let o = lab.run(
        Host::Gw,
        5,
        &["prlimit", "--pid", &pid.to_string(), "--nofile=1024:"],
    );
    assert!(o.status.success(), "{}", all_output(&o));
    assert!(
        lab.eventually(10, || {
            let sock = lab.control_socket();
            lab.natwarden(&["status", "--json", "--socket", &sock.to_string_lossy()])
                .status
                .success()
        }),
        "{}",
        d.log_text()
    );
}
