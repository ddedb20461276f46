//! Real-kernel tests: each test makes its own network namespaces (deleted on drop, even on
//! panic), runs the backend inside them and checks the result with `nft`, `ip` and traffic.
//! They need root; without it they skip, except under CI=true where they fail.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use natwarden_core::firewall::{FirewallChange, Forward, Installed, Outbound, Pinhole};
use natwarden_kernel::{rtnl, Backend, FirewallError, NftConfig, NftMessage, Nftables, Set};
use natwarden_wire::Protocol;

const EXT: &str = "ext0";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A scratch network namespace, removed on drop.
struct Netns {
    name: String,
}

impl Netns {
    /// An empty namespace; None (after printing why) when the tests cannot run here.
    fn bare() -> Option<Self> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("kernel tests need root (network namespaces, nftables); CI=true so this is a failure");
            }
            eprintln!("skipping kernel test: not root");
            return None;
        }
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let ns = Netns {
            name: format!("nwfw-{}-{n}", std::process::id()),
        };
        run_cmd(&["ip", "netns", "add", &ns.name]);
        Some(ns)
    }

    /// A namespace with an `ext0` interface that is up (without carrier when it is a veth).
    fn new() -> Option<Self> {
        let ns = Self::bare()?;
        // Prefer a dummy; kernels without the dummy driver still have veth.
        let dummy = Command::new("ip")
            .args(["-n", &ns.name, "link", "add", EXT, "type", "dummy"])
            .output()
            .expect("running ip");
        if !dummy.status.success() {
            ns.ip(&["link", "add", EXT, "type", "veth", "peer", "name", "ext0p"]);
        }
        ns.ip(&["link", "set", EXT, "up"]);
        Some(ns)
    }

    /// Runs `f` on a thread that has entered the namespace; sockets it opens live there.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = File::open(&path).expect("opening netns handle");
                // SAFETY: a valid namespace fd; setns only affects this thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("netns thread panicked")
        })
    }

    fn backend(&self) -> Nftables {
        self.backend_with(false)
    }

    fn backend_with(&self, ipv6_inbound_drop: bool) -> Nftables {
        self.run(|| {
            Nftables::new(NftConfig {
                external_interface: EXT.into(),
                ipv6_inbound_drop,
                ..NftConfig::default()
            })
            .expect("creating backend")
        })
    }

    fn sysctl(&self, setting: &str) {
        run_cmd(&["ip", "netns", "exec", &self.name, "sysctl", "-qw", setting]);
    }

    /// A shell command in the namespace; its exit status, not checked.
    fn sh(&self, script: &str) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, "sh", "-c", script])
            .output()
            .expect("running sh")
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend_from_slice(args);
        run_cmd(&v)
    }

    fn nft(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "netns", "exec", &self.name, "nft"];
        v.extend_from_slice(args);
        run_cmd(&v)
    }

    fn nft_file(&self, text: &str) {
        let path = std::env::temp_dir().join(format!("{}.nft", self.name));
        std::fs::write(&path, text).expect("writing nft file");
        let p = path.to_string_lossy().into_owned();
        self.nft(&["-f", &p]);
        let _ = std::fs::remove_file(path);
    }

    fn table(&self) -> String {
        normalize(&self.nft(&["list", "table", "inet", "natwarden"]))
    }

    fn has_table(&self) -> bool {
        self.nft(&["list", "tables"])
            .contains("table inet natwarden")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run_cmd(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Trimmed non-empty lines, so indentation differences do not matter.
fn normalize(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

fn fwd(protocol: Protocol, external_port: u16, ip: [u8; 4], port: u16) -> Forward {
    Forward {
        protocol,
        external_port,
        internal: SocketAddrV4::new(Ipv4Addr::from(ip), port),
    }
}

fn outbound(protocol: Protocol, ip: [u8; 4], port: u16, external_port: u16) -> Outbound {
    Outbound {
        protocol,
        internal: SocketAddrV4::new(Ipv4Addr::from(ip), port),
        external_port,
    }
}

fn pinhole(protocol: Protocol, address: &str, port: u16) -> Pinhole {
    Pinhole {
        protocol,
        address: address.parse().expect("IPv6 address"),
        port,
    }
}

fn forwards(v: &[Forward]) -> Installed {
    Installed {
        forwards: v.to_vec(),
        ..Installed::default()
    }
}

fn nothing() -> Installed {
    Installed::default()
}

/// Number of elements `nft list` shows for a set or map.
fn count_elements(listing: &str) -> usize {
    let Some(start) = listing.find("elements = {") else {
        return 0;
    };
    let body = &listing[start + "elements = {".len()..];
    let end = body.find('}').expect("closing brace");
    body[..end]
        .split(',')
        .filter(|e| !e.trim().is_empty())
        .count()
}

const EMPTY_TABLE: &str = r#"table inet natwarden {
map fwd4 {
type inet_proto . inet_service : ipv4_addr . inet_service
}
set allow4 {
type ipv4_addr . inet_proto . inet_service
}
set pinhole6 {
type ipv6_addr . inet_proto . inet_service
}
map snat4 {
type ipv4_addr . inet_proto . inet_service : inet_service
}
chain prerouting {
type nat hook prerouting priority dstnat; policy accept;
iifname "ext0" meta nfproto ipv4 dnat ip to meta l4proto . th dport map @fwd4
}
chain forward {
type filter hook forward priority filter; policy accept;
iifname "ext0" ct status dnat ip daddr . meta l4proto . th dport @allow4 accept
iifname "ext0" ip6 daddr . meta l4proto . th dport @pinhole6 accept
}
chain postrouting {
type nat hook postrouting priority srcnat - 1; policy accept;
oifname "ext0" meta nfproto ipv4 meta l4proto { tcp, udp } masquerade to :ip saddr . meta l4proto . th sport map @snat4
}
chain input {
type filter hook input priority filter - 10; policy accept;
iifname "ext0" udp dport 5350 drop
iifname "ext0" udp dport 5351 drop
}
}"#;

#[test]
fn install_creates_exactly_the_documented_ruleset() {
    let Some(ns) = Netns::new() else { return };
    let mut fw = ns.backend();
    fw.install(&nothing()).expect("install");
    assert_eq!(ns.table(), EMPTY_TABLE);
    // The IPv6 drop adds one rule after the pinhole accept, nothing else.
    ns.backend_with(true)
        .install(&nothing())
        .expect("install with drop");
    let pinhole_accept = "iifname \"ext0\" ip6 daddr . meta l4proto . th dport @pinhole6 accept\n";
    let with_drop = EMPTY_TABLE.replace(
        pinhole_accept,
        &format!("{pinhole_accept}iifname \"ext0\" meta nfproto ipv6 meta l4proto {{ tcp, udp }} ct state new drop\n"),
    );
    assert_eq!(ns.table(), with_drop);
}

/// The kernel's own view of every expression (registers, lengths, flags) and element
/// bytes; elements come in hash order, so they are compared as a sorted list.
fn netlink_dump(ns: &Netns) -> String {
    let d = normalize(&ns.nft(&["--debug=netlink", "list", "table", "inet", "natwarden"]));
    let (mut elems, rest): (Vec<&str>, Vec<&str>) =
        d.lines().partition(|l| l.starts_with("element "));
    elems.sort_unstable();
    format!("{}\n{}", rest.join("\n"), elems.join("\n"))
}

/// Our messages against nft's own: the same ruleset written as nft text and loaded with
/// `nft -f` in a second namespace must list identically, expression by expression.
#[test]
fn install_matches_ruleset_loaded_by_nft() {
    let Some(ours) = Netns::new() else { return };
    let Some(reference) = Netns::new() else {
        return;
    };
    let state = Installed {
        forwards: vec![
            fwd(Protocol::Udp, 4000, [10, 0, 0, 2], 5000),
            fwd(Protocol::Tcp, 8080, [10, 0, 0, 3], 80),
        ],
        outbound: vec![
            outbound(Protocol::Udp, [10, 0, 0, 2], 40000, 50000),
            outbound(Protocol::Tcp, [10, 0, 0, 3], 40000, 50001),
        ],
        pinholes: vec![
            pinhole(Protocol::Tcp, "2001:db8:1::10", 8080),
            pinhole(Protocol::Udp, "2001:db8:1::11", 53),
        ],
    };
    ours.backend_with(true).install(&state).expect("install");
    reference.nft_file(
        r#"table inet natwarden {
  map fwd4 { type inet_proto . inet_service : ipv4_addr . inet_service;
    elements = { udp . 4000 : 10.0.0.2 . 5000, tcp . 8080 : 10.0.0.3 . 80 } }
  set allow4 { type ipv4_addr . inet_proto . inet_service;
    elements = { 10.0.0.2 . udp . 5000, 10.0.0.3 . tcp . 80 } }
  set pinhole6 { type ipv6_addr . inet_proto . inet_service;
    elements = { 2001:db8:1::10 . tcp . 8080, 2001:db8:1::11 . udp . 53 } }
  map snat4 { type ipv4_addr . inet_proto . inet_service : inet_service;
    elements = { 10.0.0.2 . udp . 40000 : 50000, 10.0.0.3 . tcp . 40000 : 50001 } }
  chain prerouting { type nat hook prerouting priority dstnat; policy accept;
    iifname "ext0" meta nfproto ipv4 dnat ip to meta l4proto . th dport map @fwd4; }
  chain forward { type filter hook forward priority filter; policy accept;
    iifname "ext0" ct status dnat ip daddr . meta l4proto . th dport @allow4 accept
    iifname "ext0" meta nfproto ipv6 ip6 daddr . meta l4proto . th dport @pinhole6 accept
    iifname "ext0" meta nfproto ipv6 meta l4proto { tcp, udp } ct state new drop; }
  chain postrouting { type nat hook postrouting priority srcnat - 1; policy accept;
    oifname "ext0" meta nfproto ipv4 meta l4proto { tcp, udp } masquerade to : ip saddr . meta l4proto . th sport map @snat4; }
  chain input { type filter hook input priority filter - 10; policy accept;
    iifname "ext0" udp dport 5350 drop
    iifname "ext0" udp dport 5351 drop; }
}
"#,
    );
    let listing = ours.table();
    for element in [
        "10.0.0.2 . udp . 40000 : 50000",
        "2001:db8:1::11 . udp . 53",
        "udp . 4000 : 10.0.0.2 . 5000",
    ] {
        assert!(listing.contains(element), "{listing}");
    }
    assert_eq!(listing, reference.table());
    let (a, b) = (netlink_dump(&ours), netlink_dump(&reference));
    for expr in [
        "[ nat dnat ip addr_min reg 1 addr_max reg 1 proto_min reg 9 proto_max reg 9 flags 0x3 ]",
        "[ masq proto_min reg 1 proto_max reg 1 flags 0x2 ]",
        "[ lookup reg 1 set pinhole6 0x0 ]",
    ] {
        assert!(a.contains(expr), "{a}");
    }
    if a != b {
        panic!("OURS\n{a}\nREFERENCE\n{b}");
    }
}

#[test]
fn install_replaces_a_leftover_table_atomically() {
    let Some(ns) = Netns::new() else { return };
    ns.nft_file(
        r#"table inet natwarden {
  map fwd4 { type inet_proto . inet_service : ipv4_addr . inet_service;
    elements = { tcp . 9999 : 10.9.9.9 . 9999 } }
  chain junk { type filter hook output priority 0; policy accept; counter; }
}
"#,
    );
    let mut fw = ns.backend();
    let f = fwd(Protocol::Udp, 4000, [10, 0, 0, 2], 5000);
    fw.install(&forwards(&[f])).expect("install over leftover");
    let t = ns.table();
    assert!(!t.contains("junk") && !t.contains("9999"), "{t}");
    assert!(
        t.contains("elements = { udp . 4000 : 10.0.0.2 . 5000 }"),
        "{t}"
    );
    assert!(t.contains("elements = { 10.0.0.2 . udp . 5000 }"), "{t}");
    // And the installed table is again replaced wholesale.
    fw.install(&nothing()).expect("reinstall");
    assert_eq!(ns.table(), EMPTY_TABLE);
}

