//! End to end in namespaces: `lab/population.sh up`, the population serving 100.64.0.0/24
//! and 2001:db8:64::/120 in PREFIX-pop, probed from PREFIX-scan; every answer (or silence)
//! checked against the truth file, and a granted mapping followed through the leftover file.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use natwarden_wire::{natpmp, pcp, Protocol};
use serde_json::Value;

const POPULATION_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../population.sh");
const BIN: &str = env!("CARGO_BIN_EXE_population");
/// A seed whose first 48 IPv4 and 16 IPv6 addresses hold every behaviour (checked below).
const SEED: &str = "30";
const V4_PROBED: u32 = 48;
const V6_PROBED: u128 = 16;
const SCANNER_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

/// Root is required; under CI a missing privilege is a failure, not a skip.
fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("namespace tests need root (CI=true): run as root");
    }
    eprintln!("skipping: namespace tests need root");
    false
}

/// The lab and the population process; dropping it kills the process and removes the
/// namespaces, also when the test panics.
struct Lab {
    prefix: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl Lab {
    fn up() -> Lab {
        let prefix = format!("pop{}", std::process::id());
        let dir = std::env::temp_dir().join(format!("natwarden-{prefix}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("creating the lab's temp dir");
        // The guard exists before the script runs, so a half-made lab is removed too.
        let lab = Lab {
            prefix,
            dir,
            child: None,
        };
        let status = Command::new("timeout")
            .args(["60", "bash", POPULATION_SH, "up", &lab.prefix])
            .status()
            .expect("running lab/population.sh");
        assert!(status.success(), "lab/population.sh up failed");
        lab
    }

    fn ns(&self, side: &str) -> String {
        format!("{}-{side}", self.prefix)
    }

    fn truth(&self) -> PathBuf {
        self.dir.join("truth.jsonl")
    }

    fn leftover(&self) -> PathBuf {
        self.dir.join("leftover.jsonl")
    }

    /// Starts the population in PREFIX-pop and waits (bounded) for its `ready`.
    fn start(&mut self) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns("pop"), BIN])
            .args([
                "--v4",
                "100.64.0.0/24",
                "--v6",
                "2001:db8:64::/120",
                "--seed",
                SEED,
            ])
            .arg("--truth")
            .arg(self.truth())
            .arg("--leftover")
            .arg(self.leftover())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the population");
        let stdout = child.stdout.take().expect("piped stdout");
        self.child = Some(child);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the population did not say ready within 20 s");
        assert_eq!(line.trim(), "ready");
    }

    fn signal(&self, signal: libc::c_int) {
        let child = self.child.as_ref().expect("population running");
        // `ip netns exec` execs the program, so the child's pid is the population's.
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits");
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal})");
    }

    /// Runs `f` on a thread inside PREFIX-scan (setns on that thread only).
    fn in_scan<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        use std::os::fd::AsRawFd;
        let ns = fs::File::open(format!("/run/netns/{}", self.ns("scan"))).expect("netns file");
        std::thread::spawn(move || {
            // SAFETY: setns on this thread only, with a valid namespace fd.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns");
            f()
        })
        .join()
        .expect("the probe thread panicked")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("timeout")
            .args(["30", "bash", POPULATION_SH, "down", &self.prefix])
            .status();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn read_truth(path: &Path) -> HashMap<IpAddr, Value> {
    let text = fs::read_to_string(path).expect("reading the truth file");
    let mut truth = HashMap::new();
    let mut previous: Option<IpAddr> = None;
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).expect("a JSON truth line");
        let target: IpAddr = v["target"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .expect("a target address");
        if let Some(p) = previous {
            assert!(p < target, "truth sorted by address: {p} then {target}");
        }
        previous = Some(target);
        truth.insert(target, v);
    }
    truth
}

/// Every datagram that came back within the wait: (reply source, bytes).
type Replies = Vec<(SocketAddr, Vec<u8>)>;

/// Sends each request to port 5351 of each target from one socket, then collects what
/// comes back until `quiet` passes without a datagram (bounded by `limit`).
fn probe(socket: &UdpSocket, targets: &[IpAddr], request: &[u8]) -> Replies {
    for t in targets {
        socket
            .send_to(request, SocketAddr::new(*t, 5351))
            .expect("sending a probe");
    }
    collect(socket)
}

fn collect(socket: &UdpSocket) -> Replies {
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("read timeout");
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut quiet_since = Instant::now();
    let mut replies = Vec::new();
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline && quiet_since.elapsed() < Duration::from_millis(700) {
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            replies.push((from, buf[..n].to_vec()));
            quiet_since = Instant::now();
        }
    }
    replies
}

fn natpmp_request(request: natpmp::Request) -> Vec<u8> {
    let mut buf = [0u8; natpmp::Request::MAX_LEN];
    let n = request.emit(&mut buf);
    buf[..n].to_vec()
}

