//! PCP (RFC 6887) messages: parsing and emitting the version-2 requests and responses.
//! Owns the byte layouts of RFC 6887 sections 7, 11-13 and 14.1; what to answer is the core's call.

use core::fmt;
use core::ops::Deref;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::bytes::{read_array, read_u16, read_u32, write_u16, write_u32};
use crate::Protocol;

/// The PCP protocol version (RFC 6887 section 7.1). NAT-PMP (RFC 6886) uses 0 on the same port
/// and is dispatched to [`crate::natpmp`] before this parser (section 9, Appendix A).
pub const VERSION: u8 = 2;

/// UDP port the server listens on for requests (RFC 6887 section 19.1).
pub const SERVER_PORT: u16 = 5351;

/// UDP port clients listen on for unsolicited responses (RFC 6887 sections 14.1.3 and 19.1).
pub const CLIENT_PORT: u16 = 5350;

/// IPv4 all-hosts group unsolicited ANNOUNCE responses go to (RFC 6887 section 14.1.3).
pub const ANNOUNCE_ADDR_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 1);

/// IPv6 link-local all-nodes group unsolicited ANNOUNCE responses go to (section 14.1.3).
pub const ANNOUNCE_ADDR_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// Largest PCP message: "a maximum UDP payload length of 1100 octets" (RFC 6887 section 7).
pub const MAX_LEN: usize = 1100;

/// Smallest PCP message: the 24-byte common header (RFC 6887 sections 7.1 and 7.2).
pub const MIN_LEN: usize = field::HEADER_LEN;

/// Error lifetime RFC 6887 section 7.4 recommends for short lifetime errors: 30 seconds.
pub const SHORT_ERROR_LIFETIME: u32 = 30;

/// Error lifetime RFC 6887 section 7.4 recommends for long lifetime errors: 30 minutes.
pub const LONG_ERROR_LIFETIME: u32 = 30 * 60;

/// Most FILTER options a MAP message of at most [`MAX_LEN`] bytes can carry (RFC 6887 section
/// 13.3: "as many as fit within maximum PCP message size"), so [`Filters`] holds them all.
pub const MAX_FILTERS: usize = (MAX_LEN - field::HEADER_LEN - field::map::LEN) / FILTER_OPTION_LEN;

const FILTER_OPTION_LEN: usize = field::option::HEADER_LEN + field::filter::LEN;

// A MAP message one FILTER longer than `MAX_FILTERS` does not fit in `MAX_LEN` bytes.
const _: () =
    assert!(field::HEADER_LEN + field::map::LEN + (MAX_FILTERS + 1) * FILTER_OPTION_LEN > MAX_LEN);

/// Option codes (RFC 6887 sections 7.3 and 13): the top bit clear means mandatory to process.
pub mod option {
    /// The mapping is for another host than the sender (section 13.1).
    pub const THIRD_PARTY: u8 = 1;
    /// No alternative mapping if the suggested one cannot be had (section 13.2).
    pub const PREFER_FAILURE: u8 = 2;
    /// Filter the remote peers allowed through a MAP mapping (section 13.3).
    pub const FILTER: u8 = 3;
    /// Set in the codes of options that are optional to process (128-255, section 7.3).
    pub const OPTIONAL_BIT: u8 = 0x80;

    /// Codes 0-127 are mandatory to process: a server that does not understand one answers
    /// UNSUPP_OPTION; codes 128-255 it ignores (section 7.3).
    pub const fn is_mandatory(code: u8) -> bool {
        code & OPTIONAL_BIT == 0
    }
}

/// Byte offsets of the fields, named as in the RFC 6887 diagrams.
mod field {
    use core::ops::Range;

    /// Both headers start with these two bytes (sections 7.1 and 7.2).
    pub const VERSION: usize = 0;
    /// The R bit (top bit) and the 7-bit Opcode.
    pub const R_OPCODE: usize = 1;
    pub const RESPONSE_BIT: u8 = 0x80;
    pub const OPCODE_MASK: u8 = 0x7f;

    /// Request header (section 7.1).
    pub const REQUEST_RESERVED: Range<usize> = 2..4;
    pub const REQUESTED_LIFETIME: Range<usize> = 4..8;
    pub const CLIENT_ADDRESS: Range<usize> = 8..24;

    /// Response header (section 7.2).
    pub const RESPONSE_RESERVED: usize = 2;
    pub const RESULT_CODE: usize = 3;
    pub const LIFETIME: Range<usize> = 4..8;
    pub const EPOCH_TIME: Range<usize> = 8..12;
    /// Zero for a request that parsed; else the last 96 bits of the PCP Client's IP Address,
    /// which sit at the same offsets in the request.
    pub const RESPONSE_RESERVED_96: Range<usize> = 12..24;

    pub const HEADER_LEN: usize = 24;

    /// MAP opcode data, request and response (section 11.1), from the end of the header.
    pub mod map {
        use core::ops::Range;

        pub const NONCE: Range<usize> = 0..12;
        pub const PROTOCOL: usize = 12;
        pub const RESERVED: Range<usize> = 13..16;
        pub const INTERNAL_PORT: Range<usize> = 16..18;
        /// Suggested (request) or Assigned (response) External Port.
        pub const EXTERNAL_PORT: Range<usize> = 18..20;
        /// Suggested (request) or Assigned (response) External IP Address.
        pub const EXTERNAL_ADDRESS: Range<usize> = 20..36;
        pub const LEN: usize = 36;
    }

    /// PEER opcode data (section 12.1): the MAP fields, then the remote peer.
    pub mod peer {
        use core::ops::Range;

        pub const REMOTE_PEER_PORT: Range<usize> = 36..38;
        pub const RESERVED: Range<usize> = 38..40;
        pub const REMOTE_PEER_ADDRESS: Range<usize> = 40..56;
        pub const LEN: usize = 56;
    }

    /// Option header (section 7.3); the data follows, padded to a multiple of 4 bytes.
    pub mod option {
        use core::ops::Range;

        pub const CODE: usize = 0;
        pub const RESERVED: usize = 1;
        /// Length of the data alone: "not including any padding octets".
        pub const LENGTH: Range<usize> = 2..4;
        pub const HEADER_LEN: usize = 4;
    }