#[test]
fn apply_adds_and_removes_both_elements() {
    let Some(ns) = Netns::new() else { return };
    let mut fw = ns.backend();
    fw.install(&nothing()).expect("install");
    let a = fwd(Protocol::Udp, 4000, [10, 0, 0, 2], 5000);
    let b = fwd(Protocol::Tcp, 4000, [10, 0, 0, 3], 22);
    fw.apply(&[FirewallChange::Add(a), FirewallChange::Add(b)])
        .expect("add");
    let t = ns.table();
    assert!(
        t.contains("udp . 4000 : 10.0.0.2 . 5000") && t.contains("tcp . 4000 : 10.0.0.3 . 22"),
        "{t}"
    );
    assert!(
        t.contains("10.0.0.2 . udp . 5000") && t.contains("10.0.0.3 . tcp . 22"),
        "{t}"
    );

    // Re-adding an identical forward is harmless; a new target for a mapped key is not.
    fw.apply(&[FirewallChange::Add(a)])
        .expect("identical re-add");
    let clash = fwd(Protocol::Udp, 4000, [10, 0, 0, 9], 5000);
    match fw.apply(&[FirewallChange::Add(clash)]) {
        Err(FirewallError::Kernel { errno, message, .. }) => {
            assert_eq!(errno, libc::EEXIST);
            assert_eq!(message, Some(NftMessage::NewSetElem(Set::Fwd4)));
        }
        other => panic!("expected EEXIST, got {other:?}"),
    }

    // Remove and re-add with a new target in one batch.
    let moved = fwd(Protocol::Udp, 4000, [10, 0, 0, 4], 5001);
    fw.apply(&[FirewallChange::Remove(a), FirewallChange::Add(moved)])
        .expect("move");
    let t = ns.table();
    assert!(t.contains("udp . 4000 : 10.0.0.4 . 5001"), "{t}");
    assert!(!t.contains("10.0.0.2"), "{t}");

    fw.apply(&[FirewallChange::Remove(moved), FirewallChange::Remove(b)])
        .expect("remove");
    assert_eq!(ns.table(), EMPTY_TABLE);
}

