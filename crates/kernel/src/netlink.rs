//! Netlink wire format, with no sockets: building messages with nested attributes,
//! and bounds-checked parsing of the kernel's replies (message headers, attributes, acks).

use std::fmt;

pub const NLMSG_HDRLEN: usize = 16;
const NLA_HDRLEN: usize = 4;

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP_INTR: u16 = 0x10;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_APPEND: u16 = 0x800;
/// Set by the kernel on an error reply when the original request was not echoed (NETLINK_CAP_ACK).
pub const NLM_F_CAPPED: u16 = 0x100;
/// Set by the kernel on an error reply that carries extended-ack attributes.
pub const NLM_F_ACK_TLVS: u16 = 0x200;

pub const NLMSG_NOOP: u16 = 1;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLMSG_OVERRUN: u16 = 4;

pub const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

const NLMSGERR_ATTR_MSG: u16 = 1;
const NLMSGERR_ATTR_OFFS: u16 = 2;

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Appends netlink messages to one buffer (a batch is several messages back to back).
///
/// Lengths are patched in when a message or nest closes. An attribute longer than
/// netlink's 16-bit length field cannot be expressed: it is recorded and reported by
/// [`Builder::finish`] instead of being silently truncated.
#[derive(Default)]
pub struct Builder {
    buf: Vec<u8>,
    msg_start: usize,
    marks: Vec<(u32, usize)>,
    overflow: bool,
}

/// An attribute (or message) grew past what its length field can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLong;

impl Builder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes one message: header, then whatever `body` adds (fixed header, attributes).
    pub fn message(&mut self, ty: u16, flags: u16, seq: u32, body: impl FnOnce(&mut Builder)) {
        let start = self.buf.len();
        self.msg_start = start;
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched below
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
        body(self);
        self.pad();
        let len = self.buf.len() - start;
        match u32::try_from(len) {
            Ok(len) => self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes()),
            Err(_) => self.overflow = true,
        }
    }

    /// Raw bytes right after the message header (nfgenmsg, ifaddrmsg, rtmsg, ...).
    pub fn raw(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        self.pad();
    }

    pub fn attr(&mut self, ty: u16, data: &[u8]) {
        let len = NLA_HDRLEN + data.len();
        let Ok(len16) = u16::try_from(len) else {
            self.overflow = true;
            return;
        };
        self.buf.extend_from_slice(&len16.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
    }

    /// nf_tables integers are big-endian on the wire.
    pub fn attr_be32(&mut self, ty: u16, v: u32) {
        self.attr(ty, &v.to_be_bytes());
    }

    /// A NUL-terminated string attribute (NLA_STRING / NLA_NUL_STRING).
    pub fn attr_str(&mut self, ty: u16, s: &str) {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.attr(ty, &v);
    }

    /// A nested attribute holding whatever `body` adds.
    pub fn nest(&mut self, ty: u16, body: impl FnOnce(&mut Builder)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; NLA_HDRLEN]);
        body(self);
        let len = self.buf.len() - start;
        let Ok(len16) = u16::try_from(len) else {
            self.overflow = true;
            return;
        };
        self.buf[start..start + 2].copy_from_slice(&len16.to_ne_bytes());
        self.buf[start + 2..start + 4].copy_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    }

    /// Remembers that caller item `item` starts here, so an error the kernel pins to
    /// this offset (extended ack) can be traced back to it.
    pub fn mark(&mut self, item: usize) {
        let off = self.buf.len() - self.msg_start;
        self.marks
            .push((u32::try_from(off).unwrap_or(u32::MAX), item));
    }

    /// Takes the marks recorded since the last call (offsets relative to their message).
    pub fn take_marks(&mut self) -> Vec<(u32, usize)> {
        std::mem::take(&mut self.marks)
    }

    pub fn finish(self) -> Result<Vec<u8>, TooLong> {
        if self.overflow {
            Err(TooLong)
        } else {
            Ok(self.buf)
        }
    }

    fn pad(&mut self) {
        let n = align4(self.buf.len()) - self.buf.len();
        self.buf.extend_from_slice(&[0; 3][..n]);
    }
}

/// A reply that does not follow the netlink format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// One message of a reply.
#[derive(Debug, Clone, Copy)]
pub struct Msg<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    /// The sender's port id; in nf_tables events, the port id of the socket whose
    /// request caused the change.
    pub pid: u32,
    pub payload: &'a [u8],
}