    /// THIRD_PARTY option data (section 13.1).
    pub mod third_party {
        use core::ops::Range;

        pub const INTERNAL_ADDRESS: Range<usize> = 0..16;
        pub const LEN: usize = 16;
    }

    /// PREFER_FAILURE option data (section 13.2): none.
    pub mod prefer_failure {
        pub const LEN: usize = 0;
    }

    /// FILTER option data (section 13.3).
    pub mod filter {
        use core::ops::Range;

        pub const RESERVED: usize = 0;
        pub const PREFIX_LENGTH: usize = 1;
        pub const REMOTE_PEER_PORT: Range<usize> = 2..4;
        pub const REMOTE_PEER_ADDRESS: Range<usize> = 4..20;
        pub const LEN: usize = 20;
    }
}

/// A response's result code (RFC 6887 section 7.4).
///
/// A newtype rather than an enum: codes 14-255 are unassigned or for future use, and a client
/// must cope with them, so every `u8` is a valid value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResultCode(pub u8);

impl ResultCode {
    pub const SUCCESS: ResultCode = ResultCode(0);
    /// The request's version is not supported (long lifetime; section 9).
    pub const UNSUPP_VERSION: ResultCode = ResultCode(1);
    /// The operation is disabled for this client or refused by policy (long lifetime).
    pub const NOT_AUTHORIZED: ResultCode = ResultCode(2);
    /// The request could not be parsed (long lifetime).
    pub const MALFORMED_REQUEST: ResultCode = ResultCode(3);
    pub const UNSUPP_OPCODE: ResultCode = ResultCode(4);
    /// A mandatory-to-process option the server does not support (long lifetime).
    pub const UNSUPP_OPTION: ResultCode = ResultCode(5);
    /// An option appears too many times, has an invalid length, ... (long lifetime).
    pub const MALFORMED_OPTION: ResultCode = ResultCode(6);
    /// E.g. no external address yet (short lifetime).
    pub const NETWORK_FAILURE: ResultCode = ResultCode(7);
    /// System-wide shortage; the catch-all error (short lifetime).
    pub const NO_RESOURCES: ResultCode = ResultCode(8);
    /// Unsupported transport protocol (long lifetime).
    pub const UNSUPP_PROTOCOL: ResultCode = ResultCode(9);
    /// The subscriber's port quota would be exceeded (short lifetime).
    pub const USER_EX_QUOTA: ResultCode = ResultCode(10);
    /// The suggested external port/address cannot be had: only for MAP with PREFER_FAILURE,
    /// MAP for SCTP, and PEER; the lifetime depends on the reason.
    pub const CANNOT_PROVIDE_EXTERNAL: ResultCode = ResultCode(11);
    /// The datagram's source is not the PCP Client's IP Address: a NAT in between (long).
    pub const ADDRESS_MISMATCH: ResultCode = ResultCode(12);
    /// The FILTERs of a MAP request could not be created (long lifetime).
    pub const EXCESSIVE_REMOTE_PEERS: ResultCode = ResultCode(13);

    /// The RFC 6887 section 7.4 name, or "unknown result code".
    pub const fn name(self) -> &'static str {
        match self.0 {
            0 => "SUCCESS",
            1 => "UNSUPP_VERSION",
            2 => "NOT_AUTHORIZED",
            3 => "MALFORMED_REQUEST",
            4 => "UNSUPP_OPCODE",
            5 => "UNSUPP_OPTION",
            6 => "MALFORMED_OPTION",
            7 => "NETWORK_FAILURE",
            8 => "NO_RESOURCES",
            9 => "UNSUPP_PROTOCOL",
            10 => "USER_EX_QUOTA",
            11 => "CANNOT_PROVIDE_EXTERNAL",
            12 => "ADDRESS_MISMATCH",
            13 => "EXCESSIVE_REMOTE_PEERS",
            _ => "unknown result code",
        }
    }

    /// A short wording of the RFC 6887 section 7.4 description.
    pub const fn description(self) -> &'static str {
        match self.0 {
            0 => "Success",
            1 => "Unsupported version",
            2 => "Not authorized",
            3 => "Malformed request",
            4 => "Unsupported opcode",
            5 => "Unsupported option",
            6 => "Malformed option",
            7 => "Network failure",
            8 => "No resources",
            9 => "Unsupported protocol",
            10 => "User exceeded quota",
            11 => "Cannot provide external",
            12 => "Address mismatch",
            13 => "Excessive remote peers",
            _ => "unknown result code",
        }
    }

    /// The only success code is 0; every other value is an error (section 7.4).
    pub const fn is_success(self) -> bool {
        self.0 == Self::SUCCESS.0
    }

    /// The Lifetime section 7.4 recommends for an error response with this code:
    /// [`SHORT_ERROR_LIFETIME`] or [`LONG_ERROR_LIFETIME`]. `None` for success, for
    /// CANNOT_PROVIDE_EXTERNAL ("depends on the reason for the failure") and unknown codes.
    pub const fn recommended_lifetime(self) -> Option<u32> {
        match self.0 {
            1..=6 | 9 | 12 | 13 => Some(LONG_ERROR_LIFETIME),
            7 | 8 | 10 => Some(SHORT_ERROR_LIFETIME),
            _ => None,
        }
    }
}

impl fmt::Display for ResultCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.0, self.name())
    }
}

/// The opcodes RFC 6887 defines (sections 11, 12 and 14.1); any other is UNSUPP_OPCODE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Opcode {
    /// Epoch discovery and rapid recovery (section 14.1).
    Announce,
    /// Create, renew or delete an inbound mapping (section 11).
    Map,
    /// Create or renew an outbound mapping to one remote peer (section 12).
    Peer,
}

impl Opcode {
    /// The 7-bit opcode value.
    pub const fn code(self) -> u8 {
        match self {
            Opcode::Announce => 0,
            Opcode::Map => 1,
            Opcode::Peer => 2,
        }
    }

    pub const fn from_code(code: u8) -> Option<Opcode> {
        match code {
            0 => Some(Opcode::Announce),
            1 => Some(Opcode::Map),
            2 => Some(Opcode::Peer),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Opcode::Announce => "ANNOUNCE",
            Opcode::Map => "MAP",
            Opcode::Peer => "PEER",
        }
    }