#[test]
fn failed_apply_names_the_message_and_changes_nothing() {
    let Some(ns) = Netns::new() else { return };
    let mut fw = ns.backend();
    let kept = fwd(Protocol::Tcp, 443, [10, 0, 0, 5], 8443);
    fw.install(&forwards(&[kept])).expect("install");
    let before = ns.table();
    let new = fwd(Protocol::Udp, 4000, [10, 0, 0, 2], 5000);
    let missing = fwd(Protocol::Udp, 6000, [10, 0, 0, 6], 6000);
    let r = fw.apply(&[
        FirewallChange::Add(new),
        FirewallChange::Remove(kept),
        FirewallChange::Remove(missing),
    ]);
    match r {
        Err(e @ FirewallError::Kernel { .. }) => {
            let FirewallError::Kernel {
                errno,
                message,
                element,
                ..
            } = &e
            else {
                unreachable!()
            };
            assert_eq!(*errno, libc::ENOENT, "{e}");
            assert_eq!(message, &Some(NftMessage::DelSetElem(Set::Fwd4)), "{e}");
            // The kernel points at the element, which we translate back.
            assert_eq!(element.as_deref(), Some("udp 6000 -> 10.0.0.6:6000"), "{e}");
            assert!(
                e.to_string().starts_with(
                    "kernel rejected DELSETELEM fwd4 (element udp 6000 -> 10.0.0.6:6000)"
                ),
                "{e}"
            );
        }
        other => panic!("expected ENOENT, got {other:?}"),
    }
    assert_eq!(ns.table(), before);
    // The socket is still usable after a refused batch.
    fw.apply(&[FirewallChange::Add(new)])
        .expect("add after failure");
    assert!(ns.table().contains("udp . 4000 : 10.0.0.2 . 5000"));
}

