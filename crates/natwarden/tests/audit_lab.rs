//! `natwarden audit` end to end: against the lab population (lab/population: every kind of
//! gateway VU#184540 describes, with its ground truth), against natwarden serve and against
//! miniupnpd 2.3.1, correctly configured and misconfigured, all seen from the WAN side.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const POPULATION_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../lab/population.sh");
const NATWARDEN: &str = env!("CARGO_BIN_EXE_natwarden");

/// The population binary, built beside natwarden by `cargo test --workspace`.
fn population_bin() -> PathBuf {
    let p = std::path::Path::new(NATWARDEN).with_file_name("population");
    assert!(
        p.exists(),
        "{} is missing: cargo build -p natwarden-population",
        p.display()
    );
    p
}

/// The scanner and population namespaces with a population serving in them; removed on
/// drop, also when a test panics.
struct PopLab {
    prefix: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl PopLab {
    fn up(tag: &str, args: &[&str]) -> PopLab {
        let prefix = format!("au{}{tag}", std::process::id() % 100_000);
        let dir = std::env::temp_dir().join(format!("natwarden-{prefix}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("temp dir");
        let mut lab = PopLab {
            prefix,
            dir,
            child: None,
        };
        let st = Command::new("timeout")
            .args(["60", "bash", POPULATION_SH, "up", &lab.prefix])
            .status()
            .expect("population.sh");
        assert!(st.success(), "population.sh up failed");
        let truth = lab.dir.join("truth.json");
        let leftover = lab.dir.join("leftover.json");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &format!("{}-pop", lab.prefix)])
            .arg(population_bin())
            .args(args)
            .arg("--truth")
            .arg(&truth)
            .arg("--leftover")
            .arg(&leftover)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the population");
        let mut first = String::new();
        let out = child.stdout.take().expect("stdout");
        BufReader::new(out).read_line(&mut first).expect("reading");
        lab.child = Some(child);
        assert_eq!(first.trim(), "ready", "the population did not start");
        lab
    }

    fn truth(&self) -> BTreeMap<String, Value> {
        json_lines(&self.dir.join("truth.json"))
            .into_iter()
            .map(|v| (v["target"].as_str().unwrap_or("").to_string(), v))
            .collect()
    }

    /// The mappings the population still holds (it writes them on SIGUSR1).
    fn leftover(&self) -> Vec<Value> {
        let path = self.dir.join("leftover.json");
        let _ = fs::remove_file(&path);
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGUSR1) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !path.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(50));
        json_lines(&path)
    }

    fn audit_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &format!("{}-scan", self.prefix)])
            .args(["timeout", "120", NATWARDEN, "audit"])
            .args(args);
        c
    }

    fn audit(&self, args: &[&str]) -> Output {
        self.audit_cmd(args)
            .stdin(Stdio::null())
            .output()
            .expect("running natwarden audit")
    }
}

