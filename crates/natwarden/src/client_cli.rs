//! The client subcommands (`external-address`, `map`, `unmap`): the natwarden-client library
//! behind a command line, one line per fact (or one JSON object per line), and exit codes a
//! script can act on: 0 success, 1 refused by the gateway, 2 usage, 3 no answer.

use std::fs;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use natwarden_client::{
    Client, Config, Error, ExternalAddress, LeaseEvent, Mapping, Nonce, Protocol, ProtocolChoice,
    Unmapped,
};
use serde_json::{json, Value};

use crate::signals::Signals;

/// Exit code: the gateway refused (its result code is printed).
const EXIT_REFUSED: u8 = 1;
/// Exit code: bad arguments (clap uses 2 as well).
const EXIT_USAGE: u8 = 2;
/// Exit code: no answer (silence, no gateway, no route).
const EXIT_NO_ANSWER: u8 = 3;

/// Where the PCP nonce is kept between runs, overriding the default
/// `$XDG_STATE_HOME/natwarden/pcp-nonce` (or `~/.local/state/natwarden/pcp-nonce`).
const NONCE_FILE_ENV: &str = "NATWARDEN_CLIENT_NONCE_FILE";

/// Options every client subcommand takes.
#[derive(Args, Debug, Clone)]
pub struct GatewayArgs {
    /// The gateway to ask (default: the default route's router).
    #[arg(long, value_name = "IP")]
    gateway: Option<IpAddr>,
    /// Speak PCP (RFC 6887) only; by default PCP is tried first, then NAT-PMP.
    #[arg(long, conflicts_with = "nat_pmp")]
    pcp: bool,
    /// Speak NAT-PMP (RFC 6886) only.
    #[arg(long = "nat-pmp")]
    nat_pmp: bool,
    /// Give up after this many seconds without an answer (NAT-PMP alone gives up after
    /// its 9 tries, about 128 s).
    #[arg(long, value_name = "SECONDS", default_value_t = 135)]
    timeout: u64,
    /// One JSON object per line instead of lines for a person.
    #[arg(long)]
    json: bool,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolArg {
    Tcp,
    Udp,
}

impl From<ProtocolArg> for Protocol {
    fn from(p: ProtocolArg) -> Protocol {
        match p {
            ProtocolArg::Tcp => Protocol::Tcp,
            ProtocolArg::Udp => Protocol::Udp,
        }
    }
}

/// `natwarden external-address`
#[derive(Args, Debug, Clone)]
pub struct ExternalAddressArgs {
    #[command(flatten)]
    gateway: GatewayArgs,
}

/// `natwarden map`
#[derive(Args, Debug, Clone)]
pub struct MapArgs {
    /// The port on this host to open to the outside.
    #[arg(value_name = "INTERNAL_PORT", value_parser = clap::value_parser!(u16).range(1..))]
    internal_port: u16,
    /// The external port to ask for (default: the internal port); the gateway may grant
    /// another.
    #[arg(long, value_name = "N")]
    external_port: Option<u16>,
    #[arg(long, value_enum, default_value = "tcp")]
    protocol: ProtocolArg,
    /// Lifetime to ask for, in seconds.
    #[arg(long, value_name = "S", default_value_t = 7200, value_parser = clap::value_parser!(u32).range(1..))]
    lifetime: u32,
    /// Stay in the foreground: renew, re-map after a gateway restart, print changes, and
    /// remove the mapping on Ctrl-C or SIGTERM.
    #[arg(long)]
    keep: bool,
    #[command(flatten)]
    gateway: GatewayArgs,
}

/// `natwarden unmap`
#[derive(Args, Debug, Clone)]
pub struct UnmapArgs {
    /// The internal port whose mapping to remove.
    #[arg(
        value_name = "INTERNAL_PORT",
        required_unless_present = "all",
        conflicts_with = "all",
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    internal_port: Option<u16>,
    #[arg(long, value_enum, default_value = "tcp")]
    protocol: ProtocolArg,
    /// Remove all of this host's mappings of the protocol.
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    gateway: GatewayArgs,
}

pub fn external_address(args: ExternalAddressArgs) -> ExitCode {
    let out = Output::new(args.gateway.json);
    let result = client(&args.gateway).and_then(|mut c| {
        let gateway = c.gateway();
        c.external_address().map(|a| (gateway, a))
    });
    match result {
        Ok((gateway, a)) => {
            out.external_address(gateway, &a);
            ExitCode::SUCCESS
        }
        Err(e) => out.error(&e),
    }
}

pub fn map(args: MapArgs) -> ExitCode {
    let out = Output::new(args.gateway.json);
    let protocol = Protocol::from(args.protocol);
    let external = args.external_port.unwrap_or(args.internal_port);
    let lifetime = Duration::from_secs(args.lifetime.into());
    let mut client = match client(&args.gateway) {
        Ok(c) => c,
        Err(e) => return out.error(&e),
    };
    let here = (client.gateway(), client.local_address());
    if !args.keep {
        return match client.map(protocol, args.internal_port, external, lifetime) {
            Ok(m) => {
                out.mapping("mapped", here, &m, None);
                ExitCode::SUCCESS
            }
            Err(e) => out.error(&e),
        };
    }
    // Block the signals before mapping, so that a signal never leaves a mapping behind.
    let stop = match Signals::stop_only() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("natwarden: blocking SIGINT/SIGTERM: {e}");
            return ExitCode::from(EXIT_NO_ANSWER);
        }
    };
    let mut lease = match client.lease(protocol, args.internal_port, external, lifetime) {
        Ok(l) => l,
        Err(e) => return out.error(&e),
    };
    out.mapping("mapped", here, lease.mapping(), None);
    if !lease.hears_announcements() {
        out.note("cannot listen on port 5350: a gateway restart is noticed at the next renewal");
    }
    // The lease's wait returns as soon as the signalfd is readable, as the daemon's and the
    // auditor's loops do.
    while stop.next().is_none() {
        match lease.wait_or_readable(Duration::from_secs(1), stop.fd()) {
            Ok(Some(event)) => out.lease_event(here, &event),
            Ok(None) => {}
            Err(e) => {
                // A local socket failure: the lease cannot go on; still try to remove it.
                out.error(&e);
                break;
            }
        }
    }
    let mapping = *lease.mapping();
    match lease.release() {
        Ok(()) => {
            out.unmapped_lease(here, &mapping);
            ExitCode::SUCCESS
        }
        Err(e) => out.error(&e),
    }
}