#[test]
fn install_of_50000_forwards() {
    let Some(ns) = Netns::new() else { return };
    let mut fw = ns.backend();
    let forwards: Vec<Forward> = (0..50_000u32)
        .map(|i| {
            let proto = if i % 2 == 0 {
                Protocol::Udp
            } else {
                Protocol::Tcp
            };
            let host = (i + 1).to_be_bytes();
            fwd(
                proto,
                1024 + (i / 2) as u16,
                [10, host[1], host[2], host[3]],
                5000,
            )
        })
        .collect();
    let t0 = Instant::now();
    let state = Installed {
        forwards,
        ..Installed::default()
    };
    let forwards = &state.forwards;
    fw.install(&state).expect("install 50000");
    let took = t0.elapsed();
    eprintln!("install of 50000 forwards took {took:?}");
    let fwd4 = ns.nft(&["list", "map", "inet", "natwarden", "fwd4"]);
    let allow4 = ns.nft(&["list", "set", "inet", "natwarden", "allow4"]);
    assert_eq!(count_elements(&fwd4), 50_000);
    assert_eq!(count_elements(&allow4), 50_000);
    // Incremental changes on a large table stay one small batch.
    let t0 = Instant::now();
    fw.apply(&[FirewallChange::Remove(forwards[123])])
        .expect("remove one");
    eprintln!("apply of one change on 50000 took {:?}", t0.elapsed());
    // Reinstalling over the big table (restart) is again one transaction.
    let t0 = Instant::now();
    fw.install(&state).expect("reinstall 50000");
    eprintln!("reinstall of 50000 forwards took {:?}", t0.elapsed());
    let fwd4 = ns.nft(&["list", "map", "inet", "natwarden", "fwd4"]);
    assert_eq!(count_elements(&fwd4), 50_000);
}

#[test]
fn remove_deletes_the_table_and_is_idempotent() {
    let Some(ns) = Netns::new() else { return };
    let mut fw = ns.backend();
    fw.install(&forwards(&[fwd(Protocol::Udp, 4000, [10, 0, 0, 2], 5000)]))
        .expect("install");
    assert!(ns.has_table());
    fw.remove().expect("remove");
    assert!(!ns.has_table());
    fw.remove().expect("second remove");
    assert!(!ns.has_table());
}

#[test]
fn other_tables_are_left_alone() {
    let Some(ns) = Netns::new() else { return };
    ns.nft_file(
        "table ip other { chain c { type filter hook input priority 0; policy accept; }; }\n",
    );
    let mut fw = ns.backend();
    fw.install(&nothing()).expect("install");
    fw.remove().expect("remove");
    assert!(ns.nft(&["list", "tables"]).contains("table ip other"));
}

fn ext_index(ns: &Netns) -> u32 {
    let line = ns.ip(&["-o", "link", "show", EXT]);
    line.split(':').next().unwrap().trim().parse().unwrap()
}

#[test]
fn rtnl_interface_index() {
    let Some(ns) = Netns::new() else { return };
    let want = ext_index(&ns);
    let (got, missing, lo) = ns.run(|| {
        (
            rtnl::interface_index(EXT),
            rtnl::interface_index("nosuch0"),
            rtnl::interface_index("lo"),
        )
    });
    assert_eq!(got.unwrap(), Some(want));
    assert_eq!(missing.unwrap(), None);
    assert_eq!(lo.unwrap(), Some(1));
}

#[test]
fn rtnl_ipv4_addresses() {
    let Some(ns) = Netns::new() else { return };
    ns.ip(&["addr", "add", "192.0.2.1/24", "dev", EXT]);
    ns.ip(&["addr", "add", "198.51.100.7/25", "dev", EXT]);
    let index = ext_index(&ns);
    let addrs = ns.run(rtnl::ipv4_addresses).expect("ipv4_addresses");
    for (a, len) in [
        (Ipv4Addr::new(192, 0, 2, 1), 24),
        (Ipv4Addr::new(198, 51, 100, 7), 25),
    ] {
        assert!(
            addrs.contains(&rtnl::InterfaceAddr {
                index,
                name: EXT.into(),
                address: a,
                prefix_len: len,
            }),
            "{addrs:?}"
        );
    }
    // lo is down in a fresh namespace, so ours are the only addresses.
    assert_eq!(addrs.len(), 2, "{addrs:?}");
}

#[test]
fn rtnl_default_route_interfaces() {
    let Some(ns) = Netns::new() else { return };
    assert_eq!(ns.run(rtnl::default_route_interfaces).unwrap(), vec![]);
    ns.ip(&["addr", "add", "192.0.2.1/24", "dev", EXT]);
    ns.ip(&["route", "add", "default", "via", "192.0.2.254", "dev", EXT]);
    // A default route in another table does not count.
    ns.ip(&[
        "route",
        "add",
        "default",
        "via",
        "192.0.2.253",
        "dev",
        EXT,
        "table",
        "100",
    ]);
    let index = ext_index(&ns);
    assert_eq!(ns.run(rtnl::default_route_interfaces).unwrap(), vec![index]);
}

