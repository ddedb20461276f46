//! The sending loop: keeps a window of requests in flight, matches replies to requests,
//! resends the overdue ones, and stops at the last reply or the hard deadline.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use natwarden_wire::natpmp::{Request, Response};

use crate::net::{Event, Sources};
use crate::plan::Plan;
use crate::stats::{Report, RtoEstimator};

/// How often the requests in flight are checked for an overdue reply.
const SCAN_EVERY: Duration = Duration::from_millis(10);
/// Resend intervals double per try, up to this many doublings.
const MAX_BACKOFF_SHIFT: u32 = 4;
/// Resends per scan: a window larger than the gateway's socket buffer loses a burst,
/// and resending the whole burst at once would only lose it again.
const MAX_RESENDS_PER_SCAN: usize = 64;
/// Preflight: interval between resends to sources that have not answered yet.
const PREFLIGHT_RESEND: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, Default)]
enum State {
    #[default]
    Unsent,
    /// Position in the in-flight list.
    InFlight(usize),
    Done,
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    state: State,
    tries: u32,
    first_sent: Option<Instant>,
    last_sent: Option<Instant>,
}

/// Asks every source's way to the gateway for the external address, so that a source
/// the gateway cannot answer (e.g. no AnyIP route) shows up before any timing starts,
/// and the gateway's neighbour table is warm. `Err` names how many never answered.
pub fn preflight(
    sources: &Sources,
    events: &Receiver<Event>,
    limit: Duration,
) -> Result<(), String> {
    let mut datagram = [0u8; Request::MAX_LEN];
    let n = Request::ExternalAddress.emit(&mut datagram);
    let mut answered = vec![false; sources.len()];
    let mut left = sources.len();
    let mut refused = 0;
    let end = Instant::now() + limit;
    while left > 0 {
        let now = Instant::now();
        if now >= end {
            let first = answered.iter().position(|a| !a).unwrap_or(0);
            return Err(format!(
                "{left} of {} source addresses got no answer from the gateway within {limit:?} \
                 (first: source #{first}; {refused} ICMP refusals): is the gateway serving, and \
                 is the range local in this namespace (`ip route add local RANGE dev lo`)?",
                sources.len()
            ));
        }
        for (s, _) in answered.iter().enumerate().filter(|(_, a)| !**a) {
            let _ = sources.send(s, &datagram[..n]);
        }
        let resend_at = (now + PREFLIGHT_RESEND).min(end);
        loop {
            let wait = resend_at.saturating_duration_since(Instant::now());
            match events.recv_timeout(wait) {
                Ok(Event::Reply {
                    source,
                    response: Ok(Response::ExternalAddress(_)),
                    ..
                }) => {
                    if !answered[source] {
                        answered[source] = true;
                        left -= 1;
                    }
                    if left == 0 {
                        break;
                    }
                }
                Ok(Event::Error { .. }) => refused += 1,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return Err("receivers stopped".into()),
            }
        }
    }
    // Late duplicates of the preflight would only be ignored; drain them anyway.
    while events.try_recv().is_ok() {}
    Ok(())
}

struct Run<'a> {
    plan: &'a Plan,
    sources: &'a Sources,
    window: u32,
    slots: Vec<Slot>,
    in_flight: Vec<u32>,
    rto: RtoEstimator,
    report: Report,
    start: Instant,
    completed: u32,
    last_completion: Instant,
}

