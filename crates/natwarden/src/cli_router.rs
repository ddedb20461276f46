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

/// A subcommand's help, laid out as clap lays it out: one column for the options, as
/// wide as the longest, then two spaces and the text.
fn sub_help(name: &str) -> Option<String> {
    let default_config = format!("[default: {}]", config::DEFAULT_PATH);
    let config = ("--config <CONFIG>", default_config.as_str());
    let (about, options): (&str, Vec<(&str, &str)>) = match name {
        "serve" => (
            "Run the gateway daemon (SIGHUP reloads the config, SIGTERM/SIGINT remove the nftables table and exit)",
            vec![config],
        ),
        "check-config" => (
            "Check a config file against this machine's interfaces and exit",
            vec![config],
        ),
        "status" => (
            "Show the running daemon's mappings, external address, epoch and counters",
            vec![
                ("--json", "One JSON document instead of lines for a person"),
                (
                    "--delete <CLIENT[:PORT/PROTO]>",
                    "Remove mappings: CLIENT (all of its mappings) or CLIENT:PORT/PROTO",
                ),
                (
                    "--socket <SOCKET>",
                    "The control socket (default: `[control] socket` of the config)",
                ),
                config,
            ],
        ),
        _ => return None,
    };
    let w = options.iter().map(|(o, _)| o.len()).max().unwrap_or(0);
    let mut text = format!("{about}\n\nUsage: natwarden {name} [OPTIONS]\n\nOptions:\n");
    for (option, help) in options {
        text += &format!("      {option:<w$}  {help}\n");
    }
    text += &format!("  {:<w4$}  Print help\n", "-h, --help", w4 = w + 4);
    Some(text)
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
        // As clap: the whole help, on stderr, as a usage error.
        return Err(Exit {
            text: format!("{ABOUT}\n\n{MAIN_HELP}"),
            code: 2,
        });
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
                Exit {
                    text: format!(
                        "error: a value is required for '{key} <{what}>' but none was supplied\n\nFor more information, try '--help'.\n"
                    ),
                    code: 2,
                }
            })
        };
        let status = name == "status";
        match key.as_str() {
            "-h" | "--help" => return Err(help(sub_help(&name).unwrap_or_default())),
            "--config" if config.is_none() => config = Some(PathBuf::from(value("CONFIG")?)),
            "--json" if status && inline.is_none() && !json => json = true,
            "--json" if status && inline.is_some() => {
                return Err(usage_error(
                    &format!(
                        "unexpected value '{}' for '--json' found; no more were expected",
                        inline.unwrap_or_default()
                    ),
                    "natwarden status --json",
                ))
            }
            "--delete" if status && delete.is_none() => {
                delete = Some(value("CLIENT[:PORT/PROTO]")?)
            }
            "--socket" if status && socket.is_none() => {
                socket = Some(PathBuf::from(value("SOCKET")?))
            }
            "--config" | "--json" | "--delete" | "--socket" if status || key == "--config" => {
                let shown = match key.as_str() {
                    "--config" => "--config <CONFIG>",
                    "--delete" => "--delete <CLIENT[:PORT/PROTO]>",
                    "--socket" => "--socket <SOCKET>",
                    _ => "--json",
                };
                return Err(usage_error(
                    &format!("the argument '{shown}' cannot be used multiple times"),
                    &usage,
                ));
            }
            _ => {
                return Err(usage_error(
                    &format!("unexpected argument '{key}' found"),
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

    /// The default build has both parsers: for every router command line, this one must
    /// print what clap prints and exit as clap exits, or parse to the same command.
    #[cfg(feature = "clap")]
    #[test]
    fn the_router_parser_answers_as_clap_does() {
        use clap::Parser;
        fn describe(c: Command) -> String {
            match c {
                Command::Serve { config } => format!("serve {config:?}"),
                Command::CheckConfig { config } => format!("check-config {config:?}"),
                Command::Status {
                    json,
                    delete,
                    socket,
                    config,
                } => format!("status {json} {delete:?} {socket:?} {config:?}"),
                #[allow(unreachable_patterns)]
                _ => "a client or auditor command".to_string(),
            }
        }
        let cases: &[&[&str]] = &[
            &["serve"],
            &["serve", "--config", "/etc/x.toml"],
            &["serve", "--config=/etc/x.toml"],
            &["check-config", "--config", "a b"],
            &["status"],
            &[
                "status",
                "--json",
                "--delete",
                "192.168.1.10",
                "--socket=/s",
                "--config",
                "/c",
            ],
            &["serve", "--help"],
            &["check-config", "-h"],
            &["status", "--help"],
            &["help", "serve"],
            &["help", "status"],
            &["--version"],
            &["-V"],
            &["bogus"],
            &["help", "bogus"],
            &["serve", "--json"],
            &["serve", "--json=1"],
            &["serve", "--config"],
            &["status", "--delete"],
            &["status", "--json", "--json"],
            &["status", "--config", "a", "--config", "b"],
            &["check-config", "extra"],
            &["status", "--json=yes"],
            &["status", "--socket", "/a", "--socket=/b"],
        ];
        for &argv in cases {
            let ours = parse(argv);
            let theirs = crate::Cli::try_parse_from(
                std::iter::once("natwarden").chain(argv.iter().copied()),
            );
            match (ours, theirs) {
                (Ok(a), Ok(b)) => assert_eq!(describe(a), describe(b.command), "{argv:?}"),
                (Err(a), Err(b)) => {
                    assert_eq!(a.text, b.to_string(), "{argv:?}");
                    assert_eq!(i32::from(a.code), b.exit_code(), "{argv:?}");
                }
                (a, b) => panic!("{argv:?}: ours {:?}, clap's {:?}", a.err(), b.err()),
            }
        }
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
        assert_eq!(parse(&[]).err().map(|e| e.code), Some(2));
        for bad in [
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