/// Iterates over the messages of one datagram; stops with an error at the first bad header.
pub fn messages(buf: &[u8]) -> impl Iterator<Item = Result<Msg<'_>, Malformed>> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let Some(hdr) = rest.get(..NLMSG_HDRLEN) else {
            rest = &[];
            return Some(Err(Malformed("truncated message header")));
        };
        let len = u32_ne(&hdr[0..4]) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            rest = &[];
            return Some(Err(Malformed("message length out of bounds")));
        }
        let msg = Msg {
            ty: u16_ne(&hdr[4..6]),
            flags: u16_ne(&hdr[6..8]),
            seq: u32_ne(&hdr[8..12]),
            pid: u32_ne(&hdr[12..16]),
            payload: &rest[NLMSG_HDRLEN..len],
        };
        rest = rest.get(align4(len)..).unwrap_or(&[]);
        Some(Ok(msg))
    })
}

/// Iterates over attributes as (type without flag bits, payload); stops with an error at
/// the first attribute whose length does not fit.
pub fn attrs(buf: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), Malformed>> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < NLA_HDRLEN {
            // Trailing bytes shorter than a header are padding.
            return None;
        }
        let len = u16_ne(&rest[0..2]) as usize;
        let ty = u16_ne(&rest[2..4]) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || len > rest.len() {
            rest = &[];
            return Some(Err(Malformed("attribute length out of bounds")));
        }
        let payload = &rest[NLA_HDRLEN..len];
        rest = rest.get(align4(len)..).unwrap_or(&[]);
        Some(Ok((ty, payload)))
    })
}

/// The content of an NLMSG_ERROR reply: an ack (errno 0) or an error for message `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// Positive errno, 0 for success.
    pub errno: i32,
    /// Sequence number of the request this answers.
    pub seq: u32,
    /// Offset of the offending attribute from the start of the request (extended ack).
    pub bad_attr: Option<u32>,
    /// The kernel's explanation (extended ack).
    pub text: Option<String>,
}

pub fn parse_ack(msg: &Msg<'_>) -> Result<Ack, Malformed> {
    let p = msg.payload;
    let (Some(err), Some(orig)) = (p.get(0..4), p.get(4..4 + NLMSG_HDRLEN)) else {
        return Err(Malformed("truncated error message"));
    };
    let error = i32::from_ne_bytes([err[0], err[1], err[2], err[3]]);
    let orig_len = u32_ne(&orig[0..4]) as usize;
    let seq = u32_ne(&orig[8..12]);
    let mut ack = Ack {
        errno: error.checked_neg().unwrap_or(i32::MAX),
        seq,
        bad_attr: None,
        text: None,
    };
    if msg.flags & NLM_F_ACK_TLVS != 0 {
        // Without NETLINK_CAP_ACK the whole request is echoed before the attributes.
        let echoed = if msg.flags & NLM_F_CAPPED != 0 {
            NLMSG_HDRLEN
        } else {
            align4(orig_len.max(NLMSG_HDRLEN))
        };
        let tlvs = p.get(4 + echoed..).unwrap_or(&[]);
        for a in attrs(tlvs) {
            let (ty, v) = a?;
            match ty {
                NLMSGERR_ATTR_MSG => {
                    let s = v.split(|&b| b == 0).next().unwrap_or(&[]);
                    ack.text = Some(String::from_utf8_lossy(s).into_owned());
                }
                NLMSGERR_ATTR_OFFS if v.len() >= 4 => ack.bad_attr = Some(u32_ne(&v[0..4])),
                _ => {}
            }
        }
    }
    Ok(ack)
}

pub fn u16_ne(b: &[u8]) -> u16 {
    u16::from_ne_bytes([b[0], b[1]])
}

pub fn u32_ne(b: &[u8]) -> u32 {
    u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
}