pub fn unmap(args: UnmapArgs) -> ExitCode {
    let out = Output::new(args.gateway.json);
    let protocol = Protocol::from(args.protocol);
    let result = client(&args.gateway).and_then(|mut c| {
        let here = (c.gateway(), c.local_address());
        match args.internal_port {
            Some(port) if !args.all => c.unmap(protocol, port),
            _ => c.unmap_all(protocol),
        }
        .map(|u| (here, u))
    });
    match result {
        Ok((here, u)) => {
            out.unmapped(here, &u);
            ExitCode::SUCCESS
        }
        Err(e) => out.error(&e),
    }
}

fn client(args: &GatewayArgs) -> Result<Client, Error> {
    let protocol = if args.pcp {
        ProtocolChoice::Pcp
    } else if args.nat_pmp {
        ProtocolChoice::NatPmp
    } else {
        ProtocolChoice::Auto
    };
    Client::new(Config {
        gateway: args.gateway,
        protocol,
        timeout: Some(Duration::from_secs(args.timeout.max(1))),
        nonce: stored_nonce(),
    })
}

// ---- the PCP nonce across runs ----

/// The nonce of this user's earlier runs, made on first use: PCP gateways tie a mapping to
/// its nonce (RFC 6887 section 11.3), so `unmap` and a second `map` (a renewal) must repeat
/// the one `map` used. `None` (a fresh random nonce) when no file can be kept.
fn stored_nonce() -> Option<Nonce> {
    let path = nonce_path()?;
    if let Some(nonce) = read_nonce(&path) {
        return Some(nonce);
    }
    let nonce = natwarden_client::random::nonce(&mut natwarden_client::random::OsRandom::new());
    match write_nonce(&path, nonce) {
        // Another run may have won the race: take whatever is on disk now.
        Ok(()) => read_nonce(&path).or(Some(nonce)),
        Err(_) => Some(nonce),
    }
}

fn nonce_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(NONCE_FILE_ENV) {
        return Some(PathBuf::from(p));
    }
    let state = match std::env::var_os("XDG_STATE_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(std::env::var_os("HOME")?).join(".local/state"),
    };
    Some(state.join("natwarden/pcp-nonce"))
}

fn read_nonce(path: &std::path::Path) -> Option<Nonce> {
    let text = fs::read_to_string(path).ok()?;
    let hex = text.trim();
    if hex.len() != 24 {
        return None;
    }
    let mut bytes = [0u8; 12];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(Nonce(bytes))
}