fn announce(client: IpAddr) -> Vec<u8> {
    let request = pcp::Request {
        lifetime: 0,
        client_address: pcp::to_wire_address(client),
        op: pcp::OpData::Announce,
        options: pcp::Options::NONE,
    };
    let mut buf = [0u8; pcp::MAX_LEN];
    let n = request.emit(&mut buf);
    buf[..n].to_vec()
}

fn strictly_invalid(bytes: &[u8]) -> bool {
    natpmp::Response::parse(bytes).is_err() && pcp::Response::parse(bytes).is_err()
}

/// Checks the answers to one kind of probe against the truth; returns the targets that sent
/// junk and those that stayed silent (both absent from the truth).
fn check(
    truth: &HashMap<IpAddr, Value>,
    targets: &[IpAddr],
    replies: &Replies,
    natpmp_probe: bool,
) -> (BTreeSet<IpAddr>, BTreeSet<IpAddr>) {
    let (mut junk, mut silent) = (BTreeSet::new(), BTreeSet::new());
    for t in targets {
        let line = truth.get(t);
        let expected_source: IpAddr = line
            .and_then(|l| l["reply_source"].as_str())
            .map(|s| s.parse().expect("a reply_source address"))
            .unwrap_or(*t);
        let got: Vec<&Vec<u8>> = replies
            .iter()
            .filter(|(from, _)| from.ip() == expected_source)
            .map(|(_, bytes)| bytes)
            .collect();
        let Some(line) = line else {
            match got.as_slice() {
                [] => {
                    silent.insert(*t);
                }
                [bytes] => {
                    assert!(
                        strictly_invalid(bytes),
                        "{t}: not in the truth, yet a valid reply {bytes:?}"
                    );
                    junk.insert(*t);
                }
                more => panic!("{t}: {} replies to one probe", more.len()),
            }
            continue;
        };
        if line["reply_source"].is_string() {
            assert!(
                !replies.iter().any(|(from, _)| from.ip() == *t),
                "{t}: answered from itself, the truth says from {expected_source}"
            );
        }
        let speaks_natpmp = line["protocols"]
            .as_array()
            .expect("protocols")
            .iter()
            .any(|p| p == "nat-pmp");
        if natpmp_probe && !speaks_natpmp {
            assert!(
                got.is_empty(),
                "{t}: {} speaks no NAT-PMP, yet answered",
                line["behaviour"]
            );
            continue;
        }
        let [bytes] = got.as_slice() else {
            panic!(
                "{t} ({}): {} replies from {expected_source}",
                line["behaviour"],
                got.len()
            );
        };
        if natpmp_probe {
            let response = natpmp::Response::parse(bytes)
                .unwrap_or_else(|e| panic!("{t}: invalid NAT-PMP reply {bytes:?}: {e}"));
            let natpmp::Response::ExternalAddress(ext) = response else {
                panic!("{t}: not an external-address response: {response:?}");
            };
            match line["external_address"].as_str() {
                Some(address) => {
                    assert!(ext.result.is_success(), "{t}: {ext:?}");
                    assert_eq!(ext.address.to_string(), address, "{t}");
                }
                None => assert!(
                    !ext.result.is_success(),
                    "{t}: {ext:?} where the truth has none"
                ),
            }
        } else {
            let response = pcp::Response::parse(bytes)
                .unwrap_or_else(|e| panic!("{t}: invalid PCP reply {bytes:?}: {e}"));
            assert_eq!(response.result, pcp::ResultCode::SUCCESS, "{t}");
            assert_eq!(response.opcode(), pcp::Opcode::Announce, "{t}");
        }
    }
    (junk, silent)
}

