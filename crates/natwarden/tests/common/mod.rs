//! The namespace lab for end-to-end tests: three hosts made by `lab/netns.sh`, a
//! natwarden daemon in the gateway, and guards that tear everything down on drop,
//! also when a test panics.

#![allow(dead_code)]

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const GW_LAN: &str = "192.168.1.1";
pub const GW_WAN: &str = "198.51.100.7";
pub const LAN_HOST: &str = "192.168.1.10";
pub const WAN_HOST: &str = "198.51.100.100";

const NETNS_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../lab/netns.sh");
pub const EXAMPLE_CONFIG: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/natwarden.toml");

/// A NAT-PMP request mapping TCP `port` to the same external port (RFC 6886 3.3).
pub fn map_request(port: u16, lifetime: u32) -> [u8; 12] {
    let mut r = [0u8; 12];
    r[1] = 2; // map TCP
    r[4..6].copy_from_slice(&port.to_be_bytes());
    r[6..8].copy_from_slice(&port.to_be_bytes());
    r[8..12].copy_from_slice(&lifetime.to_be_bytes());
    r
}

/// Config edits for tests that make thousands of mappings from one host, fast.
pub const MANY_MAPPINGS: [(&str, &str); 2] = [
    ("max_per_client = 128", "max_per_client = 10000"),
    (
        "requests_per_second_per_client = 20",
        "requests_per_second_per_client = 0",
    ),
];

