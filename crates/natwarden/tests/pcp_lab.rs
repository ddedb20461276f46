//! PCP (RFC 6887) end to end in the namespace lab: MAP over IPv4 and IPv6 opening real
//! forwards and pinholes, the same CERT VU#184540 guarantees as NAT-PMP, and one table
//! shared with NAT-PMP.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use common::*;
use natwarden_wire::pcp::{
    self, ipv4_mapped, MapData, OpData, Options, Request, Response, ResultCode,
};

const LAN_HOST6: &str = "2001:db8:1::10";
const GW_LAN6: &str = "2001:db8:1::1";
const GW_WAN6: &str = "2001:db8:100::7";
/// The example config names the IPv4 LAN only; this adds the same rule for the IPv6
/// prefix (a config edit replacing `[firewall]`).
const V6_RULE: &str = "[[rule]]\naction = \"allow\"\nexternal_ports = \"1024-65535\"\ninternal_addresses = \"2001:db8:1::/64\"\ninternal_ports = \"1024-65535\"\n\n[firewall]";

/// Sends one PCP request from `bind` inside `host`'s namespace to `to` and returns the
/// answer, or None after 2 s of silence (three tries).
fn exchange(lab: &Lab, host: Host, bind: &str, to: &str, req: Request) -> Option<Response> {
    let bind: IpAddr = bind.parse().expect("bind address");
    let to = SocketAddr::new(to.parse().expect("gateway address"), pcp::SERVER_PORT);
    lab.spawn_in(host, move || {
        let sock = UdpSocket::bind(SocketAddr::new(bind, 0)).expect("bind");
        sock.set_read_timeout(Some(Duration::from_millis(700)))
            .expect("timeout");
        let mut buf = [0u8; 1100];
        let n = req.emit(&mut buf);
        for _ in 0..3 {
            sock.send_to(&buf[..n], to).expect("send");
            let mut rx = [0u8; 1100];
            if let Ok((len, from)) = sock.recv_from(&mut rx) {
                assert_eq!(from, to, "answer from the gateway's address and port");
                return Some(Response::parse(&rx[..len]).expect("valid PCP response"));
            }
        }
        None
    })
    .join()
    .expect("exchange thread")
}

fn map(client: IpAddr, protocol: u8, port: u16, lifetime: u32) -> Request {
    Request {
        lifetime,
        client_address: pcp::to_wire_address(client),
        op: OpData::Map(MapData {
            nonce: pcp::Nonce(*b"natwarden-t1"),
            protocol,
            internal_port: port,
            external_port: port,
            external_address: ipv4_mapped(Ipv4Addr::UNSPECIFIED),
        }),
        options: Options::NONE,
    }
}

fn lan4() -> IpAddr {
    LAN_HOST.parse().expect("lan host")
}

fn external_port(r: &Response) -> u16 {
    match r.op {
        OpData::Map(d) => d.external_port,
        other => panic!("{other:?}"),
    }
}

