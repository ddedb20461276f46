//! The log: `tracing` events as one line each on stderr, at the level NATWARDEN_LOG sets.
//! A few dozen lines instead of tracing-subscriber's formatting machinery, for the size
//! of the router binary; the format is the one tracing-subscriber's `fmt` printed.

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Installs the logger; `NATWARDEN_LOG=debug|info|warn|error|trace` (default `info`).
pub fn init() {
    let level = std::env::var("NATWARDEN_LOG")
        .ok()
        .and_then(|l| l.parse::<Level>().ok())
        .unwrap_or(Level::INFO);
    let _ = tracing::subscriber::set_global_default(Stderr { level });
}

struct Stderr {
    level: Level,
}

impl Subscriber for Stderr {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= self.level
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(self.level.into())
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        // Spans are not used; every one gets the same id and is never shown.
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let meta = event.metadata();
        let mut line = String::with_capacity(128);
        timestamp(&mut line, SystemTime::now());
        let _ = write!(line, " {:>5} {}: ", meta.level(), meta.target());
        let mut fields = Fields {
            line: &mut line,
            first: true,
        };
        event.record(&mut fields);
        line.push('\n');
        // One write per line, so lines from several threads never interleave.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// The message first, then `name=value` for each other field (strings quoted).
struct Fields<'a> {
    line: &'a mut String,
    first: bool,
}

impl Fields<'_> {
    fn separator(&mut self) {
        if !self.first {
            self.line.push(' ');
        }
        self.first = false;
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.separator();
        let _ = if field.name() == "message" {
            write!(self.line, "{value:?}")
        } else {
            write!(self.line, "{}={value:?}", field.name())
        };
    }
}

/// RFC 3339 UTC with microseconds, e.g. `2026-12-07T13:15:06.123456Z`.
fn timestamp(out: &mut String, now: SystemTime) {
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days);
    let _ = write!(
        out,
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_micros()
    );
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let mut s = String::new();
        timestamp(
            &mut s,
            UNIX_EPOCH + Duration::new(1_796_649_306, 123_456_000),
        );
        assert_eq!(s, "2026-12-07T13:15:06.123456Z");
        s.clear();
        timestamp(&mut s, UNIX_EPOCH + Duration::from_secs(951_782_400));
        assert_eq!(s, "2000-02-29T00:00:00.000000Z");
    }
}
