//! natwarden: a NAT-PMP gateway that cannot be opened from the WAN.
//! This file only wires the command line to the modules that do the work.

// System calls live in `sys` alone.
#![deny(unsafe_code)]

#[cfg(feature = "audit")]
mod audit_cli;
// Compiled with clap too when testing, to check that both parsers agree.
#[cfg(any(test, not(feature = "clap")))]
#[cfg_attr(feature = "clap", allow(dead_code))]
mod cli_router;
#[cfg(feature = "client")]
mod client_cli;
mod config;
mod control;
mod daemon;
mod facts;
mod linklayer;
mod log;
mod privileges;
#[cfg(feature = "audit")]
mod rawudp;
mod signals;
mod state;
mod status;
#[allow(unsafe_code)]
mod sys;
mod udp;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
#[cfg(feature = "clap")]
use clap::{Parser, Subcommand};
use natwarden_kernel::{Backend, NftConfig, Nftables, NoneBackend};

use crate::config::BackendKind;

/// The command line. With the client or the auditor (the default build) clap parses it;
/// the router build (`--no-default-features`) has three subcommands and parses them with
/// [`cli_router`], which prints the same help and exits with the same codes.
#[cfg(feature = "clap")]
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

#[cfg_attr(feature = "clap", derive(Subcommand))]
enum Command {
    /// Run the gateway daemon (SIGHUP reloads the config, SIGTERM/SIGINT remove the
    /// nftables table and exit).
    Serve {
        #[cfg_attr(feature = "clap", arg(long, default_value = config::DEFAULT_PATH))]
        config: PathBuf,
    },
    /// Check a config file against this machine's interfaces and exit.
    CheckConfig {
        #[cfg_attr(feature = "clap", arg(long, default_value = config::DEFAULT_PATH))]
        config: PathBuf,
    },
    /// Show the running daemon's mappings, external address, epoch and counters.
    Status {
        /// One JSON document instead of lines for a person.
        #[cfg_attr(feature = "clap", arg(long))]
        json: bool,
        /// Remove mappings: CLIENT (all of its mappings) or CLIENT:PORT/PROTO.
        #[cfg_attr(feature = "clap", arg(long, value_name = "CLIENT[:PORT/PROTO]"))]
        delete: Option<String>,
        /// The control socket (default: `[control] socket` of the config).
        #[cfg_attr(feature = "clap", arg(long))]
        socket: Option<PathBuf>,
        #[cfg_attr(feature = "clap", arg(long, default_value = config::DEFAULT_PATH))]
        config: PathBuf,
    },
    /// Client: print the gateway's external address (PCP first, then NAT-PMP).
    #[cfg(feature = "client")]
    ExternalAddress(client_cli::ExternalAddressArgs),
    /// Client: map a port of this host on the gateway (--keep holds it until Ctrl-C).
    #[cfg(feature = "client")]
    Map(client_cli::MapArgs),
    /// Client: remove a mapping of this host (all of them with --all).
    #[cfg(feature = "client")]
    Unmap(client_cli::UnmapArgs),
    /// Auditor: probe gateways from outside for the five CERT VU#184540 weaknesses
    /// (exit 0: none found, 1: findings, 2: error).
    #[cfg(feature = "audit")]
    Audit(audit_cli::AuditArgs),
}

fn seed() -> u64 {
    // Port choice stays valid without randomness, only more predictable.
    sys::random_u64().unwrap_or_else(|| std::process::id().into())
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
    #[cfg(feature = "clap")]
    let command = Cli::parse().command;
    #[cfg(not(feature = "clap"))]
    let command = cli_router::parse(std::env::args_os().skip(1));
    log::init();
    let result = match command {
        #[cfg(feature = "client")]
        Command::ExternalAddress(args) => return client_cli::external_address(args),
        #[cfg(feature = "client")]
        Command::Map(args) => return client_cli::map(args),
        #[cfg(feature = "client")]
        Command::Unmap(args) => return client_cli::unmap(args),
        #[cfg(feature = "audit")]
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

    /// The shipped man pages (dist/man: natwarden.8 and one page per subcommand) are
    /// generated from the CLI definition; regenerate them with
    /// `UPDATE_MAN=1 cargo test -p natwarden man_pages` when the CLI changes. They
    /// describe the default build (with the client and the auditor).
    #[cfg(all(feature = "client", feature = "audit"))]
    #[test]
    fn man_pages_are_current() {
        use clap::CommandFactory;
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