    /// Length of the opcode-specific data, the same in requests and responses.
    const fn data_len(self) -> usize {
        match self {
            Opcode::Announce => 0,
            Opcode::Map => field::map::LEN,
            Opcode::Peer => field::peer::LEN,
        }
    }

    /// Whether option `code` is valid with this opcode (section 13: THIRD_PARTY for MAP and
    /// PEER, PREFER_FAILURE and FILTER for MAP only). Unknown codes: `false`.
    pub const fn allows_option(self, code: u8) -> bool {
        matches!(
            (self, code),
            (
                Opcode::Map,
                option::THIRD_PARTY | option::PREFER_FAILURE | option::FILTER
            ) | (Opcode::Peer, option::THIRD_PARTY)
        )
    }
}

impl fmt::Display for Opcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The 96-bit Mapping Nonce of MAP and PEER (RFC 6887 sections 11.1 and 12.1): random, chosen
/// by the client, copied into the response. Zero is a legal value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Nonce(pub [u8; 12]);

/// MAP opcode data (RFC 6887 section 11.1), the same layout in requests and responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MapData {
    /// Copied from the request into the response.
    pub nonce: Nonce,
    /// IANA protocol number, e.g. 6 (TCP) or 17 (UDP); 0 means all protocols.
    pub protocol: u8,
    /// Internal port; 0 means all ports. With protocol 0 it "MUST be zero on transmission and
    /// MUST be ignored on reception": [`Request`] parse and emit zero it then.
    pub internal_port: u16,
    /// Request: suggested external port, 0 for no preference. Success response: the assigned
    /// port. Error response: copied from the request.
    pub external_port: u16,
    /// Request: suggested external address, the family's all-zeros address for no preference
    /// (see [`is_all_zeros`]). Success response: the assigned address. Error response: copied
    /// from the request. IPv4 as an IPv4-mapped address (see [`ipv4_mapped`]).
    pub external_address: Ipv6Addr,
}

impl MapData {
    /// The protocol, if it is one of the two natwarden maps.
    pub const fn transport(&self) -> Option<Protocol> {
        Protocol::from_ip_number(self.protocol)
    }

    /// The RFC's transmitted form in a request: internal port zeroed when protocol is 0.
    const fn normalized(self) -> MapData {
        if self.protocol == 0 {
            MapData {
                internal_port: 0,
                ..self
            }
        } else {
            self
        }
    }

    /// Reads the MAP fields at the start of `data`, a MAP (36) or PEER (56) byte array.
    fn read(data: &[u8]) -> MapData {
        use field::map;
        MapData {
            nonce: Nonce(read_array(data, map::NONCE)),
            protocol: data[map::PROTOCOL],
            // The Reserved bits "MUST be ignored when received": not read.
            internal_port: read_u16(data, map::INTERNAL_PORT),
            external_port: read_u16(data, map::EXTERNAL_PORT),
            external_address: Ipv6Addr::from(read_array::<16>(data, map::EXTERNAL_ADDRESS)),
        }
    }

    fn emit(&self, out: &mut [u8]) {
        use field::map;
        out[map::NONCE].copy_from_slice(&self.nonce.0);
        out[map::PROTOCOL] = self.protocol;
        out[map::RESERVED].fill(0);
        write_u16(out, map::INTERNAL_PORT, self.internal_port);
        write_u16(out, map::EXTERNAL_PORT, self.external_port);
        out[map::EXTERNAL_ADDRESS].copy_from_slice(&self.external_address.octets());
    }
}

/// PEER opcode data (RFC 6887 section 12.1): the MAP fields, then the remote peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerData {
    /// Copied from the request into the response.
    pub nonce: Nonce,
    /// IANA protocol number; "MUST NOT be zero" in a request.
    pub protocol: u8,
    /// "MUST NOT be zero" in a request.
    pub internal_port: u16,
    /// Suggested (request) or assigned (success response) external port, as in [`MapData`].
    pub external_port: u16,
    /// Suggested (request) or assigned (success response) external address, as in [`MapData`].
    pub external_address: Ipv6Addr,
    /// "MUST NOT be zero" in a request; copied into the response.
    pub remote_peer_port: u16,
    /// As the client sees it; IPv4 as an IPv4-mapped address. Copied into the response.
    pub remote_peer_address: Ipv6Addr,
}

impl PeerData {
    /// The protocol, if it is one of the two natwarden maps.
    pub const fn transport(&self) -> Option<Protocol> {
        Protocol::from_ip_number(self.protocol)
    }

    fn parse(data: &[u8; field::peer::LEN]) -> PeerData {
        use field::peer;
        let map = MapData::read(data);
        PeerData {
            nonce: map.nonce,
            protocol: map.protocol,
            internal_port: map.internal_port,
            external_port: map.external_port,
            external_address: map.external_address,
            remote_peer_port: read_u16(data, peer::REMOTE_PEER_PORT),
            remote_peer_address: Ipv6Addr::from(read_array::<16>(data, peer::REMOTE_PEER_ADDRESS)),
        }
    }

    fn emit(&self, out: &mut [u8]) {
        use field::peer;
        MapData {
            nonce: self.nonce,
            protocol: self.protocol,
            internal_port: self.internal_port,
            external_port: self.external_port,
            external_address: self.external_address,
        }
        .emit(out);
        write_u16(out, peer::REMOTE_PEER_PORT, self.remote_peer_port);
        out[peer::RESERVED].fill(0);
        out[peer::REMOTE_PEER_ADDRESS].copy_from_slice(&self.remote_peer_address.octets());
    }

    /// Section 12.1: "Protocol MUST NOT be zero", "Internal port MUST NOT be zero", "Remote
    /// peer port MUST NOT be zero".
    fn check_request(&self) -> Result<(), &'static str> {
        if self.protocol == 0 {
            Err("PEER protocol is zero")
        } else if self.internal_port == 0 {
            Err("PEER internal port is zero")
        } else if self.remote_peer_port == 0 {
            Err("PEER remote peer port is zero")
        } else {
            Ok(())
        }
    }
}

/// The opcode and its opcode-specific data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpData {
    /// No opcode-specific data (section 14.1.1).
    Announce,
    Map(MapData),
    Peer(PeerData),
}

