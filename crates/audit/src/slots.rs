//! Source ports as reply keys. Each target is probed from a port derived from a keyed hash of
//! its address, as zmap validates replies: a reply from the target to any other port is
//! stray, and a blind forger must guess the key. Each port also remembers the target last
//! probed from it, so a reply from another address of the same device (a multi-homed
//! gateway answering from its primary address) is attributed to the probed target.

use std::net::IpAddr;
use std::time::Instant;

use crate::permutation::mix64;

/// How many ports, from the hashed one on, a target may use when its first is busy. A
/// reply's port must be one of these for its source to count as answering for itself.
const CHOICES: u32 = 32;

#[derive(Debug, Clone, Copy)]
struct Slot {
    target: IpAddr,
    /// Until when the port stays the target's; `None` while held for mapping transactions.
    until: Option<Instant>,
}

/// Who a reply belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attribution {
    /// The probed target answered from its own address.
    Own(IpAddr),
    /// Another address answered a probe of this target.
    Other(IpAddr),
    /// No probe of ours explains it.
    Stray,
}

/// The port table: `count` ports from `base`, one target at a time each.
#[derive(Debug)]
pub struct Slots {
    base: u16,
    slots: Vec<Option<Slot>>,
    key: u64,
}

impl Slots {
    /// # Panics
    /// If the range is empty (callers validate `--source-ports`).
    pub fn new(first: u16, last: u16, key: u64) -> Slots {
        assert!(first <= last);
        Slots {
            base: first,
            slots: vec![None; usize::from(last - first) + 1],
            key,
        }
    }

    fn count(&self) -> u32 {
        self.slots.len() as u32
    }

    fn home(&self, target: IpAddr) -> u32 {
        let bits = match target {
            IpAddr::V4(a) => u32::from(a) as u128,
            IpAddr::V6(a) => u128::from(a) ^ (1 << 127),
        };
        let h = mix64(self.key ^ mix64(bits as u64 ^ mix64((bits >> 64) as u64)));
        (h % u64::from(self.count())) as u32
    }

    fn positions(&self, target: IpAddr) -> impl Iterator<Item = usize> {
        let (home, count) = (self.home(target), self.count());
        (0..CHOICES.min(count)).map(move |j| ((home + j) % count) as usize)
    }

    /// A port for probing `target`, held until `until` (or until released when `None`);
    /// `Err(when)` if all its ports are busy, with the time the first frees.
    pub fn acquire(
        &mut self,
        target: IpAddr,
        now: Instant,
        until: Option<Instant>,
    ) -> Result<u16, Option<Instant>> {
        let mut free = None;
        let mut earliest: Option<Instant> = None;
        for pos in self.positions(target) {
            match self.slots[pos] {
                Some(s) if s.target == target => {
                    free = Some(pos);
                    break;
                }
                Some(Slot { until: Some(u), .. }) if u <= now => {
                    free = free.or(Some(pos));
                }
                None => free = free.or(Some(pos)),
                Some(Slot { until: Some(u), .. }) => {
                    earliest = Some(earliest.map_or(u, |e| e.min(u)));
                }
                Some(Slot { until: None, .. }) => {}
            }
        }
        match free {
            Some(pos) => {
                self.slots[pos] = Some(Slot { target, until });
                Ok(self.base + pos as u16)
            }
            None => Err(earliest),
        }
    }

    /// Ends a hold: the port may be reused from `now` on.
    pub fn release(&mut self, port: u16, now: Instant) {
        if let Some(Some(s)) = self.index(port).and_then(|i| self.slots.get_mut(i)) {
            s.until = Some(now);
        }
    }

    fn index(&self, port: u16) -> Option<usize> {
        let i = usize::from(port.checked_sub(self.base)?);
        (i < self.slots.len()).then_some(i)
    }

    /// Whose reply is a datagram from `src` to our `port`? `is_target` says whether `src`
    /// was named for this audit (only then can it answer for itself).
    pub fn attribute(
        &self,
        src: IpAddr,
        port: u16,
        now: Instant,
        is_target: impl Fn(IpAddr) -> bool,
    ) -> Attribution {
        let Some(i) = self.index(port) else {
            return Attribution::Stray;
        };
        if is_target(src) && self.positions(src).any(|p| p == i) {
            return Attribution::Own(src);
        }
        // Only while the port is the target's alone: holds never overlap, so this is
        // never a guess between two targets; a later reply from another address is stray.
        match self.slots[i] {
            Some(s) if s.target != src && s.until.is_none_or(|u| now <= u) => {
                Attribution::Other(s.target)
            }
            _ => Attribution::Stray,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn a(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn own_replies_validate_by_key_and_others_by_the_port_table() {
        let now = Instant::now();
        let mut slots = Slots::new(40000, 40999, 7);
        let t = a("100.64.0.1");
        let port = slots
            .acquire(t, now, Some(now + Duration::from_secs(1)))
            .expect("free");
        let all = |_| true;
        assert_eq!(slots.attribute(t, port, now, all), Attribution::Own(t));
        // The same target on a port that is not one of its own: stray (or another's).
        let wrong = if port == 40999 { 40000 } else { port + 100 };
        assert_ne!(slots.attribute(t, wrong, now, all), Attribution::Own(t));
        // Another address answering on the target's port is attributed to the target...
        let sibling = a("100.65.0.1");
        assert_eq!(
            slots.attribute(sibling, port, now, |x| x != sibling),
            Attribution::Other(t)
        );
        // ...until its hold is over.
        let later = now + Duration::from_secs(3);
        assert_eq!(
            slots.attribute(sibling, port, later, |x| x != sibling),
            Attribution::Stray
        );
        // The target itself still validates by key, however late.
        assert_eq!(slots.attribute(t, port, later, all), Attribution::Own(t));
        // A port outside the range is never ours.
        assert_eq!(slots.attribute(t, 39999, now, all), Attribution::Stray);
    }

    #[test]
    fn busy_ports_make_the_caller_wait_and_release_frees_them() {
        let now = Instant::now();
        let mut slots = Slots::new(50000, 50000, 1);
        let held = slots.acquire(a("192.0.2.1"), now, None).expect("free");
        assert_eq!(slots.acquire(a("192.0.2.2"), now, None), Err(None));
        slots.release(held, now);
        assert!(slots.acquire(a("192.0.2.2"), now, None).is_ok());
        let until = now + Duration::from_millis(10);
        let mut slots = Slots::new(50000, 50000, 1);
        slots
            .acquire(a("192.0.2.1"), now, Some(until))
            .expect("free");
        assert_eq!(slots.acquire(a("192.0.2.2"), now, None), Err(Some(until)));
        assert!(slots.acquire(a("192.0.2.2"), until, None).is_ok());
    }
}
