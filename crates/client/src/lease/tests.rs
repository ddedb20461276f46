//! The lease state machine against a scripted gateway and an injected clock: renewal at half
//! the lifetime, re-mapping after a restart (epoch or announcement), change reports, release.

use std::net::Ipv4Addr;
use std::ops::{Deref, DerefMut};

use natwarden_wire::Protocol;

use super::*;
use crate::random::Scripted;

const GW: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 1)), 5351);
const WAN: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const NONCE: pcp::Nonce = pcp::Nonce([3; 12]);

/// What `Lease` does, minus the sockets: polls the core, keeping its events in order for
/// the test to read, and hands back everything else.
struct Driver {
    core: LeaseCore,
    events: VecDeque<LeaseEvent>,
}

impl Driver {
    fn new(mapping: Mapping, lifetime: u32, params: Params, now: Instant) -> Driver {
        Driver {
            core: LeaseCore::new(mapping, lifetime, params, now),
            events: VecDeque::new(),
        }
    }

    /// The core's next output that is not an event.
    fn poll(&mut self, now: Instant, random: &mut dyn Random) -> LeaseOutput {
        loop {
            match self.core.poll(now, random) {
                LeaseOutput::Event(e) => self.events.push_back(e),
                other => return other,
            }
        }
    }

    /// The next event the core handed out, if any.
    fn poll_event(&mut self) -> Option<LeaseEvent> {
        self.events.pop_front()
    }
}

impl Deref for Driver {
    type Target = LeaseCore;
    fn deref(&self) -> &LeaseCore {
        &self.core
    }
}

