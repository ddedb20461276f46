//! What can go wrong talking to a gateway, as typed values: a refusal carries the protocol's
//! result code and its meaning; silence, discovery and socket problems are told apart.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use natwarden_wire::{natpmp, pcp};

use crate::Version;

/// A gateway's refusal: the result code of the protocol that answered (RFC 6886 section 3.5,
/// RFC 6887 section 7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NatPmp(natpmp::ResultCode),
    Pcp {
        code: pcp::ResultCode,
        /// The error's lifetime: how long the gateway expects the same answer (section 7.4).
        lifetime: u32,
    },
}

impl Refusal {
    pub const fn version(&self) -> Version {
        match self {
            Refusal::NatPmp(_) => Version::NatPmp,
            Refusal::Pcp { .. } => Version::Pcp,
        }
    }

    /// The numeric result code.
    pub const fn code(&self) -> u16 {
        match self {
            Refusal::NatPmp(code) => code.0,
            Refusal::Pcp { code, .. } => code.0 as u16,
        }
    }

    /// The code's name: PCP's (e.g. `NOT_AUTHORIZED`), or for NAT-PMP an upper-case form of
    /// the RFC 6886 wording (e.g. `NOT_AUTHORIZED_REFUSED`).
    pub fn name(&self) -> String {
        match self {
            Refusal::NatPmp(code) => code
                .description()
                .to_ascii_uppercase()
                .replace(['/', ' '], "_"),
            Refusal::Pcp { code, .. } => code.name().to_owned(),
        }
    }

    /// What the RFC says the code means.
    pub const fn meaning(&self) -> &'static str {
        match self {
            Refusal::NatPmp(code) => code.description(),
            Refusal::Pcp { code, .. } => code.description(),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} result code {} ({})",
            self.version(),
            self.code(),
            self.meaning()
        )
    }
}

/// Every error of this crate.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The gateway answered and said no.
    #[error("refused by the gateway: {0}")]
    Refused(Refusal),
    /// Nothing acceptable came back before the retransmissions ran out or the deadline passed.
    #[error("no answer from the gateway {gateway} ({sends} request(s) over {elapsed:?})")]
    NoResponse {
        gateway: IpAddr,
        sends: u32,
        elapsed: Duration,
    },
    /// The caller forced a protocol the gateway does not speak.
    #[error(
        "the gateway {gateway} does not speak {version} (it answered \"unsupported version\")"
    )]
    VersionNotSupported { gateway: IpAddr, version: Version },
    /// NAT-PMP is IPv4 only (RFC 6886 section 1).
    #[error("NAT-PMP needs an IPv4 gateway, not {0}")]
    NatPmpNeedsIpv4(IpAddr),
    /// PCP answered with a success but no usable external address (RFC 6887 gives none for
    /// a deletion): ask over NAT-PMP, or map a port.
    #[error("the gateway {0} did not tell its external address")]
    NoExternalAddress(IpAddr),
    /// No default route to take the gateway from.
    #[error("no default gateway: no default route in /proc/net/route or /proc/net/ipv6_route (give the gateway explicitly)")]
    NoGateway,
    /// A caller's argument the protocols cannot carry.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// A socket call failed.
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: Arc<std::io::Error>,
    },
}

impl Error {
    pub(crate) fn io(context: &'static str, source: std::io::Error) -> Error {
        Error::Io {
            context,
            source: Arc::new(source),
        }
    }

    /// The gateway's result code, when it refused.
    pub const fn refusal(&self) -> Option<Refusal> {
        match self {
            Error::Refused(r) => Some(*r),
            _ => None,
        }
    }

    /// Whether the gateway never answered (as opposed to refusing or a local problem).
    pub const fn is_no_response(&self) -> bool {
        matches!(self, Error::NoResponse { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_code_and_its_meaning() {
        let r = Refusal::NatPmp(natpmp::ResultCode::NOT_AUTHORIZED);
        assert_eq!(r.code(), 2);
        assert_eq!(r.name(), "NOT_AUTHORIZED_REFUSED");
        assert_eq!(
            Error::Refused(r).to_string(),
            "refused by the gateway: NAT-PMP result code 2 (Not Authorized/Refused)"
        );
        let r = Refusal::Pcp {
            code: pcp::ResultCode::NO_RESOURCES,
            lifetime: 30,
        };
        assert_eq!(r.name(), "NO_RESOURCES");
        assert_eq!(r.to_string(), "PCP result code 8 (No resources)");
        assert_eq!(
            Refusal::NatPmp(natpmp::ResultCode(77)).name(),
            "UNKNOWN_RESULT_CODE"
        );
    }
}