impl OpData {
    pub const fn opcode(&self) -> Opcode {
        match self {
            OpData::Announce => Opcode::Announce,
            OpData::Map(_) => Opcode::Map,
            OpData::Peer(_) => Opcode::Peer,
        }
    }

    /// The Mapping Nonce of MAP and PEER; `None` for ANNOUNCE.
    pub const fn nonce(&self) -> Option<Nonce> {
        match self {
            OpData::Announce => None,
            OpData::Map(map) => Some(map.nonce),
            OpData::Peer(peer) => Some(peer.nonce),
        }
    }

    /// Splits the opcode data off `body` (the bytes after the header) and parses it.
    fn parse(opcode: Opcode, body: &[u8]) -> Result<(OpData, &[u8]), ParseError> {
        let truncated = || ParseError::OpcodeDataTooShort {
            opcode,
            need: opcode.data_len(),
            got: body.len(),
        };
        Ok(match opcode {
            Opcode::Announce => (OpData::Announce, body),
            Opcode::Map => {
                let (data, rest) = body
                    .split_first_chunk::<{ field::map::LEN }>()
                    .ok_or_else(truncated)?;
                (OpData::Map(MapData::read(data)), rest)
            }
            Opcode::Peer => {
                let (data, rest) = body
                    .split_first_chunk::<{ field::peer::LEN }>()
                    .ok_or_else(truncated)?;
                (OpData::Peer(PeerData::parse(data)), rest)
            }
        })
    }

    fn emit(&self, out: &mut [u8]) -> usize {
        match self {
            OpData::Announce => {}
            OpData::Map(map) => map.emit(out),
            OpData::Peer(peer) => peer.emit(out),
        }
        self.opcode().data_len()
    }
}

/// One FILTER option (RFC 6887 section 13.3): let in packets from this remote peer prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Filter {
    /// Leading bits of `remote_peer_address` the filter matches; 0 means "no filter" and
    /// removes all previous filters. For an IPv4-mapped address, 96 + the IPv4 prefix length.
    pub prefix_len: u8,
    /// 0 means all ports.
    pub remote_peer_port: u16,
    /// IPv4 as an IPv4-mapped address.
    pub remote_peer_address: Ipv6Addr,
}

impl Filter {
    const EMPTY: Filter = Filter {
        prefix_len: 0,
        remote_peer_port: 0,
        remote_peer_address: Ipv6Addr::UNSPECIFIED,
    };

    /// Whether `prefix_len` is in range: 0 ("no filter"), else at most 128, and at least 96
    /// for an IPv4-mapped address (section 13.3); outside that, MALFORMED_OPTION.
    pub const fn has_valid_prefix(&self) -> bool {
        match self.prefix_len {
            0 => true,
            1..=95 => as_ipv4(&self.remote_peer_address).is_none(),
            96..=128 => true,
            _ => false,
        }
    }

    fn parse(data: &[u8; field::filter::LEN]) -> Filter {
        use field::filter;
        Filter {
            prefix_len: data[filter::PREFIX_LENGTH],
            remote_peer_port: read_u16(data, filter::REMOTE_PEER_PORT),
            remote_peer_address: Ipv6Addr::from(read_array::<16>(
                data,
                filter::REMOTE_PEER_ADDRESS,
            )),
        }
    }

    fn to_bytes(self) -> [u8; field::filter::LEN] {
        use field::filter;
        let mut data = [0; filter::LEN];
        data[filter::RESERVED] = 0;
        data[filter::PREFIX_LENGTH] = self.prefix_len;
        write_u16(&mut data, filter::REMOTE_PEER_PORT, self.remote_peer_port);
        data[filter::REMOTE_PEER_ADDRESS].copy_from_slice(&self.remote_peer_address.octets());
        data
    }
}

/// The FILTER options of a MAP message, in order of appearance: a fixed-capacity list that
/// holds as many as fit in a PCP message ([`MAX_FILTERS`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Filters {
    len: u8,
    // Slots from `len` on are always `Filter::EMPTY`, so the derived comparisons hold.
    items: [Filter; MAX_FILTERS],
}

impl Filters {
    pub const fn new() -> Filters {
        Filters {
            len: 0,
            items: [Filter::EMPTY; MAX_FILTERS],
        }
    }

    /// The filters of `filters`, or `None` if there are more than [`MAX_FILTERS`].
    pub fn from_slice(filters: &[Filter]) -> Option<Filters> {
        let mut out = Filters::new();
        for filter in filters {
            out.push(*filter).ok()?;
        }
        Some(out)
    }

    /// Appends `filter`, or hands it back if the list is full.
    pub fn push(&mut self, filter: Filter) -> Result<(), Filter> {
        let slot = self.items.get_mut(usize::from(self.len)).ok_or(filter)?;
        *slot = filter;
        self.len += 1;
        Ok(())
    }

    pub fn as_slice(&self) -> &[Filter] {
        &self.items[..usize::from(self.len)]
    }
}

impl Default for Filters {
    fn default() -> Filters {
        Filters::new()
    }
}

impl Deref for Filters {
    type Target = [Filter];

    fn deref(&self) -> &[Filter] {
        self.as_slice()
    }
}

impl fmt::Debug for Filters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

/// The options RFC 6887 defines (section 13), as typed fields. Unknown optional-to-process
/// options are ignored by parse and not kept (section 7.3).
///
/// Emitted in a fixed order: THIRD_PARTY, PREFER_FAILURE, then the FILTERs in order. Their
/// relative order on the wire carries no meaning; the FILTERs' own order does (a prefix
/// length of 0 removes the filters before it) and is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Options {
    /// THIRD_PARTY (section 13.1): the internal address the mapping is for, when it is not
    /// the sender's. MAP and PEER; at most once.
    pub third_party: Option<Ipv6Addr>,
    /// PREFER_FAILURE (section 13.2): answer CANNOT_PROVIDE_EXTERNAL rather than map another
    /// port or address than suggested. MAP only; at most once.
    pub prefer_failure: bool,
    /// FILTER (section 13.3). MAP only; any number.
    pub filters: Filters,
}

impl Options {
    /// No options.
    pub const NONE: Options = Options {
        third_party: None,
        prefer_failure: false,
        filters: Filters::new(),
    };

