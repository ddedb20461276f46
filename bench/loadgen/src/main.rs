//! `loadgen`: creates N NAT-PMP mappings from many LAN source addresses as fast as the
//! gateway answers, and prints one JSON line; run inside the lab's LAN namespace.
//!
//! Exit status: 0 when every mapping was acknowledged, 1 when some were not (the JSON
//! line says how many and why), 2 when the run could not start.

mod args;
mod engine;
mod net;
mod plan;
mod stats;

use std::process::ExitCode;
use std::time::Duration;

use args::Args;
use net::Sources;
use plan::Plan;

/// Bound on the preflight round trip from every source.
const PREFLIGHT_LIMIT: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let (sources, events) = match Sources::open(&args.sources, args.gateway) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    if args.preflight {
        if let Err(e) = engine::preflight(&sources, &events, PREFLIGHT_LIMIT) {
            eprintln!("loadgen: {e}");
            return ExitCode::from(2);
        }
    }
    let plan = Plan::new(&args);
    let report = engine::run(
        &plan,
        &sources,
        &events,
        args.window,
        args.deadline,
        args.min_rto,
    );
    println!("{}", report.to_json());
    drop(sources);
    if report.acknowledged == report.requested {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
