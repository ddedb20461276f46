//! `natwarden audit`: the socket loop around the sans-IO auditor (natwarden-audit). It
//! reads the targets, opens raw UDP sockets, moves datagrams between them and the
//! scanner, prints reports, and turns Ctrl-C into the scanner's clean-up.

use std::fs;
use std::io::{self, IsTerminal, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use clap::Args;
use natwarden_audit::targets::parse_list;
use natwarden_audit::{
    Cidr, Config, JsonLine, Output, Scanner, Summary, TargetReport, Targets, Transmit,
};

use crate::rawudp::{self, RawUdp, BATCH};
use crate::signals::{poll_readable, Signals};

#[derive(Args)]
pub struct AuditArgs {
    /// Addresses or CIDR ranges (IPv4 or IPv6; IPv6 targets get PCP only), or @FILE with
    /// one per line. With --summarize: JSON-lines files of earlier runs.
    #[arg(required = true, value_name = "TARGET")]
    targets: Vec<String>,
    /// Also ask for mappings (a random high port, short lifetime), and delete each granted
    /// one before finishing, also on Ctrl-C.
    #[arg(long)]
    intrusive: bool,
    /// Probes per second.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    rate: u32,
    /// Extra attempts for targets and requests that did not answer (with backoff).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=10))]
    retries: u32,
    /// Seconds to wait for an answer to one attempt (doubled per retry).
    #[arg(long, default_value_t = 1.0, value_name = "S")]
    timeout: f64,
    /// Seconds to wait for late replies after the last probe.
    #[arg(long, default_value_t = 1.0, value_name = "S")]
    cooldown: f64,
    /// Lifetime in seconds of the mappings --intrusive asks for.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=3600))]
    lifetime: u32,
    /// With --intrusive: try to take these external ports too (only ports you name).
    #[arg(long = "service-port", value_name = "P", num_args = 1..)]
    service_ports: Vec<u16>,
    /// Addresses or ranges never to probe: CIDR, or @FILE (repeatable).
    #[arg(long, value_name = "CIDR|@FILE")]
    exclude: Vec<String>,
    /// JSON lines: one object per answering target, then a summary object.
    #[arg(long)]
    json: bool,
    /// Write the reports to FILE instead of standard output.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Split the range into N shards (same --seed on every machine)...
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=65536))]
    shards: u64,
    /// ...and probe shard I (0-based).
    #[arg(long, default_value_t = 0)]
    shard: u64,
    /// Seed of the probe order, source ports and mapped ports (random when not given).
    #[arg(long)]
    seed: Option<u64>,
    /// Source ports to probe from, FIRST-LAST.
    #[arg(long, default_value = "32768-60999", value_name = "FIRST-LAST")]
    source_ports: String,
    /// Rebuild the summary from JSON-lines files of earlier runs (e.g. one per shard).
    #[arg(long)]
    summarize: bool,
}

