//! The command line: `--gateway --count --window --deadline --first-port --sources` and a
//! few tuning options, parsed by hand (std only) into checked values.

use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::Duration;

use natwarden_wire::Protocol;

pub const USAGE: &str = "\
usage: loadgen [options]
Creates COUNT NAT-PMP mappings, each a distinct (source address, internal port) pair,
keeping WINDOW requests in flight, and prints one JSON line of results.

  --gateway A          gateway address (default 192.168.1.1)
  --count N            mappings to create (default 1000)
  --window W           requests in flight (default 64; 1 = sequential)
  --deadline S         hard deadline in seconds, may be fractional (default 30)
  --first-port P       internal port of the first round over the sources (default 1024)
  --sources CIDR       source addresses, local in this namespace (default 192.168.1.128/25;
                       the network and broadcast addresses of the range are skipped)
  --start-index K      mapping number to start at, so that runs in sequence create
                       new mappings (default 0)
  --external-base E    suggest external port E + mapping number, distinct for every
                       mapping (default 1024); 0 suggests none (port 0)
  --lifetime L         requested lifetime in seconds (default 7200)
  --protocol tcp|udp   (default tcp)
  --min-rto-ms T       floor of the retransmission timeout (default 200)
  --no-preflight       skip the external-address round trip from every source

Mapping number k = K + i (i in 0..N) is sent from source k mod S with internal port
P + k div S, where S is the number of sources.";

#[derive(Debug, Clone)]
pub struct Args {
    pub gateway: Ipv4Addr,
    pub count: u32,
    pub window: u32,
    pub deadline: Duration,
    pub first_port: u16,
    pub sources: Vec<Ipv4Addr>,
    pub start_index: u32,
    pub external_base: u16,
    pub lifetime: u32,
    pub protocol: Protocol,
    pub min_rto: Duration,
    pub preflight: bool,
}

impl Args {
    /// Parses the arguments after the program name; `Err` carries a message for stderr.
    pub fn parse(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
        let mut a = Args {
            gateway: Ipv4Addr::new(192, 168, 1, 1),
            count: 1000,
            window: 64,
            deadline: Duration::from_secs(30),
            first_port: 1024,
            sources: hosts_of("192.168.1.128/25")?,
            start_index: 0,
            external_base: 1024,
            lifetime: 7200,
            protocol: Protocol::Tcp,
            min_rto: Duration::from_millis(200),
            preflight: true,
        };
        while let Some(flag) = it.next() {
            if flag == "--help" || flag == "-h" {
                return Err(USAGE.into());
            }
            if flag == "--no-preflight" {
                a.preflight = false;
                continue;
            }
            let value = it
                .next()
                .ok_or_else(|| format!("{flag} needs a value\n\n{USAGE}"))?;
            match flag.as_str() {
                "--gateway" => a.gateway = number(&flag, &value)?,
                "--count" => a.count = number(&flag, &value)?,
                "--window" => a.window = number(&flag, &value)?,
                "--deadline" => {
                    let s: f64 = number(&flag, &value)?;
                    if !(s > 0.0 && s <= 86400.0) {
                        return Err(format!("--deadline: {value} is not in (0, 86400] seconds"));
                    }
                    a.deadline = Duration::from_secs_f64(s);
                }
                "--first-port" => a.first_port = number(&flag, &value)?,
                "--sources" => a.sources = hosts_of(&value)?,
                "--start-index" => a.start_index = number(&flag, &value)?,
                "--external-base" => a.external_base = number(&flag, &value)?,
                "--lifetime" => a.lifetime = number(&flag, &value)?,
                "--protocol" => {
                    a.protocol = match value.as_str() {
                        "tcp" => Protocol::Tcp,
                        "udp" => Protocol::Udp,
                        _ => return Err(format!("--protocol: `{value}` is not tcp or udp")),
                    }
                }
                "--min-rto-ms" => a.min_rto = Duration::from_millis(number(&flag, &value)?),
                _ => return Err(format!("unknown option {flag}\n\n{USAGE}")),
            }
        }
        a.check()?;
        Ok(a)
    }

