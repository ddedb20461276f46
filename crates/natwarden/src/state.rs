//! The state journal: every acknowledged mapping survives `kill -9`. An append-only
//! file of JSON lines, made durable (fdatasync) once per batch before replies go out,
//! and compacted into a fresh snapshot (temp file, fsync, rename) as it grows.
//!
//! Times in the file are wall-clock (Unix milliseconds); inside a run the daemon uses
//! the monotonic clock only. A torn last line is a record that was never acknowledged
//! and is ignored; any other damage means the state cannot be proven, so the file is
//! moved aside and the daemon starts a new epoch (RFC 6886 section 3.6).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use natwarden_core::{MappingKey, Nonce, Origin};
use natwarden_wire::Protocol;
use serde::{Deserialize, Serialize};

const VERSION: u32 = 1;

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Record {
    /// First line: format version and when the epoch counter was zero.
    Header {
        version: u32,
        epoch_start_ms: u64,
    },
    Upsert(SavedMapping),
    Remove {
        client: IpAddr,
        #[serde(with = "protocol_name")]
        protocol: Protocol,
        internal_port: u16,
    },
    NewEpoch {
        epoch_start_ms: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedMapping {
    pub client: IpAddr,
    #[serde(with = "protocol_name")]
    pub protocol: Protocol,
    pub internal_port: u16,
    pub external_port: u16,
    /// Wall-clock expiry, as granted.
    pub expires_ms: u64,
    /// Wall-clock time this record was written, and the lifetime the mapping had left
    /// then (measured on the monotonic clock). Together they bound the lifetime after
    /// a restart even if the wall clock moved back meanwhile. Absent in files written
    /// before they existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_ms: Option<u64>,
    #[serde(with = "origin_name")]
    pub origin: Origin,
    /// PCP's mapping nonce, hex; absent for NAT-PMP mappings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    #[serde(default = "yes")]
    pub inbound: bool,
    #[serde(default)]
    pub outbound: bool,
}

fn yes() -> bool {
    true
}

pub fn nonce_hex(n: &Nonce) -> String {
    n.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn nonce_from_hex(s: &str) -> Option<Nonce> {
    if s.len() != 24 || !s.is_ascii() {
        return None;
    }
    let mut n = [0u8; 12];
    for (i, byte) in n.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(n)
}

impl SavedMapping {
    pub fn key(&self) -> MappingKey {
        MappingKey {
            client: self.client,
            protocol: self.protocol,
            internal_port: self.internal_port,
        }
    }

    /// The lifetime left at wall-clock `now_ms`, or `None` when it ran out (while the
    /// daemon was down, say). The time since the record was written counts as
    /// downtime, but never less than zero: a wall clock that went back cannot give a
    /// mapping more than it had left when written, nor more than its granted expiry.
    pub fn remaining_at(&self, now_ms: u64) -> Option<Duration> {
        let by_expiry = self.expires_ms.checked_sub(now_ms);
        let by_record = match (self.written_ms, self.remaining_ms) {
            (Some(written), Some(left)) => {
                let downtime = now_ms.saturating_sub(written);
                left.checked_sub(downtime)
            }
            // An older file: the expiry alone (the core caps it at max_lifetime).
            _ => by_expiry,
        };
        let left = by_expiry?.min(by_record?);
        (left > 0).then(|| Duration::from_millis(left))
    }

    /// The nonce, `Ok(None)` when there is none, `Err` when it is garbled.
    pub fn nonce(&self) -> Result<Option<Nonce>, ()> {
        match &self.nonce {
            None => Ok(None),
            Some(s) => nonce_from_hex(s).map(Some).ok_or(()),
        }
    }
}

pub fn protocol_from(s: &str) -> Option<Protocol> {
    match s {
        "tcp" => Some(Protocol::Tcp),
        "udp" => Some(Protocol::Udp),
        _ => None,
    }
}

/// The journal spells a protocol as its name ("tcp", "udp"), as it always has.
mod protocol_name {
    use natwarden_wire::Protocol;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(p: &Protocol, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(p.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Protocol, D::Error> {
        let name = String::deserialize(d)?;
        super::protocol_from(&name).ok_or_else(|| D::Error::custom("unknown protocol"))
    }
}

/// The journal spells an origin as its name ("nat-pmp", "pcp"), as it always has.
mod origin_name {
    use natwarden_core::Origin;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(o: &Origin, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(o.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Origin, D::Error> {
        let name = String::deserialize(d)?;
        Origin::from_name(&name).ok_or_else(|| D::Error::custom("unknown origin"))
    }
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// What was found on disk at start-up.
#[derive(Debug)]
pub enum Loaded {
    /// No state file: a first start, or the admin removed it.
    Missing,
    Restored {
        epoch_start_ms: u64,
        /// Live mappings in file order (the last record per key wins).
        mappings: Vec<SavedMapping>,
    },
    /// The file could not be proven intact; it was moved to `kept_at`.
    Damaged {
        reason: String,
        kept_at: Option<PathBuf>,
    },
}

pub fn load(path: &Path) -> Loaded {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Loaded::Missing,
        Err(e) => return damaged(path, format!("cannot read it: {e}")),
    };
    match replay(&bytes) {
        Ok((epoch_start_ms, mappings)) => Loaded::Restored {
            epoch_start_ms,
            mappings,
        },
        Err(reason) => damaged(path, reason),
    }
}

/// Keeps a damaged file for the admin, never overwriting an earlier one.
fn damaged(path: &Path, reason: String) -> Loaded {
    let stamp = unix_ms(SystemTime::now());
    let mut kept = path.with_extension(format!("damaged-{stamp}"));
    let mut n = 0;
    while kept.exists() && n < 100 {
        n += 1;
        kept = path.with_extension(format!("damaged-{stamp}-{n}"));
    }
    let kept_at = fs::rename(path, &kept).ok().map(|_| kept);
    Loaded::Damaged { reason, kept_at }
}

/// Replays the journal into the live set of mappings.
pub fn replay(bytes: &[u8]) -> Result<(u64, Vec<SavedMapping>), String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
    // Only newline-terminated lines were ever made durable before an acknowledgement;
    // a tail without its newline is a write that `kill -9` cut short.
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    let mut lines = complete.lines().enumerate();
    let mut epoch_start_ms = match lines.next() {
        Some((_, l)) => match serde_json::from_str(l) {
            Ok(Record::Header {
                version: VERSION,
                epoch_start_ms,
            }) => epoch_start_ms,
            Ok(Record::Header { version, .. }) => {
                return Err(format!("unknown format version {version}"))
            }
            _ => return Err("line 1 is not a header".into()),
        },
        None => return Err("no header".into()),
    };
    let mut live: Vec<SavedMapping> = Vec::new();
    let mut index: std::collections::HashMap<MappingKey, usize> = Default::default();
    for (i, line) in lines {
        let record: Record =
            serde_json::from_str(line).map_err(|e| format!("line {}: {e}", i + 1))?;
        match record {
            Record::Header { .. } => return Err(format!("line {}: a second header", i + 1)),
            Record::Upsert(m) => {
                if m.nonce().is_err() {
                    return Err(format!("line {}: garbled nonce", i + 1));
                }
                let k = m.key();
                match index.get(&k) {
                    Some(&at) => live[at] = m,
                    None => {
                        index.insert(k, live.len());
                        live.push(m);
                    }
                }
            }
            Record::Remove {
                client,
                protocol,
                internal_port,
            } => {
                let k = MappingKey {
                    client,
                    protocol,
                    internal_port,
                };
                if let Some(at) = index.remove(&k) {
                    // Swap-remove keeps this O(1); fix the moved entry's index.
                    live.swap_remove(at);
                    if let Some(moved) = live.get(at) {
                        index.insert(moved.key(), at);
                    }
                }
            }
            Record::NewEpoch { epoch_start_ms: t } => {
                // State was deliberately dropped at that point: nothing before it lives.
                epoch_start_ms = t;
                live.clear();
                index.clear();
            }
        }
    }
    Ok((epoch_start_ms, live))
}

/// The open journal.
pub struct Journal {
    path: PathBuf,
    file: File,
    appended: usize,
    buf: Vec<u8>,
}

impl Journal {
    /// Writes a fresh snapshot (temp file, fsync, rename, fsync of the directory) and
    /// opens it for appending.
    pub fn create(
        path: &Path,
        epoch_start_ms: u64,
        mappings: &[SavedMapping],
    ) -> io::Result<Journal> {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        fs::create_dir_all(dir)?;
        let tmp = path.with_extension("tmp");
        let mut buf = Vec::with_capacity(64 + mappings.len() * 128);
        line(
            &mut buf,
            &Record::Header {
                version: VERSION,
                epoch_start_ms,
            },
        )?;
        for m in mappings {
            line(&mut buf, &Record::Upsert(m.clone()))?;
        }
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            f.write_all(&buf)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()?;
        let file = OpenOptions::new().append(true).open(path)?;
        Ok(Journal {
            path: path.to_path_buf(),
            file,
            appended: 0,
            buf: Vec::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends records and makes them durable with one fdatasync (group commit).
    pub fn append(&mut self, records: &[Record]) -> io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        self.buf.clear();
        for r in records {
            line(&mut self.buf, r)?;
        }
        self.file.write_all(&self.buf)?;
        self.file.sync_data()?;
        self.appended += records.len();
        Ok(())
    }

    /// Compaction pays off once the log holds far more records than live mappings.
    pub fn wants_compaction(&self, live: usize) -> bool {
        self.appended > 4096 && self.appended > 2 * live
    }
}

fn line(buf: &mut Vec<u8>, r: &Record) -> io::Result<()> {
    serde_json::to_writer(&mut *buf, r).map_err(io::Error::other)?;
    buf.push(b'\n');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved(port: u16, expires_ms: u64) -> SavedMapping {
        SavedMapping {
            client: IpAddr::from([192, 168, 1, 10]),
            protocol: Protocol::Tcp,
            internal_port: port,
            external_port: port,
            expires_ms,
            written_ms: None,
            remaining_ms: None,
            origin: Origin::NatPmp,
            nonce: None,
            inbound: true,
            outbound: false,
        }
    }

    #[test]
    fn pcp_mappings_keep_nonce_and_kinds_and_v6_clients() {
        let m = SavedMapping {
            client: "2001:db8:1::10".parse().expect("v6"),
            origin: Origin::Pcp,
            nonce: Some(nonce_hex(&[0xab; 12])),
            outbound: true,
            ..saved(5000, 9)
        };
        let mut bytes = b"{\"header\":{\"version\":1,\"epoch_start_ms\":5}}\n".to_vec();
        bytes.extend_from_slice(&serde_json::to_vec(&Record::Upsert(m.clone())).expect("json"));
        bytes.push(b'\n');
        let (_, live) = replay(&bytes).expect("replays");
        assert_eq!(live, vec![m.clone()]);
        assert_eq!(live[0].nonce(), Ok(Some([0xab; 12])));
        let garbled = SavedMapping {
            nonce: Some("zz".into()),
            ..m
        };
        let mut bad = b"{\"header\":{\"version\":1,\"epoch_start_ms\":5}}\n".to_vec();
        bad.extend_from_slice(&serde_json::to_vec(&Record::Upsert(garbled)).expect("json"));
        bad.push(b'\n');
        assert!(replay(&bad).is_err());
    }

    /// Protocol and origin are typed in memory; on disk they are the names they always
    /// were, so files written before stay readable and read back byte for byte.
    #[test]
    fn typed_protocol_and_origin_keep_the_on_disk_text() {
        let text = concat!(
            "{\"header\":{\"version\":1,\"epoch_start_ms\":5}}\n",
            "{\"upsert\":{\"client\":\"192.168.1.10\",\"protocol\":\"udp\",\"internal_port\":53,",
            "\"external_port\":5353,\"expires_ms\":9,\"origin\":\"pcp\",",
            "\"nonce\":\"abababababababababababab\",\"inbound\":true,\"outbound\":false}}\n",
            "{\"remove\":{\"client\":\"192.168.1.10\",\"protocol\":\"tcp\",\"internal_port\":1}}\n",
        );
        let (_, live) = replay(text.as_bytes()).expect("replays");
        assert_eq!(
            (live[0].protocol, live[0].origin),
            (Protocol::Udp, Origin::Pcp)
        );
        let mut again = Vec::new();
        line(
            &mut again,
            &Record::Header {
                version: 1,
                epoch_start_ms: 5,
            },
        )
        .expect("json");
        line(&mut again, &Record::Upsert(live[0].clone())).expect("json");
        line(
            &mut again,
            &Record::Remove {
                client: IpAddr::from([192, 168, 1, 10]),
                protocol: Protocol::Tcp,
                internal_port: 1,
            },
        )
        .expect("json");
        assert_eq!(std::str::from_utf8(&again), Ok(text));
        for bad in [r#""protocol":"sctp""#, r#""origin":"upnp""#] {
            let bad = text.replacen(
                if bad.contains("protocol") {
                    r#""protocol":"udp""#
                } else {
                    r#""origin":"pcp""#
                },
                bad,
                1,
            );
            assert!(replay(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "natwarden-state-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).expect("temp dir");
        d
    }

    #[test]
    fn snapshot_then_appends_replay_to_the_live_set() {
        let d = dir();
        let path = d.join("state.json");
        let mut j = Journal::create(&path, 1000, &[saved(1, 5), saved(2, 5)]).expect("create");
        j.append(&[
            Record::Upsert(saved(1, 9)),
            Record::Remove {
                client: IpAddr::from([192, 168, 1, 10]),
                protocol: Protocol::Tcp,
                internal_port: 2,
            },
            Record::Upsert(saved(3, 7)),
        ])
        .expect("append");
        match load(&path) {
            Loaded::Restored {
                epoch_start_ms,
                mappings,
            } => {
                assert_eq!(epoch_start_ms, 1000);
                assert_eq!(mappings, vec![saved(1, 9), saved(3, 7)]);
            }
            other => panic!("{other:?}"),
        }
        let _ = fs::remove_dir_all(&d);
    }

    /// A mapping granted 600 s at wall-clock second 1,000,000, as the daemon writes it.
    fn granted_600s_at(written_s: u64) -> SavedMapping {
        SavedMapping {
            written_ms: Some(written_s * 1000),
            remaining_ms: Some(600_000),
            ..saved(8080, (written_s + 600) * 1000)
        }
    }

    /// Writes `m` to a journal and reads it back, as a restart does.
    fn through_the_file(m: SavedMapping) -> SavedMapping {
        let d = dir();
        let path = d.join("state.json");
        Journal::create(&path, 1, &[m]).expect("create");
        let back = match load(&path) {
            Loaded::Restored { mut mappings, .. } => mappings.remove(0),
            other => panic!("{other:?}"),
        };
        let _ = fs::remove_dir_all(&d);
        back
    }

    #[test]
    fn restart_after_100_s_of_downtime_restores_the_lifetime_less_100_s() {
        let m = through_the_file(granted_600s_at(1_000_000));
        assert_eq!(
            m.remaining_at(1_000_100_000),
            Some(Duration::from_secs(500))
        );
    }

    #[test]
    fn restart_after_downtime_longer_than_the_lifetime_restores_nothing() {
        let m = through_the_file(granted_600s_at(1_000_000));
        assert_eq!(m.remaining_at(1_000_600_000), None);
        assert_eq!(m.remaining_at(1_003_600_000), None);
    }

    #[test]
    fn a_wall_clock_that_went_back_never_extends_a_lease() {
        let m = through_the_file(granted_600s_at(1_000_000));
        // An hour back: no downtime is counted, and no more than was left is granted.
        assert_eq!(m.remaining_at(996_400_000), Some(Duration::from_secs(600)));
        // Back to before the epoch of Unix time itself, same.
        assert_eq!(m.remaining_at(0), Some(Duration::from_secs(600)));
        // A record whose expiry says less than its remaining lifetime: the smaller wins.
        let odd = SavedMapping {
            expires_ms: 1_000_060_000,
            ..granted_600s_at(1_000_000)
        };
        assert_eq!(
            odd.remaining_at(1_000_000_000),
            Some(Duration::from_secs(60))
        );
        // A file from before `written_ms` existed: the expiry alone.
        let old = saved(1, 2_000);
        assert_eq!(old.remaining_at(1_500), Some(Duration::from_millis(500)));
        assert_eq!(old.remaining_at(2_000), None);
    }

    #[test]
    fn a_torn_last_line_was_never_acknowledged_and_is_ignored() {
        let mut bytes = b"{\"header\":{\"version\":1,\"epoch_start_ms\":5}}\n".to_vec();
        let mut rec = serde_json::to_vec(&Record::Upsert(saved(1, 9))).expect("json");
        rec.push(b'\n');
        bytes.extend_from_slice(&rec);
        bytes.extend_from_slice(&rec[..rec.len() / 2]);
        assert_eq!(replay(&bytes), Ok((5, vec![saved(1, 9)])));
    }

    #[test]
    fn new_epoch_drops_everything_before_it() {
        let d = dir();
        let path = d.join("s.json");
        let mut j = Journal::create(&path, 1, &[saved(1, 5)]).expect("create");
        j.append(&[
            Record::NewEpoch { epoch_start_ms: 77 },
            Record::Upsert(saved(2, 8)),
        ])
        .expect("append");
        match load(&path) {
            Loaded::Restored {
                epoch_start_ms,
                mappings,
            } => assert_eq!((epoch_start_ms, mappings), (77, vec![saved(2, 8)])),
            other => panic!("{other:?}"),
        }
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn damage_is_reported_and_the_file_kept_aside() {
        let d = dir();
        let path = d.join("state.json");
        fs::write(
            &path,
            "{\"header\":{\"version\":1,\"epoch_start_ms\":5}}\ngarbage\n{}\n",
        )
        .expect("write");
        match load(&path) {
            Loaded::Damaged {
                reason,
                kept_at: Some(kept),
            } => {
                assert!(reason.contains("line 2"), "{reason}");
                assert!(
                    !path.exists(),
                    "the damaged file must not stay where it would be overwritten"
                );
                assert!(fs::read_to_string(&kept).expect("kept").contains("garbage"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(load(&path), Loaded::Missing));
        for bad in [
            &b""[..],
            b"\xff\xfe\n",
            b"{\"upsert\":1}\n",
            b"{\"header\":{\"version\":9,\"epoch_start_ms\":5}}\n",
        ] {
            assert!(replay(bad).is_err(), "{bad:?}");
        }
        let _ = fs::remove_dir_all(&d);
    }
}
