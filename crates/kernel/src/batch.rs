//! nfnetlink transactions: messages framed by BATCH_BEGIN/END, sent in one datagram,
//! and every ack matched to its message by sequence number (all or nothing in the kernel).

use std::io;
use std::time::Duration;

use crate::netlink::{self, Builder, NLMSG_ERROR, NLM_F_ACK, NLM_F_REQUEST};
use crate::socket::NlSocket;
use crate::NftMessage;

const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
pub const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNETLINK_V0: u8 = 0;

/// Each ack costs the receiving socket roughly this much (skb overhead included);
/// the receive buffer is sized so no ack of a batch can be dropped.
const ACK_TRUESIZE: usize = 2048;

/// The kernel processes a batch inside sendmsg, so its acks are queued by the time
/// send returns; the timeout only guards against a kernel that never answers.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

struct Pending {
    label: NftMessage,
    /// (offset within the message, caller's item index), in offset order.
    marks: Vec<(u32, usize)>,
}

/// Messages of one transaction, built in place.
pub struct Batch {
    b: Builder,
    begin_seq: u32,
    next_seq: u32,
    pending: Vec<Pending>,
}

/// Why a batch did not take effect.
#[derive(Debug)]
pub enum Failure {
    /// The kernel refused the batch; nothing of it was applied.
    Rejected {
        errno: i32,
        /// Label of the message that failed; None when the batch as a whole failed.
        label: Option<NftMessage>,
        /// Caller item the kernel pointed at, if it did.
        item: Option<usize>,
        text: Option<String>,
    },
    /// Building, sending or receiving failed locally.
    Io(&'static str, io::Error),
    /// The kernel's answer was lost or unreadable: the batch may or may not have been applied.
    Unconfirmed(String),
}

impl Batch {
    /// Starts a batch whose sequence numbers begin at `first_seq`.
    pub fn new(first_seq: u32) -> Self {
        let mut b = Builder::new();
        b.message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, first_seq, |b| {
            b.raw(&nfgenmsg(libc::AF_UNSPEC as u8, NFNL_SUBSYS_NFTABLES))
        });
        Self {
            b,
            begin_seq: first_seq,
            next_seq: first_seq.wrapping_add(1),
            pending: Vec::new(),
        }
    }

    /// Adds one nf_tables message (acked); `label` names it in errors ("NEWSETELEM fwd4").
    pub fn add(
        &mut self,
        msg: u16,
        flags: u16,
        family: u8,
        label: NftMessage,
        body: impl FnOnce(&mut Builder),
    ) {
        let seq = self.next_seq;
        self.next_seq = seq.wrapping_add(1);
        let ty = (NFNL_SUBSYS_NFTABLES << 8) | msg;
        self.b
            .message(ty, NLM_F_REQUEST | NLM_F_ACK | flags, seq, |b| {
                b.raw(&nfgenmsg(family, 0));
                body(b);
            });
        let marks = self.b.take_marks();
        self.pending.push(Pending { label, marks });
    }

    /// The sequence number after this batch's last one.
    pub fn next_seq(&self) -> u32 {
        self.next_seq.wrapping_add(1)
    }