/// Exit codes: 0 no finding, 1 at least one finding, 2 the audit could not run.
pub fn audit(args: AuditArgs) -> ExitCode {
    let result = if args.summarize {
        summarize(&args)
    } else {
        run(&args)
    };
    match result {
        Ok(true) => ExitCode::from(1),
        Ok(false) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("natwarden audit: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn read_specs(specs: &[String]) -> anyhow::Result<Vec<Cidr>> {
    let mut out = Vec::new();
    for spec in specs {
        match spec.strip_prefix('@') {
            Some(path) => {
                let text = fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
                out.extend(parse_list(&text).with_context(|| format!("in {path}"))?);
            }
            None => out.push(spec.parse()?),
        }
    }
    Ok(out)
}

fn seconds(name: &str, s: f64) -> anyhow::Result<Duration> {
    if !(s.is_finite() && (0.001..=3600.0).contains(&s)) {
        bail!("--{name} {s}: give seconds between 0.001 and 3600");
    }
    Ok(Duration::from_secs_f64(s))
}

fn config(args: &AuditArgs) -> anyhow::Result<Config> {
    if args.shard >= args.shards {
        bail!(
            "--shard {} must be below --shards {}",
            args.shard,
            args.shards
        );
    }
    if args.shards > 1 && args.seed.is_none() {
        bail!("--shards needs --seed: every shard must walk the same permutation");
    }
    if !args.service_ports.is_empty() && !args.intrusive {
        bail!("--service-port asks for mappings: it needs --intrusive");
    }
    let (first, last) = args
        .source_ports
        .split_once('-')
        .and_then(|(a, b)| Some((a.parse::<u16>().ok()?, b.parse::<u16>().ok()?)))
        .filter(|(a, b)| 1024 <= *a && a <= b)
        .with_context(|| {
            format!(
                "--source-ports {}: give FIRST-LAST with 1024 <= FIRST <= LAST",
                args.source_ports
            )
        })?;
    Ok(Config {
        rate: args.rate,
        retries: args.retries,
        timeout: seconds("timeout", args.timeout)?,
        cooldown: seconds("cooldown", args.cooldown)?,
        intrusive: args.intrusive,
        lifetime: args.lifetime,
        service_ports: args.service_ports.clone(),
        source_ports: (first, last),
        seed: args.seed.unwrap_or_else(crate::seed),
        shard: args.shard,
        shards: args.shards,
        prober_v4: None,
        prober_v6: None,
        start_unix: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    })
}

/// Where reports go: standard output or --output, as text or JSON lines.
struct Sink {
    out: Box<dyn Write>,
    json: bool,
}

impl Sink {
    fn new(args: &AuditArgs) -> anyhow::Result<Sink> {
        let out: Box<dyn Write> = match &args.output {
            Some(p) => Box::new(io::BufWriter::new(
                fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
            )),
            None => Box::new(io::BufWriter::new(io::stdout())),
        };
        Ok(Sink {
            out,
            json: args.json,
        })
    }

    fn report(&mut self, r: TargetReport) -> io::Result<()> {
        if self.json {
            let line = serde_json::to_string(&JsonLine::Target(r)).map_err(io::Error::other)?;
            writeln!(self.out, "{line}")
        } else {
            writeln!(self.out, "{}", r.render())
        }
    }

    fn summary(&mut self, s: Summary) -> io::Result<()> {
        if self.json {
            let line = serde_json::to_string(&JsonLine::Summary(s)).map_err(io::Error::other)?;
            writeln!(self.out, "{line}")?;
        } else {
            write!(self.out, "\n{}", s.render())?;
        }
        self.out.flush()
    }
}

fn run(args: &AuditArgs) -> anyhow::Result<bool> {
    let mut cfg = config(args)?;
    let targets = Targets::new(&read_specs(&args.targets)?, &read_specs(&args.exclude)?)?;
    if targets.probed_count() == 0 {
        bail!("no target left to probe (all excluded?)");
    }
    // Ctrl-C and SIGTERM become readable on a descriptor, handled in the loop.
    let signals = Signals::new().context("blocking SIGINT/SIGTERM")?;
    let first =
        |v6: bool| (0..targets.len()).find_map(|i| targets.get(i).filter(|a| a.is_ipv6() == v6));
    let mut sockets: Vec<RawUdp> = Vec::new();
    for v6 in [false, true] {
        if let Some(t) = first(v6) {
            let source = rawudp::source_towards(t).with_context(|| format!("no route to {t}"))?;
            match source {
                IpAddr::V4(a) => cfg.prober_v4 = Some(a),
                IpAddr::V6(a) => cfg.prober_v6 = Some(a),
            }
            sockets.push(RawUdp::open(source).context("opening a raw UDP socket")?);
        }
    }
    let mut sink = Sink::new(args)?;
    let start = Instant::now();
    let mut scanner = Scanner::new(cfg, targets, start);
    let mut progress = ProgressLine::new(start);
    let mut batch: Vec<Transmit> = Vec::with_capacity(BATCH);
    let mut interrupted: Option<Instant> = None;
    loop {
        let now = Instant::now();
        for s in &mut sockets {
            // Drain a bounded number of batches, so sending keeps its pace under load.
            for _ in 0..16 {
                let n = s.recv(natwarden_audit::probe::SERVER_PORT, |d| {
                    scanner.handle(now, d.source, d.dst_port, d.payload)
                })?;
                if n < BATCH {
                    break;
                }
            }
        }
        let wait = loop {
            match scanner.poll(now) {
                Output::Transmit(t) => {
                    batch.push(t);
                    if batch.len() == BATCH {
                        flush(&mut sockets, &mut batch)?;
                    }
                }
                Output::Report(r) => sink.report(*r)?,
                Output::Wait(w) => break Some(w),
                Output::Done(summary) => {
                    flush(&mut sockets, &mut batch)?;
                    progress.clear();
                    let found = summary.findings.values().any(|c| c.count > 0);
                    sink.summary(summary)?;
                    return Ok(found);
                }
            }
        };
        flush(&mut sockets, &mut batch)?;
        progress.show(&scanner, now);
        // Below a millisecond poll(2) cannot sleep: look for input without waiting
        // (a fast scan keeps one core busy, as zmap's sender does).
        let timeout = wait.map(|w| {
            let d = w.saturating_duration_since(Instant::now());
            if d < Duration::from_millis(1) {
                Duration::ZERO
            } else {
                d.min(Duration::from_millis(100))
            }
        });
        let mut fds = [signals.raw_fd(); 3];
        for (i, s) in sockets.iter().enumerate() {
            fds[i + 1] = s.raw_fd();
        }
        let ready = poll_readable(fds, timeout)?;
        if ready[0] && signals.next().is_some() {
            match interrupted {
                None => {
                    eprintln!("natwarden audit: interrupted; deleting the mappings granted so far (Ctrl-C again to quit at once)");
                    scanner.abort(Instant::now());
                    interrupted = Some(Instant::now());
                }
                // The same interrupt delivered twice (to the process and its group, as
                // `timeout` does) is not a second Ctrl-C.
                Some(at) if at.elapsed() < Duration::from_secs(1) => {}
                Some(_) => bail!(
                    "interrupted twice: mappings whose deletion was not confirmed expire with their lifetime ({} s)",
                    args.lifetime
                ),
            }
        }
    }
}

/// Sends the batch, splitting it by family; a full kernel queue is retried briefly.
fn flush(sockets: &mut [RawUdp], batch: &mut Vec<Transmit>) -> anyhow::Result<()> {
    for s in sockets.iter_mut() {
        let v6 = s.is_v6();
        let mine: Vec<(SocketAddr, u16, &[u8])> = batch
            .iter()
            .filter(|t| t.dst.is_ipv6() == v6)
            .map(|t| (t.dst, t.src_port, t.payload()))
            .collect();
        let mut at = 0;
        while at < mine.len() {
            let n = s.send(&mine[at..]).context("sending probes")?;
            if n == 0 && !s.wait_writable(Duration::from_secs(1))? {
                bail!("the kernel's send queue stayed full for a second: lower --rate");
            }
            at += n;
        }
    }
    batch.clear();
    Ok(())
}

/// A progress line on a terminal: probed, answered, rate, time left. None otherwise.
struct ProgressLine {
    tty: bool,
    start: Instant,
    last: Instant,
    shown: bool,
}

impl ProgressLine {
    fn new(start: Instant) -> ProgressLine {
        ProgressLine {
            tty: io::stderr().is_terminal(),
            start,
            last: start,
            shown: false,
        }
    }

    fn show(&mut self, scanner: &Scanner, now: Instant) {
        let p = scanner.progress();
        if !self.tty || p.targets < 2 || now.duration_since(self.last) < Duration::from_millis(250)
        {
            return;
        }
        self.last = now;
        let secs = now.duration_since(self.start).as_secs_f64().max(0.001);
        let rate = p.datagrams_sent as f64 / secs;
        let left = if p.probed > 0 && p.probed < p.targets {
            format!(
                "{:.0}s",
                secs * (p.targets - p.probed) as f64 / p.probed as f64
            )
        } else {
            "-".to_string()
        };
        eprint!(
            "\r{}/{} probed ({:.1}%), {} answering, {:.0} probes/s, {} left   ",
            p.probed,
            p.targets,
            p.probed as f64 * 100.0 / p.targets as f64,
            p.answering,
            rate,
            left
        );
        self.shown = true;
    }

    fn clear(&mut self) {
        if self.shown {
            eprint!("\r\x1b[2K");
        }
    }
}

/// `--summarize FILE...`: one summary from the JSON lines of earlier runs.
fn summarize(args: &AuditArgs) -> anyhow::Result<bool> {
    let mut total = Summary::new(false);
    let mut seen = std::collections::HashSet::new();
    for path in &args.targets {
        let text = fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let parsed: JsonLine = serde_json::from_str(line)
                .with_context(|| format!("{path}:{}: not an audit JSON line", n + 1))?;
            match parsed {
                JsonLine::Target(r) => {
                    // The same target in two files (overlapping shards) counts once.
                    if seen.insert(r.target) {
                        total.add(&r);
                    }
                }
                JsonLine::Summary(s) => total.add_run(&s),
            }
        }
    }
    let found = total.findings.values().any(|c| c.count > 0);
    Sink::new(args)?.summary(total)?;
    Ok(found)
}