#[test]
fn apply_adds_and_removes_outbound_and_pinholes() {
    use FirewallChange::{AddOutbound, AddPinhole, RemoveOutbound, RemovePinhole};
    let Some(ns) = Netns::new() else { return };
    let mut fw = ns.backend();
    fw.install(&nothing()).expect("install");
    let o1 = outbound(Protocol::Udp, [10, 0, 0, 2], 40000, 50000);
    let o2 = outbound(Protocol::Tcp, [10, 0, 0, 2], 40000, 50001);
    let p1 = pinhole(Protocol::Tcp, "2001:db8:1::10", 8080);
    let p2 = pinhole(Protocol::Udp, "2001:db8:1::10", 8080);
    fw.apply(&[
        AddOutbound(o1),
        AddPinhole(p1),
        AddOutbound(o2),
        AddPinhole(p2),
    ])
    .expect("add");
    let snat4 = ns.nft(&["list", "map", "inet", "natwarden", "snat4"]);
    let pinhole6 = ns.nft(&["list", "set", "inet", "natwarden", "pinhole6"]);
    assert!(
        snat4.contains("10.0.0.2 . udp . 40000 : 50000")
            && snat4.contains("10.0.0.2 . tcp . 40000 : 50001"),
        "{snat4}"
    );
    assert!(
        pinhole6.contains("2001:db8:1::10 . tcp . 8080")
            && pinhole6.contains("2001:db8:1::10 . udp . 8080"),
        "{pinhole6}"
    );
    assert_eq!((count_elements(&snat4), count_elements(&pinhole6)), (2, 2));

    // Identical re-adds are harmless; another external port for a mapped source is not.
    fw.apply(&[AddOutbound(o1), AddPinhole(p1)])
        .expect("identical re-add");
    let clash = outbound(Protocol::Udp, [10, 0, 0, 2], 40000, 50009);
    match fw.apply(&[AddOutbound(clash)]) {
        Err(FirewallError::Kernel { errno, message, .. }) => {
            assert_eq!(errno, libc::EEXIST);
            assert_eq!(message, Some(NftMessage::NewSetElem(Set::Snat4)));
        }
        other => panic!("expected EEXIST, got {other:?}"),
    }

    fw.apply(&[RemoveOutbound(o1), RemovePinhole(p2)])
        .expect("remove some");
    let t = ns.table();
    assert!(
        !t.contains("udp . 40000 : 50000") && !t.contains(". udp . 8080"),
        "{t}"
    );
    assert!(t.contains("10.0.0.2 . tcp . 40000 : 50001"), "{t}");
    assert!(t.contains("2001:db8:1::10 . tcp . 8080"), "{t}");
    fw.apply(&[RemovePinhole(p1), RemoveOutbound(o2)])
        .expect("remove the rest");
    assert_eq!(ns.table(), EMPTY_TABLE);
}

#[test]
fn failed_batch_mixing_kinds_changes_nothing() {
    use FirewallChange::{Add, AddOutbound, AddPinhole, RemoveOutbound, RemovePinhole};
    let Some(ns) = Netns::new() else { return };
    let mut fw = ns.backend_with(true);
    let state = Installed {
        forwards: vec![fwd(Protocol::Tcp, 443, [10, 0, 0, 5], 8443)],
        outbound: vec![outbound(Protocol::Udp, [10, 0, 0, 5], 5000, 6000)],
        pinholes: vec![pinhole(Protocol::Tcp, "2001:db8:1::5", 22)],
    };
    fw.install(&state).expect("install");
    let before = ns.table();
    let r = fw.apply(&[
        Add(fwd(Protocol::Udp, 4000, [10, 0, 0, 2], 5000)),
        AddOutbound(outbound(Protocol::Tcp, [10, 0, 0, 2], 7000, 7001)),
        AddPinhole(pinhole(Protocol::Udp, "2001:db8:1::2", 53)),
        RemoveOutbound(state.outbound[0]),
        RemovePinhole(pinhole(Protocol::Tcp, "2001:db8:1::9", 80)),
    ]);
    match r {
        Err(FirewallError::Kernel {
            errno,
            message,
            element,
            ..
        }) => {
            assert_eq!(errno, libc::ENOENT, "{message:?}");
            assert_eq!(message, Some(NftMessage::DelSetElem(Set::Pinhole6)));
            assert_eq!(element.as_deref(), Some("tcp [2001:db8:1::9]:80"));
        }
        other => panic!("expected ENOENT, got {other:?}"),
    }
    assert_eq!(ns.table(), before);

    let r = fw.apply(&[
        AddPinhole(pinhole(Protocol::Udp, "2001:db8:1::2", 53)),
        RemoveOutbound(outbound(Protocol::Udp, [10, 0, 0, 6], 5000, 6000)),
    ]);
    match r {
        Err(FirewallError::Kernel {
            errno,
            message,
            element,
            ..
        }) => {
            assert_eq!(errno, libc::ENOENT, "{message:?}");
            assert_eq!(message, Some(NftMessage::DelSetElem(Set::Snat4)));
            assert_eq!(
                element.as_deref(),
                Some("udp 10.0.0.6:5000 -> source port 6000")
            );
        }
        other => panic!("expected ENOENT, got {other:?}"),
    }
    assert_eq!(ns.table(), before);

    // A refused install leaves the previous table as it was, and names the element by
    // its place in its own list.
    let bad = Installed {
        outbound: vec![
            outbound(Protocol::Udp, [10, 0, 0, 7], 1000, 2000),
            outbound(Protocol::Udp, [10, 0, 0, 7], 1000, 2001),
        ],
        ..state.clone()
    };
    match fw.install(&bad) {
        Err(FirewallError::Kernel {
            errno,
            message,
            element,
            ..
        }) => {
            assert_eq!(errno, libc::EEXIST, "{message:?}");
            assert_eq!(message, Some(NftMessage::NewSetElem(Set::Snat4)));
            assert_eq!(
                element.as_deref(),
                Some("udp 10.0.0.7:1000 -> source port 2001")
            );
        }
        other => panic!("expected EEXIST, got {other:?}"),
    }
    assert_eq!(ns.table(), before);
}