    /// Frames, sends and waits for every ack.
    pub fn commit(mut self, sock: &NlSocket) -> Result<(), Failure> {
        let end_seq = self.next_seq;
        self.b
            .message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, end_seq, |b| {
                b.raw(&nfgenmsg(libc::AF_UNSPEC as u8, NFNL_SUBSYS_NFTABLES))
            });
        let bytes = std::mem::take(&mut self.b).finish().map_err(|_| {
            Failure::Io(
                "building batch",
                io::Error::new(io::ErrorKind::InvalidInput, "netlink attribute too long"),
            )
        })?;
        // The whole batch must fit the send buffer (one datagram) and every ack the receive buffer.
        sock.size_buffer(false, bytes.len() + 4096)
            .map_err(|e| Failure::Io("sizing send buffer", e))?;
        sock.size_buffer(
            true,
            ((self.pending.len() + 16) * ACK_TRUESIZE).max(256 * 1024),
        )
        .map_err(|e| Failure::Io("sizing receive buffer", e))?;
        sock.set_receive_timeout(ACK_TIMEOUT)
            .map_err(|e| Failure::Io("setting receive timeout", e))?;
        drain(sock);
        sock.send(&bytes)
            .map_err(|e| Failure::Io("sending batch", e))?;
        let r = self.collect_acks(sock);
        // Whatever follows a batch-level error belongs to this batch; don't let it linger.
        drain(sock);
        r
    }

    fn collect_acks(&self, sock: &NlSocket) -> Result<(), Failure> {
        let mut acked = vec![false; self.pending.len()];
        let mut remaining = self.pending.len();
        // Lowest-sequence error wins: later ones are usually its consequences.
        let mut first_err: Option<(usize, netlink::Ack)> = None;
        let mut buf = vec![0u8; 64 * 1024];
        while remaining > 0 {
            let n = match sock.recv(&mut buf, false) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(Failure::Unconfirmed(format!(
                        "timed out waiting for {remaining} acks"
                    )))
                }
                Err(e) => return Err(Failure::Unconfirmed(format!("reading acks: {e}"))),
            };
            for m in netlink::messages(&buf[..n]) {
                let m = m.map_err(|e| Failure::Unconfirmed(format!("bad ack: {e}")))?;
                if m.ty != NLMSG_ERROR {
                    continue;
                }
                let ack = netlink::parse_ack(&m)
                    .map_err(|e| Failure::Unconfirmed(format!("bad ack: {e}")))?;
                if ack.seq == self.begin_seq {
                    // The batch as a whole failed (bad framing, commit failure, no memory).
                    return Err(if ack.errno == 0 {
                        Failure::Unconfirmed("unexpected ack of batch begin".into())
                    } else {
                        Failure::Rejected {
                            errno: ack.errno,
                            label: None,
                            item: None,
                            text: ack.text,
                        }
                    });
                }
                let Some(i) = self.index_of(ack.seq) else {
                    continue; // stale, from an earlier batch
                };
                if !acked[i] {
                    acked[i] = true;
                    remaining -= 1;
                }
                let earlier = matches!(&first_err, Some((j, _)) if *j <= i);
                if ack.errno != 0 && !earlier {
                    first_err = Some((i, ack));
                }
            }
        }
        match first_err {
            None => Ok(()),
            Some((i, ack)) => {
                let p = &self.pending[i];
                let item = ack.bad_attr.and_then(|off| {
                    p.marks
                        .iter()
                        .take_while(|(o, _)| *o <= off)
                        .last()
                        .map(|(_, item)| *item)
                });
                Err(Failure::Rejected {
                    errno: ack.errno,
                    label: Some(p.label.clone()),
                    item,
                    text: ack.text,
                })
            }
        }
    }

    fn index_of(&self, seq: u32) -> Option<usize> {
        let i = seq.wrapping_sub(self.begin_seq.wrapping_add(1)) as usize;
        (i < self.pending.len()).then_some(i)
    }

    #[cfg(test)]
    pub fn bytes_for_test(mut self) -> Vec<u8> {
        let end_seq = self.next_seq;
        self.b
            .message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, end_seq, |b| {
                b.raw(&nfgenmsg(libc::AF_UNSPEC as u8, NFNL_SUBSYS_NFTABLES))
            });
        self.b.finish().unwrap_or_default()
    }
}

/// Discards anything queued (acks of an earlier batch that failed as a whole).
fn drain(sock: &NlSocket) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match sock.recv(&mut buf, true) {
            // An oversized datagram is consumed all the same; keep going.
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {}
            Err(_) => break,
        }
    }
}

/// struct nfgenmsg: family, version, resource id (big-endian).
fn nfgenmsg(family: u8, res_id: u16) -> [u8; 4] {
    let r = res_id.to_be_bytes();
    [family, NFNETLINK_V0, r[0], r[1]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_is_framed_by_begin_and_end_with_consecutive_sequence_numbers() {
        let mut b = Batch::new(100);
        b.add(0, 0, 1, NftMessage::NewTable("t".into()), |b| {
            b.attr_str(1, "t")
        });
        b.add(2, 0, 1, NftMessage::DelTable("t".into()), |b| {
            b.attr_str(1, "t")
        });
        assert_eq!(b.pending.len(), 2);
        let bytes = b.bytes_for_test();
        let msgs: Vec<_> = netlink::messages(&bytes).map(|m| m.unwrap()).collect();
        let summary: Vec<_> = msgs.iter().map(|m| (m.ty, m.flags, m.seq)).collect();
        assert_eq!(
            summary,
            vec![
                (16, NLM_F_REQUEST, 100),
                (0xa00, NLM_F_REQUEST | NLM_F_ACK, 101),
                (0xa02, NLM_F_REQUEST | NLM_F_ACK, 102),
                (17, NLM_F_REQUEST, 103),
            ]
        );
        // res_id of begin/end is the nf_tables subsystem, in network order.
        assert_eq!(msgs[0].payload, &[0, 0, 0, 10]);
        assert_eq!(msgs[3].payload, &[0, 0, 0, 10]);
        assert_eq!(&msgs[1].payload[..4], &[1, 0, 0, 0]);
    }

    #[test]
    fn index_of_handles_wrapping_sequence_numbers() {
        let mut b = Batch::new(u32::MAX);
        b.add(0, 0, 1, NftMessage::NewRule("a"), |_| {});
        b.add(0, 0, 1, NftMessage::NewRule("b"), |_| {});
        assert_eq!(b.index_of(0), Some(0));
        assert_eq!(b.index_of(1), Some(1));
        assert_eq!(b.index_of(2), None);
        assert_eq!(b.index_of(u32::MAX), None);
    }
}
