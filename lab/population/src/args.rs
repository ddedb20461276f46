//! The command line, parsed by hand: `population --v4 CIDR [--v4-sibling-offset N]
//! [--v6 CIDR] --seed S --truth FILE [--leftover FILE] [--mix NAME=W,...] [--port P]`.

use std::path::PathBuf;

use crate::mix::Mix;
use crate::range::Range;

pub const USAGE: &str = "usage: population --v4 CIDR [--v4-sibling-offset N] [--v6 CIDR] --seed S \
--truth FILE [--leftover FILE] [--port PORT]
  [--mix silent=40,leak=15,swapped=8,swapped-nofail=5,open=8,open-reassign=5,pcp-only=7,other-source=6,garbage=6]";

#[derive(Debug)]
pub struct Args {
    pub v4: Option<Range>,
    pub v6: Option<Range>,
    pub sibling_offset: u32,
    pub seed: u64,
    pub truth: PathBuf,
    pub leftover: Option<PathBuf>,
    pub mix: Mix,
    pub port: u16,
}

impl Args {
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
        let mut v4 = None;
        let mut v6 = None;
        let mut sibling_offset = 65536;
        let mut seed = None;
        let mut truth = None;
        let mut leftover = None;
        let mut mix = Mix::default();
        let mut port = natwarden_wire::pcp::SERVER_PORT;
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            // `--flag=value` and `--flag value` both work.
            let (flag, inline) = match flag.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
                _ => (flag, None),
            };
            if flag == "--help" || flag == "-h" {
                return Err(USAGE.to_string());
            }
            let value = match inline.or_else(|| args.next()) {
                Some(value) => value,
                None => return Err(format!("{flag} needs a value\n{USAGE}")),
            };
            match flag.as_str() {
                "--v4" => v4 = Some(Range::parse(&value, false).map_err(|e| format!("--v4: {e}"))?),
                "--v6" => v6 = Some(Range::parse(&value, true).map_err(|e| format!("--v6: {e}"))?),
                "--v4-sibling-offset" => {
                    sibling_offset = value
                        .parse()
                        .map_err(|_| format!("--v4-sibling-offset: `{value}` is not a u32"))?
                }
                "--seed" => {
                    seed = Some(
                        value
                            .parse()
                            .map_err(|_| format!("--seed: `{value}` is not a u64"))?,
                    )
                }
                "--truth" => truth = Some(PathBuf::from(value)),
                "--leftover" => leftover = Some(PathBuf::from(value)),
                "--mix" => mix = Mix::parse(&value)?,
                "--port" => {
                    port = value
                        .parse()
                        .map_err(|_| format!("--port: `{value}` is not a port"))?
                }
                _ => return Err(format!("unknown argument `{flag}`\n{USAGE}")),
            }
        }
        if v4.is_none() && v6.is_none() {
            return Err(format!("--v4 or --v6 is needed\n{USAGE}"));
        }
        Ok(Args {
            v4,
            v6,
            sibling_offset,
            seed: seed.ok_or_else(|| format!("--seed is needed\n{USAGE}"))?,
            truth: truth.ok_or_else(|| format!("--truth is needed\n{USAGE}"))?,
            leftover,
            mix,
            port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Args, String> {
        Args::parse(line.split_whitespace().map(String::from))
    }

    #[test]
    fn parses_the_documented_line() {
        let a = parse("--v4 100.64.0.0/16 --v6 2001:db8:64::/112 --seed 7 --truth t.json --leftover l.json --mix open=1 --v4-sibling-offset=256")
            .expect("valid");
        assert_eq!(a.seed, 7);
        assert_eq!(a.sibling_offset, 256);
        assert_eq!(a.port, 5351);
        assert_eq!(a.leftover, Some(PathBuf::from("l.json")));
        assert!(a.v6.is_some());
        assert_eq!(a.mix.weight(crate::mix::Behaviour::Open), 1);
    }

    #[test]
    fn refuses_bad_lines() {
        assert!(parse("--seed 1 --truth t").is_err());
        assert!(parse("--v4 100.64.0.0/16 --truth t").is_err());
        assert!(parse("--v4 100.64.0.0/16 --seed 1").is_err());
        assert!(parse("--v4 100.64.0.0/16 --seed x --truth t").is_err());
        assert!(parse("--v4 100.64.0.0/16 --seed 1 --truth t --bogus 1").is_err());
        assert!(parse("--v4 100.64.0.0/16 --seed 1 --truth").is_err());
    }
}
