//! The router build's command line (`--no-default-features`: serve, check-config,
//! status), parsed by hand: clap is about 130 KB of the router binary. Same options,
//! help, messages and exit codes (0 for help and version, 2 for usage errors) as clap's.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::{config, Command};

const ABOUT: &str =
    "NAT-PMP and PCP port mapping: a gateway the WAN side cannot touch, and its client";

const MAIN_HELP: &str = "\
Usage: natwarden <COMMAND>

Commands:
  serve         Run the gateway daemon (SIGHUP reloads the config, SIGTERM/SIGINT remove the nftables table and exit)
  check-config  Check a config file against this machine's interfaces and exit
  status        Show the running daemon's mappings, external address, epoch and counters
  help          Print this message or the help of the given subcommand(s)

Options:
  -h, --help     Print help
  -V, --version  Print version
";

fn sub_help(name: &str) -> Option<String> {
    let config = format!(
        "      --config <CONFIG>  [default: {}]\n",
        config::DEFAULT_PATH
    );
    let (about, options) = match name {
        "serve" => (
            "Run the gateway daemon (SIGHUP reloads the config, SIGTERM/SIGINT remove the nftables table and exit)",
            config,
        ),
        "check-config" => (
            "Check a config file against this machine's interfaces and exit",
            config,
        ),
        "status" => (
            "Show the running daemon's mappings, external address, epoch and counters",
            format!(
                "      --json                             One JSON document instead of lines for a person\n\
                 \x20     --delete <CLIENT[:PORT/PROTO]>     Remove mappings: CLIENT (all of its mappings) or CLIENT:PORT/PROTO\n\
                 \x20     --socket <SOCKET>                  The control socket (default: `[control] socket` of the config)\n\
                 \x20     --config <CONFIG>                  [default: {}]\n",
                config::DEFAULT_PATH
            ),
        ),
        _ => return None,
    };
    Some(format!(
        "{about}\n\nUsage: natwarden {name} [OPTIONS]\n\nOptions:\n{options}  -h, --help  Print help\n"
    ))
}

/// A parse that does not yield a command: what to print, where, and the exit code.
#[derive(Debug, PartialEq, Eq)]
pub struct Exit {
    pub text: String,
    pub code: u8,
}

fn usage_error(message: &str, usage: &str) -> Exit {
    Exit {
        text: format!(
            "error: {message}\n\nUsage: {usage}\n\nFor more information, try '--help'.\n"
        ),
        code: 2,
    }
}

/// Parses the arguments after the program name, or exits as clap would.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Command {
    match try_parse(args.into_iter().map(|a| a.to_string_lossy().into_owned())) {
        Ok(command) => command,
        Err(exit) => {
            if exit.code == 0 {
                print!("{}", exit.text);
            } else {
                eprint!("{}", exit.text);
            }
            std::process::exit(exit.code.into());
        }
    }
}