pub fn run(
    plan: &Plan,
    sources: &Sources,
    events: &Receiver<Event>,
    window: u32,
    deadline: Duration,
    min_rto: Duration,
) -> Report {
    let start = Instant::now();
    let end = start + deadline;
    let mut r = Run {
        plan,
        sources,
        window,
        slots: vec![Slot::default(); plan.count() as usize],
        in_flight: Vec::with_capacity(window as usize),
        rto: RtoEstimator::new(min_rto),
        report: Report {
            requested: plan.count(),
            ..Report::default()
        },
        start,
        completed: 0,
        last_completion: start,
    };
    let mut next = 0u32;
    let mut next_scan = start + SCAN_EVERY;
    let mut now = start;
    while r.completed < plan.count() && now < end {
        while r.in_flight.len() < window as usize && next < plan.count() {
            r.send(next, now);
            next += 1;
        }
        if now >= next_scan {
            r.resend_overdue(now);
            next_scan = now + SCAN_EVERY;
        }
        match events.recv_timeout(next_scan.min(end).saturating_duration_since(now)) {
            Ok(e) => {
                r.handle(e);
                while let Ok(e) = events.try_recv() {
                    r.handle(e);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        now = Instant::now();
    }
    let finished = if r.completed == plan.count() {
        r.last_completion
    } else {
        now.min(end)
    };
    r.report.seconds = finished.duration_since(start).as_secs_f64();
    r.report
}

impl Run<'_> {
    fn send(&mut self, i: u32, now: Instant) {
        let mut datagram = [0u8; Request::MAX_LEN];
        let n = self.plan.request(i).emit(&mut datagram);
        if let Err(e) = self.sources.send(self.plan.source_of(i), &datagram[..n]) {
            self.report.socket_errors += 1;
            self.report
                .first_error
                .get_or_insert_with(|| format!("sending: {e}"));
        }
        let slot = &mut self.slots[i as usize];
        if let State::Unsent = slot.state {
            slot.state = State::InFlight(self.in_flight.len());
            self.in_flight.push(i);
            slot.first_sent = Some(now);
        }
        slot.tries += 1;
        slot.last_sent = Some(now);
    }

    fn resend_overdue(&mut self, now: Instant) {
        let elapsed = now.duration_since(self.start).as_secs_f64();
        let rate = if elapsed > 0.0 {
            f64::from(self.completed) / elapsed
        } else {
            0.0
        };
        let answering = self.completed > 0
            && now.saturating_duration_since(self.last_completion) < self.rto.base();
        let limit = self.rto.limit(rate, self.window, answering);
        let mut resent = 0;
        for k in 0..self.in_flight.len() {
            if resent == MAX_RESENDS_PER_SCAN {
                break;
            }
            let i = self.in_flight[k];
            let slot = self.slots[i as usize];
            let backoff = limit * (1 << (slot.tries - 1).min(MAX_BACKOFF_SHIFT));
            if slot
                .last_sent
                .is_some_and(|t| now.duration_since(t) >= backoff)
            {
                self.report.retransmits += 1;
                resent += 1;
                self.send(i, now);
            }
        }
    }

    fn handle(&mut self, e: Event) {
        let (source, map, at) = match e {
            Event::Reply {
                source,
                response: Ok(Response::Map(map)),
                at,
            } if map.protocol == self.plan.protocol() => (source, map, at),
            // Late answers to the preflight.
            Event::Reply {
                response: Ok(Response::ExternalAddress(_)),
                ..
            } => return,
            Event::Reply { .. } => {
                self.report.stray_replies += 1;
                return;
            }
            Event::Error { source, error } => {
                self.report.socket_errors += 1;
                self.report
                    .first_error
                    .get_or_insert_with(|| format!("receiving on source #{source}: {error}"));
                return;
            }
        };
        let Some(i) = self.plan.index_of(source, map.internal_port) else {
            self.report.stray_replies += 1;
            return;
        };
        let slot = self.slots[i as usize];
        let State::InFlight(pos) = slot.state else {
            return; // a duplicate answer to a resent request
        };
        // Swap-remove from the in-flight list, fixing the moved entry's position.
        self.in_flight.swap_remove(pos);
        if let Some(&moved) = self.in_flight.get(pos) {
            self.slots[moved as usize].state = State::InFlight(pos);
        }
        self.slots[i as usize].state = State::Done;
        self.completed += 1;
        self.last_completion = self.last_completion.max(at);
        if slot.tries == 1 {
            if let Some(sent) = slot.first_sent {
                let rtt = at.saturating_duration_since(sent);
                self.rto.sample(rtt);
                self.report.latencies.push(rtt);
            }
        }
        if map.result.is_success() {
            self.report.acknowledged += 1;
        } else {
            self.report.errors += 1;
            self.report.first_error.get_or_insert_with(|| {
                format!(
                    "result {} for internal port {}",
                    map.result, map.internal_port
                )
            });
        }
    }
}