/// A TCP connection from the WAN host to `target`:`port` delivers a line to a listener
/// on the LAN host (`nc -l`, IPv4 or IPv6).
fn connects(lab: &Lab, target: &str, port: u16, listen_v6: bool) -> bool {
    let family = if listen_v6 { "-6" } else { "-4" };
    let listener = lab
        .cmd(
            Host::Lan,
            &["timeout", "6", "nc", family, "-l", "-p", &port.to_string()],
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("LAN listener");
    std::thread::sleep(Duration::from_millis(300));
    let _ = lab.sh(
        Host::Wan,
        5,
        &format!("echo pcp-works | timeout 3 nc -N -w 2 {target} {port}"),
    );
    let out = listener.wait_with_output().expect("listener");
    stdout(&out).trim() == "pcp-works"
}

#[test]
fn pcp_map_from_the_lan_opens_a_working_ipv4_forward() {
    if !require_root() {
        return;
    }
    let lab = Lab::up();
    let _d = lab.start(&lab.config("gw.toml", &[]));
    let r =
        exchange(&lab, Host::Lan, LAN_HOST, GW_LAN, map(lan4(), 6, 8080, 600)).expect("answered");
    assert_eq!((r.result, r.lifetime), (ResultCode::SUCCESS, 600));
    let OpData::Map(d) = r.op else {
        panic!("{r:?}")
    };
    assert_eq!(
        d.external_address,
        ipv4_mapped(GW_WAN.parse().expect("wan"))
    );
    assert_eq!(d.nonce, pcp::Nonce(*b"natwarden-t1"));
    assert!(
        connects(&lab, GW_WAN, d.external_port, false),
        "WAN could not reach the PCP forward"
    );
    let status = lab.status();
    assert_eq!(status["mappings"][0]["origin"], "pcp");
    assert_eq!(status["mappings"][0]["nonce"], "6e617477617264656e2d7431");
}

#[test]
fn ipv6_map_opens_a_working_pinhole_and_only_while_it_lives() {
    if !require_root() {
        return;
    }
    let lab = Lab::up();
    // The example's rules name the IPv4 LAN only; the same rule for the IPv6 prefix.
    let _d = lab.start(&lab.config(
        "gw.toml",
        &[
            ("ipv6_inbound_drop = false", "ipv6_inbound_drop = true"),
            ("[firewall]", V6_RULE),
        ],
    ));
    let target = LAN_HOST6;
    assert!(
        !connects(&lab, target, 8080, true),
        "inbound IPv6 must be closed without a pinhole"
    );
    let client: IpAddr = LAN_HOST6.parse().expect("v6");
    // Without a rule for it the IPv6 host is refused like any other: rules apply to
    // pinholes too. Port 80 is outside the allowed range.
    let r = exchange(&lab, Host::Lan, LAN_HOST6, GW_LAN6, map(client, 6, 80, 600))
        .expect("answered over IPv6");
    assert_eq!(r.result, ResultCode::NOT_AUTHORIZED, "{r:?}");
    let r = exchange(
        &lab,
        Host::Lan,
        LAN_HOST6,
        GW_LAN6,
        map(client, 6, 8080, 600),
    )
    .expect("answered over IPv6");
    assert_eq!(r.result, ResultCode::SUCCESS, "{r:?}");
    let OpData::Map(d) = r.op else {
        panic!("{r:?}")
    };
    assert_eq!(
        (d.external_port, d.external_address),
        (8080, LAN_HOST6.parse::<Ipv6Addr>().expect("v6"))
    );
    assert_eq!(lab.elements("pinhole6").len(), 1);
    assert!(
        connects(&lab, target, 8080, true),
        "the pinhole does not let the WAN in"
    );
    // Deleting the mapping closes the pinhole again.
    let r =
        exchange(&lab, Host::Lan, LAN_HOST6, GW_LAN6, map(client, 6, 8080, 0)).expect("answered");
    assert_eq!(r.result, ResultCode::SUCCESS);
    assert!(lab.elements("pinhole6").is_empty());
    assert!(!connects(&lab, target, 8080, true));
}

#[test]
fn pcp_from_the_wan_gets_no_answer_on_either_family() {
    if !require_root() {
        return;
    }
    let lab = Lab::up();
    let _d = lab.start(&lab.config("gw.toml", &[]));
    assert!(lab
        .run(
            Host::Wan,
            5,
            &["ip", "route", "add", "192.168.1.0/24", "via", GW_WAN]
        )
        .status
        .success());
    let wan4: IpAddr = WAN_HOST.parse().expect("wan");
    for to in [GW_WAN, GW_LAN] {
        assert!(
            exchange(&lab, Host::Wan, WAN_HOST, to, map(wan4, 6, 8080, 600)).is_none(),
            "answered at {to}"
        );
    }
    let wan6: IpAddr = "2001:db8:100::100".parse().expect("wan6");
    for to in [GW_WAN6, GW_LAN6] {
        assert!(
            exchange(
                &lab,
                Host::Wan,
                "2001:db8:100::100",
                to,
                map(wan6, 6, 8080, 600)
            )
            .is_none(),
            "answered at {to}"
        );
    }
    assert!(lab.elements("fwd4").is_empty() && lab.elements("pinhole6").is_empty());
    // The control: the same request from the LAN is answered.
    assert!(exchange(&lab, Host::Lan, LAN_HOST, GW_LAN, map(lan4(), 6, 8080, 600)).is_some());
}

#[test]
fn forged_client_address_gets_address_mismatch_and_third_party_is_refused() {
    if !require_root() {
        return;
    }
    let lab = Lab::up();
    let _d = lab.start(&lab.config("gw.toml", &[]));
    let forged = map("192.168.1.77".parse().expect("addr"), 6, 8080, 600);
    let r = exchange(&lab, Host::Lan, LAN_HOST, GW_LAN, forged).expect("answered");
    assert_eq!(r.result, ResultCode::ADDRESS_MISMATCH);
    let mut third = map(lan4(), 6, 8080, 600);
    third.options.third_party = Some(ipv4_mapped("192.168.1.77".parse().expect("addr")));
    let r = exchange(&lab, Host::Lan, LAN_HOST, GW_LAN, third).expect("answered");
    assert_eq!(r.result, ResultCode::NOT_AUTHORIZED);
    assert!(lab.elements("fwd4").is_empty());
}

#[test]
fn natpmp_and_pcp_see_and_renew_the_same_mappings() {
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
    // PCP renews the NAT-PMP mapping: same external port, still one forward.
    let r =
        exchange(&lab, Host::Lan, LAN_HOST, GW_LAN, map(lan4(), 6, 8080, 900)).expect("answered");
    assert_eq!(
        (r.result, external_port(&r), r.lifetime),
        (ResultCode::SUCCESS, 8080, 900)
    );
    assert_eq!(lab.elements("fwd4").len(), 1);
    // And the other way round.
    let r = exchange(
        &lab,
        Host::Lan,
        LAN_HOST,
        GW_LAN,
        map(lan4(), 17, 5000, 900),
    )
    .expect("answered");
    assert_eq!(r.result, ResultCode::SUCCESS);
    let out = all_output(&lab.run(
        Host::Lan,
        4,
        &[
            "natpmpc",
            "-g",
            GW_LAN,
            "-a",
            &external_port(&r).to_string(),
            "5000",
            "udp",
            "3600",
        ],
    ));
    assert!(
        out.contains(&format!(
            "Mapped public port {} protocol UDP to local port 5000",
            external_port(&r)
        )),
        "{out}"
    );
    assert_eq!(lab.elements("fwd4").len(), 2);
    let origins: Vec<String> = lab.status()["mappings"]
        .as_array()
        .expect("mappings")
        .iter()
        .map(|m| m["origin"].to_string())
        .collect();
    assert_eq!(origins.len(), 2);
}

#[test]
fn an_ipv6_prefix_that_appears_after_start_is_served_and_its_pinholes_close_when_it_goes() {
    if !require_root() {
        return;
    }
    let lab = Lab::up();
    let del = ["ip", "addr", "del", "2001:db8:1::1/64", "dev", "br-lan"];
    assert!(lab.run(Host::Gw, 5, &del).status.success());
    let d = lab.start(&lab.config("gw.toml", &[("[firewall]", V6_RULE)]));
    let client: IpAddr = LAN_HOST6.parse().expect("v6");
    let add = [
        "ip",
        "addr",
        "add",
        "2001:db8:1::1/64",
        "dev",
        "br-lan",
        "nodad",
    ];
    assert!(lab.run(Host::Gw, 5, &add).status.success());
    d.wait_for_log("internal IPv6 addresses changed", Duration::from_secs(5));
    let r = exchange(
        &lab,
        Host::Lan,
        LAN_HOST6,
        GW_LAN6,
        map(client, 6, 8080, 600),
    )
    .expect("answered once the prefix is there");
    assert_eq!(r.result, ResultCode::SUCCESS, "{r:?}");
    assert_eq!(lab.elements("pinhole6").len(), 1);
    // The prefix goes: the pinholes in it close at once.
    assert!(lab.run(Host::Gw, 5, &del).status.success());
    assert!(
        lab.eventually(5, || lab.elements("pinhole6").is_empty()),
        "a pinhole outlived its prefix"
    );
}

/// Issue 11: a host cannot escape its quota by rotating IPv6 privacy addresses inside the
/// prefix; the gateway counts it by its link-layer address, as a router identifies hosts.
#[test]
fn a_lan_host_with_200_ipv6_addresses_gets_no_more_than_its_quota() {
    if !require_root() {
        return;
    }
    let lab = Lab::up();
    let _d = lab.start(&lab.config(
        "gw.toml",
        &[
            ("[firewall]", V6_RULE),
            ("max_per_client = 128", "max_per_client = 4"),
            (
                "requests_per_second_per_client = 20",
                "requests_per_second_per_client = 0",
            ),
        ],
    ));
    let addrs: Vec<String> = (0..200)
        .map(|i| format!("2001:db8:1::{:x}", 0x1000 + i))
        .collect();
    let script: String = addrs
        .iter()
        .map(|a| format!("ip addr add {a}/64 dev eth0 nodad\n"))
        .collect();
    let o = lab.sh(Host::Lan, 60, &script);
    assert!(o.status.success(), "{}", all_output(&o));
    let mut granted = 0;
    let mut quota = 0;
    for (i, a) in addrs.iter().enumerate() {
        let client: IpAddr = a.parse().expect("v6");
        let r = exchange(
            &lab,
            Host::Lan,
            a,
            GW_LAN6,
            map(client, 6, 20000 + i as u16, 600),
        )
        .unwrap_or_else(|| panic!("no answer to {a}"));
        if r.result == ResultCode::SUCCESS {
            granted += 1;
        } else {
            assert_eq!(r.result, ResultCode::USER_EX_QUOTA, "from {a}");
            quota += 1;
        }
    }
    assert_eq!((granted, quota), (4, 196), "one host, one quota of 4");
    assert_eq!(lab.elements("pinhole6").len(), 4);
    // Another host keeping its own quota is shown in the core's tests
    // (`one_host_rotating_ipv6_addresses_gets_one_quota_and_one_rate_limit`).
    let status = lab.status();
    assert_eq!(
        status["mappings"].as_array().map(Vec::len),
        Some(4),
        "{status}"
    );
}