    /// Bytes the options take on the wire.
    pub fn buffer_len(&self) -> usize {
        let third_party = match self.third_party {
            Some(_) => field::option::HEADER_LEN + field::third_party::LEN,
            None => 0,
        };
        let prefer_failure = match self.prefer_failure {
            true => field::option::HEADER_LEN + field::prefer_failure::LEN,
            false => 0,
        };
        third_party + prefer_failure + self.filters.len() * FILTER_OPTION_LEN
    }

    fn emit(&self, out: &mut [u8]) -> usize {
        let mut at = 0;
        if let Some(address) = self.third_party {
            at += emit_option(&mut out[at..], option::THIRD_PARTY, &address.octets());
        }
        if self.prefer_failure {
            at += emit_option(&mut out[at..], option::PREFER_FAILURE, &[]);
        }
        for filter in self.filters.iter() {
            at += emit_option(&mut out[at..], option::FILTER, &filter.to_bytes());
        }
        at
    }

    /// Parses the options that follow the opcode data (section 7.3), processing them in the
    /// order they appear.
    fn parse(mut rest: &[u8], opcode: Opcode, role: Role) -> Result<Options, ParseError> {
        let mut options = Options::NONE;
        // Header, opcode data and options are all multiples of 4 bytes and the message is
        // too (checked first), so no 1-3 byte tail can be left over.
        while let Some((header, body)) = rest.split_first_chunk::<{ field::option::HEADER_LEN }>() {
            let code = header[field::option::CODE];
            // The Reserved byte "MUST be ignored on reception": not read.
            let length = read_u16(header, field::option::LENGTH);
            let padded = padded_len(usize::from(length));
            let (Some(data), Some(next)) = (body.get(..usize::from(length)), body.get(padded..))
            else {
                return Err(ParseError::OptionOverrun {
                    code,
                    length,
                    available: body.len(),
                });
            };
            // The padding octets are not checked: they carry nothing.
            rest = next;
            options.add(code, data, opcode, role)?;
        }
        debug_assert!(rest.is_empty(), "PCP option walk left {} bytes", rest.len());
        Ok(options)
    }

    /// Processes one option: validity for the opcode, then length, then repetition.
    fn add(&mut self, code: u8, data: &[u8], opcode: Opcode, role: Role) -> Result<(), ParseError> {
        let known = matches!(
            code,
            option::THIRD_PARTY | option::PREFER_FAILURE | option::FILTER
        );
        if !known {
            // Mandatory ones a server answers with UNSUPP_OPTION; optional ones it ignores.
            // A client "MUST ignore Options that they do not understand that appear in
            // responses, including Options in the mandatory-to-process range" (section 7.3).
            return match role {
                Role::Request if option::is_mandatory(code) => {
                    Err(ParseError::UnsupportedOption { code })
                }
                _ => Ok(()),
            };
        }
        if !opcode.allows_option(code) {
            return Err(ParseError::OptionNotValidForOpcode { code, opcode });
        }
        let wrong_length = || ParseError::OptionLength {
            code,
            length: u16::try_from(data.len()).unwrap_or(u16::MAX),
        };
        match code {
            option::THIRD_PARTY => {
                let data: &[u8; field::third_party::LEN] =
                    data.try_into().map_err(|_| wrong_length())?;
                if self.third_party.is_some() {
                    return Err(ParseError::DuplicateOption { code });
                }
                let address = read_array::<16>(data, field::third_party::INTERNAL_ADDRESS);
                self.third_party = Some(Ipv6Addr::from(address));
            }
            option::PREFER_FAILURE => {
                if data.len() != field::prefer_failure::LEN {
                    return Err(wrong_length());
                }
                if self.prefer_failure {
                    return Err(ParseError::DuplicateOption { code });
                }
                self.prefer_failure = true;
            }
            _ => {
                let data: &[u8; field::filter::LEN] =
                    data.try_into().map_err(|_| wrong_length())?;
                let filter = Filter::parse(data);
                if !filter.has_valid_prefix() {
                    return Err(ParseError::FilterPrefixLength {
                        prefix_len: filter.prefix_len,
                    });
                }
                // Cannot fail: MAX_LEN bytes hold at most MAX_FILTERS of them (asserted).
                if self.filters.push(filter).is_err() {
                    return Err(ParseError::TooLong {
                        got: MAX_LEN + FILTER_OPTION_LEN,
                    });
                }
            }
        }
        Ok(())
    }
}

/// Which side's rules apply to the options (section 7.3).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Request,
    Response,
}