/// Root is required; under CI a missing privilege is a failure, not a skip.
pub fn require_root() -> bool {
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

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct Lab {
    pub prefix: String,
    pub dir: PathBuf,
}

#[derive(Clone, Copy)]
pub enum Host {
    Lan,
    Gw,
    Wan,
}

impl Lab {
    pub fn up() -> Lab {
        Lab::up_with(None)
    }

    /// A lab whose WAN link is `wan_net`.0/24 (gateway .7, WAN host .100) when given.
    pub fn up_with(wan_net: Option<&str>) -> Lab {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("nw{}x{n}", std::process::id());
        let dir = std::env::temp_dir().join(format!("natwarden-{prefix}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("creating the lab's temp dir");
        let mut cmd = Command::new("bash");
        cmd.args([NETNS_SH, "up", &prefix]);
        if let Some(net) = wan_net {
            cmd.env("LAB_WAN_NET", net);
        }
        let st = cmd.status().expect("running lab/netns.sh");
        assert!(st.success(), "lab/netns.sh up failed");
        Lab { prefix, dir }
    }

    pub fn ns(&self, host: Host) -> String {
        let h = match host {
            Host::Lan => "lan",
            Host::Gw => "gw",
            Host::Wan => "wan",
        };
        format!("{}-{h}", self.prefix)
    }

    pub fn cmd(&self, host: Host, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(host)]).args(args);
        c
    }

    /// Runs `f` on a new thread inside `host`'s network namespace (setns on that thread
    /// only; sockets it opens live in the namespace).
    pub fn spawn_in<T: Send + 'static>(
        &self,
        host: Host,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        use std::os::fd::AsRawFd;
        let ns = fs::File::open(format!("/run/netns/{}", self.ns(host))).expect("netns file");
        std::thread::spawn(move || {
            // SAFETY: setns on this thread only, with a valid namespace fd.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns");
            f()
        })
    }

    /// Runs to completion, bounded by `timeout` seconds (coreutils `timeout`).
    pub fn run(&self, host: Host, secs: u32, args: &[&str]) -> Output {
        let t = secs.to_string();
        let mut full = vec!["timeout", t.as_str()];
        full.extend_from_slice(args);
        self.cmd(host, &full)
            .stdin(Stdio::null())
            .output()
            .expect("running a lab command")
    }

    pub fn sh(&self, host: Host, secs: u32, script: &str) -> Output {
        self.run(host, secs, &["sh", "-c", script])
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.join(name);
        fs::write(&p, text).expect("writing a lab file");
        p
    }

    /// The example config with some lines replaced: `edits` are (old, new) pairs.
    pub fn config(&self, name: &str, edits: &[(&str, &str)]) -> PathBuf {
        let mut text = fs::read_to_string(EXAMPLE_CONFIG).expect("reading the example config");
        for (old, new) in edits {
            assert!(text.contains(old), "example config lacks `{old}`");
            text = text.replace(old, new);
        }
        text = text.replace(
            "/var/lib/natwarden/state.json",
            &self.state_file().to_string_lossy(),
        );
        text = text.replace(
            "/run/natwarden/control.sock",
            &self.control_socket().to_string_lossy(),
        );
        self.write(name, &text)
    }

    pub fn state_file(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    pub fn control_socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    /// `natwarden status --json` of the lab's daemon.
    pub fn status(&self) -> serde_json::Value {
        let sock = self.control_socket();
        let o = self.natwarden(&["status", "--json", "--socket", &sock.to_string_lossy()]);
        assert!(o.status.success(), "status failed: {}", all_output(&o));
        serde_json::from_slice(&o.stdout).expect("status --json is JSON")
    }

    pub fn natwarden(&self, args: &[&str]) -> Output {
        let mut full = vec![env!("CARGO_BIN_EXE_natwarden")];
        full.extend_from_slice(args);
        self.run(Host::Gw, 30, &full)
    }

    pub fn start(&self, config: &Path) -> Daemon {
        let log = self.dir.join(format!(
            "daemon-{}.log",
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let child = self
            .cmd(
                Host::Gw,
                &[
                    env!("CARGO_BIN_EXE_natwarden"),
                    "serve",
                    "--config",
                    &config.to_string_lossy(),
                ],
            )
            .env("NATWARDEN_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("creating the daemon log"))
            .spawn()
            .expect("starting natwarden serve");
        let d = Daemon {
            child: Some(child),
            log,
        };
        d.wait_for_log("serving NAT-PMP", Duration::from_secs(10));
        d
    }

    /// `nft list` of our table in the gateway, or None when the table does not exist.
    pub fn table(&self, table: &str) -> Option<String> {
        let o = self.run(Host::Gw, 10, &["nft", "list", "table", "inet", table]);
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Elements of a map or set of our table, one string per element.
    pub fn elements(&self, set: &str) -> Vec<String> {
        let o = self.run(
            Host::Gw,
            10,
            &["nft", "-j", "list", "set", "inet", "natwarden", set],
        );
        if !o.status.success() {
            let o = self.run(
                Host::Gw,
                10,
                &["nft", "-j", "list", "map", "inet", "natwarden", set],
            );
            return elements_of(&o.stdout);
        }
        elements_of(&o.stdout)
    }

    /// Polls `f` every 100 ms until it holds or `secs` pass.
    pub fn eventually(&self, secs: u64, mut f: impl FnMut() -> bool) -> bool {
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < end {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        f()
    }
}

fn elements_of(json: &[u8]) -> Vec<String> {
    let v: serde_json::Value = match serde_json::from_slice(json) {
        Ok(v) => v,
        Err(_) => return Vec::new(),
    };
    let mut out = Vec::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        for key in ["set", "map"] {
            if let Some(elems) = item[key]["elem"].as_array() {
                out.extend(elems.iter().map(|e| e.to_string()));
            }
        }
    }
    out
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .args([NETNS_SH, "down", &self.prefix])
            .status();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

pub struct Daemon {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Daemon {
    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.log_text().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("daemon log never showed `{needle}`:\n{}", self.log_text());
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Sends `signal` without waiting.
    pub fn signal(&self, signal: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(pid as i32, signal) };
        }
    }

    /// `kill -9`: the daemon gets no chance to clean up.
    pub fn kill9(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (bounded); returns the exit code.
    pub fn stop(mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(st)) = child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn all_output(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

// ---- for the client tests: a lab with a non-reserved WAN, and miniupnpd as its gateway ----

const MINIUPNPD_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../lab/miniupnpd.sh");

/// The WAN network of [`Lab::up_public_wan`]: not reserved, so miniupnpd serves behind it;
/// it exists only inside the lab's namespaces.
pub const PUBLIC_WAN_NET: &str = "45.45.45";
pub const PUBLIC_GW_WAN: &str = "45.45.45.7";

impl Lab {
    /// As [`Lab::up`], with the WAN link in [`PUBLIC_WAN_NET`].0/24 (gateway .7, WAN host .100).
    pub fn up_public_wan() -> Lab {
        Lab::up_with(Some(PUBLIC_WAN_NET))
    }

    /// miniupnpd serving NAT-PMP and PCP in the gateway (lab/miniupnpd.sh), stopped on drop.
    pub fn start_miniupnpd(&self) -> Miniupnpd {
        self.start_miniupnpd_with(&[])
    }

    /// As [`Lab::start_miniupnpd`], with lab/miniupnpd.sh's environment settings (e.g.
    /// `MINIUPNPD_SWAPPED=1`).
    pub fn start_miniupnpd_with(&self, env: &[(&str, &str)]) -> Miniupnpd {
        let o = Command::new("timeout")
            .args(["20", "bash", MINIUPNPD_SH, "start", &self.prefix])
            .arg(&self.dir)
            .envs(env.iter().copied())
            .output()
            .expect("running lab/miniupnpd.sh");
        assert!(
            o.status.success(),
            "lab/miniupnpd.sh start failed:\n{}",
            all_output(&o)
        );
        let pid = stdout(&o)
            .trim()
            .parse()
            .expect("miniupnpd.sh prints the pid");
        Miniupnpd {
            prefix: self.prefix.clone(),
            dir: self.dir.clone(),
            pid,
        }
    }

    /// The gateway's whole ruleset (`nft list ruleset`).
    pub fn ruleset(&self) -> String {
        stdout(&self.run(Host::Gw, 10, &["nft", "list", "ruleset"]))
    }
}

/// Without miniupnpd the miniupnpd tests cannot run; under CI that is a failure.
pub fn require_miniupnpd() -> bool {
    let found = Command::new("sh")
        .args(["-c", "command -v miniupnpd"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if found {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("miniupnpd is needed under CI=true: apt-get install miniupnpd-nftables");
    }
    eprintln!("skipping: miniupnpd is not installed (apt-get install miniupnpd-nftables)");
    false
}

/// A running miniupnpd (it daemonizes; `pid` is the daemon's).
pub struct Miniupnpd {
    prefix: String,
    dir: PathBuf,
    pub pid: u32,
}

impl Miniupnpd {
    pub fn is_running(&self) -> bool {
        // SAFETY: kill(pid, 0) only checks that the process exists.
        unsafe { libc::kill(self.pid as i32, 0) == 0 }
    }

    /// Stops it now (also what dropping does).
    pub fn stop(self) {}
}

impl Drop for Miniupnpd {
    fn drop(&mut self) {
        let _ = Command::new("timeout")
            .args(["10", "bash", MINIUPNPD_SH, "stop", &self.prefix])
            .arg(&self.dir)
            .status();
        if self.is_running() {
            // SAFETY: kill(2) on the daemon whose pid miniupnpd.sh reported.
            unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        }
    }
}

/// A line-by-line reader of a child's stdout, on a thread, with timeouts.
pub struct Lines {
    rx: std::sync::mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Lines {
    pub fn new(out: impl Read + Send + 'static) -> Lines {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines {
            rx,
            seen: Vec::new(),
        }
    }

    /// The first line (from now on) for which `f` holds, within `timeout`.
    pub fn wait_for(&mut self, timeout: Duration, f: impl Fn(&str) -> bool) -> Option<String> {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if f(&line) {
                        return Some(line);
                    }
                }
                Err(_) => return None,
            }
        }
    }
}
