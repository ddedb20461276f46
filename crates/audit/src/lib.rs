//! natwarden audit: finds the five CERT VU#184540 weaknesses of NAT-PMP/PCP gateways from
//! outside, as a sans-IO state machine; the CLI's socket loop is a thin shell around it.
//!
//! - [`targets`]: what was named (addresses, CIDR ranges, exclusions) as one index space;
//! - [`permutation`]: the cyclic-group walk of that space, in shards;
//! - [`probe`]: the request bytes and strict reply parsing, from the wire crate;
//! - [`slots`]: source ports as keyed reply matchers;
//! - [`classify`]: evidence to findings, the note's definitions in one function;
//! - [`scan`]: the state machine (schedule, retries, matching, mapping and cleanup);
//! - [`report`]: per-target reports and the summary, serialisable and mergeable.

#![forbid(unsafe_code)]

pub mod classify;
pub mod permutation;
pub mod probe;
pub mod report;
pub mod scan;
pub mod slots;
pub mod targets;

pub use report::{Finding, JsonLine, Summary, TargetReport};
pub use scan::{Config, Output, Progress, Scanner, Transmit};
pub use targets::{Cidr, Targets};

#[cfg(test)]
mod tests;