impl DerefMut for Driver {
    fn deref_mut(&mut self) -> &mut LeaseCore {
        &mut self.core
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn params(choice: ProtocolChoice) -> Params {
    Params {
        gateway: GW,
        client_address: IpAddr::V4(Ipv4Addr::new(192, 168, 1, 10)),
        client_port: 40000,
        choice,
        nonce: NONCE,
        deadline: None,
    }
}

fn natpmp_mapping(external_port: u16, epoch: u32) -> Mapping {
    Mapping {
        version: Version::NatPmp,
        protocol: Protocol::Tcp,
        internal_port: 8080,
        external_port,
        external_address: Some(IpAddr::V4(WAN)),
        lifetime: secs(120),
        epoch,
        nonce: None,
    }
}

fn bytes_natpmp(r: natpmp::Response) -> Vec<u8> {
    let mut b = vec![0; 16];
    let n = r.emit(&mut b);
    b.truncate(n);
    b
}

fn map_reply(external_port: u16, epoch: u32, lifetime: u32) -> Vec<u8> {
    bytes_natpmp(natpmp::Response::Map(natpmp::MapResponse {
        protocol: Protocol::Tcp,
        result: natpmp::ResultCode::SUCCESS,
        epoch,
        internal_port: 8080,
        external_port,
        lifetime,
    }))
}

fn address_reply(address: Ipv4Addr, epoch: u32) -> Vec<u8> {
    bytes_natpmp(natpmp::Response::ExternalAddress(
        natpmp::ExternalAddressResponse {
            result: natpmp::ResultCode::SUCCESS,
            epoch,
            address,
        },
    ))
}

fn random() -> Scripted {
    Scripted::new(vec![1000])
}

/// Polls at `now` and expects a datagram.
fn transmit(lease: &mut Driver, now: Instant) -> Vec<u8> {
    match lease.poll(now, &mut random()) {
        LeaseOutput::Transmit(b) => b,
        other => panic!("expected a transmit at {now:?}, got {other:?}"),
    }
}

fn wait(lease: &mut Driver, now: Instant) -> Instant {
    match lease.poll(now, &mut random()) {
        LeaseOutput::Wait(at) => at,
        other => panic!("expected a wait, got {other:?}"),
    }
}

/// Answers one NAT-PMP map (and address) exchange at `now`.
fn answer_natpmp(lease: &mut Driver, now: Instant, port: u16, epoch: u32, address: Ipv4Addr) {
    let request = transmit(lease, now);
    assert_eq!(
        &request[..2],
        &[0, 2],
        "a NAT-PMP TCP map request: {request:?}"
    );
    assert!(lease.handle(now, GW, &map_reply(port, epoch, 120)));
    assert_eq!(transmit(lease, now), [0, 0]);
    assert!(lease.handle(now, GW, &address_reply(address, epoch)));
}

#[test]
fn renews_at_half_the_granted_lifetime_with_the_granted_port() {
    let t0 = Instant::now();
    let mut lease = Driver::new(
        natpmp_mapping(8080, 100),
        7200,
        params(ProtocolChoice::Auto),
        t0,
    );
    assert_eq!(
        wait(&mut lease, t0),
        t0 + secs(60),
        "granted 120 s: renew at 60 s"
    );
    assert_eq!(wait(&mut lease, t0 + secs(59)), t0 + secs(60));
    let t1 = t0 + secs(60);
    let request = transmit(&mut lease, t1);
    // Renewals speak the protocol that granted the mapping, and ask for the same port and
    // the originally requested lifetime.
    assert_eq!(
        request,
        [0, 2, 0, 0, 0x1f, 0x90, 0x1f, 0x90, 0, 0, 0x1c, 0x20]
    );
    assert!(lease.handle(t1, GW, &map_reply(8080, 160, 120)));
    assert_eq!(transmit(&mut lease, t1), [0, 0]);
    assert!(lease.handle(t1, GW, &address_reply(WAN, 160)));
    assert_eq!(wait(&mut lease, t1), t1 + secs(60));
    match lease.poll_event() {
        Some(LeaseEvent::Renewed(m)) => assert_eq!((m.external_port, m.epoch), (8080, 160)),
        other => panic!("{other:?}"),
    }
    assert!(lease.poll_event().is_none(), "nothing changed");
    assert_eq!(lease.expires(), t1 + secs(120));
}

#[test]
fn a_renewal_answer_with_a_reset_epoch_is_reported_as_a_remap() {
    let t0 = Instant::now();
    let mut lease = Driver::new(
        natpmp_mapping(8080, 100),
        120,
        params(ProtocolChoice::Auto),
        t0,
    );
    let t1 = t0 + secs(60);
    // The gateway restarted: epoch 3 where about 152 was expected (RFC 6886 3.6).
    answer_natpmp(&mut lease, t1, 8080, 3, WAN);
    wait(&mut lease, t1);
    match lease.poll_event() {
        Some(LeaseEvent::Remapped { reason, mapping }) => {
            assert_eq!(reason, RemapReason::EpochReset);
            assert_eq!(mapping.epoch, 3);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_natpmp_announcement_with_a_reset_epoch_remaps_at_once() {
    let t0 = Instant::now();
    let mut lease = Driver::new(
        natpmp_mapping(8080, 500),
        120,
        params(ProtocolChoice::NatPmp),
        t0,
    );
    let t1 = t0 + secs(10);
    let announcement = address_reply(WAN, 0);
    // Not from the gateway's port 5351, or not from the gateway: ignored.
    assert!(!lease.handle_announcement(t1, "192.168.1.1:5350".parse().unwrap(), &announcement));
    assert!(!lease.handle_announcement(t1, "192.168.1.99:5351".parse().unwrap(), &announcement));
    assert_eq!(wait(&mut lease, t1), t0 + secs(60));
    // A valid epoch (510 s after 500, 10 s on): no reason to re-map.
    assert!(!lease.handle_announcement(t1, GW, &address_reply(WAN, 510)));
    assert_eq!(wait(&mut lease, t1), t0 + secs(60));
    // The gateway's restart announcement.
    let t2 = t0 + secs(20);
    assert!(lease.handle_announcement(t2, GW, &announcement));
    answer_natpmp(&mut lease, t2, 8080, 0, WAN);
    wait(&mut lease, t2);
    match lease.poll_event() {
        Some(LeaseEvent::Remapped { reason, .. }) => assert_eq!(reason, RemapReason::Announcement),
        other => panic!("{other:?}"),
    }
    // The following announcements of the same restart (RFC 6886 3.2.1 sends ten) are valid.
    assert!(!lease.handle_announcement(t2 + secs(1), GW, &address_reply(WAN, 1)));
}

#[test]
fn a_new_external_address_or_port_is_reported() {
    let t0 = Instant::now();
    let mut lease = Driver::new(
        natpmp_mapping(8080, 100),
        120,
        params(ProtocolChoice::NatPmp),
        t0,
    );
    let moved = Ipv4Addr::new(203, 0, 113, 9);
    // An announcement of another address, even with a plausible epoch, triggers a re-map.
    assert!(lease.handle_announcement(t0 + secs(5), GW, &address_reply(moved, 104)));
    answer_natpmp(&mut lease, t0 + secs(5), 8081, 0, moved);
    wait(&mut lease, t0 + secs(5));
    assert!(matches!(
        lease.poll_event(),
        Some(LeaseEvent::Remapped { .. })
    ));
    match lease.poll_event() {
        Some(LeaseEvent::Changed { previous, current }) => {
            assert_eq!(previous.external_port, 8080);
            assert_eq!(current.external_port, 8081);
            assert_eq!(current.external_address, Some(IpAddr::V4(moved)));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(lease.mapping().external_port, 8081);
}

#[test]
fn a_failed_renewal_is_retried_at_half_the_remaining_time_then_reported_expired() {
    let t0 = Instant::now();
    let mut lease = Driver::new(
        natpmp_mapping(8080, 100),
        120,
        params(ProtocolChoice::NatPmp),
        t0,
    );
    let t1 = t0 + secs(60);
    transmit(&mut lease, t1);
    let refused = bytes_natpmp(natpmp::Response::Map(natpmp::MapResponse {
        protocol: Protocol::Tcp,
        result: natpmp::ResultCode::OUT_OF_RESOURCES,
        epoch: 160,
        internal_port: 8080,
        external_port: 0,
        lifetime: 0,
    }));
    assert!(lease.handle(t1, GW, &refused));
    assert_eq!(
        wait(&mut lease, t1),
        t1 + secs(30),
        "60 s left: again at 3/4"
    );
    match lease.poll_event() {
        Some(LeaseEvent::RenewalFailed { error, retry_at }) => {
            assert_eq!(retry_at, t1 + secs(30));
            assert_eq!(error.refusal().map(|r| r.code()), Some(4));
        }
        other => panic!("{other:?}"),
    }
    // Unanswered from then on: NAT-PMP's nine tries run past the expiry.
    let mut now = t1 + secs(30);
    let mut expired = false;
    for _ in 0..100 {
        let polled_at = now;
        match lease.poll(now, &mut random()) {
            LeaseOutput::Transmit(_) => {}
            LeaseOutput::Wait(at) => now = at,
            LeaseOutput::Finished => panic!(),
            LeaseOutput::Event(_) => unreachable!("the driver keeps events"),
        }
        while let Some(e) = lease.poll_event() {
            if let LeaseEvent::Expired(_) = e {
                assert_eq!(
                    polled_at,
                    t0 + secs(120),
                    "reported when the lifetime runs out"
                );
                expired = true;
            }
        }
        if expired {
            break;
        }
    }
    assert!(expired);
}

#[test]
fn pcp_announce_remaps_after_a_random_delay_of_at_most_5s() {
    let t0 = Instant::now();
    let mapping = Mapping {
        version: Version::Pcp,
        nonce: Some(NONCE),
        ..natpmp_mapping(8080, 1000)
    };
    let mut lease = Driver::new(mapping, 120, params(ProtocolChoice::Auto), t0);
    let mut b = vec![0; 24];
    let n = pcp::Response::announce(0).emit(&mut b);
    b.truncate(n);
    let t1 = t0 + secs(30);
    assert!(lease.handle_announcement(t1, GW, &b));
    // Scripted random 2500 -> 2.5 s.
    match lease.poll(t1, &mut Scripted::new(vec![2500])) {
        LeaseOutput::Wait(at) => assert_eq!(at, t1 + Duration::from_millis(2500)),
        other => panic!("{other:?}"),
    }
    let request = transmit(&mut lease, t1 + Duration::from_millis(2500));
    assert_eq!(request[0], 2, "re-mapping starts over with PCP (Auto)");
    let parsed = pcp::Request::parse(&request).unwrap();
    assert_eq!(parsed.op.nonce(), Some(NONCE), "with the same nonce");
    // A unicast ANNOUNCE on the request socket counts as well, and an ANNOUNCE that is
    // not a reset does not.
    let mut lease = Driver::new(mapping, 120, params(ProtocolChoice::Auto), t0);
    let mut ok = vec![0; 24];
    let n = pcp::Response::announce(1030).emit(&mut ok);
    ok.truncate(n);
    assert!(!lease.handle(t1, GW, &ok));
    assert!(lease.handle(t1, GW, &b));
}

#[test]
fn release_deletes_with_lifetime_zero_and_finishes() {
    let t0 = Instant::now();
    let mut lease = Driver::new(
        natpmp_mapping(8080, 100),
        120,
        params(ProtocolChoice::Auto),
        t0,
    );
    lease.release(t0, Some(t0 + secs(2)));
    let request = transmit(&mut lease, t0);
    assert_eq!(request, [0, 2, 0, 0, 0x1f, 0x90, 0, 0, 0, 0, 0, 0]);
    let deleted = bytes_natpmp(natpmp::Response::Map(natpmp::MapResponse {
        protocol: Protocol::Tcp,
        result: natpmp::ResultCode::SUCCESS,
        epoch: 101,
        internal_port: 8080,
        external_port: 0,
        lifetime: 0,
    }));
    assert!(lease.handle(t0, GW, &deleted));
    assert!(matches!(
        lease.poll(t0, &mut random()),
        LeaseOutput::Finished
    ));
    assert!(matches!(lease.poll_event(), Some(LeaseEvent::Released)));
    assert!(lease.is_finished());

    // Unanswered: bounded by the deadline.
    let mut lease = Driver::new(
        natpmp_mapping(8080, 100),
        120,
        params(ProtocolChoice::Auto),
        t0,
    );
    lease.release(t0, Some(t0 + secs(2)));
    let mut now = t0;
    let mut sends = 0;
    while !lease.is_finished() {
        match lease.poll(now, &mut random()) {
            LeaseOutput::Transmit(_) => sends += 1,
            LeaseOutput::Wait(at) => now = at,
            LeaseOutput::Finished => break,
            LeaseOutput::Event(_) => unreachable!("the driver keeps events"),
        }
        assert!(now <= t0 + secs(2));
    }
    assert_eq!(sends, 4, "0, 0.25, 0.75, 1.75 s");
    assert!(matches!(lease.poll_event(), Some(LeaseEvent::ReleaseFailed(e)) if e.is_no_response()));
}

#[test]
fn an_announcement_during_a_long_renewal_back_off_starts_it_afresh() {
    let t0 = Instant::now();
    let mut lease = Driver::new(
        natpmp_mapping(8080, 100),
        120,
        params(ProtocolChoice::NatPmp),
        t0,
    );
    let t1 = t0 + secs(60);
    // The renewal goes unanswered for a while: sends at 60, 60.25 ... 67.75 s.
    let mut now = t1;
    let mut sends = 0;
    while sends < 6 {
        match lease.poll(now, &mut random()) {
            LeaseOutput::Transmit(_) => sends += 1,
            LeaseOutput::Wait(at) => now = at,
            LeaseOutput::Finished => panic!(),
            LeaseOutput::Event(_) => unreachable!("the driver keeps events"),
        }
    }
    assert_eq!(now, t1 + Duration::from_millis(7750));
    let next_retransmission = wait(&mut lease, now);
    assert_eq!(next_retransmission, t1 + Duration::from_millis(15_750));
    // The gateway restarted and says so: a fresh request goes out at once.
    assert!(lease.handle_announcement(now, GW, &address_reply(WAN, 0)));
    answer_natpmp(&mut lease, now, 8080, 0, WAN);
    wait(&mut lease, now);
    assert!(matches!(
        lease.poll_event(),
        Some(LeaseEvent::Remapped {
            reason: RemapReason::Announcement,
            ..
        })
    ));
}