/// lan -- gw -- wan over veth pairs, as lab/netns.sh lays them out but with the
/// gateway's interfaces named `lan0` and `ext0`:
///
///   lan  eth0 192.168.1.10/24  2001:db8:1::10/64   -- lan0 192.168.1.1/24  2001:db8:1::1/64     gw
///                                                      ext0 198.51.100.7/24 2001:db8:100::7/64  -- eth0 198.51.100.100/24 2001:db8:100::100/64  wan
///
/// IPv4 is masqueraded by the gateway's own `ip lab_nat` table (priority srcnat, with a
/// counter); IPv6 is routed, the WAN host reaching 2001:db8:1::/64 via the gateway.
struct Lab {
    lan: Netns,
    gw: Netns,
    wan: Netns,
}

impl Lab {
    fn new() -> Option<Lab> {
        let lab = Lab {
            lan: Netns::bare()?,
            gw: Netns::bare()?,
            wan: Netns::bare()?,
        };
        for ns in [&lab.lan, &lab.gw, &lab.wan] {
            ns.ip(&["link", "set", "lo", "up"]);
            // The kernel's link-local addresses cannot be `nodad`; without DAD they are
            // usable at once, so IPv6 works without waiting.
            ns.sysctl("net.ipv6.conf.default.accept_dad=0");
            ns.sysctl("net.ipv6.conf.all.accept_dad=0");
        }
        let (lan, gw, wan) = (&lab.lan.name, &lab.gw.name, &lab.wan.name);
        run_cmd(&[
            "ip", "link", "add", "eth0", "netns", lan, "type", "veth", "peer", "name", "lan0",
            "netns", gw,
        ]);
        run_cmd(&[
            "ip", "link", "add", "eth0", "netns", wan, "type", "veth", "peer", "name", EXT,
            "netns", gw,
        ]);
        for (ns, dev, addrs) in [
            (&lab.lan, "eth0", ["192.168.1.10/24", "2001:db8:1::10/64"]),
            (&lab.gw, "lan0", ["192.168.1.1/24", "2001:db8:1::1/64"]),
            (&lab.gw, EXT, ["198.51.100.7/24", "2001:db8:100::7/64"]),
            (
                &lab.wan,
                "eth0",
                ["198.51.100.100/24", "2001:db8:100::100/64"],
            ),
        ] {
            ns.ip(&["addr", "add", addrs[0], "dev", dev]);
            ns.ip(&["addr", "add", addrs[1], "dev", dev, "nodad"]);
            ns.ip(&["link", "set", dev, "up"]);
        }
        lab.lan
            .ip(&["route", "add", "default", "via", "192.168.1.1"]);
        lab.lan
            .ip(&["-6", "route", "add", "default", "via", "2001:db8:1::1"]);
        lab.gw
            .ip(&["route", "add", "default", "via", "198.51.100.100"]);
        lab.gw
            .ip(&["-6", "route", "add", "default", "via", "2001:db8:100::100"]);
        lab.wan.ip(&[
            "-6",
            "route",
            "add",
            "2001:db8:1::/64",
            "via",
            "2001:db8:100::7",
        ]);
        lab.gw.sysctl("net.ipv4.ip_forward=1");
        lab.gw.sysctl("net.ipv6.conf.all.forwarding=1");
        lab.gw.nft_file(
            r#"table ip lab_nat {
  chain postrouting { type nat hook postrouting priority srcnat; policy accept;
    oifname "ext0" counter masquerade; }
}
"#,
        );
        // Bounded wait until both families are routed end to end.
        let up = (0..50).any(|_| {
            let ok = lab
                .lan
                .sh("ping -c1 -W1 -q 198.51.100.100 && ping -6 -c1 -W1 -q 2001:db8:100::100")
                .status
                .success();
            if !ok {
                std::thread::sleep(Duration::from_millis(100));
            }
            ok
        });
        assert!(up, "lab did not come up");
        Some(lab)
    }

    /// Packets that went through the gateway's own masquerade rule.
    fn lab_nat_packets(&self) -> u64 {
        let t = self.gw.nft(&["list", "table", "ip", "lab_nat"]);
        let after = t
            .split("counter packets ")
            .nth(1)
            .expect("counter in lab_nat");
        after.split_whitespace().next().unwrap().parse().unwrap()
    }
}

