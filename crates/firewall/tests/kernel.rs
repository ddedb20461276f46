//! Real-kernel tests: each test makes its own network namespace (deleted on drop, even on
//! panic), runs the backend inside it and checks the result with `nft` and `ip`.
//! They need root; without it they skip, except under CI=true where they fail.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use natwarden_core::firewall::{FirewallChange, Forward};
use natwarden_firewall::{rtnl, Backend, FirewallError, NftConfig, Nftables};
use natwarden_wire::Protocol;

const EXT: &str = "ext0";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A scratch network namespace with an `ext0` interface, removed on drop.
struct Netns {
    name: String,
}

impl Netns {
    /// None (after printing why) when the tests cannot run here.
    fn new() -> Option<Self> {
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
        self.run(|| {
            Nftables::new(NftConfig {
                external_interface: EXT.into(),
                ..NftConfig::default()
            })
            .expect("creating backend")
        })
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
chain prerouting {
type nat hook prerouting priority dstnat; policy accept;
iifname "ext0" meta nfproto ipv4 dnat ip to meta l4proto . th dport map @fwd4
}
chain forward {
type filter hook forward priority filter; policy accept;
iifname "ext0" ct status dnat ip daddr . meta l4proto . th dport @allow4 accept
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
    fw.install(&[]).expect("install");
    assert_eq!(ns.table(), EMPTY_TABLE);
}

/// Our messages against nft's own: the same ruleset written as nft text and loaded with
/// `nft -f` in a second namespace must list identically, expression by expression.
#[test]
fn install_matches_ruleset_loaded_by_nft() {
    let Some(ours) = Netns::new() else { return };
    let Some(reference) = Netns::new() else {
        return;
    };
    let forwards = [
        fwd(Protocol::Udp, 4000, [10, 0, 0, 2], 5000),
        fwd(Protocol::Tcp, 8080, [10, 0, 0, 3], 80),
    ];
    ours.backend().install(&forwards).expect("install");
    reference.nft_file(
        r#"table inet natwarden {
  map fwd4 { type inet_proto . inet_service : ipv4_addr . inet_service;
    elements = { udp . 4000 : 10.0.0.2 . 5000, tcp . 8080 : 10.0.0.3 . 80 } }
  set allow4 { type ipv4_addr . inet_proto . inet_service;
    elements = { 10.0.0.2 . udp . 5000, 10.0.0.3 . tcp . 80 } }
  chain prerouting { type nat hook prerouting priority dstnat; policy accept;
    iifname "ext0" meta nfproto ipv4 dnat ip to meta l4proto . th dport map @fwd4; }
  chain forward { type filter hook forward priority filter; policy accept;
    iifname "ext0" ct status dnat ip daddr . meta l4proto . th dport @allow4 accept; }
  chain input { type filter hook input priority filter - 10; policy accept;
    iifname "ext0" udp dport 5350 drop
    iifname "ext0" udp dport 5351 drop; }
}
"#,
    );
    assert_eq!(ours.table(), reference.table());
    // The kernel's own view of every expression (registers, lengths, flags) and element
    // bytes; elements come in hash order, so they are compared as a sorted list.
    let dump = |ns: &Netns| {
        let d = normalize(&ns.nft(&["--debug=netlink", "list", "table", "inet", "natwarden"]));
        let (mut elems, rest): (Vec<&str>, Vec<&str>) =
            d.lines().partition(|l| l.starts_with("element "));
        elems.sort_unstable();
        format!("{}\n{}", rest.join("\n"), elems.join("\n"))
    };
    let (a, b) = (dump(&ours), dump(&reference));
    assert!(
        a.contains("[ nat dnat ip addr_min reg 1 addr_max reg 1 proto_min reg 9 proto_max reg 9 flags 0x3 ]"),
        "{a}"
    );
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
    fw.install(&[f]).expect("install over leftover");
    let t = ns.table();
    assert!(!t.contains("junk") && !t.contains("9999"), "{t}");
    assert!(
        t.contains("elements = { udp . 4000 : 10.0.0.2 . 5000 }"),
        "{t}"
    );
    assert!(t.contains("elements = { 10.0.0.2 . udp . 5000 }"), "{t}");
    // And the installed table is again replaced wholesale.
    fw.install(&[]).expect("reinstall");
    assert_eq!(ns.table(), EMPTY_TABLE);
}

#[test]
fn apply_adds_and_removes_both_elements() {
    let Some(ns) = Netns::new() else { return };
    let mut fw = ns.backend();
    fw.install(&[]).expect("install");
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
        Err(FirewallError::Kernel { errno, message }) => {
            assert_eq!(errno, libc::EEXIST);
            assert!(message.starts_with("NEWSETELEM fwd4"), "{message}");
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
    fw.install(&[kept]).expect("install");
    let before = ns.table();
    let new = fwd(Protocol::Udp, 4000, [10, 0, 0, 2], 5000);
    let missing = fwd(Protocol::Udp, 6000, [10, 0, 0, 6], 6000);
    let r = fw.apply(&[
        FirewallChange::Add(new),
        FirewallChange::Remove(kept),
        FirewallChange::Remove(missing),
    ]);
    match r {
        Err(FirewallError::Kernel { errno, message }) => {
            assert_eq!(errno, libc::ENOENT, "{message}");
            assert!(message.starts_with("DELSETELEM fwd4"), "{message}");
            // The kernel points at the element, which we translate back.
            assert!(message.contains("udp 6000 -> 10.0.0.6:6000"), "{message}");
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
    fw.install(&forwards).expect("install 50000");
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
    fw.install(&forwards).expect("reinstall 50000");
    eprintln!("reinstall of 50000 forwards took {:?}", t0.elapsed());
    let fwd4 = ns.nft(&["list", "map", "inet", "natwarden", "fwd4"]);
    assert_eq!(count_elements(&fwd4), 50_000);
}

#[test]
fn remove_deletes_the_table_and_is_idempotent() {
    let Some(ns) = Netns::new() else { return };
    let mut fw = ns.backend();
    fw.install(&[fwd(Protocol::Udp, 4000, [10, 0, 0, 2], 5000)])
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
    fw.install(&[]).expect("install");
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