fn write_nonce(path: &std::path::Path, nonce: Nonce) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // create_new: the first writer wins, a concurrent run reads its nonce.
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(f, "{}", hex(&nonce))?;
    Ok(())
}

fn hex(nonce: &Nonce) -> String {
    nonce.0.iter().map(|b| format!("{b:02x}")).collect()
}

// ---- output ----

/// Prints facts as lines for a person or as JSON objects, one per line.
struct Output {
    json: bool,
    started: Instant,
}

impl Output {
    fn new(json: bool) -> Output {
        Output {
            json,
            started: Instant::now(),
        }
    }

    fn emit(&self, object: Value, line: String) {
        if self.json {
            println!("{object}");
        } else {
            println!("{line}");
        }
    }

    fn note(&self, text: &str) {
        if self.json {
            println!("{}", json!({"event": "note", "note": text}));
        } else {
            eprintln!("natwarden: {text}");
        }
    }

    fn external_address(&self, gateway: IpAddr, a: &ExternalAddress) {
        self.emit(
            json!({
                "event": "external-address",
                "address": a.address.to_string(),
                "gateway": gateway.to_string(),
                "via": via(a.version),
                "epoch": a.epoch,
            }),
            format!(
                "external address {} ({} gateway {gateway})",
                a.address, a.version
            ),
        );
    }

    fn mapping(
        &self,
        event: &str,
        (gateway, local): (IpAddr, IpAddr),
        m: &Mapping,
        reason: Option<&str>,
    ) {
        let mut object = json!({
            "event": event,
            "protocol": m.protocol.name(),
            "internal_address": local.to_string(),
            "internal_port": m.internal_port,
            "external_address": m.external_address.map(|a| a.to_string()),
            "external_port": m.external_port,
            "lifetime": m.lifetime.as_secs(),
            "gateway": gateway.to_string(),
            "via": via(m.version),
            "epoch": m.epoch,
        });
        if let Some(reason) = reason {
            object["reason"] = json!(reason);
        }
        let why = reason
            .map(|r| format!(", {}", reason_text(r)))
            .unwrap_or_default();
        let line = format!(
            "{event} {} {} -> {} for {} s ({} gateway {gateway}{why})",
            m.protocol,
            endpoint(m),
            SocketAddr::new(local, m.internal_port),
            m.lifetime.as_secs(),
            m.version,
        );
        self.emit(object, line);
    }

    fn lease_event(&self, here: (IpAddr, IpAddr), event: &LeaseEvent) {
        match event {
            LeaseEvent::Renewed(m) => self.mapping("renewed", here, m, None),
            LeaseEvent::Remapped { mapping, reason } => {
                self.mapping("remapped", here, mapping, Some(reason.name()))
            }
            LeaseEvent::Changed { previous, current } => self.emit(
                json!({
                    "event": "changed",
                    "protocol": current.protocol.name(),
                    "internal_port": current.internal_port,
                    "previous_external_address": previous.external_address.map(|a| a.to_string()),
                    "previous_external_port": previous.external_port,
                    "external_address": current.external_address.map(|a| a.to_string()),
                    "external_port": current.external_port,
                }),
                format!(
                    "changed {} external endpoint {} -> {}",
                    current.protocol,
                    endpoint(previous),
                    endpoint(current)
                ),
            ),
            LeaseEvent::RenewalFailed { error, retry_at } => {
                let retry = retry_at.saturating_duration_since(Instant::now()).as_secs();
                let mut object = error_json(error);
                object["event"] = json!("renewal-failed");
                object["retry_in"] = json!(retry);
                self.emit(
                    object,
                    format!("renewal failed: {error}; trying again in {retry} s"),
                );
            }
            LeaseEvent::Expired(m) => self.emit(
                json!({
                    "event": "expired",
                    "protocol": m.protocol.name(),
                    "internal_port": m.internal_port,
                    "external_port": m.external_port,
                }),
                format!(
                    "expired {} {} -> port {}: still trying to map it again",
                    m.protocol,
                    endpoint(m),
                    m.internal_port
                ),
            ),
            // Only after release(), handled by the caller.
            LeaseEvent::Released | LeaseEvent::ReleaseFailed(_) => {}
        }
    }

    fn unmapped_lease(&self, (gateway, _): (IpAddr, IpAddr), m: &Mapping) {
        self.emit(
            json!({
                "event": "unmapped",
                "protocol": m.protocol.name(),
                "internal_port": m.internal_port,
                "gateway": gateway.to_string(),
                "via": via(m.version),
                "held_for": self.started.elapsed().as_secs(),
            }),
            format!(
                "unmapped {} {} -> port {} ({} gateway {gateway})",
                m.protocol,
                endpoint(m),
                m.internal_port,
                m.version
            ),
        );
    }