/// Sends one UDP datagram from the LAN host's source port `sport` with `nc -u -p`, and
/// returns the source the WAN listener saw it come from.
fn udp_seen_from_wan(lab: &Lab, sport: u16, listener: &UdpSocket) -> SocketAddr {
    let dport = listener.local_addr().unwrap().port();
    let out = lab.lan.sh(&format!(
        "echo hello | timeout 5 nc -u -w1 -p {sport} 198.51.100.100 {dport}"
    ));
    assert!(
        out.status.success(),
        "nc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut buf = [0u8; 64];
    let (n, from) = listener
        .recv_from(&mut buf)
        .expect("datagram at the WAN host");
    assert_eq!(&buf[..n], b"hello\n");
    from
}

/// A socket opened on a thread inside a namespace stays in that namespace: the listeners
/// are made there and then used from the test's own thread.
fn wan_udp_listener(lab: &Lab, port: u16) -> UdpSocket {
    let s = lab
        .wan
        .run(|| UdpSocket::bind(("198.51.100.100", port)))
        .expect("binding the WAN listener");
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s
}

/// snat4 with real traffic: a LAN datagram from source port P leaves with the mapped
/// external port E, and the router's own masquerade (priority srcnat, after ours) does
/// not touch it again: NAT is bound once per connection, by the first chain that maps it.
#[test]
fn outbound_mapping_sets_the_source_port_the_wan_sees() {
    let Some(lab) = Lab::new() else { return };
    let mut fw = lab.gw.backend();
    fw.install(&nothing()).expect("install");
    let gw_ext = Ipv4Addr::new(198, 51, 100, 7);
    let listener = wan_udp_listener(&lab, 9999);

    // Without a mapping the router's masquerade handles it (keeping the port, it is free).
    // Its counter also holds the lab's readiness pings, hence the differences.
    let base = lab.lab_nat_packets();
    let seen = udp_seen_from_wan(&lab, 40001, &listener);
    assert_eq!(seen, SocketAddr::from((gw_ext, 40001)));
    assert_eq!(lab.lab_nat_packets(), base + 1);

    let mapping = outbound(Protocol::Udp, [192, 168, 1, 10], 40000, 50000);
    fw.apply(&[FirewallChange::AddOutbound(mapping)])
        .expect("add outbound");
    let seen = udp_seen_from_wan(&lab, 40000, &listener);
    assert_eq!(seen, SocketAddr::from((gw_ext, 50000)));
    assert_eq!(
        lab.lab_nat_packets(),
        base + 1,
        "the lab's masquerade ran again"
    );

    // Removed, a new connection from that LAN port is the router's masquerade's again
    // (its counter moves), but it keeps source port 50000: while a connection bound to a
    // mapping lives in conntrack, the NAT core gives the same LAN endpoint the same
    // external one (get_unique_tuple -> find_appropriate_src). A port never mapped is
    // the router's as before.
    fw.apply(&[FirewallChange::RemoveOutbound(mapping)])
        .expect("remove outbound");
    let other = wan_udp_listener(&lab, 9998);
    let seen = udp_seen_from_wan(&lab, 40000, &other);
    assert_eq!(lab.lab_nat_packets(), base + 2);
    assert_eq!(seen, SocketAddr::from((gw_ext, 50000)));
    let seen = udp_seen_from_wan(&lab, 40002, &other);
    assert_eq!(seen, SocketAddr::from((gw_ext, 40002)));
    assert_eq!(lab.lab_nat_packets(), base + 3);
}

fn tcp_connect_from_wan(lab: &Lab, to: SocketAddr) -> std::io::Result<TcpStream> {
    lab.wan
        .run(|| TcpStream::connect_timeout(&to, Duration::from_millis(1500)))
}

/// pinhole6 with real traffic: with ipv6_inbound_drop, the WAN host cannot open a TCP
/// connection to a LAN host until a pinhole says so, and cannot again once it is removed;
/// the LAN host's own connections out, and an established inbound one, keep working.
#[test]
fn pinhole_opens_and_closes_inbound_ipv6() {
    let Some(lab) = Lab::new() else { return };
    let inside: Ipv6Addr = "2001:db8:1::10".parse().unwrap();
    let to = SocketAddr::from((inside, 8080));
    let listener = lab
        .lan
        .run(|| TcpListener::bind(to))
        .expect("binding the LAN listener");

    // Routed and open before natwarden: the test would prove nothing otherwise.
    tcp_connect_from_wan(&lab, to).expect("connect without any table");
    listener.accept().expect("accept");

    let mut fw = lab.gw.backend_with(true);
    fw.install(&nothing()).expect("install");
    let e = tcp_connect_from_wan(&lab, to).expect_err("connected without a pinhole");
    assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");

    // Replies to the LAN host's own connections pass.
    let out_listener = lab
        .wan
        .run(|| TcpListener::bind(("2001:db8:100::100", 9000)))
        .expect("binding the WAN listener");
    lab.lan
        .run(|| {
            TcpStream::connect_timeout(
                &"[2001:db8:100::100]:9000".parse().unwrap(),
                Duration::from_millis(1500),
            )
        })
        .expect("LAN host connecting out");
    out_listener.accept().expect("accept outbound");

    let hole = pinhole(Protocol::Tcp, "2001:db8:1::10", 8080);
    fw.apply(&[FirewallChange::AddPinhole(hole)])
        .expect("add pinhole");
    let mut established = tcp_connect_from_wan(&lab, to).expect("connect through the pinhole");
    let (mut accepted, _) = listener.accept().expect("accept through the pinhole");
    // Another port stays closed.
    let e = tcp_connect_from_wan(&lab, SocketAddr::from((inside, 8081)))
        .expect_err("connected to a port without a pinhole");
    assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");

    fw.apply(&[FirewallChange::RemovePinhole(hole)])
        .expect("remove pinhole");
    let e = tcp_connect_from_wan(&lab, to).expect_err("connected after the pinhole closed");
    assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
    // Only new connections are dropped: the one made through the pinhole still works.
    established.write_all(b"ping").unwrap();
    accepted
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut buf = [0u8; 4];
    accepted
        .read_exact(&mut buf)
        .expect("data on the established connection");
    assert_eq!(&buf, b"ping");
}

#[test]
fn rtnl_ipv6_addresses() {
    let Some(ns) = Netns::new() else { return };
    // ext0 has no carrier (its veth peer is down), so an address that needs duplicate
    // address detection stays tentative; `nodad` ones are usable at once.
    ns.ip(&["addr", "add", "2001:db8::1/64", "dev", EXT, "nodad"]);
    ns.ip(&["addr", "add", "fe80::1/64", "dev", EXT, "nodad"]);
    ns.ip(&["addr", "add", "2001:db8::2/64", "dev", EXT]);
    let shown = ns.ip(&["-6", "addr", "show", "dev", EXT]);
    assert!(
        shown.contains("2001:db8::2/64 scope global tentative"),
        "{shown}"
    );
    let index = ext_index(&ns);
    let addrs = ns.run(rtnl::ipv6_addresses).expect("ipv6_addresses");
    let mut on_ext: Vec<_> = addrs.iter().filter(|a| a.index == index).cloned().collect();
    on_ext.sort_by_key(|a| a.address);
    let want = |a: &str| rtnl::InterfaceAddr6 {
        index,
        name: EXT.into(),
        address: a.parse().unwrap(),
        prefix_len: 64,
    };
    assert_eq!(
        on_ext,
        vec![want("2001:db8::1"), want("fe80::1")],
        "{addrs:?}"
    );
    // IPv4 is not mixed in.
    ns.ip(&["addr", "add", "192.0.2.1/24", "dev", EXT]);
    let again = ns.run(rtnl::ipv6_addresses).expect("ipv6_addresses");
    assert_eq!(again.len(), addrs.len(), "{again:?}");
}

#[test]
fn address_monitor_reports_ipv6_changes() {
    let Some(ns) = Netns::new() else { return };
    let monitor = ns.run(rtnl::AddressMonitor::open).expect("monitor");
    assert!(!monitor.drain(), "nothing happened yet");
    ns.ip(&["addr", "add", "2001:db8::9/64", "dev", EXT, "nodad"]);
    let mut pfd = libc::pollfd {
        fd: monitor.raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, 3000) };
    assert_eq!(n, 1, "no notification for an IPv6 address");
    assert!(monitor.drain());
    assert!(!monitor.drain(), "drained");
}