/// Why a datagram is not a PCP message of the kind asked for.
///
/// For a request, [`ParseError::result_code`] says how a server answers (RFC 6887 section
/// 8.2): with an error response built by [`emit_error_reply`], or not at all.
///
/// ```
/// use natwarden_wire::pcp::{emit_error_reply, Request, ResultCode, MAX_LEN};
///
/// fn answer(datagram: &[u8], epoch: u32, out: &mut [u8]) -> Option<usize> {
///     match Request::parse(datagram) {
///         Ok(_request) => None, // the server core's business
///         Err(error) => {
///             let result = error.result_code()?; // None: drop silently
///             let lifetime = result.recommended_lifetime().unwrap_or(0);
///             Some(emit_error_reply(datagram, result, lifetime, epoch, out))
///         }
///     }
/// }
///
/// let mut out = [0; MAX_LEN];
/// // Version 3, opcode MAP: UNSUPP_VERSION, long lifetime (30 minutes), padded to 24 bytes.
/// assert_eq!(answer(&[3, 1, 0, 0], 7, &mut out), Some(24));
/// assert_eq!(&out[..12], &[2, 0x81, 0, 1, 0, 0, 0x07, 0x08, 0, 0, 0, 7]);
/// // Shorter than the 24-byte header: dropped.
/// assert_eq!(answer(&[2, 1, 0, 0], 7, &mut out), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Shorter than the version and opcode bytes, or than the 24-byte header.
    #[error("PCP message too short: {got} bytes, the header alone is 24")]
    TooShort { got: usize },
    /// Longer than [`MAX_LEN`] (section 7).
    #[error("PCP message too long: {got} bytes, the limit is 1100")]
    TooLong { got: usize },
    /// Every PCP message is a multiple of 4 bytes long (section 8.2).
    #[error("PCP message length {got} is not a multiple of 4")]
    NotMultipleOf4 { got: usize },
    /// The version is not 2. NAT-PMP (version 0) is dispatched before this parser.
    #[error("unsupported PCP version {version}")]
    UnsupportedVersion { version: u8 },
    /// The R bit is set where a request was expected.
    #[error("PCP opcode {opcode} has the R bit set: a response, not a request")]
    NotARequest { opcode: u8 },
    /// The R bit is clear where a response was expected.
    #[error("PCP opcode {opcode} has the R bit clear: a request, not a response")]
    NotAResponse { opcode: u8 },
    /// An opcode other than ANNOUNCE, MAP and PEER.
    #[error("unsupported PCP opcode {opcode}")]
    UnsupportedOpcode { opcode: u8 },
    /// Too short for the opcode's data (section 8.2).
    #[error("PCP {opcode} data truncated: need {need} bytes after the header, got {got}")]
    OpcodeDataTooShort {
        opcode: Opcode,
        need: usize,
        got: usize,
    },
    /// Opcode data a request must not carry, e.g. a PEER protocol of 0 (section 12.1).
    #[error("malformed PCP {opcode} request: {reason}")]
    MalformedOpcodeData {
        opcode: Opcode,
        reason: &'static str,
    },
    /// An option's header or data (padded) runs past the end of the message.
    #[error("PCP option {code} of length {length} runs past the end: {available} bytes left")]
    OptionOverrun {
        code: u8,
        length: u16,
        available: usize,
    },
    /// A known option with the wrong Option Length.
    #[error("PCP option {code} has invalid length {length}")]
    OptionLength { code: u8, length: u16 },
    /// THIRD_PARTY or PREFER_FAILURE more than once (section 7.3).
    #[error("PCP option {code} appears more than once")]
    DuplicateOption { code: u8 },
    /// A known option the opcode does not take, e.g. FILTER with PEER (section 13).
    #[error("PCP option {code} is not valid with opcode {opcode}")]
    OptionNotValidForOpcode { code: u8, opcode: Opcode },
    /// A FILTER prefix length out of range (section 13.3, see [`Filter::has_valid_prefix`]).
    #[error("PCP FILTER prefix length {prefix_len} is out of range")]
    FilterPrefixLength { prefix_len: u8 },
    /// A mandatory-to-process option (code below 128) this crate does not know (section 7.3).
    #[error("unsupported mandatory PCP option {code}")]
    UnsupportedOption { code: u8 },
}

impl ParseError {
    /// How a server answers a request that failed to parse with this error (RFC 6887 section
    /// 8.2): the result code of the error response, or `None` to drop it silently (shorter
    /// than 2 bytes, R bit set, or a supported version shorter than 24 bytes).
    pub const fn result_code(&self) -> Option<ResultCode> {
        match self {
            ParseError::TooShort { .. }
            | ParseError::NotARequest { .. }
            | ParseError::NotAResponse { .. } => None,
            ParseError::UnsupportedVersion { .. } => Some(ResultCode::UNSUPP_VERSION),
            ParseError::UnsupportedOpcode { .. } => Some(ResultCode::UNSUPP_OPCODE),
            ParseError::UnsupportedOption { .. } => Some(ResultCode::UNSUPP_OPTION),
            // "if a PCP server receives a PEER request containing the PREFER_FAILURE Option it
            // MUST return a MALFORMED_REQUEST error response" (section 12.1).
            ParseError::OptionNotValidForOpcode {
                code: option::PREFER_FAILURE,
                opcode: Opcode::Peer,
            } => Some(ResultCode::MALFORMED_REQUEST),
            ParseError::OptionOverrun { .. }
            | ParseError::OptionLength { .. }
            | ParseError::DuplicateOption { .. }
            | ParseError::OptionNotValidForOpcode { .. }
            | ParseError::FilterPrefixLength { .. } => Some(ResultCode::MALFORMED_OPTION),
            ParseError::TooLong { .. }
            | ParseError::NotMultipleOf4 { .. }
            | ParseError::OpcodeDataTooShort { .. }
            | ParseError::MalformedOpcodeData { .. } => Some(ResultCode::MALFORMED_REQUEST),
        }
    }
}

/// A PCP request, as sent by a client to [`SERVER_PORT`] (RFC 6887 section 7.1).
///
/// Fields a receiver MUST ignore (Reserved bits, ANNOUNCE's Requested Lifetime, the internal
/// port of an all-protocols MAP) are zeroed by `emit` and dropped by `parse`; unknown
/// optional options are dropped too. So `parse(emit(x)) == x` for every `x` that `parse`
/// returns, and `emit` never writes more bytes than were parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Request {
    /// Requested lifetime in seconds; for MAP, 0 deletes the mapping (section 15).
    pub lifetime: u32,
    /// PCP Client's IP Address: the source address the client used, IPv4 as IPv4-mapped. A
    /// server answers ADDRESS_MISMATCH if it is not the datagram's source (section 8.2).
    pub client_address: Ipv6Addr,
    pub op: OpData,
    pub options: Options,
}

impl Request {
    /// Parses a request datagram. Strict: version 2, R bit clear, 24 to 1100 bytes, a multiple
    /// of 4, a known opcode with all its data, options valid for it.
    ///
    /// Checks in RFC 6887 section 8.2 order: length of 2, R bit, version, header length,
    /// message length, opcode, opcode data, then the options in order.
    pub fn parse(buf: &[u8]) -> Result<Request, ParseError> {
        let (version, r_opcode) = match buf {
            [version, r_opcode, ..] => (*version, *r_opcode),
            _ => return Err(ParseError::TooShort { got: buf.len() }),
        };
        if r_opcode & field::RESPONSE_BIT != 0 {
            return Err(ParseError::NotARequest {
                opcode: r_opcode & field::OPCODE_MASK,
            });
        }
        if version != VERSION {
            return Err(ParseError::UnsupportedVersion { version });
        }
        let (header, body) = split_header(buf)?;
        let opcode = Opcode::from_code(r_opcode)
            .ok_or(ParseError::UnsupportedOpcode { opcode: r_opcode })?;
        let (op, rest) = OpData::parse(opcode, body)?;
        if let OpData::Peer(peer) = &op {
            peer.check_request()
                .map_err(|reason| ParseError::MalformedOpcodeData { opcode, reason })?;
        }
        let options = Options::parse(rest, opcode, Role::Request)?;
        let request = Request {
            // The Reserved bits "MUST be ignored on reception": not read.
            lifetime: read_u32(header, field::REQUESTED_LIFETIME),
            client_address: Ipv6Addr::from(read_array::<16>(header, field::CLIENT_ADDRESS)),
            op,
            options,
        };
        Ok(request.normalized())
    }