    fn unmapped(&self, (gateway, local): (IpAddr, IpAddr), u: &Unmapped) {
        let what = match u.internal_port {
            0 => format!("all {} mappings of {local}", u.protocol),
            port => format!("{} {}", u.protocol, SocketAddr::new(local, port)),
        };
        self.emit(
            json!({
                "event": "unmapped",
                "protocol": u.protocol.name(),
                "internal_address": local.to_string(),
                "internal_port": u.internal_port,
                "all": u.internal_port == 0,
                "gateway": gateway.to_string(),
                "via": via(u.version),
                "epoch": u.epoch,
            }),
            format!("unmapped {what} ({} gateway {gateway})", u.version),
        );
    }

    /// Prints the error (stderr for a person, an object on stdout for `--json`) and
    /// returns the exit code it calls for.
    fn error(&self, error: &Error) -> ExitCode {
        if self.json {
            println!("{}", error_json(error));
        }
        eprintln!("natwarden: {error}");
        ExitCode::from(exit_code(error))
    }
}

fn error_json(error: &Error) -> Value {
    let mut object = json!({"event": "error", "error": error.to_string()});
    if let Some(r) = error.refusal() {
        object["result_code"] = json!(r.code());
        object["result"] = json!(r.name());
        object["meaning"] = json!(r.meaning());
        object["via"] = json!(via(r.version()));
    }
    object
}

fn exit_code(error: &Error) -> u8 {
    match error {
        Error::Refused(_) | Error::VersionNotSupported { .. } | Error::NoExternalAddress(_) => {
            EXIT_REFUSED
        }
        Error::InvalidArgument(_) | Error::NatPmpNeedsIpv4(_) => EXIT_USAGE,
        Error::NoResponse { .. } | Error::NoGateway | Error::Io { .. } => EXIT_NO_ANSWER,
    }
}

fn via(version: natwarden_client::Version) -> &'static str {
    match version {
        natwarden_client::Version::Pcp => "pcp",
        natwarden_client::Version::NatPmp => "nat-pmp",
    }
}

/// `address:port`, or `port N` when the gateway did not tell its address.
fn endpoint(m: &Mapping) -> String {
    match m.external_address {
        Some(IpAddr::V6(a)) => format!("[{a}]:{}", m.external_port),
        Some(a) => format!("{a}:{}", m.external_port),
        None => format!("port {}", m.external_port),
    }
}

fn reason_text(reason: &str) -> &'static str {
    match reason {
        "epoch-reset" => "the gateway had lost its mappings",
        "announcement" => "the gateway announced a restart or a new address",
        "expired" => "the mapping had expired",
        _ => "re-created",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use natwarden_client::Refusal;
    use natwarden_wire::natpmp;

    #[test]
    fn exit_codes_tell_refusal_usage_and_silence_apart() {
        let refused = Error::Refused(Refusal::NatPmp(natpmp::ResultCode::NOT_AUTHORIZED));
        assert_eq!(exit_code(&refused), 1);
        assert_eq!(exit_code(&Error::InvalidArgument("x")), 2);
        let silent = Error::NoResponse {
            gateway: "192.168.1.1".parse().unwrap(),
            sends: 9,
            elapsed: Duration::from_secs(128),
        };
        assert_eq!(exit_code(&silent), 3);
        assert_eq!(exit_code(&Error::NoGateway), 3);
        let j = error_json(&refused);
        assert_eq!(j["result_code"], 2);
        assert_eq!(j["result"], "NOT_AUTHORIZED_REFUSED");
        assert_eq!(j["via"], "nat-pmp");
    }

    #[test]
    fn nonce_file_round_trip_and_first_writer_wins() {
        let dir = std::env::temp_dir().join(format!("natwarden-nonce-{}", std::process::id()));
        let path = dir.join("sub/pcp-nonce");
        let a = Nonce([0xab; 12]);
        write_nonce(&path, a).unwrap();
        assert_eq!(read_nonce(&path), Some(a));
        assert!(write_nonce(&path, Nonce([1; 12])).is_err(), "create_new");
        assert_eq!(read_nonce(&path), Some(a));
        fs::write(&path, "not hex at all, 24 chars\n").unwrap();
        assert_eq!(read_nonce(&path), None);
        let _ = fs::remove_dir_all(&dir);
    }
}