fn try_parse(args: impl Iterator<Item = String>) -> Result<Command, Exit> {
    let mut args = args.peekable();
    let help = |text: String| Exit { text, code: 0 };
    let Some(first) = args.next() else {
        return Err(usage_error(
            "'natwarden' requires a subcommand but one was not provided\n  [subcommands: serve, check-config, status, help]",
            "natwarden <COMMAND>",
        ));
    };
    match first.as_str() {
        "-h" | "--help" => return Err(help(format!("{ABOUT}\n\n{MAIN_HELP}"))),
        "-V" | "--version" => {
            return Err(help(format!("natwarden {}\n", env!("CARGO_PKG_VERSION"))))
        }
        "help" => {
            return match args.next() {
                None => Err(help(format!("{ABOUT}\n\n{MAIN_HELP}"))),
                Some(sub) => Err(sub_help(&sub).map(help).unwrap_or_else(|| {
                    usage_error(
                        &format!("unrecognized subcommand '{sub}'"),
                        "natwarden <COMMAND>",
                    )
                })),
            }
        }
        _ => {}
    }
    let name = first;
    if sub_help(&name).is_none() {
        return Err(usage_error(
            &format!("unrecognized subcommand '{name}'"),
            "natwarden <COMMAND>",
        ));
    }
    let usage = format!("natwarden {name} [OPTIONS]");
    let mut config = None;
    let mut json = false;
    let mut delete = None;
    let mut socket = None;
    while let Some(arg) = args.next() {
        let (key, inline) = match arg.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |what: &str| -> Result<String, Exit> {
            inline.clone().or_else(|| args.next()).ok_or_else(|| {
                usage_error(
                    &format!("a value is required for '{key} <{what}>' but none was supplied"),
                    &usage,
                )
            })
        };
        let status = name == "status";
        match key.as_str() {
            "-h" | "--help" => return Err(help(sub_help(&name).unwrap_or_default())),
            "--config" if config.is_none() => config = Some(PathBuf::from(value("CONFIG")?)),
            "--json" if status && inline.is_none() && !json => json = true,
            "--delete" if status && delete.is_none() => {
                delete = Some(value("CLIENT[:PORT/PROTO]")?)
            }
            "--socket" if status && socket.is_none() => {
                socket = Some(PathBuf::from(value("SOCKET")?))
            }
            "--config" | "--json" | "--delete" | "--socket" if status || key == "--config" => {
                return Err(usage_error(
                    &format!("the argument '{key}' cannot be used multiple times"),
                    &usage,
                ))
            }
            _ => {
                return Err(usage_error(
                    &format!("unexpected argument '{arg}' found"),
                    &usage,
                ))
            }
        }
    }
    let config = config.unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH));
    Ok(match name.as_str() {
        "serve" => Command::Serve { config },
        "check-config" => Command::CheckConfig { config },
        _ => Command::Status {
            json,
            delete,
            socket,
            config,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, Exit> {
        try_parse(args.iter().map(|a| a.to_string()))
    }

    #[test]
    fn the_router_commands_parse_as_clap_parsed_them() {
        match parse(&["serve"]) {
            Ok(Command::Serve { config }) => {
                assert_eq!(config, PathBuf::from(config::DEFAULT_PATH))
            }
            _ => panic!("serve"),
        }
        match parse(&["check-config", "--config", "/tmp/x.toml"]) {
            Ok(Command::CheckConfig { config }) => assert_eq!(config, PathBuf::from("/tmp/x.toml")),
            _ => panic!("check-config"),
        }
        match parse(&[
            "status",
            "--json",
            "--delete=192.168.1.10:80/tcp",
            "--socket",
            "/s",
        ]) {
            Ok(Command::Status {
                json,
                delete,
                socket,
                config,
            }) => {
                assert!(json);
                assert_eq!(delete.as_deref(), Some("192.168.1.10:80/tcp"));
                assert_eq!(socket, Some(PathBuf::from("/s")));
                assert_eq!(config, PathBuf::from(config::DEFAULT_PATH));
            }
            _ => panic!("status"),
        }
    }

    #[test]
    fn help_and_version_exit_0_and_usage_errors_exit_2() {
        assert_eq!(parse(&["--version"]).err().map(|e| e.code), Some(0));
        assert_eq!(parse(&["serve", "--help"]).err().map(|e| e.code), Some(0));
        assert_eq!(parse(&["help", "status"]).err().map(|e| e.code), Some(0));
        for bad in [
            &[][..],
            &["map", "80"][..],
            &["serve", "--json"][..],
            &["serve", "--config"][..],
            &["status", "--json", "--json"][..],
            &["check-config", "extra"][..],
        ] {
            let e = parse(bad).err().expect("a usage error");
            assert_eq!(e.code, 2, "{bad:?}");
            assert!(e.text.starts_with("error: "), "{}", e.text);
        }
    }
}