    pub const fn opcode(&self) -> Opcode {
        self.op.opcode()
    }

    /// Bytes [`Request::emit`] writes. At most [`MAX_LEN`] for a parsed request; a built one
    /// with many FILTERs can exceed it, and is then too long to send.
    pub fn buffer_len(&self) -> usize {
        field::HEADER_LEN + self.opcode().data_len() + self.options.buffer_len()
    }

    /// Writes the request at the start of `buf` and returns the bytes written
    /// (= [`Request::buffer_len`]). The options are written as given, valid or not.
    ///
    /// # Panics
    ///
    /// If `buf` is shorter than [`Request::buffer_len`].
    pub fn emit(&self, buf: &mut [u8]) -> usize {
        let request = self.normalized();
        let out = &mut buf[..request.buffer_len()];
        out[field::VERSION] = VERSION;
        out[field::R_OPCODE] = request.opcode().code();
        // "MUST be zero on transmission" (section 7.1).
        out[field::REQUEST_RESERVED].fill(0);
        write_u32(out, field::REQUESTED_LIFETIME, request.lifetime);
        out[field::CLIENT_ADDRESS].copy_from_slice(&request.client_address.octets());
        let body = &mut out[field::HEADER_LEN..];
        let at = request.op.emit(body);
        request.options.emit(&mut body[at..]);
        out.len()
    }

    /// The error response to this (parsed) request: the opcode data and options copied, the
    /// 96 reserved bits zero (sections 7.2, 7.3). For MAP and PEER that puts the suggested
    /// external port and address in the assigned ones, as sections 11.1 and 12.1 want.
    pub const fn error_response(&self, result: ResultCode, lifetime: u32, epoch: u32) -> Response {
        Response {
            result,
            lifetime,
            epoch,
            op: self.op,
            options: self.options,
        }
    }

    /// The RFC's transmitted form (sections 11.1 and 14.1.1).
    fn normalized(self) -> Request {
        match self.op {
            // Requested Lifetime is "set to 0 on transmission and ignored on reception".
            OpData::Announce => Request {
                lifetime: 0,
                ..self
            },
            OpData::Map(map) => Request {
                op: OpData::Map(map.normalized()),
                ..self
            },
            OpData::Peer(_) => self,
        }
    }
}

/// A PCP response, as sent by the server (RFC 6887 section 7.2).
///
/// Reserved bits are zeroed by `emit` and dropped by `parse`; so is a successful ANNOUNCE's
/// Lifetime (section 14.1.1). An error response's options are an echo of the request's
/// (section 7.3): `emit` writes them, `parse` skips them. So `parse(emit(x)) == x` for every
/// `x` that `parse` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Response {
    pub result: ResultCode,
    /// Success: the mapping's lifetime in seconds (0 after a deletion). Error: how long the
    /// client should expect the same error (see [`ResultCode::recommended_lifetime`]).
    pub lifetime: u32,
    /// Epoch Time: seconds since the server's mapping state began, in every response; reset
    /// when that state is lost (section 8.5).
    pub epoch: u32,
    pub op: OpData,
    pub options: Options,
}

impl Response {
    /// A successful ANNOUNCE response: the answer to an ANNOUNCE request, and what the server
    /// multicasts unsolicited to [`ANNOUNCE_ADDR_V4`]/[`ANNOUNCE_ADDR_V6`]:[`CLIENT_PORT`]
    /// after losing its state or changing its external address (section 14.1).
    pub const fn announce(epoch: u32) -> Response {
        Response {
            result: ResultCode::SUCCESS,
            lifetime: 0,
            epoch,
            op: OpData::Announce,
            options: Options::NONE,
        }
    }

    /// Parses a response datagram. Strict as [`Request::parse`], except that unknown options
    /// are all ignored (section 7.3) and an error response's options are not read.
    pub fn parse(buf: &[u8]) -> Result<Response, ParseError> {
        let (version, r_opcode) = match buf {
            [version, r_opcode, ..] => (*version, *r_opcode),
            _ => return Err(ParseError::TooShort { got: buf.len() }),
        };
        if version != VERSION {
            return Err(ParseError::UnsupportedVersion { version });
        }
        if r_opcode & field::RESPONSE_BIT == 0 {
            return Err(ParseError::NotAResponse { opcode: r_opcode });
        }
        let (header, body) = split_header(buf)?;
        let opcode = r_opcode & field::OPCODE_MASK;
        let opcode = Opcode::from_code(opcode).ok_or(ParseError::UnsupportedOpcode { opcode })?;
        let (op, rest) = OpData::parse(opcode, body)?;
        let result = ResultCode(header[field::RESULT_CODE]);
        let options = match result.is_success() {
            true => Options::parse(rest, opcode, Role::Response)?,
            // An echo of the request's (section 7.3), possibly the very option refused.
            false => Options::NONE,
        };
        let response = Response {
            result,
            // The Reserved byte and bits "MUST be ignored when received": not read.
            lifetime: read_u32(header, field::LIFETIME),
            epoch: read_u32(header, field::EPOCH_TIME),
            op,
            options,
        };
        Ok(response.normalized())
    }

    pub const fn opcode(&self) -> Opcode {
        self.op.opcode()
    }

