//! natwarden: a NAT-PMP gateway that cannot be opened from the WAN.
//! This file only wires the command line to the modules that do the work.

mod config;
mod daemon;
mod facts;
mod signals;
mod udp;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use natwarden_firewall::{Backend, NftConfig, Nftables, NoneBackend};

use crate::config::{BackendKind, Settings};

#[derive(Parser)]
#[command(
    name = "natwarden",
    version,
    about = "NAT-PMP port-mapping gateway that the WAN side cannot touch"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway daemon.
    Serve {
        #[arg(long, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Check a config file against this machine's interfaces and exit.
    CheckConfig {
        #[arg(long, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
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

/// Loads and validates; prints every problem with its key and fix.
fn settings(path: &std::path::Path) -> anyhow::Result<Settings> {
    let cfg = config::load(path)?;
    let facts = facts::gather(&cfg)?;
    match config::validate(&cfg, &facts) {
        Ok(s) => {
            for w in &s.warnings {
                tracing::warn!("{w}");
            }
            Ok(s)
        }
        Err(problems) => {
            let list: Vec<String> = problems.iter().map(|p| format!("  - {p}")).collect();
            anyhow::bail!(
                "refusing unsafe or invalid configuration {}:\n{}",
                path.display(),
                list.join("\n")
            )
        }
    }
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

fn serve(path: &std::path::Path) -> anyhow::Result<()> {
    let s = settings(path)?;
    let backend: Box<dyn Backend> = match s.backend {
        BackendKind::Nftables => Box::new(
            Nftables::new(NftConfig {
                table: s.table.clone(),
                external_interface: s.external_interface.clone(),
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
    daemon::Daemon::start(s, backend, seed())?.run()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Serve { config } => serve(&config),
        Command::CheckConfig { config } => settings(&config).map(|s| {
            for w in &s.warnings {
                println!("warning: {w}");
            }
            println!("{}: configuration is valid and safe", config.display());
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("natwarden: {e:#}");
            ExitCode::FAILURE
        }
    }
}
