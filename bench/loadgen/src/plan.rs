//! Which mapping is which: request i of a run is mapping number k = start + i, sent from
//! source k mod S with internal port first_port + k div S, so every one is new.

use natwarden_wire::natpmp::{MapRequest, Request};
use natwarden_wire::Protocol;

use crate::args::Args;

#[derive(Debug, Clone, Copy)]
pub struct Plan {
    sources: u32,
    first_port: u16,
    start: u32,
    count: u32,
    external_base: u16,
    lifetime: u32,
    protocol: Protocol,
}

impl Plan {
    pub fn new(a: &Args) -> Plan {
        Plan {
            sources: u32::try_from(a.sources.len()).unwrap_or(u32::MAX),
            first_port: a.first_port,
            start: a.start_index,
            count: a.count,
            external_base: a.external_base,
            lifetime: a.lifetime,
            protocol: a.protocol,
        }
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Index of the source address request `i` is sent from.
    pub fn source_of(&self, i: u32) -> usize {
        ((self.start + i) % self.sources) as usize
    }

    fn internal_port(&self, i: u32) -> u16 {
        // Args::check has bounded first_port + rounds by 65535.
        self.first_port + u16::try_from((self.start + i) / self.sources).unwrap_or(0)
    }

    pub fn request(&self, i: u32) -> Request {
        let suggested_external_port = if self.external_base == 0 {
            0
        } else {
            self.external_base + u16::try_from(self.start + i).unwrap_or(0)
        };
        Request::Map(MapRequest {
            protocol: self.protocol,
            internal_port: self.internal_port(i),
            suggested_external_port,
            lifetime: self.lifetime,
        })
    }

    /// The request a reply to `source` about `internal_port` answers, if it is one of ours.
    pub fn index_of(&self, source: usize, internal_port: u16) -> Option<u32> {
        let round = u32::from(internal_port.checked_sub(self.first_port)?);
        let k = round
            .checked_mul(self.sources)?
            .checked_add(u32::try_from(source).ok()?)?;
        let i = k.checked_sub(self.start)?;
        (i < self.count && self.source_of(i) == source).then_some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn plan(start: u32, count: u32) -> Plan {
        let mut a = Args::parse(std::iter::empty()).unwrap();
        a.start_index = start;
        a.count = count;
        Plan::new(&a)
    }

    #[test]
    fn every_request_is_a_new_pair_and_maps_back_to_itself() {
        let p = plan(300, 1000);
        let mut seen = HashSet::new();
        for i in 0..p.count() {
            let Request::Map(m) = p.request(i) else {
                panic!("not a map request")
            };
            assert!(seen.insert((p.source_of(i), m.internal_port)));
            assert_eq!(p.index_of(p.source_of(i), m.internal_port), Some(i));
            assert_eq!(m.suggested_external_port, 1024 + 300 + i as u16);
        }
    }

    #[test]
    fn runs_in_sequence_do_not_overlap() {
        let (a, b) = (plan(0, 500), plan(500, 500));
        for i in 0..500 {
            let Request::Map(m) = b.request(i) else {
                panic!("not a map request")
            };
            assert_eq!(a.index_of(b.source_of(i), m.internal_port), None);
        }
    }
}
