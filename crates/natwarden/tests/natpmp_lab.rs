//! End to end in a namespace lab: real natpmpc and nmap against `natwarden serve` on
//! real nftables. Each test tries one thing the CERT note VU#184540 says must fail, or
//! one thing a LAN host must be able to do, and checks the kernel table.

mod common;

use std::net::{Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

use common::*;

fn natpmpc(lab: &Lab, host: Host, gateway: &str, extra: &[&str]) -> String {
    let mut args = vec!["natpmpc", "-g", gateway];
    args.extend_from_slice(extra);
    // natpmpc retries for ~2 minutes when unanswered; 4 s covers 5 tries.
    all_output(&lab.run(host, 4, &args))
}

#[test]
fn lan_host_maps_a_port_with_natpmpc_and_the_wan_reaches_its_listener() {
    if !require_root() {
        return;
    }
    let lab = Lab::up();
    let d = lab.start(&lab.config("gw.toml", &[]));

    let out = natpmpc(&lab, Host::Lan, GW_LAN, &[]);
    assert!(
        out.contains(&format!("Public IP address : {GW_WAN}")),
        "{out}"
    );

    let out = natpmpc(
        &lab,
        Host::Lan,
        GW_LAN,
        &["-a", "8080", "8080", "tcp", "3600"],
    );
    assert!(
        out.contains("Mapped public port 8080 protocol TCP to local port 8080"),
        "{out}"
    );
    // The kernel holds the forward, and it points at the requester.
    let fwd = lab.elements("fwd4");
    assert_eq!(fwd.len(), 1, "{fwd:?}");
    assert!(
        fwd[0].contains(LAN_HOST) && fwd[0].contains("8080"),
        "{fwd:?}"
    );
    assert_eq!(lab.elements("allow4").len(), 1);

    // A real TCP connection from the WAN host reaches a listener on the LAN host.
    let listener = lab
        .cmd(Host::Lan, &["timeout", "10", "nc", "-l", "-p", "8080"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("starting the LAN listener");
    std::thread::sleep(Duration::from_millis(300));
    let sent = lab.sh(
        Host::Wan,
        5,
        &format!("echo through-the-mapping | nc -N -w 3 {GW_WAN} 8080"),
    );
    assert!(sent.status.success(), "{}", all_output(&sent));
    let got = listener.wait_with_output().expect("listener output");
    assert_eq!(stdout(&got).trim(), "through-the-mapping");

    // And an unmapped port is not forwarded.
    let refused = lab.sh(Host::Wan, 5, &format!("echo x | nc -N -w 2 {GW_WAN} 8081"));
    assert!(!refused.status.success());
    drop(d);
}

#[test]
fn wan_host_gets_no_answer_from_natpmpc_or_nmap_nat_pmp_info() {
    if !require_root() {
        return;
    }
    let lab = Lab::up();
    let _d = lab.start(&lab.config("gw.toml", &[]));

    let out = natpmpc(&lab, Host::Wan, GW_WAN, &[]);
    assert!(!out.contains("Public IP address"), "{out}");

    let nmap = |host, target: &str| {
        all_output(&lab.run(
            host,
            60,
            &[
                "nmap",
                "-n",
                "-Pn",
                "-sU",
                "-p5351",
                "--script",
                "nat-pmp-info",
                target,
            ],
        ))
    };
    // The same probe from the LAN is answered: the check below can fail.
    let inside = nmap(Host::Lan, GW_LAN);
    assert!(
        inside.contains(GW_WAN) && inside.contains("nat-pmp-info"),
        "{inside}"
    );
    let outside = nmap(Host::Wan, GW_WAN);
    assert!(
        !outside.contains("nat-pmp-info:") && !outside.contains("WAN IP"),
        "{outside}"
    );
}

/// The attacker on the WAN link routes packets for the gateway's LAN address to the
/// gateway. Tried with the nftables backend (whose input chain drops them) and with
/// the `none` backend, where only the daemon's own IP_PKTINFO checks stand.
#[test]
fn wan_host_aiming_at_the_lan_address_through_the_wan_link_gets_nothing_and_opens_nothing() {
    if !require_root() {
        return;
    }
    for backend in ["nftables", "none"] {
        let lab = Lab::up();
        let cfg = lab.config(
            "gw.toml",
            &[(
                "backend = \"nftables\"",
                &format!("backend = \"{backend}\""),
            )],
        );
        let d = lab.start(&cfg);
        let route = lab.run(
            Host::Wan,
            5,
            &["ip", "route", "add", "192.168.1.0/24", "via", GW_WAN],
        );
        assert!(route.status.success());

        let out = natpmpc(&lab, Host::Wan, GW_LAN, &[]);
        assert!(!out.contains("Public IP address"), "{backend}: {out}");
        let out = natpmpc(
            &lab,
            Host::Wan,
            GW_LAN,
            &["-a", "8080", "8080", "tcp", "3600"],
        );
        assert!(!out.contains("Mapped public port"), "{backend}: {out}");
        let out = natpmpc(
            &lab,
            Host::Wan,
            GW_WAN,
            &["-a", "8080", "8080", "tcp", "3600"],
        );
        assert!(!out.contains("Mapped public port"), "{backend}: {out}");

        if backend == "nftables" {
            assert!(lab.elements("fwd4").is_empty());
            assert!(lab.elements("allow4").is_empty());
        } else {
            // Without the input chain the datagrams reach the daemon, which drops them
            // itself and says why.
            d.wait_for_log("external-interface", Duration::from_secs(5));
            assert!(!d.log_text().contains("mapped tcp"), "{}", d.log_text());
        }
    }
}

#[test]
fn expiry_removes_the_kernel_element() {
    if !require_root() {
        return;
    }
    let lab = Lab::up();
    let _d = lab.start(&lab.config("gw.toml", &[("min_lifetime = 120", "min_lifetime = 1")]));
    let out = natpmpc(&lab, Host::Lan, GW_LAN, &["-a", "9000", "9000", "udp", "2"]);
    assert!(
        out.contains("Mapped public port 9000 protocol UDP"),
        "{out}"
    );
    assert_eq!(lab.elements("fwd4").len(), 1);
    assert!(
        lab.eventually(10, || lab.elements("fwd4").is_empty()
            && lab.elements("allow4").is_empty()),
        "the element outlived its 2 s lifetime"
    );
}

/// Sends `payload` from `source` in the LAN namespace and returns the reply's length.
fn nc_udp(lab: &Lab, source: &str, payload: &str) -> usize {
    let o = lab.sh(
        Host::Lan,
        5,
        &format!("printf '{payload}' | nc -u -w 1 -s {source} {GW_LAN} 5351 | wc -c"),
    );
    stdout(&o).trim().parse().unwrap_or(0)
}

#[test]
fn spoofed_lan_source_outside_the_internal_subnet_gets_nothing() {
    if !require_root() {
        return;
    }
    let lab = Lab::up();
    let _d = lab.start(&lab.config("gw.toml", &[]));
    // The spoofer holds 10.99.0.5, and the gateway could route a reply back to it:
    // only natwarden's source check stands between the request and a mapping.
    assert!(lab
        .run(
            Host::Lan,
            5,
            &["ip", "addr", "add", "10.99.0.5/32", "dev", "eth0"]
        )
        .status
        .success());
    assert!(lab
        .run(
            Host::Gw,
            5,
            &["ip", "route", "add", "10.99.0.0/24", "dev", "br-lan"]
        )
        .status
        .success());

    let map_req = r"\0\2\0\0\37\220\37\220\0\0\34\40";
    assert_eq!(
        nc_udp(&lab, LAN_HOST, r"\0\0"),
        12,
        "control: the genuine host is answered"
    );
    assert_eq!(nc_udp(&lab, "10.99.0.5", r"\0\0"), 0);
    assert_eq!(nc_udp(&lab, "10.99.0.5", map_req), 0);
    assert!(lab.elements("fwd4").is_empty());
}

#[test]
fn check_config_refuses_every_unsafe_layout_naming_the_key() {
    if !require_root() {
        return;
    }
    let lab = Lab::up();
    // A second LAN-side interface whose subnet overlaps the WAN, and one with a public
    // address (veth pairs: this kernel has no dummy driver).
    for cmd in [
        "ip link add lan2 type veth peer name lan2p && ip link set lan2 up && ip addr add 198.51.100.129/25 dev lan2",
        "ip link add pub0 type veth peer name pub0p && ip link set pub0 up && ip addr add 8.8.4.1/24 dev pub0",
    ] {
        assert!(lab.sh(Host::Gw, 5, cmd).status.success());
    }
    let ok = lab.natwarden(&["check-config", "--config", EXAMPLE_CONFIG]);
    assert!(ok.status.success(), "{}", all_output(&ok));
    assert!(
        stdout(&ok).contains("valid and safe"),
        "{}",
        all_output(&ok)
    );

    /// (name, edits of the example config, key named in the refusal, words of the refusal)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: &[Case] = &[
        (
            "same",
            &[("internal = [\"br-lan\"]", "internal = [\"eth0\"]")],
            "interfaces.internal[0]",
            "also the external interface",
        ),
        (
            "swapped",
            &[
                ("external = \"eth0\"", "external = \"br-lan\""),
                ("internal = [\"br-lan\"]", "internal = [\"eth0\"]"),
            ],
            "interfaces.internal[0]",
            "default route",
        ),
        (
            "ext-addr-inside",
            &[(
                "# external_address = \"198.51.100.7\"",
                "external_address = \"192.168.1.1\"",
            )],
            "interfaces.internal[0]",
            "holds the external address",
        ),
        (
            "listen-wan",
            &[(
                "# listen_addresses = [\"192.168.1.1\"]",
                "listen_addresses = [\"198.51.100.7\"]",
            )],
            "interfaces.listen_addresses[0]",
            "external side",
        ),
        (
            "overlap",
            &[("internal = [\"br-lan\"]", "internal = [\"lan2\"]")],
            "interfaces.internal[0]",
            "overlaps external subnet",
        ),
        (
            "missing",
            &[("internal = [\"br-lan\"]", "internal = [\"nosuch0\"]")],
            "interfaces.internal[0]",
            "does not exist",
        ),
    ];
    for (name, edits, key, message) in cases {
        let cfg = lab.config(&format!("{name}.toml"), edits);
        let o = lab.natwarden(&["check-config", "--config", &cfg.to_string_lossy()]);
        let text = all_output(&o);
        assert!(!o.status.success(), "{name}: accepted:\n{text}");
        assert!(
            text.contains(key) && text.contains(message) && text.contains("fix:"),
            "{name}:\n{text}"
        );
        // serve refuses the same config before touching the firewall.
        let o = lab.natwarden(&["serve", "--config", &cfg.to_string_lossy()]);
        assert!(!o.status.success(), "{name}: serve started");
        assert!(
            lab.table("natwarden").is_none(),
            "{name}: serve created a table"
        );
    }

    let public = lab.config(
        "public.toml",
        &[
            ("internal = [\"br-lan\"]", "internal = [\"pub0\"]"),
            ("192.168.1.0/24", "8.8.4.0/24"),
        ],
    );
    let o = lab.natwarden(&["check-config", "--config", &public.to_string_lossy()]);
    assert!(o.status.success(), "{}", all_output(&o));
    assert!(
        stdout(&o).contains("warning:") && stdout(&o).contains("public address"),
        "{}",
        all_output(&o)
    );
    // Never "safe" after a warning.
    assert!(
        stdout(&o).contains("valid, with warnings") && !stdout(&o).contains("safe"),
        "{}",
        all_output(&o)
    );
}

#[test]
fn start_replaces_a_leftover_table_and_clean_exit_removes_it() {
    if !require_root() {
        return;
    }
    let lab = Lab::up();
    let junk = lab.write(
        "junk.nft",
        "table inet natwarden {\n chain junk {\n type filter hook forward priority 0; policy accept;\n tcp dport 22 accept\n }\n}\n",
    );
    assert!(lab
        .run(Host::Gw, 5, &["nft", "-f", &junk.to_string_lossy()])
        .status
        .success());
    let d = lab.start(&lab.config("gw.toml", &[]));
    let table = lab.table("natwarden").expect("table installed");
    assert!(!table.contains("junk"), "{table}");
    assert!(table.contains("iifname \"eth0\""), "{table}");
    assert!(
        table.contains("udp dport"),
        "WAN NAT-PMP drop missing:\n{table}"
    );
    assert_eq!(d.stop(), Some(0));
    assert!(
        lab.table("natwarden").is_none(),
        "table left behind on clean exit"
    );
}

#[test]
fn lan_listener_receives_the_start_up_announcements() {
    if !require_root() {
        return;
    }
    let lab = Lab::up();
    // A socket in the LAN namespace.
    let listener = lab.spawn_in(Host::Lan, move || {
        let sock = UdpSocket::bind("0.0.0.0:5350").expect("bind 5350");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let start = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while start.elapsed() < Duration::from_secs(4) {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                got.push((start.elapsed(), from, buf[..n].to_vec()));
            }
        }
        got
    });
    std::thread::sleep(Duration::from_millis(300));
    let _d = lab.start(&lab.config("gw.toml", &[]));
    let all = listener.join().expect("listener thread");
    // Each round carries NAT-PMP's announcement (version 0) and PCP's ANNOUNCE
    // (version 2, RFC 6887 section 14.1.3).
    let (got, pcp): (Vec<_>, Vec<_>) = all.into_iter().partition(|(_, _, b)| b.first() == Some(&0));
    assert!(
        got.len() >= 3,
        "expected several announcements in 4 s, got {got:?}"
    );
    // One PCP ANNOUNCE per round (the listening window may cut the last round short).
    assert!(
        pcp.len() + 1 >= got.len() && pcp.len() <= got.len(),
        "{pcp:?}"
    );
    assert!(
        pcp.iter()
            .all(|(_, _, b)| b.len() == 24 && b[1] == 0x80 && b[3] == 0),
        "{pcp:?}"
    );
    let first = &got[0];
    assert_eq!(first.1.to_string(), format!("{GW_LAN}:5351"));
    assert_eq!(
        &first.2[..4],
        &[0, 128, 0, 0],
        "external address response, success"
    );
    assert_eq!(
        Ipv4Addr::new(first.2[8], first.2[9], first.2[10], first.2[11]).to_string(),
        GW_WAN
    );
    // RFC 6886 3.2.1: the second comes about 250 ms after the first.
    let gap = got[1].0 - got[0].0;
    assert!(
        gap >= Duration::from_millis(150) && gap <= Duration::from_millis(600),
        "{gap:?}"
    );
}