#[test]
fn population_answers_as_its_truth_file_says() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::up();
    lab.start();
    let truth = read_truth(&lab.truth());
    let behaviours: BTreeSet<String> = truth
        .values()
        .map(|v| v["behaviour"].as_str().expect("behaviour").to_string())
        .collect();
    assert_eq!(
        behaviours.len(),
        7,
        "every answering behaviour present: {behaviours:?}"
    );

    let v4: Vec<IpAddr> = (0..V4_PROBED)
        .map(|i| IpAddr::V4(Ipv4Addr::from(0x6440_0000 + i)))
        .collect();
    let v6: Vec<IpAddr> = (0..V6_PROBED)
        .map(|i| {
            IpAddr::V6(Ipv6Addr::from(
                0x2001_0db8_0064_0000_0000_0000_0000_0000 + i,
            ))
        })
        .collect();
    let (natpmp_replies, pcp4_replies, pcp6_replies) = {
        let (v4, v6) = (v4.clone(), v6.clone());
        lab.in_scan(move || {
            let natpmp_socket = UdpSocket::bind("0.0.0.0:0").expect("bind");
            let pcp4_socket = UdpSocket::bind("0.0.0.0:0").expect("bind");
            let pcp6_socket = UdpSocket::bind("[::]:0").expect("bind");
            let ext = natpmp_request(natpmp::Request::ExternalAddress);
            let a = probe(&natpmp_socket, &v4, &ext);
            let b = probe(&pcp4_socket, &v4, &announce(IpAddr::V4(SCANNER_V4)));
            let scanner6: IpAddr = "2001:db8:ff::1".parse().expect("address");
            let c = probe(&pcp6_socket, &v6, &announce(scanner6));
            (a, b, c)
        })
    };
    let (junk_a, silent_a) = check(&truth, &v4, &natpmp_replies, true);
    let (junk_b, silent_b) = check(&truth, &v4, &pcp4_replies, false);
    let (junk_c, silent_c) = check(&truth, &v6, &pcp6_replies, false);
    // Garbage answers every datagram, silent none: the same targets both times.
    assert_eq!(junk_a, junk_b);
    assert_eq!(silent_a, silent_b);
    for (junk, silent) in [(&junk_a, &silent_a), (&junk_c, &silent_c)] {
        assert!(!junk.is_empty(), "no garbage target probed");
        assert!(!silent.is_empty(), "no silent target probed");
    }
    let probed_behaviours: BTreeSet<&str> = v4
        .iter()
        .chain(&v6)
        .filter_map(|t| truth.get(t))
        .map(|v| v["behaviour"].as_str().expect("behaviour"))
        .collect();
    assert_eq!(probed_behaviours.len(), 7, "{probed_behaviours:?}");

    // A mapping at an open gateway shows in the leftover file, and goes after a delete.
    let open = *v4
        .iter()
        .find(|t| truth.get(t).is_some_and(|v| v["behaviour"] == "open"))
        .expect("an open target among the probed");
    let map = |lifetime: u32| {
        natpmp_request(natpmp::Request::Map(natpmp::MapRequest {
            protocol: Protocol::Tcp,
            internal_port: 4444,
            suggested_external_port: 8022,
            lifetime,
        }))
    };
    let ask = move |request: Vec<u8>| -> natpmp::MapResponse {
        let replies = {
            let socket = UdpSocket::bind("0.0.0.0:0").expect("bind");
            probe(&socket, &[open], &request)
        };
        let [(_, bytes)] = replies.as_slice() else {
            panic!("{open}: {} replies to a MAP", replies.len());
        };
        match natpmp::Response::parse(bytes) {
            Ok(natpmp::Response::Map(m)) => m,
            other => panic!("{open}: not a MAP response: {other:?}"),
        }
    };
    let granted = {
        let request = map(600);
        lab.in_scan(move || ask(request))
    };
    assert!(granted.result.is_success(), "{granted:?}");
    assert_eq!((granted.external_port, granted.lifetime), (8022, 600));
    let expected = serde_json::json!({
        "target": open.to_string(),
        "protocol": "tcp",
        "internal_port": 4444,
        "external_port": 8022,
        "client": SCANNER_V4.to_string(),
    });
    lab.signal(libc::SIGUSR1);
    let lines = wait_for_leftover(&lab.leftover(), |lines| !lines.is_empty());
    assert_eq!(lines.len(), 1, "{lines:?}");
    let mut line = lines[0].clone();
    let expires_in = line["expires_in"].as_u64().expect("expires_in");
    assert!((590..=600).contains(&expires_in), "{expires_in}");
    line.as_object_mut().expect("object").remove("expires_in");
    assert_eq!(line, expected);

    let deleted = {
        let request = map(0);
        lab.in_scan(move || ask(request))
    };
    assert!(deleted.result.is_success(), "{deleted:?}");
    assert_eq!((deleted.external_port, deleted.lifetime), (0, 0));
    lab.signal(libc::SIGUSR1);
    wait_for_leftover(&lab.leftover(), |lines| lines.is_empty());

    // SIGTERM: a clean exit that leaves an empty leftover file.
    lab.signal(libc::SIGTERM);
    let mut child = lab.child.take().expect("population running");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the population") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the population did not exit within 10 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    assert_eq!(fs::read_to_string(lab.leftover()).expect("leftover"), "");
}

/// Waits (bounded) until the leftover file's lines satisfy `done`; returns them.
fn wait_for_leftover(path: &Path, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lines: Option<Vec<Value>> = fs::read_to_string(path).ok().map(|text| {
            text.lines()
                .map(|l| serde_json::from_str(l).expect("a JSON leftover line"))
                .collect()
        });
        if let Some(lines) = lines {
            if done(&lines) {
                return lines;
            }
        }
        assert!(
            Instant::now() < deadline,
            "leftover file {} not as expected within 5 s",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
