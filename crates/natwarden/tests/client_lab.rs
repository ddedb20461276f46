//! End to end in a namespace lab: the `natwarden` client subcommands (external-address, map,
//! unmap, map --keep) from the LAN host, against `natwarden serve`, against a NAT-PMP-only
//! gateway (PCP fallback) and against miniupnpd (PCP and NAT-PMP), checked in the kernel.

mod common;

use std::net::{Ipv4Addr, UdpSocket};
use std::process::{Child, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use natwarden_wire::natpmp;

const BIN: &str = env!("CARGO_BIN_EXE_natwarden");

/// Runs the client in the LAN host, bounded by `secs`, with its PCP nonce file in the lab.
fn client(lab: &Lab, secs: u32, args: &[&str]) -> Output {
    let t = secs.to_string();
    let mut full = vec!["timeout", t.as_str(), BIN];
    full.extend_from_slice(args);
    lab.cmd(Host::Lan, &full)
        .env("NATWARDEN_CLIENT_NONCE_FILE", lab.dir.join("pcp-nonce"))
        .stdin(Stdio::null())
        .output()
        .expect("running the client")
}

fn json_lines(o: &Output) -> Vec<serde_json::Value> {
    stdout(o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

/// The only JSON object the command printed.
fn one_json(o: &Output) -> serde_json::Value {
    let mut v = json_lines(o);
    assert_eq!(v.len(), 1, "{}", all_output(o));
    v.remove(0)
}

fn fwd4_has(lab: &Lab, port: u16) -> bool {
    lab.elements("fwd4")
        .iter()
        .any(|e| e.contains(LAN_HOST) && e.contains(&port.to_string()))
}

/// miniupnpd's DNAT rule for a mapping to the LAN host.
fn miniupnpd_forwards(lab: &Lab, port: u16) -> bool {
    lab.ruleset()
        .contains(&format!("dnat ip to {LAN_HOST}:{port}"))
}

/// `natwarden map ... --keep --json` in the LAN host, its stdout read line by line.
struct Keep {
    child: Child,
    lines: Lines,
}

impl Keep {
    fn start(lab: &Lab, args: &[&str]) -> Keep {
        let mut full = vec!["timeout", "120", BIN, "map"];
        full.extend_from_slice(args);
        full.extend_from_slice(&["--keep", "--json"]);
        if !args.contains(&"--gateway") {
            full.extend_from_slice(&["--gateway", GW_LAN]);
        }
        let mut child = lab
            .cmd(Host::Lan, &full)
            .env("NATWARDEN_CLIENT_NONCE_FILE", lab.dir.join("pcp-nonce"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting natwarden map --keep");
        let lines = Lines::new(child.stdout.take().expect("piped stdout"));
        Keep { child, lines }
    }

    /// The next line of `event`, within `secs`.
    fn event(&mut self, event: &str, secs: u64) -> serde_json::Value {
        let needle = format!("\"event\":\"{event}\"");
        match self
            .lines
            .wait_for(Duration::from_secs(secs), |l| l.contains(&needle))
        {
            Some(line) => serde_json::from_str(&line).expect("a JSON line"),
            None => panic!(
                "no `{event}` within {secs} s; printed so far: {:#?}",
                self.lines.seen
            ),
        }
    }

    /// SIGTERM (forwarded by `timeout`), then the exit code (bounded wait).
    fn terminate(&mut self) -> Option<i32> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(15);
        while Instant::now() < end {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Keep {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- against natwarden serve ----

#[test]
fn client_maps_renews_and_unmaps_against_natwarden_serve() {
    if !require_root() {
        return;
    }
    let lab = Lab::up();
    let _d = lab.start(&lab.config("gw.toml", &[]));

    // Discovery: the LAN host's default route points at the gateway.
    let o = client(&lab, 20, &["external-address"]);
    assert!(o.status.success(), "{}", all_output(&o));
    let line = stdout(&o);
    assert!(
        line.starts_with(&format!("external address {GW_WAN} ("))
            && line.trim_end().ends_with(&format!(" gateway {GW_LAN})")),
        "{line}"
    );
    let v = one_json(&client(&lab, 20, &["external-address", "--json"]));
    assert_eq!(v["event"], "external-address");
    assert_eq!(v["address"], GW_WAN);
    assert_eq!(v["gateway"], GW_LAN);
    assert_eq!(v["via"], "pcp", "natwarden serves PCP, which comes first");
    assert!(
        lab.elements("fwd4").is_empty(),
        "asking the address leaves no mapping behind: {:?}",
        lab.elements("fwd4")
    );

    let o = client(&lab, 20, &["map", "8080", "--lifetime", "3600", "--json"]);
    assert!(o.status.success(), "{}", all_output(&o));
    let v = one_json(&o);
    assert_eq!(v["event"], "mapped");
    assert_eq!(v["via"], "pcp");
    assert_eq!(v["protocol"], "tcp");
    assert_eq!(v["internal_address"], LAN_HOST);
    assert_eq!(v["internal_port"], 8080);
    assert_eq!(v["external_port"], 8080);
    assert_eq!(v["external_address"], GW_WAN);
    assert_eq!(v["lifetime"], 3600);
    assert!(fwd4_has(&lab, 8080), "{:?}", lab.elements("fwd4"));

    // A renewal from another run (the same PCP nonce, from the nonce file) keeps the port and
    // the single element.
    let o = client(&lab, 20, &["map", "8080", "--lifetime", "3600"]);
    assert!(o.status.success(), "{}", all_output(&o));
    assert_eq!(
        stdout(&o).trim(),
        format!("mapped tcp {GW_WAN}:8080 -> {LAN_HOST}:8080 for 3600 s (PCP gateway {GW_LAN})")
    );
    assert_eq!(lab.elements("fwd4").len(), 1);

    // A UDP mapping on another port, then unmap of one and --all of the other protocol
    // (over PCP, port 0 deletes the mappings of the same nonce: RFC 6887 section 11.1).
    let o = client(
        &lab,
        20,
        &[
            "map",
            "9000",
            "--protocol",
            "udp",
            "--external-port",
            "19000",
        ],
    );
    assert!(o.status.success(), "{}", all_output(&o));
    assert_eq!(lab.elements("fwd4").len(), 2);

    let o = client(&lab, 20, &["unmap", "8080"]);
    assert!(o.status.success(), "{}", all_output(&o));
    assert_eq!(
        stdout(&o).trim(),
        format!("unmapped tcp {LAN_HOST}:8080 (PCP gateway {GW_LAN})")
    );
    assert!(!fwd4_has(&lab, 8080));
    let v = one_json(&client(
        &lab,
        20,
        &["unmap", "--all", "--protocol", "udp", "--json"],
    ));
    assert_eq!(
        (v["event"].as_str(), v["all"].as_bool()),
        (Some("unmapped"), Some(true))
    );
    assert!(
        lab.elements("fwd4").is_empty(),
        "{:?}",
        lab.elements("fwd4")
    );
}

/// PCP first against natwarden serve, and each protocol when forced; asking the external
/// address over PCP (which has no such request) leaves no mapping behind.
#[test]
fn client_speaks_pcp_first_to_natwarden_serve_and_either_protocol_when_forced() {
    if !require_root() {
        return;
    }
    let lab = Lab::up();
    let _d = lab.start(&lab.config("gw.toml", &[]));
    let gw = ["--gateway", GW_LAN];

    let auto = one_json(&client(&lab, 20, &["map", "7000", "--json", gw[0], gw[1]]));
    assert_eq!(
        (auto["event"].as_str(), auto["via"].as_str()),
        (Some("mapped"), Some("pcp")),
        "{auto}"
    );
    for (flag, via) in [("--pcp", "pcp"), ("--nat-pmp", "nat-pmp")] {
        let o = client(
            &lab,
            20,
            &["external-address", flag, "--json", gw[0], gw[1]],
        );
        assert!(o.status.success(), "{flag}: {}", all_output(&o));
        let v = one_json(&o);
        assert_eq!(
            (v["address"].as_str(), v["via"].as_str()),
            (Some(GW_WAN), Some(via)),
            "{flag}: {v}"
        );
    }
    let fwd = lab.elements("fwd4");
    assert!(fwd.len() == 1 && fwd[0].contains("7000"), "{fwd:?}");
    let v = one_json(&client(
        &lab,
        20,
        &["map", "7001", "--nat-pmp", "--json", gw[0], gw[1]],
    ));
    assert_eq!(v["via"], "nat-pmp", "{v}");
}

/// RFC 6887 Appendix A against natwarden serve with PCP turned off: it answers version 2 with
/// NAT-PMP "unsupported version", and the client switches at once; forced PCP is refused.
#[test]
fn client_falls_back_to_natpmp_when_natwarden_serve_has_pcp_off() {
    if !require_root() {
        return;
    }
    let lab = Lab::up();
    let _d = lab.start(&lab.config("gw.toml", &[("pcp = true", "pcp = false")]));
    let gw = ["--gateway", GW_LAN];

    let t = Instant::now();
    let v = one_json(&client(&lab, 20, &["map", "7000", "--json", gw[0], gw[1]]));
    assert_eq!(
        (v["event"].as_str(), v["via"].as_str()),
        (Some("mapped"), Some("nat-pmp")),
        "{v}"
    );
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "\"unsupported version\" is immediate, no waiting for PCP's 3 s: took {:?}",
        t.elapsed()
    );
    assert!(fwd4_has(&lab, 7000));

    let o = client(
        &lab,
        20,
        &["external-address", "--pcp", "--json", gw[0], gw[1]],
    );
    assert_eq!(o.status.code(), Some(1), "{}", all_output(&o));
    let v = one_json(&o);
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("does not speak PCP")),
        "{v}"
    );
}

/// How a NAT-PMP-only gateway treats a PCP request.
#[derive(Clone, Copy, Debug)]
enum PcpAnswer {
    /// "Unsupported version" as RFC 6886 section 3.5 draws it: OP 0 (natwarden).
    UnsupportedOp0,
    /// "Unsupported version" with OP 128 + the request's (miniupnpd and others).
    UnsupportedOp128,
    /// No answer at all (old routers).
    Silent,
}

/// Datagrams a fake gateway received, with the time since it started.
type Received = Vec<(Duration, Vec<u8>)>;

/// A NAT-PMP-only gateway of the old kind on 192.168.1.1:5351 in the lab's gateway: NAT-PMP
/// answered (address 198.51.100.7, every mapping granted as asked), PCP as `pcp` says.
struct NatPmpOnly {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Received>>,
}

impl NatPmpOnly {
    fn start(lab: &Lab, pcp: PcpAnswer) -> NatPmpOnly {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let flag = stop.clone();
        let thread = lab.spawn_in(Host::Gw, move || {
            let sock = UdpSocket::bind((GW_LAN, 5351)).expect("bind 5351");
            sock.set_read_timeout(Some(Duration::from_millis(50)))
                .expect("timeout");
            let _ = ready_tx.send(());
            let start = Instant::now();
            let mut seen = Vec::new();
            let mut buf = [0u8; 1100];
            // Bounded: a test never needs a minute of it.
            while !flag.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(60) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let request = buf[..n].to_vec();
                seen.push((start.elapsed(), request.clone()));
                let epoch = start.elapsed().as_secs() as u32;
                if let Some(reply) = natpmp_only_reply(&request, pcp, epoch) {
                    let _ = sock.send_to(&reply, from);
                }
            }
            seen
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the fake gateway did not start");
        NatPmpOnly {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops it; returns what it received, with the time since its start.
    fn finish(mut self) -> Received {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .map(|t| t.join().expect("fake gateway thread"))
            .unwrap_or_default()
    }
}

impl Drop for NatPmpOnly {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn natpmp_only_reply(request: &[u8], pcp: PcpAnswer, epoch: u32) -> Option<Vec<u8>> {
    let response = match request.first()? {
        2 => {
            let op = match pcp {
                PcpAnswer::UnsupportedOp0 => 0,
                PcpAnswer::UnsupportedOp128 => 128 | (request.get(1)? & 0x7f),
                PcpAnswer::Silent => return None,
            };
            let mut r = vec![0, op, 0, 1];
            r.extend_from_slice(&epoch.to_be_bytes());
            return Some(r);
        }
        _ => match natpmp::Request::parse(request).ok()? {
            natpmp::Request::ExternalAddress => {
                natpmp::Response::ExternalAddress(natpmp::ExternalAddressResponse {
                    result: natpmp::ResultCode::SUCCESS,
                    epoch,
                    address: GW_WAN.parse::<Ipv4Addr>().ok()?,
                })
            }
            natpmp::Request::Map(m) => natpmp::Response::Map(natpmp::MapResponse {
                protocol: m.protocol,
                result: natpmp::ResultCode::SUCCESS,
                epoch,
                internal_port: m.internal_port,
                external_port: match (m.lifetime, m.suggested_external_port) {
                    (0, _) => 0,
                    (_, 0) => m.internal_port,
                    (_, p) => p,
                },
                lifetime: m.lifetime,
            }),
        },
    };
    let mut buf = vec![0u8; natpmp::Response::MAX_LEN];
    let n = response.emit(&mut buf);
    buf.truncate(n);
    Some(buf)
}

/// RFC 6887 Appendix A against a NAT-PMP-only gateway: "unsupported version" in either
/// form makes the client switch at once; silence, after PCP's first 3 s (+-10 %) interval.
#[test]
fn client_falls_back_from_pcp_to_natpmp_on_unsupported_version_or_silence() {
    if !require_root() {
        return;
    }
    let lab = Lab::up();
    let gw = ["--gateway", GW_LAN];
    for mode in [PcpAnswer::UnsupportedOp0, PcpAnswer::UnsupportedOp128] {
        let fake = NatPmpOnly::start(&lab, mode);
        let t = Instant::now();
        let o = client(&lab, 20, &["map", "8080", "--json", gw[0], gw[1]]);
        let took = t.elapsed();
        let seen = fake.finish();
        assert!(o.status.success(), "{mode:?}: {}", all_output(&o));
        let v = one_json(&o);
        assert_eq!(
            (v["via"].as_str(), v["external_address"].as_str()),
            (Some("nat-pmp"), Some(GW_WAN)),
            "{mode:?}: {v}"
        );
        assert!(
            took < Duration::from_millis(2500),
            "{mode:?}: took {took:?}"
        );
        let kinds: Vec<(u8, usize)> = seen.iter().map(|(_, b)| (b[0], b.len())).collect();
        assert_eq!(
            kinds,
            [(2, 60), (0, 12), (0, 2)],
            "{mode:?}: one PCP MAP, then NAT-PMP map and address"
        );
    }

    let fake = NatPmpOnly::start(&lab, PcpAnswer::Silent);
    let o = client(&lab, 20, &["external-address", "--json", gw[0], gw[1]]);
    let seen = fake.finish();
    assert!(o.status.success(), "{}", all_output(&o));
    assert_eq!(one_json(&o)["via"], "nat-pmp");
    let (t_pcp, pcp) = &seen[0];
    let (t_natpmp, natpmp) = &seen[1];
    assert_eq!((pcp[0], natpmp.as_slice()), (2, &[0u8, 0][..]), "{seen:?}");
    let gap = *t_natpmp - *t_pcp;
    assert!(
        gap >= Duration::from_millis(2650) && gap <= Duration::from_millis(3500),
        "NAT-PMP should follow PCP's first RT of 2.7-3.3 s, came after {gap:?}"
    );
    assert_eq!(seen.len(), 2, "{seen:?}");
}

#[test]
fn client_exit_codes_refused_is_1_and_names_the_code_silence_is_3() {
    if !require_root() {
        return;
    }
    let lab = Lab::up();
    let d = lab.start(&lab.config("gw.toml", &[]));

    // The default rules allow ports 1024-65535 only.
    let o = client(&lab, 20, &["map", "80", "--nat-pmp"]);
    assert_eq!(o.status.code(), Some(1), "{}", all_output(&o));
    assert!(
        all_output(&o).contains("NAT-PMP result code 2 (Not Authorized/Refused)"),
        "{}",
        all_output(&o)
    );
    let o = client(&lab, 20, &["map", "80", "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", all_output(&o));
    let v = one_json(&o);
    assert_eq!(v["event"], "error");
    assert_eq!(v["result_code"], 2, "{v}");
    let expected = match v["via"].as_str() {
        Some("pcp") => "NOT_AUTHORIZED",
        _ => "NOT_AUTHORIZED_REFUSED",
    };
    assert_eq!(v["result"], expected, "{v}");
    assert!(lab.elements("fwd4").is_empty());

    // No gateway answering: exit 3 when the caller's timeout runs out.
    drop(d);
    let t = Instant::now();
    let o = client(&lab, 20, &["external-address", "--timeout", "2"]);
    assert_eq!(o.status.code(), Some(3), "{}", all_output(&o));
    assert!(
        all_output(&o).contains("no answer from the gateway"),
        "{}",
        all_output(&o)
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let o = client(
        &lab,
        20,
        &[
            "unmap",
            "8080",
            "--nat-pmp",
            "--timeout",
            "1",
            "--gateway",
            GW_LAN,
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}", all_output(&o));
}

#[test]
fn client_usage_errors_exit_2() {
    // Parsing only: no lab, no root needed.
    for args in [
        &["map"][..],
        &["map", "0"],
        &["map", "8080", "--protocol", "sctp"],
        &["map", "8080", "--pcp", "--nat-pmp"],
        &["map", "8080", "--lifetime", "0"],
        &["unmap"],
        &["unmap", "8080", "--all"],
        &["external-address", "--gateway", "not-an-ip"],
    ] {
        let o = std::process::Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running natwarden");
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", all_output(&o));
    }
}

#[test]
fn keep_session_renews_at_half_the_lifetime() {
    if !require_root() {
        return;
    }
    let lab = Lab::up();
    let _d = lab.start(&lab.config("gw.toml", &[("min_lifetime = 120", "min_lifetime = 1")]));
    let mut keep = Keep::start(&lab, &["8080", "--lifetime", "4"]);
    let mapped = keep.event("mapped", 10);
    assert_eq!(mapped["lifetime"], 4);
    let t = Instant::now();
    // Granted 4 s: renewed at 2 s, again at 4 s, ...
    let renewed = keep.event("renewed", 5);
    assert_eq!(renewed["external_port"], 8080);
    keep.event("renewed", 5);
    assert!(t.elapsed() >= Duration::from_secs(3), "{:?}", t.elapsed());
    // Well past the first 4 s lifetime, the kernel still forwards the port.
    assert!(fwd4_has(&lab, 8080), "{:?}", lab.elements("fwd4"));
    assert_eq!(keep.terminate(), Some(0));
    keep.event("unmapped", 5);
    assert!(lab.elements("fwd4").is_empty());
}

/// The scenario: the gateway restarts with its state file removed (new epoch); the
/// `--keep` session hears the announcement and maps again within seconds, and removes the
/// mapping on SIGTERM.
#[test]
fn keep_session_remaps_after_the_gateway_restarts_with_its_state_removed() {
    if !require_root() {
        return;
    }
    let lab = Lab::up();
    let config = lab.config("gw.toml", &[]);
    let d = lab.start(&config);
    let mut keep = Keep::start(&lab, &["8080"]);
    let mapped = keep.event("mapped", 10);
    assert_eq!(mapped["external_port"], 8080);
    assert!(fwd4_has(&lab, 8080));

    // Let the epoch grow past the RFC 6886 3.6 slack (2 s at 7/8 speed), so that a reset is
    // recognisable.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(d.stop(), Some(0));
    assert!(
        lab.table("natwarden").is_none(),
        "clean exit removes the table"
    );
    let _ = std::fs::remove_file(lab.state_file());
    let restarted = Instant::now();
    let _d = lab.start(&config);

    let remapped = keep.event("remapped", 10);
    assert!(
        restarted.elapsed() < Duration::from_secs(8),
        "re-mapped after {:?}",
        restarted.elapsed()
    );
    assert_eq!(remapped["reason"], "announcement");
    assert_eq!(remapped["external_port"], 8080);
    assert!(
        lab.eventually(5, || fwd4_has(&lab, 8080)),
        "the restarted gateway's table lacks the mapping: {:?}",
        lab.elements("fwd4")
    );

    assert_eq!(keep.terminate(), Some(0), "printed: {:#?}", keep.lines.seen);
    let unmapped = keep.event("unmapped", 5);
    assert_eq!(unmapped["internal_port"], 8080);
    assert!(
        lab.eventually(5, || !fwd4_has(&lab, 8080)),
        "SIGTERM left the mapping behind: {:?}",
        lab.elements("fwd4")
    );
}

// ---- against miniupnpd ----

#[test]
fn client_against_miniupnpd_pcp_and_natpmp_map_renew_unmap_external_address() {
    if !require_root() || !require_miniupnpd() {
        return;
    }
    let lab = Lab::up_public_wan();
    let mini = lab.start_miniupnpd();

    // miniupnpd 2.3.1 serves PCP itself: no fallback.
    let v = one_json(&client(&lab, 20, &["external-address", "--json"]));
    assert_eq!(
        (v["address"].as_str(), v["via"].as_str()),
        (Some(PUBLIC_GW_WAN), Some("pcp")),
        "{v}"
    );
    let v = one_json(&client(
        &lab,
        20,
        &["external-address", "--nat-pmp", "--json"],
    ));
    assert_eq!(
        (v["address"].as_str(), v["via"].as_str()),
        (Some(PUBLIC_GW_WAN), Some("nat-pmp")),
        "{v}"
    );

    // PCP: map, renew from a second run (same nonce, kept in the nonce file), unmap.
    let o = client(&lab, 20, &["map", "8080", "--json"]);
    assert!(o.status.success(), "{}", all_output(&o));
    let v = one_json(&o);
    assert_eq!(v["via"], "pcp");
    assert_eq!(v["external_address"], PUBLIC_GW_WAN);
    assert_eq!(v["external_port"], 8080);
    assert!(miniupnpd_forwards(&lab, 8080), "{}", lab.ruleset());
    let v = one_json(&client(&lab, 20, &["map", "8080", "--json"]));
    assert_eq!(
        (v["event"].as_str(), v["external_port"].as_u64()),
        (Some("mapped"), Some(8080)),
        "{v}"
    );
    let o = client(&lab, 20, &["unmap", "8080"]);
    assert!(o.status.success(), "{}", all_output(&o));
    assert!(stdout(&o).contains("(PCP gateway"), "{}", all_output(&o));
    assert!(!miniupnpd_forwards(&lab, 8080), "{}", lab.ruleset());

    // NAT-PMP, UDP.
    let o = client(
        &lab,
        20,
        &["map", "9000", "--protocol", "udp", "--nat-pmp", "--json"],
    );
    assert!(o.status.success(), "{}", all_output(&o));
    let v = one_json(&o);
    assert_eq!(
        (v["via"].as_str(), v["external_address"].as_str()),
        (Some("nat-pmp"), Some(PUBLIC_GW_WAN))
    );
    assert!(miniupnpd_forwards(&lab, 9000), "{}", lab.ruleset());
    let o = client(
        &lab,
        20,
        &["unmap", "9000", "--protocol", "udp", "--nat-pmp"],
    );
    assert!(o.status.success(), "{}", all_output(&o));
    assert!(!miniupnpd_forwards(&lab, 9000), "{}", lab.ruleset());

    // A refusal names PCP's result code: secure_mode and the allow rules forbid port 80.
    let o = client(&lab, 20, &["map", "80", "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", all_output(&o));
    let v = one_json(&o);
    assert_eq!(
        (v["via"].as_str(), v["result"].as_str()),
        (Some("pcp"), Some("NOT_AUTHORIZED")),
        "{v}"
    );
    assert!(mini.is_running());
}

#[test]
fn keep_session_against_miniupnpd_renews_over_pcp_and_unmaps_on_sigterm() {
    if !require_root() || !require_miniupnpd() {
        return;
    }
    let lab = Lab::up_public_wan();
    let _mini = lab.start_miniupnpd();
    // lab/miniupnpd.sh sets min_lifetime=1: a 4 s lease renews every 2 s.
    let mut keep = Keep::start(&lab, &["8080", "--protocol", "udp", "--lifetime", "4"]);
    let mapped = keep.event("mapped", 10);
    assert_eq!(
        (mapped["via"].as_str(), mapped["protocol"].as_str()),
        (Some("pcp"), Some("udp"))
    );
    assert_eq!(mapped["lifetime"], 4);
    assert!(miniupnpd_forwards(&lab, 8080), "{}", lab.ruleset());
    for _ in 0..2 {
        let renewed = keep.event("renewed", 5);
        assert_eq!(
            (renewed["via"].as_str(), renewed["external_port"].as_u64()),
            (Some("pcp"), Some(8080))
        );
    }
    assert!(miniupnpd_forwards(&lab, 8080), "{}", lab.ruleset());
    assert_eq!(keep.terminate(), Some(0), "printed: {:#?}", keep.lines.seen);
    keep.event("unmapped", 5);
    assert!(
        lab.eventually(5, || !miniupnpd_forwards(&lab, 8080)),
        "{}",
        lab.ruleset()
    );
}

/// PCP's rapid recovery (RFC 6887 section 14.1): miniupnpd restarted with its rules and lease
/// file gone multicasts an ANNOUNCE with a new epoch, and the `--keep` session maps again
/// (after a random delay of at most 5 s).
#[test]
fn keep_session_against_miniupnpd_remaps_after_its_restart() {
    if !require_root() || !require_miniupnpd() {
        return;
    }
    let lab = Lab::up_public_wan();
    let mini = lab.start_miniupnpd();
    let mut keep = Keep::start(&lab, &["8080"]);
    let mapped = keep.event("mapped", 10);
    assert_eq!(mapped["via"], "pcp");
    assert!(miniupnpd_forwards(&lab, 8080), "{}", lab.ruleset());
    std::thread::sleep(Duration::from_secs(3));

    mini.stop();
    for chain in ["miniupnpd miniupnpd", "miniupnpd_nat prerouting_miniupnpd"] {
        let cmd = format!("nft flush chain inet {chain}");
        assert!(lab.sh(Host::Gw, 5, &cmd).status.success(), "{cmd}");
    }
    let _ = std::fs::remove_file(lab.dir.join("miniupnpd.leases"));
    assert!(!miniupnpd_forwards(&lab, 8080), "{}", lab.ruleset());
    let restarted = Instant::now();
    let _mini = lab.start_miniupnpd();

    let remapped = keep.event("remapped", 12);
    assert_eq!(remapped["reason"], "announcement", "{remapped}");
    assert!(
        restarted.elapsed() < Duration::from_secs(10),
        "{:?}",
        restarted.elapsed()
    );
    assert!(
        lab.eventually(5, || miniupnpd_forwards(&lab, 8080)),
        "{}",
        lab.ruleset()
    );
    assert_eq!(keep.terminate(), Some(0), "printed: {:#?}", keep.lines.seen);
    keep.event("unmapped", 5);
}

// ---- IPv6 ----

const LAN_HOST6: &str = "2001:db8:1::10";
const GW_LAN6: &str = "2001:db8:1::1";

/// natwarden's IPv6 pinhole for a LAN host's port, in its table.
fn pinhole6(lab: &Lab, port: u16) -> bool {
    lab.table("natwarden")
        .is_some_and(|t| t.contains(&format!("{LAN_HOST6} . tcp . {port}")))
}

/// PCP over IPv6 (NAT-PMP is IPv4 only): a MAP is a firewall pinhole whose external address
/// is the host's own; a `--keep` session renews it and maps it again after the gateway
/// restarts with its state removed.
#[test]
fn client_over_ipv6_opens_a_pcp_pinhole_and_keeps_it_across_a_restart() {
    if !require_root() {
        return;
    }
    let lab = Lab::up();
    let v6_rule = "[[rule]]\naction = \"allow\"\nexternal_ports = \"1024-65535\"\ninternal_addresses = \"2001:db8:1::/64\"\ninternal_ports = \"1024-65535\"\n\n[firewall]";
    let config = lab.config(
        "gw.toml",
        &[
            ("[firewall]", v6_rule),
            ("min_lifetime = 120", "min_lifetime = 1"),
        ],
    );
    let d = lab.start(&config);
    let gw6 = ["--gateway", GW_LAN6];

    let o = client(&lab, 20, &["map", "8080", "--json", gw6[0], gw6[1]]);
    assert!(o.status.success(), "{}", all_output(&o));
    let v = one_json(&o);
    assert_eq!(v["via"], "pcp");
    assert_eq!(v["internal_address"], LAN_HOST6);
    assert_eq!(
        v["external_address"], LAN_HOST6,
        "a pinhole: no translation"
    );
    assert!(pinhole6(&lab, 8080), "{:?}", lab.table("natwarden"));
    let o = client(&lab, 20, &["unmap", "8080", gw6[0], gw6[1]]);
    assert!(o.status.success(), "{}", all_output(&o));
    assert!(
        stdout(&o).starts_with(&format!("unmapped tcp [{LAN_HOST6}]:8080 (PCP gateway")),
        "{}",
        all_output(&o)
    );
    assert!(!pinhole6(&lab, 8080));
    let o = client(&lab, 20, &["external-address", "--nat-pmp", gw6[0], gw6[1]]);
    assert_eq!(o.status.code(), Some(2), "{}", all_output(&o));

    let mut keep = Keep::start(&lab, &["8081", "--lifetime", "4", gw6[0], gw6[1]]);
    let mapped = keep.event("mapped", 10);
    assert_eq!(mapped["external_address"], LAN_HOST6);
    keep.event("renewed", 5);
    // Renewed every 2 s; the epoch must be a few seconds old for a reset to show.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(d.stop(), Some(0));
    let _ = std::fs::remove_file(lab.state_file());
    let _d = lab.start(&config);
    let remapped = keep.event("remapped", 10);
    assert!(
        matches!(
            remapped["reason"].as_str(),
            Some("epoch-reset" | "announcement")
        ),
        "{remapped}"
    );
    assert!(
        lab.eventually(5, || pinhole6(&lab, 8081)),
        "{:?}",
        lab.table("natwarden")
    );
    assert_eq!(keep.terminate(), Some(0), "printed: {:#?}", keep.lines.seen);
    keep.event("unmapped", 5);
    assert!(lab.eventually(5, || !pinhole6(&lab, 8081)));
}