#[test]
fn table_watch_ignores_our_own_batches_and_sees_anyone_elses_changes() {
    let Some(ns) = Netns::new() else { return };
    let mut b = ns.backend();
    let watch = ns
        .run(|| b.watch())
        .expect("watch")
        .expect("the nftables backend has a watch");
    let f = Forward {
        protocol: Protocol::Tcp,
        external_port: 8080,
        internal: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 8080),
    };
    let state = Installed {
        forwards: vec![f],
        ..Installed::default()
    };
    b.install(&state).expect("install");
    b.apply(&[FirewallChange::Remove(f), FirewallChange::Add(f)])
        .expect("apply");
    assert!(
        !watch.drain(),
        "our own batches are not someone else's change"
    );

    ns.nft(&["add", "table", "inet", "other"]);
    ns.nft(&["add", "table", "ip", "natwarden"]);
    assert!(!watch.drain(), "other tables are none of our business");

    ns.nft(&[
        "delete",
        "element",
        "inet",
        "natwarden",
        "fwd4",
        "{ tcp . 8080 }",
    ]);
    assert!(watch.drain(), "a deleted element is seen");
    assert!(!watch.drain(), "drained");

    b.install(&state).expect("rebuild");
    assert!(!watch.drain(), "our rebuild is ours");
    ns.nft(&["flush", "ruleset"]);
    assert!(watch.drain(), "a flushed ruleset is seen");

    b.install(&state).expect("rebuild");
    let mut other = ns.backend();
    other.remove().expect("another socket deletes our table");
    assert!(watch.drain(), "another socket's batch is seen");
}