/// A native-endian u32 attribute payload, if it has the right size.
pub fn attr_u32(v: &[u8]) -> Option<u32> {
    (v.len() == 4).then(|| u32_ne(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_to_four_bytes() {
        let mut b = Builder::new();
        b.message(0x10, NLM_F_REQUEST, 7, |b| {
            b.attr(1, &[0xaa]);
            b.attr_str(2, "ab");
        });
        let v = b.finish().unwrap();
        #[rustfmt::skip]
        let mut expected = vec![
            0, 0, 0, 0, 0x10, 0, 1, 0, 7, 0, 0, 0, 0, 0, 0, 0,
        ];
        expected[0..4].copy_from_slice(&32u32.to_ne_bytes());
        expected[4..6].copy_from_slice(&0x10u16.to_ne_bytes());
        expected[6..8].copy_from_slice(&1u16.to_ne_bytes());
        expected[8..12].copy_from_slice(&7u32.to_ne_bytes());
        for (len, ty, data) in [
            (5u16, 1u16, &[0xaa, 0, 0, 0][..]),
            (7, 2, &[b'a', b'b', 0, 0]),
        ] {
            expected.extend_from_slice(&len.to_ne_bytes());
            expected.extend_from_slice(&ty.to_ne_bytes());
            expected.extend_from_slice(data);
        }
        assert_eq!(v, expected);
    }

    #[test]
    fn nested_lengths_cover_their_children() {
        let mut b = Builder::new();
        b.message(1, 0, 0, |b| {
            b.nest(3, |b| {
                b.attr_be32(1, 0x0102_0304);
                b.nest(2, |b| b.attr(1, &[1, 2, 3]));
            });
        });
        let v = b.finish().unwrap();
        let outer = &v[NLMSG_HDRLEN..];
        assert_eq!(u16_ne(&outer[0..2]), 4 + 8 + 4 + 7 + 1);
        assert_eq!(u16_ne(&outer[2..4]), 3 | NLA_F_NESTED);
        let inner: Vec<_> = attrs(&outer[4..]).map(|a| a.unwrap()).collect();
        assert_eq!(inner.len(), 2);
        assert_eq!(inner[0], (1, &[1, 2, 3, 4][..]));
        assert_eq!(inner[1].0, 2);
        let innermost: Vec<_> = attrs(inner[1].1).map(|a| a.unwrap()).collect();
        assert_eq!(innermost, vec![(1, &[1, 2, 3][..])]);
    }

    #[test]
    fn oversized_attribute_is_an_error_not_truncation() {
        let mut b = Builder::new();
        b.message(1, 0, 0, |b| b.nest(1, |b| b.attr(1, &vec![0; 70_000])));
        assert_eq!(b.finish(), Err(TooLong));
    }

    #[test]
    fn messages_rejects_lengths_past_the_buffer() {
        let mut b = Builder::new();
        b.message(5, 0, 1, |b| b.attr(1, &[0; 8]));
        let mut v = b.finish().unwrap();
        assert_eq!(messages(&v).count(), 1);
        v[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        let r: Vec<_> = messages(&v).collect();
        assert_eq!(r.len(), 1);
        assert!(r[0].is_err());
        assert!(messages(&v[..10]).next().unwrap().is_err());
    }

    #[test]
    fn attrs_rejects_bad_lengths() {
        assert!(attrs(&[2, 0, 1, 0]).next().unwrap().is_err());
        assert!(attrs(&[40, 0, 1, 0, 0, 0]).next().unwrap().is_err());
        assert!(attrs(&[0, 0]).next().is_none());
    }

    fn error_msg(errno: i32, seq: u32, flags: u16, tlvs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut b = Builder::new();
        b.message(NLMSG_ERROR, flags, seq, |b| {
            b.raw(&(-errno).to_ne_bytes());
            let mut orig = Builder::new();
            orig.message(0xa0c, NLM_F_REQUEST | NLM_F_ACK, seq, |_| {});
            b.raw(&orig.finish().unwrap());
            for (ty, v) in tlvs {
                b.attr(*ty, v);
            }
        });
        b.finish().unwrap()
    }

    #[test]
    fn ack_with_extended_attributes() {
        let v = error_msg(
            2,
            42,
            NLM_F_CAPPED | NLM_F_ACK_TLVS,
            &[(1, b"no such element\0"), (2, &36u32.to_ne_bytes())],
        );
        let m = messages(&v).next().unwrap().unwrap();
        assert_eq!(m.ty, NLMSG_ERROR);
        let ack = parse_ack(&m).unwrap();
        assert_eq!(
            ack,
            Ack {
                errno: 2,
                seq: 42,
                bad_attr: Some(36),
                text: Some("no such element".into())
            }
        );
    }

    #[test]
    fn plain_ack_and_truncated_error() {
        let v = error_msg(0, 9, 0, &[]);
        let m = messages(&v).next().unwrap().unwrap();
        let ack = parse_ack(&m).unwrap();
        assert_eq!((ack.errno, ack.seq, ack.bad_attr), (0, 9, None));
        let short = Msg {
            ty: NLMSG_ERROR,
            flags: 0,
            seq: 0,
            pid: 0,
            payload: &[0; 10],
        };
        assert!(parse_ack(&short).is_err());
    }
}