    /// Bytes [`Response::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        field::HEADER_LEN + self.opcode().data_len() + self.options.buffer_len()
    }

    /// Writes the response at the start of `buf` and returns the bytes written
    /// (= [`Response::buffer_len`]), the 96 reserved bits zero as for a request that parsed.
    ///
    /// # Panics
    ///
    /// If `buf` is shorter than [`Response::buffer_len`].
    pub fn emit(&self, buf: &mut [u8]) -> usize {
        let response = self.normalized_header();
        let out = &mut buf[..response.buffer_len()];
        out[field::VERSION] = VERSION;
        out[field::R_OPCODE] = field::RESPONSE_BIT | response.opcode().code();
        out[field::RESPONSE_RESERVED] = 0;
        out[field::RESULT_CODE] = response.result.0;
        write_u32(out, field::LIFETIME, response.lifetime);
        write_u32(out, field::EPOCH_TIME, response.epoch);
        out[field::RESPONSE_RESERVED_96].fill(0);
        let body = &mut out[field::HEADER_LEN..];
        let at = response.op.emit(body);
        response.options.emit(&mut body[at..]);
        out.len()
    }

    /// A successful ANNOUNCE's Lifetime is "set to 0 on transmission" (section 14.1.1).
    const fn normalized_header(self) -> Response {
        match (self.op, self.result.is_success()) {
            (OpData::Announce, true) => Response {
                lifetime: 0,
                ..self
            },
            _ => self,
        }
    }

    /// What `parse` reads back from `emit`.
    const fn normalized(self) -> Response {
        let response = self.normalized_header();
        if response.result.is_success() {
            response
        } else {
            Response {
                options: Options::NONE,
                ..response
            }
        }
    }
}

/// Writes the error response to a request that did not parse and returns the bytes written.
///
/// RFC 6887: an error response is "a complete copy of the request packet with the error code
/// and other appropriate fields set in the header" (section 7.3); its Opcode is copied from
/// the request, and for a request that was not successfully parsed its 96 reserved bits are
/// "the last 96 bits of the PCP Client's IP Address field" (section 7.2), which sit at the
/// same offsets (12..24) as in the request, so they come with the copy. The header is Version
/// 2, the R bit, the request's opcode, `result`, `lifetime` and `epoch`. The copy is cut at
/// [`MAX_LEN`] (section 8.2: "truncated to 1100 octets") and zero-padded to at least the
/// 24-byte header and to a multiple of 4, so the reply is a well-formed PCP length; then cut
/// at `buf.len()`. Never panics, whatever the lengths.
///
/// Answering a version other than 2 with a version-2 UNSUPP_VERSION tells the client which
/// version to fall back to (section 9).
pub fn emit_error_reply(
    request: &[u8],
    result: ResultCode,
    lifetime: u32,
    epoch: u32,
    buf: &mut [u8],
) -> usize {
    let len = padded_len(request.len().clamp(MIN_LEN, MAX_LEN)).min(buf.len());
    let out = &mut buf[..len];
    let copied = request.len().min(len);
    out[..copied].copy_from_slice(&request[..copied]);
    out[copied..].fill(0);

    let mut header = [0; field::EPOCH_TIME.end];
    header[field::VERSION] = VERSION;
    let opcode = request.get(field::R_OPCODE).copied().unwrap_or(0);
    header[field::R_OPCODE] = field::RESPONSE_BIT | (opcode & field::OPCODE_MASK);
    header[field::RESPONSE_RESERVED] = 0;
    header[field::RESULT_CODE] = result.0;
    write_u32(&mut header, field::LIFETIME, lifetime);
    write_u32(&mut header, field::EPOCH_TIME, epoch);
    let written = header.len().min(len);
    out[..written].copy_from_slice(&header[..written]);
    len
}

/// The IPv4-mapped IPv6 address `::ffff:a.b.c.d` PCP carries an IPv4 address as (section 5).
pub const fn ipv4_mapped(address: Ipv4Addr) -> Ipv6Addr {
    address.to_ipv6_mapped()
}

/// The IPv4 address in an IPv4-mapped address (`::ffff:0:0/96` only), else `None`.
pub const fn as_ipv4(address: &Ipv6Addr) -> Option<Ipv4Addr> {
    match address.octets() {
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d] => Some(Ipv4Addr::new(a, b, c, d)),
        _ => None,
    }
}

/// An address as PCP carries it: IPv6 as is, IPv4 IPv4-mapped (section 5).
pub const fn to_wire_address(address: IpAddr) -> Ipv6Addr {
    match address {
        IpAddr::V4(v4) => ipv4_mapped(v4),
        IpAddr::V6(v6) => v6,
    }
}

/// The inverse of [`to_wire_address`]: IPv4-mapped addresses back to IPv4.
pub const fn from_wire_address(address: &Ipv6Addr) -> IpAddr {
    match as_ipv4(address) {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(*address),
    }
}

/// Whether `address` is an address-family-specific all-zeros address, `::` or
/// `::ffff:0.0.0.0`: a client's "no preference" for the suggested external address (sections
/// 5, 11.1 and 12.1). The family still tells which kind of external address is wanted.
pub const fn is_all_zeros(address: &Ipv6Addr) -> bool {
    address.is_unspecified() || matches!(as_ipv4(address), Some(v4) if v4.is_unspecified())
}

/// The 24-byte header and what follows, after the length checks of section 8.2.
fn split_header(buf: &[u8]) -> Result<(&[u8; field::HEADER_LEN], &[u8]), ParseError> {
    let got = buf.len();
    let (header, body) = buf
        .split_first_chunk::<{ field::HEADER_LEN }>()
        .ok_or(ParseError::TooShort { got })?;
    if got > MAX_LEN {
        return Err(ParseError::TooLong { got });
    }
    // Not a multiple of 4 (`is_multiple_of` is newer than the workspace's Rust 1.80).
    if got & 3 != 0 {
        return Err(ParseError::NotMultipleOf4 { got });
    }
    Ok((header, body))
}

/// Writes one option with its header and zero padding; returns the bytes written.
fn emit_option(out: &mut [u8], code: u8, data: &[u8]) -> usize {
    use field::option::{CODE, HEADER_LEN, LENGTH, RESERVED};
    let out = &mut out[..HEADER_LEN + padded_len(data.len())];
    out[CODE] = code;
    out[RESERVED] = 0;
    // The data of the options emitted here is 0, 16 or 20 bytes long.
    write_u16(out, LENGTH, data.len() as u16);
    let (data_out, padding) = out[HEADER_LEN..].split_at_mut(data.len());
    data_out.copy_from_slice(data);
    padding.fill(0);
    out.len()
}

/// `len` rounded up to a multiple of 4 (section 7.3's option padding).
const fn padded_len(len: usize) -> usize {
    (len + 3) & !3
}

#[cfg(test)]
mod tests;