impl Drop for PopLab {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("timeout")
            .args(["30", "bash", POPULATION_SH, "down", &self.prefix])
            .status();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn json_lines(path: &std::path::Path) -> Vec<Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// The audit's JSON lines: targets by address, and the summary.
fn reports(path: &std::path::Path) -> (BTreeMap<String, Value>, Value) {
    let mut targets = BTreeMap::new();
    let mut summary = Value::Null;
    for v in json_lines(path) {
        match v["type"].as_str() {
            Some("target") => {
                let t = v["target"].as_str().unwrap_or("").to_string();
                assert!(targets.insert(t, v).is_none(), "a target reported twice");
            }
            Some("summary") => summary = v,
            other => panic!("unexpected line type {other:?}"),
        }
    }
    (targets, summary)
}

/// Every answering target reported exactly as the truth says, nothing else reported.
fn assert_matches_truth(truth: &BTreeMap<String, Value>, got: &BTreeMap<String, Value>, key: &str) {
    let mut wrong = Vec::new();
    for t in truth.keys().chain(got.keys()) {
        let (Some(want), Some(have)) = (truth.get(t), got.get(t)) else {
            wrong.push(format!(
                "{t}: truth {:?} report {:?}",
                truth.get(t),
                got.get(t)
            ));
            continue;
        };
        for (w, h) in [
            (key, "findings"),
            ("protocols", "protocols"),
            ("reply_source", "reply_source"),
            ("external_address", "external_address"),
        ] {
            if want[w] != have[h] {
                wrong.push(format!(
                    "{t} ({}): {h} is {} but the truth says {}",
                    want["behaviour"], have[h], want[w]
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} differences:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

fn count_finding(truth: &BTreeMap<String, Value>, key: &str, name: &str) -> u64 {
    truth
        .values()
        .filter(|v| {
            v[key]
                .as_array()
                .is_some_and(|a| a.iter().any(|f| f == name))
        })
        .count() as u64
}

/// The audit of the population test's ranges, JSON lines into `out`.
fn audit_population(lab: &PopLab, out: &std::path::Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "100.64.0.0/22",
        "2001:db8:64::/120",
        "--json",
        "--rate",
        "5000",
    ];
    args.extend_from_slice(&["--timeout", "0.5", "--output", out.to_str().unwrap()]);
    args.extend_from_slice(extra);
    lab.audit(&args)
}

#[test]
fn audit_of_the_population_equals_its_ground_truth_non_intrusive_and_intrusive() {
    if !require_root() {
        return;
    }
    let lab = PopLab::up(
        "t",
        &[
            "--v4",
            "100.64.0.0/22",
            "--v6",
            "2001:db8:64::/120",
            "--seed",
            "11",
        ],
    );
    let truth = lab.truth();
    assert!(
        truth.len() > 300,
        "the population answers for {} targets",
        truth.len()
    );
    let behaviours: std::collections::BTreeSet<&str> = truth
        .values()
        .filter_map(|v| v["behaviour"].as_str())
        .collect();
    for b in [
        "leak",
        "swapped",
        "swapped-nofail",
        "open",
        "open-reassign",
        "pcp-only",
        "other-source",
    ] {
        assert!(behaviours.contains(b), "no {b} gateway in the mix");
    }

    let out = lab.dir.join("plain.json");
    let o = audit_population(&lab, &out, &[]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "findings exit 1: {}",
        all_output(&o)
    );
    let (got, summary) = reports(&out);
    assert_matches_truth(&truth, &got, "findings");
    assert_eq!(summary["targets_probed"], 1024 + 256);
    assert_eq!(summary["answering"], truth.len() as u64);
    assert!(
        summary["malformed_replies"].as_u64() > Some(0),
        "the garbage gateways answered"
    );
    assert!(
        summary["findings"].get("host-service-dos").is_none(),
        "non-intrusive cannot tell"
    );
    assert!(
        got.values().all(|r| r.get("mappings").is_none()),
        "nothing was asked"
    );
    assert!(lab.leftover().is_empty());

    let out = lab.dir.join("intrusive.json");
    let o = audit_population(&lab, &out, &["--intrusive"]);
    assert_eq!(o.status.code(), Some(1), "{}", all_output(&o));
    let (got, summary) = reports(&out);
    assert_matches_truth(&truth, &got, "findings_intrusive");
    for f in [
        "information-disclosure",
        "internal-traffic-interception",
        "external-traffic-interception",
        "internal-service-access",
        "host-service-dos",
    ] {
        assert_eq!(
            summary["findings"][f]["count"].as_u64(),
            Some(count_finding(&truth, "findings_intrusive", f)),
            "{f}"
        );
    }
    assert_eq!(summary["deletions_unconfirmed"], 0);
    let left = lab.leftover();
    assert!(left.is_empty(), "the audit left mappings behind: {left:?}");

    // The same run split in three shards and merged gives the same summary.
    let mut files = Vec::new();
    for shard in 0..3 {
        let f = lab.dir.join(format!("shard{shard}.json"));
        let s = shard.to_string();
        let o = audit_population(&lab, &f, &["--shards", "3", "--shard", &s, "--seed", "99"]);
        assert_eq!(o.status.code(), Some(1), "{}", all_output(&o));
        files.push(f.to_str().unwrap().to_string());
    }
    let mut args = vec!["--summarize", "--json"];
    args.extend(files.iter().map(String::as_str));
    let o = lab.audit(&args);
    let merged: Value = serde_json::from_str(stdout(&o).trim()).expect("summary JSON");
    let (_, plain) = reports(&lab.dir.join("plain.json"));
    assert_eq!(merged["targets_probed"], plain["targets_probed"]);
    assert_eq!(merged["answering"], plain["answering"]);
    assert_eq!(merged["findings"], plain["findings"]);
}

#[test]
fn ctrl_c_during_an_intrusive_audit_still_deletes_what_was_granted() {
    if !require_root() {
        return;
    }
    let lab = PopLab::up(
        "c",
        &[
            "--v4",
            "100.64.0.0/26",
            "--seed",
            "3",
            "--mix",
            "open=1,silent=0,leak=0,swapped=0,swapped-nofail=0,open-reassign=0,pcp-only=0,other-source=0,garbage=0",
        ],
    );
    let out = lab.dir.join("aborted.json");
    // Without `timeout` in between: the SIGINT goes to natwarden itself.
    let mut audit = Command::new("ip");
    audit
        .args(["netns", "exec", &format!("{}-scan", lab.prefix)])
        .args([NATWARDEN, "audit"])
        .args([
            "100.64.0.0/26",
            "--intrusive",
            "--json",
            "--rate",
            "100",
            "--timeout",
            "0.3",
            "--cooldown",
            "0.3",
            "--output",
            out.to_str().unwrap(),
        ]);
    let mut audit = audit
        .stdin(Stdio::null())
        .spawn()
        .expect("starting the audit");
    // Wait until the gateways hold some of its mappings, then press Ctrl-C.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut live = 0;
    while Instant::now() < deadline {
        live = lab.leftover().len();
        if live >= 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if live < 3 {
        let _ = audit.kill();
        panic!("no mapping was granted in 30 s");
    }
    // SAFETY: kill(2) on our child (ip netns exec execs natwarden in place).
    unsafe { libc::kill(audit.id() as i32, libc::SIGINT) };
    let status = audit.wait().expect("waiting for the audit");
    assert_eq!(
        status.code(),
        Some(1),
        "findings were made before the interrupt"
    );
    let left = lab.leftover();
    assert!(left.is_empty(), "mappings left after Ctrl-C: {left:?}");
    let (got, _) = reports(&out);
    assert_eq!(got.len(), 64, "every target is an open gateway");
    let granted: Vec<&Value> = got
        .values()
        .filter_map(|r| r["mappings"].as_array())
        .flatten()
        .filter(|m| m["granted"] == true)
        .collect();
    assert!(granted.len() >= 3);
    assert!(
        granted.iter().all(|m| m["deletion"] == "confirmed"),
        "{granted:?}"
    );
    let mapped = got.values().filter(|r| r.get("mappings").is_some()).count();
    assert!(
        mapped < 64,
        "the audit went on mapping all {mapped} targets after Ctrl-C"
    );
}

/// The audit run from the lab's WAN host; its JSON lines.
fn audit_from_wan(lab: &Lab, args: &[&str]) -> (Option<i32>, BTreeMap<String, Value>, Value) {
    let out = lab.dir.join("audit.json");
    let mut full = vec![NATWARDEN, "audit", "--json", "--timeout", "0.5", "--output"];
    let out_s = out.to_str().unwrap().to_string();
    full.push(&out_s);
    full.extend_from_slice(args);
    let o = lab.run(Host::Wan, 60, &full);
    let (targets, summary) = reports(&out);
    assert!(summary.is_object(), "no summary: {}", all_output(&o));
    (o.status.code(), targets, summary)
}

#[test]
fn natwarden_serve_audited_from_its_wan_side_shows_nothing_and_keeps_nothing() {
    if !require_root() {
        return;
    }
    let lab = Lab::up();
    let _d = lab.start(&lab.config("gw.toml", &[]));
    // The WAN host also aims at the gateway's LAN address over the WAN link.
    let o = lab.run(
        Host::Wan,
        10,
        &["ip", "route", "add", "192.168.1.0/24", "via", GW_WAN],
    );
    assert!(o.status.success(), "{}", all_output(&o));
    let (code, targets, summary) = audit_from_wan(
        &lab,
        &[
            GW_WAN,
            "2001:db8:100::7",
            GW_LAN,
            "--intrusive",
            "--service-port",
            "22",
            "5351",
        ],
    );
    assert_eq!(code, Some(0), "no finding exits 0");
    assert!(targets.is_empty(), "{targets:?}");
    assert_eq!(summary["answering"], 0);
    assert_eq!(summary["targets_probed"], 3);
    let status = lab.status();
    assert_eq!(
        status["mappings"].as_array().map(Vec::len),
        Some(0),
        "{status}"
    );
    assert!(lab.elements("fwd4").is_empty());
    assert!(lab.elements("pinhole6").is_empty());
}

#[test]
fn miniupnpd_configured_correctly_shows_nothing_from_outside() {
    if !require_root() || !require_miniupnpd() {
        return;
    }
    let lab = Lab::up_public_wan();
    let _m = lab.start_miniupnpd();
    let (code, targets, summary) = audit_from_wan(&lab, &[PUBLIC_GW_WAN, "--intrusive"]);
    assert_eq!(code, Some(0));
    assert!(targets.is_empty(), "{targets:?}");
    assert_eq!(summary["answering"], 0);
    assert!(!lab.ruleset().contains("dnat"), "{}", lab.ruleset());
}

#[test]
fn miniupnpd_with_swapped_interfaces_is_found_and_left_clean() {
    if !require_root() || !require_miniupnpd() {
        return;
    }
    // The WAN side private, the LAN interface as its external one, ext_ip public: as the
    // note describes.
    let lab = Lab::up_with(Some("10.45.45"));
    let m = lab.start_miniupnpd_with(&[
        ("MINIUPNPD_SWAPPED", "1"),
        ("MINIUPNPD_EXT_IP", "45.45.45.45"),
    ]);
    let (code, targets, _) = audit_from_wan(&lab, &["10.45.45.7"]);
    assert_eq!(code, Some(1));
    let r = &targets["10.45.45.7"];
    assert_eq!(r["external_address"], "45.45.45.45", "{r}");
    assert_eq!(
        r["findings"],
        serde_json::json!(["information-disclosure", "internal-traffic-interception"])
    );

    let (code, targets, summary) = audit_from_wan(
        &lab,
        &["10.45.45.7", "--intrusive", "--service-port", "8022"],
    );
    assert_eq!(code, Some(1));
    let r = &targets["10.45.45.7"];
    let findings: Vec<&str> = r["findings"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for f in [
        "information-disclosure",
        "internal-traffic-interception",
        "internal-service-access",
    ] {
        assert!(findings.contains(&f), "{f} missing: {r}");
    }
    assert!(!findings.contains(&"external-traffic-interception"), "{r}");
    // The port the user named could be taken by an outsider, and the report says so.
    assert_eq!(
        r["service_ports"],
        serde_json::json!([{"port": 8022, "taken": true}]),
        "{r}"
    );
    assert_eq!(summary["deletions_unconfirmed"], 0, "{r}");
    // Its rules hold none of the audit's forwards any more.
    let rules = lab.ruleset();
    assert!(!rules.contains("10.45.45.100"), "left behind:\n{rules}");
    drop(m);

    // Without ext_ip it has no external address to give: network failure, on the WAN side.
    let _m = lab.start_miniupnpd_with(&[("MINIUPNPD_SWAPPED", "1")]);
    let (code, targets, _) = audit_from_wan(&lab, &["10.45.45.7"]);
    assert_eq!(code, Some(1));
    let r = &targets["10.45.45.7"];
    assert!(
        r["findings"]
            .as_array()
            .is_some_and(|a| a.iter().any(|f| f == "internal-traffic-interception")),
        "{r}"
    );
}
