//! natwarden: a NAT-PMP gateway that cannot be opened from the WAN.
//! This file only wires the command line to the modules that do the work.

mod audit_cli;
mod client_cli;
mod config;
mod control;
mod daemon;
mod facts;
mod linklayer;
mod privileges;
mod rawudp;
mod signals;
mod state;
mod status;
mod udp;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use natwarden_firewall::{Backend, NftConfig, Nftables, NoneBackend};

use crate::config::BackendKind;

#[derive(Parser)]
#[command(
    name = "natwarden",
    version,
    about = "NAT-PMP and PCP port mapping: a gateway the WAN side cannot touch, and its client"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway daemon (SIGHUP reloads the config, SIGTERM/SIGINT remove the
    /// nftables table and exit).
    Serve {
        #[arg(long, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Check a config file against this machine's interfaces and exit.
    CheckConfig {
        #[arg(long, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Show the running daemon's mappings, external address, epoch and counters.
    Status {
        /// One JSON document instead of lines for a person.
        #[arg(long)]
        json: bool,
        /// Remove mappings: CLIENT (all of its mappings) or CLIENT:PORT/PROTO.
        #[arg(long, value_name = "CLIENT[:PORT/PROTO]")]
        delete: Option<String>,
        /// The control socket (default: `[control] socket` of the config).
        #[arg(long)]
        socket: Option<PathBuf>,
        #[arg(long, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Client: print the gateway's external address (PCP first, then NAT-PMP).
    ExternalAddress(client_cli::ExternalAddressArgs),
    /// Client: map a port of this host on the gateway (--keep holds it until Ctrl-C).
    Map(client_cli::MapArgs),
    /// Client: remove a mapping of this host (all of them with --all).
    Unmap(client_cli::UnmapArgs),
    /// Auditor: probe gateways from outside for the five CERT VU#184540 weaknesses
    /// (exit 0: none found, 1: findings, 2: error).
    Audit(audit_cli::AuditArgs),
}

fn init_logging() {
    let level = std::env::var("NATWARDEN_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

fn seed() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most b.len() bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != 8 {
        // Port choice stays valid without randomness, only more predictable.
        return std::process::id().into();
    }
    u64::from_ne_bytes(b)
}

fn serve(path: &Path) -> anyhow::Result<()> {
    let s = config::load_settings(path)?;
    for w in &s.warnings {
        tracing::warn!("{w}");
    }
    let backend: Box<dyn Backend> = match s.backend {
        BackendKind::Nftables => Box::new(
            Nftables::new(NftConfig {
                table: s.table.clone(),
                external_interface: s.external_interface.clone(),
                ipv6_inbound_drop: s.ipv6_inbound_drop,
            })
            .context("opening the nftables netlink socket")?,
        ),
        BackendKind::None => {
            tracing::warn!(
                "firewall backend `none`: mappings are answered but nothing is installed"
            );
            Box::new(NoneBackend::default())
        }
    };
    daemon::Daemon::start(path.to_path_buf(), s, backend, seed())?.run()
}

fn check_config(path: &Path) -> anyhow::Result<()> {
    let s = config::load_settings(path)?;
    for w in &s.warnings {
        println!("warning: {w}");
    }
    println!("{}: {}", path.display(), config::verdict(&s.warnings));
    Ok(())
}

fn status(
    json: bool,
    delete: Option<String>,
    socket: Option<PathBuf>,
    config_path: &Path,
) -> anyhow::Result<()> {
    // The socket path comes from the config when it can be read; the CLI works without.
    let socket = socket.unwrap_or_else(|| {
        config::load(config_path)
            .map(|c| c.control.socket)
            .unwrap_or_else(|_| PathBuf::from(control::DEFAULT_SOCKET))
    });
    let request = match &delete {
        Some(spec) => control::Request::parse_delete(spec).map_err(anyhow::Error::msg)?,
        None => control::Request::Status,
    };
    let answer = control::query(&socket, &request)?;
    if let Some(e) = answer.get("error").and_then(|e| e.as_str()) {
        anyhow::bail!("the daemon refused: {e}");
    }
    if json {
        println!("{answer}");
    } else if delete.is_some() {
        println!("deleted {} mapping(s)", answer["deleted"]);
    } else {
        print!("{}", status::render(&answer));
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::ExternalAddress(args) => return client_cli::external_address(args),
        Command::Map(args) => return client_cli::map(args),
        Command::Unmap(args) => return client_cli::unmap(args),
        Command::Audit(args) => return audit_cli::audit(args),
        Command::Serve { config } => serve(&config),
        Command::CheckConfig { config } => check_config(&config),
        Command::Status {
            json,
            delete,
            socket,
            config,
        } => status(json, delete, socket, &config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("natwarden: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// The shipped man pages (dist/man: natwarden.8 and one page per subcommand) are
    /// generated from the CLI definition; regenerate them with
    /// `UPDATE_MAN=1 cargo test -p natwarden man_pages` when the CLI changes.
    #[test]
    fn man_pages_are_current() {
        let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../dist/man"));
        let cli = super::Cli::command();
        let mut pages = vec![("natwarden.8".to_string(), cli.clone())];
        for sub in cli.get_subcommands() {
            let name = format!("natwarden-{}", sub.get_name());
            let file = format!("{name}.8");
            // clap names are &'static str; leaking a few short strings in a test is fine.
            pages.push((file, sub.clone().name(&*Box::leak(name.into_boxed_str()))));
        }
        let update = std::env::var_os("UPDATE_MAN").is_some();
        for (file, cmd) in pages {
            let mut generated = Vec::new();
            clap_mangen::Man::new(cmd)
                .section("8")
                .render(&mut generated)
                .expect("rendering a man page");
            let path = dir.join(&file);
            if update {
                std::fs::create_dir_all(dir).expect("creating dist/man");
                std::fs::write(&path, &generated).expect("writing a man page");
            }
            let shipped = std::fs::read(&path).unwrap_or_default();
            assert!(
                shipped == generated,
                "dist/man/{file} is stale: run UPDATE_MAN=1 cargo test -p natwarden man_pages"
            );
        }
    }
}