    /// Every port the run will use must fit in 1..=65535.
    fn check(&self) -> Result<(), String> {
        if self.count == 0 {
            return Err("--count must be at least 1".into());
        }
        if self.window == 0 || self.window > 65536 {
            return Err("--window must be in 1..=65536".into());
        }
        if self.lifetime == 0 {
            return Err("--lifetime 0 would delete, not map".into());
        }
        if self.first_port == 0 {
            return Err("--first-port must be at least 1".into());
        }
        let last = u64::from(self.start_index) + u64::from(self.count) - 1;
        let rounds = last / self.sources.len() as u64;
        if u64::from(self.first_port) + rounds > 65535 {
            return Err(format!(
                "--first-port {} + {rounds} rounds over {} sources passes port 65535: \
                 use more sources or fewer mappings",
                self.first_port,
                self.sources.len()
            ));
        }
        if self.external_base != 0 && u64::from(self.external_base) + last > 65535 {
            return Err(format!(
                "--external-base {} + mapping number {last} passes port 65535",
                self.external_base
            ));
        }
        Ok(())
    }
}

fn number<T: FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{flag}: `{value}` is not a valid value"))
}

/// The usable host addresses of `a.b.c.d/len`: without the network and broadcast
/// addresses when the range has them (prefix length up to 30).
pub fn hosts_of(cidr: &str) -> Result<Vec<Ipv4Addr>, String> {
    let bad = || format!("--sources: `{cidr}` is not an IPv4 range like 192.168.1.128/25");
    let (addr, len) = cidr.split_once('/').ok_or_else(bad)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let len: u32 = len.parse().map_err(|_| bad())?;
    if !(16..=32).contains(&len) {
        return Err(format!(
            "--sources: prefix length {len} is outside 16..=32 (at most 65536 sources)"
        ));
    }
    let size = 1u64 << (32 - len);
    let network = u64::from(u32::from(addr)) & !(size - 1);
    let (first, last) = if len <= 30 {
        (network + 1, network + size - 2)
    } else {
        (network, network + size - 1)
    };
    Ok((first..=last)
        .map(|a| Ipv4Addr::from(u32::try_from(a).unwrap_or(u32::MAX)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, String> {
        Args::parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn a_slash_25_gives_126_hosts_without_network_and_broadcast() {
        let h = hosts_of("192.168.1.128/25").unwrap();
        assert_eq!(h.len(), 126);
        assert_eq!(h[0], Ipv4Addr::new(192, 168, 1, 129));
        assert_eq!(h[125], Ipv4Addr::new(192, 168, 1, 254));
        assert_eq!(
            hosts_of("10.0.0.7/32").unwrap(),
            [Ipv4Addr::new(10, 0, 0, 7)]
        );
        assert!(hosts_of("10.0.0.0/8").is_err());
        assert!(hosts_of("10.0.0.0").is_err());
    }

    #[test]
    fn ports_past_65535_are_refused_before_sending_anything() {
        assert!(parse(&["--count", "50000", "--sources", "192.168.1.128/25"]).is_ok());
        let e = parse(&["--count", "100000", "--sources", "192.168.1.128/25"]).unwrap_err();
        assert!(e.contains("--external-base"), "{e}");
        let e = parse(&[
            "--count",
            "100000",
            "--external-base",
            "0",
            "--sources",
            "192.168.1.250/32",
        ])
        .unwrap_err();
        assert!(e.contains("--first-port"), "{e}");
    }

    #[test]
    fn unknown_options_and_missing_values_are_named() {
        assert!(parse(&["--frobnicate", "1"])
            .unwrap_err()
            .contains("--frobnicate"));
        assert!(parse(&["--count"])
            .unwrap_err()
            .contains("--count needs a value"));
        assert!(parse(&["--deadline", "0"]).is_err());
    }
}
