//! NAT-PMP (RFC 6886) messages: parsing and emitting the version-0 requests and responses.
//! Owns the byte layouts of RFC 6886 sections 3.2-3.5; what to answer is the server core's call.

use core::fmt;
use std::net::Ipv4Addr;

use crate::bytes::{read_array, read_u16, read_u32, write_u16, write_u32};
use crate::Protocol;

/// The NAT-PMP protocol version; PCP (RFC 6887) uses 2 on the same port (RFC 6886 section 1.1).
pub const VERSION: u8 = 0;

/// UDP port the gateway listens on for requests (RFC 6886 sections 3.1 and 6).
pub const SERVER_PORT: u16 = 5351;

/// UDP port clients listen on for address announcements (RFC 6886 section 3.2.1).
pub const CLIENT_PORT: u16 = 5350;

/// All-hosts multicast group the gateway announces address changes to (RFC 6886 section 3.2.1).
pub const ANNOUNCE_ADDR: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 1);

/// Operation codes (RFC 6886 section 3): 0-127 are requests, 128-255 the matching responses.
pub mod opcode {
    /// Determine the external address (section 3.2).
    pub const EXTERNAL_ADDRESS: u8 = 0;
    /// Map a UDP port (section 3.3).
    pub const MAP_UDP: u8 = 1;
    /// Map a TCP port (section 3.3).
    pub const MAP_TCP: u8 = 2;
    /// Set in a response's opcode: response opcode = 128 + request opcode (section 3).
    pub const RESPONSE_BIT: u8 = 0x80;
}

/// Byte offsets of the fields, named as in the RFC 6886 diagrams.
mod field {
    use core::ops::Range;

    /// Every message starts with these two bytes (section 3).
    pub const VERSION: usize = 0;
    pub const OPCODE: usize = 1;

    /// External address request (section 3.2): the header alone.
    pub const EXTERNAL_ADDRESS_REQUEST_LEN: usize = OPCODE + 1;

    /// Mapping request (section 3.3).
    pub const RESERVED: Range<usize> = 2..4;
    pub const INTERNAL_PORT: Range<usize> = 4..6;
    pub const SUGGESTED_EXTERNAL_PORT: Range<usize> = 6..8;
    pub const REQUESTED_LIFETIME: Range<usize> = 8..12;
    pub const MAP_REQUEST_LEN: usize = REQUESTED_LIFETIME.end;

    /// Common to every response (sections 3.2, 3.3 and 3.5).
    pub const RESULT: Range<usize> = 2..4;
    pub const EPOCH: Range<usize> = 4..8;
    /// "Unsupported Version" response (section 3.5): the common part alone.
    pub const UNSUPPORTED_VERSION_LEN: usize = EPOCH.end;

    /// External address response (section 3.2).
    pub const EXTERNAL_ADDRESS: Range<usize> = 8..12;
    pub const EXTERNAL_ADDRESS_RESPONSE_LEN: usize = EXTERNAL_ADDRESS.end;

    /// Mapping response (section 3.3).
    pub const MAPPED_INTERNAL_PORT: Range<usize> = 8..10;
    pub const MAPPED_EXTERNAL_PORT: Range<usize> = 10..12;
    pub const LIFETIME: Range<usize> = 12..16;
    pub const MAP_RESPONSE_LEN: usize = LIFETIME.end;
}

/// A response's result code (RFC 6886 section 3.5).
///
/// A newtype rather than an enum because clients "MUST be able to properly handle result codes
/// not defined in this document" (section 3.5): every `u16` is a valid value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResultCode(pub u16);

impl ResultCode {
    pub const SUCCESS: ResultCode = ResultCode(0);
    pub const UNSUPPORTED_VERSION: ResultCode = ResultCode(1);
    /// E.g. the box supports mapping but the user has turned the feature off.
    pub const NOT_AUTHORIZED: ResultCode = ResultCode(2);
    /// E.g. the NAT box itself has not obtained a DHCP lease.
    pub const NETWORK_FAILURE: ResultCode = ResultCode(3);
    /// The NAT box cannot create any more mappings at this time.
    pub const OUT_OF_RESOURCES: ResultCode = ResultCode(4);
    pub const UNSUPPORTED_OPCODE: ResultCode = ResultCode(5);

    /// The RFC 6886 section 3.5 wording, or "unknown result code".
    pub const fn description(self) -> &'static str {
        match self.0 {
            0 => "Success",
            1 => "Unsupported Version",
            2 => "Not Authorized/Refused",
            3 => "Network Failure",
            4 => "Out of resources",
            5 => "Unsupported opcode",
            _ => "unknown result code",
        }
    }

    /// Anything else, defined or not, is a fatal error of the request (section 3.5).
    pub const fn is_success(self) -> bool {
        self.0 == Self::SUCCESS.0
    }
}

impl fmt::Display for ResultCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.0, self.description())
    }
}

/// Why a datagram is not a message of the kind asked for.
///
/// For a server, two variants call for an answer and the rest are dropped silently:
/// [`ParseError::UnsupportedVersion`] is answered with [`Response::UnsupportedVersion`] and
/// [`ParseError::UnsupportedOpcode`] with [`emit_unsupported_opcode`] (RFC 6886 section 3.5).
///
/// ```
/// use natwarden_wire::natpmp::{emit_unsupported_opcode, ParseError, Request, Response};
///
/// fn answer(datagram: &[u8], epoch: u32, out: &mut [u8]) -> Option<usize> {
///     match Request::parse(datagram) {
///         Ok(_request) => None, // the server core's business
///         Err(ParseError::UnsupportedVersion { .. }) => {
///             Some(Response::UnsupportedVersion { epoch }.emit(out))
///         }
///         Err(ParseError::UnsupportedOpcode { .. }) => Some(emit_unsupported_opcode(datagram, out)),
///         Err(_) => None,
///     }
/// }
///
/// let mut out = [0; 1100];
/// assert_eq!(answer(&[1, 0], 7, &mut out), Some(8));
/// assert_eq!(&out[..8], &[0, 0, 0, 1, 0, 0, 0, 7]);
/// assert_eq!(answer(&[0, 9], 7, &mut out), Some(4));
/// assert_eq!(&out[..4], &[0, 0x89, 0, 5]);
/// assert_eq!(answer(&[0, 128, 0, 0], 7, &mut out), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Too short to hold the header or the message its opcode announces.
    #[error("truncated NAT-PMP message: need {need} bytes, got {got}")]
    Truncated { need: usize, got: usize },
    /// Longer than the message its opcode announces.
    #[error("NAT-PMP message has trailing bytes: expected {expected} bytes, got {got}")]
    WrongLength { expected: usize, got: usize },
    /// Version is not 0 (RFC 6886 section 3); PCP (version 2) is dispatched before this parser.
    #[error("unsupported NAT-PMP version {version}")]
    UnsupportedVersion { version: u8 },
    /// A request opcode (below 128) other than 0, 1 or 2 (section 3.5).
    #[error("unsupported NAT-PMP request opcode {opcode}")]
    UnsupportedOpcode { opcode: u8 },
    /// A response opcode (128 or above) where a request was expected: silently ignored (3.5).
    #[error("NAT-PMP opcode {opcode} is a response, not a request")]
    NotARequest { opcode: u8 },
    /// A request opcode (below 128) where a response was expected.
    #[error("NAT-PMP opcode {opcode} is a request, not a response")]
    NotAResponse { opcode: u8 },
    /// A response opcode (128 or above) answering no request this crate knows.
    #[error("unknown NAT-PMP response opcode {opcode}")]
    UnknownResponseOpcode { opcode: u8 },
}

/// A mapping request (RFC 6886 section 3.3), or a deletion when `lifetime` is 0 (section 3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapRequest {
    pub protocol: Protocol,
    /// The port the client listens on; the internal address is the datagram's source (3.3).
    pub internal_port: u16,
    /// 0 asks for any port. Always 0 in a deletion: the gateway MUST ignore it there (3.4).
    pub suggested_external_port: u16,
    /// Requested lifetime in seconds; 0 deletes the mapping (section 3.4).
    pub lifetime: u32,
}

impl MapRequest {
    /// A lifetime of 0 asks to delete the mapping (section 3.4).
    pub const fn is_deletion(&self) -> bool {
        self.lifetime == 0
    }

    /// Internal port and lifetime 0 ask to delete all of the client's mappings of this
    /// protocol (section 3.4).
    pub const fn is_delete_all(&self) -> bool {
        self.is_deletion() && self.internal_port == 0
    }

    /// The RFC's transmitted form: a deletion's suggested port "MUST be set to zero by the
    /// client on sending, and MUST be ignored by the gateway on reception" (section 3.4).
    const fn normalized(self) -> MapRequest {
        if self.is_deletion() {
            MapRequest {
                suggested_external_port: 0,
                ..self
            }
        } else {
            self
        }
    }
}

/// A NAT-PMP request, as sent by a client to [`SERVER_PORT`].
///
/// Fields a receiver MUST ignore (Reserved, a deletion's Suggested External Port) are zeroed by
/// `emit` and dropped by `parse`, so `parse(emit(x)) == x` for every `x` that `parse` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Determine the external address (section 3.2).
    ExternalAddress,
    /// Create, renew or delete a mapping (sections 3.3 and 3.4).
    Map(MapRequest),
}

impl Request {
    /// Largest request on the wire, for sizing buffers.
    pub const MAX_LEN: usize = field::MAP_REQUEST_LEN;

    /// Parses a request datagram. Strict: the length must be exactly that of the message.
    ///
    /// Checks in RFC 6886 section 3.5 order: version, then response opcodes (ignored), then
    /// unsupported opcodes, then length.
    pub fn parse(buf: &[u8]) -> Result<Request, ParseError> {
        let (version, opcode) = header(buf)?;
        if version != VERSION {
            return Err(ParseError::UnsupportedVersion { version });
        }
        if opcode & opcode::RESPONSE_BIT != 0 {
            return Err(ParseError::NotARequest { opcode });
        }
        let protocol = match opcode {
            opcode::EXTERNAL_ADDRESS => {
                exact::<{ field::EXTERNAL_ADDRESS_REQUEST_LEN }>(buf)?;
                return Ok(Request::ExternalAddress);
            }
            opcode::MAP_UDP => Protocol::Udp,
            opcode::MAP_TCP => Protocol::Tcp,
            _ => return Err(ParseError::UnsupportedOpcode { opcode }),
        };
        let bytes = exact::<{ field::MAP_REQUEST_LEN }>(buf)?;
        // The Reserved field "MUST be ignored on reception" (section 3.3): not read.
        let map = MapRequest {
            protocol,
            internal_port: read_u16(bytes, field::INTERNAL_PORT),
            suggested_external_port: read_u16(bytes, field::SUGGESTED_EXTERNAL_PORT),
            lifetime: read_u32(bytes, field::REQUESTED_LIFETIME),
        };
        Ok(Request::Map(map.normalized()))
    }

    /// The request's opcode (section 3).
    pub const fn opcode(&self) -> u8 {
        match self {
            Request::ExternalAddress => opcode::EXTERNAL_ADDRESS,
            Request::Map(map) => map_opcode(map.protocol),
        }
    }

    /// Bytes [`Request::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        match self {
            Request::ExternalAddress => field::EXTERNAL_ADDRESS_REQUEST_LEN,
            Request::Map(_) => field::MAP_REQUEST_LEN,
        }
    }

    /// Writes the request at the start of `buf` and returns the bytes written
    /// (= [`Request::buffer_len`]).
    ///
    /// # Panics
    ///
    /// If `buf` is shorter than [`Request::buffer_len`].
    pub fn emit(&self, buf: &mut [u8]) -> usize {
        let out = &mut buf[..self.buffer_len()];
        out[field::VERSION] = VERSION;
        out[field::OPCODE] = self.opcode();
        if let Request::Map(map) = self {
            let map = map.normalized();
            // "The Reserved field MUST be set to zero on transmission" (section 3.3).
            write_u16(out, field::RESERVED, 0);
            write_u16(out, field::INTERNAL_PORT, map.internal_port);
            write_u16(
                out,
                field::SUGGESTED_EXTERNAL_PORT,
                map.suggested_external_port,
            );
            write_u32(out, field::REQUESTED_LIFETIME, map.lifetime);
        }
        out.len()
    }
}

/// Answer to [`Request::ExternalAddress`], also multicast unsolicited to [`ANNOUNCE_ADDR`]:
/// [`CLIENT_PORT`] on every possible change of address or mapping state (section 3.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExternalAddressResponse {
    pub result: ResultCode,
    /// Seconds since the mapping table was initialized or reset (section 3.6).
    pub epoch: u32,
    /// Zeroed on emit and parse unless `result` is success: on failure the field "MUST be set
    /// to zero on transmission, and MUST be ignored on reception" (section 3.2).
    pub address: Ipv4Addr,
}

impl ExternalAddressResponse {
    const fn normalized(self) -> ExternalAddressResponse {
        if self.result.is_success() {
            self
        } else {
            ExternalAddressResponse {
                address: Ipv4Addr::UNSPECIFIED,
                ..self
            }
        }
    }
}

/// Answer to [`Request::Map`] (sections 3.3 to 3.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapResponse {
    /// Must be the requested protocol: "The 'x' in the OP field MUST match what the client
    /// requested" (section 3.3).
    pub protocol: Protocol,
    pub result: ResultCode,
    /// Seconds since the mapping table was initialized or reset (section 3.6).
    pub epoch: u32,
    /// The requested internal port, on failure too, so the client can tell which request
    /// failed (section 3.5); 0 when answering a delete-all (section 3.4).
    pub internal_port: u16,
    /// 0 after a successful deletion (3.4) or when no mapping was created (3.5).
    pub external_port: u16,
    /// Granted lifetime in seconds, 0 after a deletion. Zeroed on emit and parse unless
    /// `result` is success: no mapping was created (3.5), and after a failed deletion it
    /// "MUST be set to zero on transmission, and MUST be ignored on reception" (3.4).
    pub lifetime: u32,
}

impl MapResponse {
    const fn normalized(self) -> MapResponse {
        if self.result.is_success() {
            self
        } else {
            MapResponse {
                lifetime: 0,
                ..self
            }
        }
    }
}

/// A NAT-PMP response, as sent by the gateway.
///
/// Fields a receiver MUST ignore (a failure's External IPv4 Address and Lifetime) are zeroed by
/// `emit` and dropped by `parse`, so `parse(emit(x)) == x` for every `x` that `parse` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response {
    ExternalAddress(ExternalAddressResponse),
    Map(MapResponse),
    /// Answer to a request whose version is not 0 (RFC 6886 section 3.5), 8 bytes.
    ///
    /// Emitted exactly as the section 3.5 figure draws it: Vers = 0, OP = 0, Result Code = 1,
    /// then the epoch. (Section 3 says "Opcodes from 128 to 255 are corresponding server
    /// responses", and some servers, e.g. miniupnpd, send OP = 128 + the request's opcode
    /// instead; [`Response::parse`] accepts that form too, since an 8-byte response with
    /// result 1 can mean nothing else.)
    UnsupportedVersion {
        epoch: u32,
    },
}

impl Response {
    /// Largest response on the wire, for sizing buffers.
    pub const MAX_LEN: usize = field::MAP_RESPONSE_LEN;

    /// Parses a response datagram. Strict: the length must be exactly that of the message.
    pub fn parse(buf: &[u8]) -> Result<Response, ParseError> {
        let (version, opcode) = header(buf)?;
        if version != VERSION {
            return Err(ParseError::UnsupportedVersion { version });
        }
        if let Some(epoch) = unsupported_version_epoch(buf, opcode) {
            return Ok(Response::UnsupportedVersion { epoch });
        }
        if opcode & opcode::RESPONSE_BIT == 0 {
            return Err(ParseError::NotAResponse { opcode });
        }
        let protocol = match opcode & !opcode::RESPONSE_BIT {
            opcode::EXTERNAL_ADDRESS => {
                let bytes = exact::<{ field::EXTERNAL_ADDRESS_RESPONSE_LEN }>(buf)?;
                let response = ExternalAddressResponse {
                    result: ResultCode(read_u16(bytes, field::RESULT)),
                    epoch: read_u32(bytes, field::EPOCH),
                    address: Ipv4Addr::from(read_array::<4>(bytes, field::EXTERNAL_ADDRESS)),
                };
                return Ok(Response::ExternalAddress(response.normalized()));
            }
            opcode::MAP_UDP => Protocol::Udp,
            opcode::MAP_TCP => Protocol::Tcp,
            _ => return Err(ParseError::UnknownResponseOpcode { opcode }),
        };
        let bytes = exact::<{ field::MAP_RESPONSE_LEN }>(buf)?;
        let response = MapResponse {
            protocol,
            result: ResultCode(read_u16(bytes, field::RESULT)),
            epoch: read_u32(bytes, field::EPOCH),
            internal_port: read_u16(bytes, field::MAPPED_INTERNAL_PORT),
            external_port: read_u16(bytes, field::MAPPED_EXTERNAL_PORT),
            lifetime: read_u32(bytes, field::LIFETIME),
        };
        Ok(Response::Map(response.normalized()))
    }

    /// The response's opcode: 128 + the request's (section 3), 0 for Unsupported Version
    /// (section 3.5 figure).
    pub const fn opcode(&self) -> u8 {
        match self {
            Response::ExternalAddress(_) => opcode::RESPONSE_BIT | opcode::EXTERNAL_ADDRESS,
            Response::Map(map) => opcode::RESPONSE_BIT | map_opcode(map.protocol),
            Response::UnsupportedVersion { .. } => 0,
        }
    }

    /// Seconds Since Start of Epoch, carried by every response (section 3.6).
    pub const fn epoch(&self) -> u32 {
        match self {
            Response::ExternalAddress(response) => response.epoch,
            Response::Map(response) => response.epoch,
            Response::UnsupportedVersion { epoch } => *epoch,
        }
    }

    pub const fn result(&self) -> ResultCode {
        match self {
            Response::ExternalAddress(response) => response.result,
            Response::Map(response) => response.result,
            Response::UnsupportedVersion { .. } => ResultCode::UNSUPPORTED_VERSION,
        }
    }

    /// Bytes [`Response::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        match self {
            Response::ExternalAddress(_) => field::EXTERNAL_ADDRESS_RESPONSE_LEN,
            Response::Map(_) => field::MAP_RESPONSE_LEN,
            Response::UnsupportedVersion { .. } => field::UNSUPPORTED_VERSION_LEN,
        }
    }

    /// Writes the response at the start of `buf` and returns the bytes written
    /// (= [`Response::buffer_len`]).
    ///
    /// # Panics
    ///
    /// If `buf` is shorter than [`Response::buffer_len`].
    pub fn emit(&self, buf: &mut [u8]) -> usize {
        let out = &mut buf[..self.buffer_len()];
        out[field::VERSION] = VERSION;
        out[field::OPCODE] = self.opcode();
        write_u16(out, field::RESULT, self.result().0);
        write_u32(out, field::EPOCH, self.epoch());
        match self {
            Response::ExternalAddress(response) => {
                let address = response.normalized().address.octets();
                out[field::EXTERNAL_ADDRESS].copy_from_slice(&address);
            }
            Response::Map(response) => {
                let response = response.normalized();
                write_u16(out, field::MAPPED_INTERNAL_PORT, response.internal_port);
                write_u16(out, field::MAPPED_EXTERNAL_PORT, response.external_port);
                write_u32(out, field::LIFETIME, response.lifetime);
            }
            Response::UnsupportedVersion { .. } => {}
        }
        out.len()
    }
}

/// Writes the answer to a request with an unsupported opcode and returns the bytes written.
///
/// RFC 6886 section 3.5: "the entire request MUST be returned to the sender, with the top bit
/// of the opcode set (to indicate that this is a response) and the result code set to 5
/// (Unsupported opcode)". The result code sits at bytes 2..4, so a request shorter than 4
/// bytes is padded with zeros to make room for it. The answer is cut at `buf.len()`; this
/// never panics, whatever the lengths.
pub fn emit_unsupported_opcode(request: &[u8], buf: &mut [u8]) -> usize {
    // A reply without room for its result code would not say anything: send none.
    if buf.len() < field::RESULT.end {
        return 0;
    }
    let len = request.len().max(field::RESULT.end).min(buf.len());
    let out = &mut buf[..len];
    let copied = request.len().min(len);
    out[..copied].copy_from_slice(&request[..copied]);
    out[copied..].fill(0);
    if let Some(op) = out.get_mut(field::OPCODE) {
        *op |= opcode::RESPONSE_BIT;
    }
    if let Some(result) = out.get_mut(field::RESULT) {
        result.copy_from_slice(&ResultCode::UNSUPPORTED_OPCODE.0.to_be_bytes());
    }
    len
}

const fn map_opcode(protocol: Protocol) -> u8 {
    match protocol {
        Protocol::Udp => opcode::MAP_UDP,
        Protocol::Tcp => opcode::MAP_TCP,
    }
}

/// Version and opcode, the two bytes every message starts with (section 3).
fn header(buf: &[u8]) -> Result<(u8, u8), ParseError> {
    match buf {
        [version, opcode, ..] => Ok((*version, *opcode)),
        _ => Err(ParseError::Truncated {
            need: field::OPCODE + 1,
            got: buf.len(),
        }),
    }
}

/// The epoch of an "Unsupported Version" response (section 3.5), if `buf` is one: 8 bytes,
/// result 1, OP 0 as in the figure or 128 + x as some servers send it.
fn unsupported_version_epoch(buf: &[u8], opcode: u8) -> Option<u32> {
    if opcode != 0 && opcode & opcode::RESPONSE_BIT == 0 {
        return None;
    }
    let bytes = exact::<{ field::UNSUPPORTED_VERSION_LEN }>(buf).ok()?;
    let result = ResultCode(read_u16(bytes, field::RESULT));
    (result == ResultCode::UNSUPPORTED_VERSION).then(|| read_u32(bytes, field::EPOCH))
}

/// `buf` as exactly `N` bytes, so field reads after this cannot go out of bounds.
fn exact<const N: usize>(buf: &[u8]) -> Result<&[u8; N], ParseError> {
    <&[u8; N]>::try_from(buf).map_err(|_| {
        if buf.len() < N {
            ParseError::Truncated {
                need: N,
                got: buf.len(),
            }
        } else {
            ParseError::WrongLength {
                expected: N,
                got: buf.len(),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // ---- byte-exact layouts (RFC 6886 figures) ----

    #[test]
    fn external_address_request_layout() {
        let mut buf = [0xff; 16];
        let len = Request::ExternalAddress.emit(&mut buf);
        assert_eq!(&buf[..len], &[0, 0]);
        assert_eq!(Request::parse(&[0, 0]), Ok(Request::ExternalAddress));
    }

    #[test]
    fn external_address_response_layout() {
        let bytes = [
            0, 128, // Vers, OP = 128 + 0
            0, 0, // Result Code: success
            0x01, 0x02, 0x03, 0x04, // Seconds Since Start of Epoch
            198, 51, 100, 7, // External IPv4 Address
        ];
        let response = Response::ExternalAddress(ExternalAddressResponse {
            result: ResultCode::SUCCESS,
            epoch: 0x0102_0304,
            address: Ipv4Addr::new(198, 51, 100, 7),
        });
        let mut buf = [0xff; 16];
        let len = response.emit(&mut buf);
        assert_eq!(&buf[..len], &bytes);
        assert_eq!(Response::parse(&bytes), Ok(response));
    }

    #[test]
    fn failed_external_address_response_zeroes_address() {
        let response = Response::ExternalAddress(ExternalAddressResponse {
            result: ResultCode::NETWORK_FAILURE,
            epoch: 9,
            address: Ipv4Addr::new(198, 51, 100, 7),
        });
        let mut buf = [0xff; 12];
        response.emit(&mut buf);
        assert_eq!(buf, [0, 128, 0, 3, 0, 0, 0, 9, 0, 0, 0, 0]);
        // And a sender that did not zero it is ignored on reception (section 3.2).
        let sloppy = [0, 128, 0, 3, 0, 0, 0, 9, 198, 51, 100, 7];
        let parsed = Response::parse(&sloppy).unwrap();
        assert_eq!(
            parsed,
            Response::ExternalAddress(ExternalAddressResponse {
                result: ResultCode::NETWORK_FAILURE,
                epoch: 9,
                address: Ipv4Addr::UNSPECIFIED,
            })
        );
    }

    #[test]
    fn map_request_tcp_layout() {
        let bytes = [
            0, 2, // Vers, OP = 2 (TCP)
            0, 0, // Reserved
            0x1f, 0x90, // Internal Port 8080
            0x1f, 0x90, // Suggested External Port 8080
            0x00, 0x00, 0x1c, 0x20, // Requested Lifetime 7200
        ];
        let request = Request::Map(MapRequest {
            protocol: Protocol::Tcp,
            internal_port: 8080,
            suggested_external_port: 8080,
            lifetime: 7200,
        });
        let mut buf = [0xff; 16];
        let len = request.emit(&mut buf);
        assert_eq!(&buf[..len], &bytes);
        assert_eq!(Request::parse(&bytes), Ok(request));
    }

    #[test]
    fn map_request_udp_layout() {
        let bytes = [0, 1, 0, 0, 0x13, 0x88, 0, 0, 0, 0, 0x0e, 0x10];
        let request = Request::Map(MapRequest {
            protocol: Protocol::Udp,
            internal_port: 5000,
            suggested_external_port: 0,
            lifetime: 3600,
        });
        let mut buf = [0xff; 12];
        request.emit(&mut buf);
        assert_eq!(buf, bytes);
        assert_eq!(Request::parse(&bytes), Ok(request));
    }

    #[test]
    fn map_request_reserved_is_ignored_on_reception() {
        let bytes = [0, 2, 0xab, 0xcd, 0x1f, 0x90, 0x1f, 0x90, 0, 0, 0x1c, 0x20];
        let Ok(Request::Map(map)) = Request::parse(&bytes) else {
            panic!("not a map request");
        };
        assert_eq!(map.internal_port, 8080);
        assert_eq!(map.lifetime, 7200);
    }

    #[test]
    fn deletion_suggested_port_is_zeroed_and_ignored() {
        let request = Request::Map(MapRequest {
            protocol: Protocol::Udp,
            internal_port: 8080,
            suggested_external_port: 9999,
            lifetime: 0,
        });
        let mut buf = [0xff; 12];
        request.emit(&mut buf);
        assert_eq!(buf, [0, 1, 0, 0, 0x1f, 0x90, 0, 0, 0, 0, 0, 0]);
        let sloppy = [0, 1, 0, 0, 0x1f, 0x90, 0x27, 0x0f, 0, 0, 0, 0];
        let Ok(Request::Map(map)) = Request::parse(&sloppy) else {
            panic!("not a map request");
        };
        assert_eq!(map.suggested_external_port, 0);
        assert!(map.is_deletion());
        assert!(!map.is_delete_all());
    }

    #[test]
    fn delete_all_request() {
        let Ok(Request::Map(map)) = Request::parse(&[0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]) else {
            panic!("not a map request");
        };
        assert_eq!(map.protocol, Protocol::Tcp);
        assert!(map.is_delete_all());
    }

    #[test]
    fn map_response_layout() {
        let bytes = [
            0, 130, // Vers, OP = 128 + 2
            0, 0, // Result Code
            0, 0, 0x0e, 0x10, // Seconds Since Start of Epoch 3600
            0x1f, 0x90, // Internal Port 8080
            0xc3, 0x50, // Mapped External Port 50000
            0, 0, 0x1c, 0x20, // Lifetime 7200
        ];
        let response = Response::Map(MapResponse {
            protocol: Protocol::Tcp,
            result: ResultCode::SUCCESS,
            epoch: 3600,
            internal_port: 8080,
            external_port: 50000,
            lifetime: 7200,
        });
        let mut buf = [0xff; 32];
        let len = response.emit(&mut buf);
        assert_eq!(&buf[..len], &bytes);
        assert_eq!(Response::parse(&bytes), Ok(response));
    }

    #[test]
    fn failed_map_response_zeroes_lifetime() {
        let response = Response::Map(MapResponse {
            protocol: Protocol::Udp,
            result: ResultCode::NOT_AUTHORIZED,
            epoch: 1,
            internal_port: 80,
            external_port: 80,
            lifetime: 7200,
        });
        let mut buf = [0xff; 16];
        response.emit(&mut buf);
        assert_eq!(buf, [0, 129, 0, 2, 0, 0, 0, 1, 0, 80, 0, 80, 0, 0, 0, 0]);
        let sloppy = [0, 129, 0, 2, 0, 0, 0, 1, 0, 80, 0, 80, 0, 0, 0x1c, 0x20];
        let Ok(Response::Map(map)) = Response::parse(&sloppy) else {
            panic!("not a map response");
        };
        assert_eq!(map.lifetime, 0);
        assert_eq!(map.external_port, 80);
    }

    #[test]
    fn unsupported_version_layout_follows_section_3_5_figure() {
        let bytes = [
            0, 0, // Vers = 0, OP = 0
            0, 1, // Result Code = 1
            0xde, 0xad, 0xbe, 0xef, // Seconds Since Start of Epoch
        ];
        let response = Response::UnsupportedVersion { epoch: 0xdead_beef };
        let mut buf = [0xff; 16];
        let len = response.emit(&mut buf);
        assert_eq!(len, 8);
        assert_eq!(&buf[..len], &bytes);
        assert_eq!(Response::parse(&bytes), Ok(response));
        assert_eq!(response.result(), ResultCode::UNSUPPORTED_VERSION);
        assert_eq!(response.epoch(), 0xdead_beef);
    }

    #[test]
    fn unsupported_version_with_response_opcode_is_accepted() {
        // miniupnpd answers with OP = 128 + the request's opcode.
        let bytes = [0, 129, 0, 1, 0, 0, 0, 7];
        assert_eq!(
            Response::parse(&bytes),
            Ok(Response::UnsupportedVersion { epoch: 7 })
        );
    }

    #[test]
    fn unsupported_opcode_echo_of_short_request() {
        let mut buf = [0xff; 16];
        let len = emit_unsupported_opcode(&[0, 3], &mut buf);
        assert_eq!(&buf[..len], &[0, 0x83, 0, 5]);
    }

    #[test]
    fn unsupported_opcode_echo_of_full_request() {
        let request = [0, 7, 0xaa, 0xbb, 1, 2, 3, 4, 5, 6, 7, 8];
        let mut buf = [0xff; 32];
        let len = emit_unsupported_opcode(&request, &mut buf);
        assert_eq!(&buf[..len], &[0, 0x87, 0, 5, 1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn unsupported_opcode_echo_is_capped_by_buffer() {
        let request = [0, 7, 0, 0, 1, 2, 3, 4];
        let mut buf = [0xff; 5];
        assert_eq!(emit_unsupported_opcode(&request, &mut buf), 5);
        assert_eq!(buf, [0, 0x87, 0, 5, 1]);
        // No room for the result code: no reply at all, the buffer untouched.
        let mut tiny = [0xff; 3];
        assert_eq!(emit_unsupported_opcode(&request, &mut tiny), 0);
        assert_eq!(tiny, [0xff; 3]);
        assert_eq!(emit_unsupported_opcode(&request, &mut []), 0);
        let mut buf = [0xff; 8];
        assert_eq!(emit_unsupported_opcode(&[], &mut buf), 4);
        assert_eq!(&buf[..4], &[0, 0x80, 0, 5]);
    }

    #[test]
    fn emit_returns_buffer_len() {
        let mut buf = [0; 16];
        for request in [
            Request::ExternalAddress,
            Request::Map(MapRequest {
                protocol: Protocol::Udp,
                internal_port: 1,
                suggested_external_port: 2,
                lifetime: 3,
            }),
        ] {
            assert_eq!(request.emit(&mut buf), request.buffer_len());
            assert!(request.buffer_len() <= Request::MAX_LEN);
        }
    }

    #[test]
    #[should_panic]
    fn emit_panics_on_short_buffer() {
        Response::UnsupportedVersion { epoch: 0 }.emit(&mut [0; 7]);
    }

    // ---- every parse error ----

    #[test]
    fn request_errors() {
        use ParseError::*;
        assert_eq!(Request::parse(&[]), Err(Truncated { need: 2, got: 0 }));
        assert_eq!(Request::parse(&[0]), Err(Truncated { need: 2, got: 1 }));
        assert_eq!(
            Request::parse(&[2, 1, 0, 0]),
            Err(UnsupportedVersion { version: 2 })
        );
        assert_eq!(
            Request::parse(&[1, 0]),
            Err(UnsupportedVersion { version: 1 })
        );
        assert_eq!(
            Request::parse(&[0, 128, 0, 0]),
            Err(NotARequest { opcode: 128 })
        );
        assert_eq!(Request::parse(&[0, 255]), Err(NotARequest { opcode: 255 }));
        assert_eq!(
            Request::parse(&[0, 3]),
            Err(UnsupportedOpcode { opcode: 3 })
        );
        assert_eq!(
            Request::parse(&[0, 127, 1, 2, 3]),
            Err(UnsupportedOpcode { opcode: 127 })
        );
        assert_eq!(
            Request::parse(&[0, 0, 0]),
            Err(WrongLength {
                expected: 2,
                got: 3
            })
        );
        assert_eq!(
            Request::parse(&[0, 1, 0, 0, 0, 80, 0, 80, 0, 0, 0]),
            Err(Truncated { need: 12, got: 11 })
        );
        assert_eq!(Request::parse(&[0, 2]), Err(Truncated { need: 12, got: 2 }));
        assert_eq!(
            Request::parse(&[0, 2, 0, 0, 0, 80, 0, 80, 0, 0, 0, 1, 0]),
            Err(WrongLength {
                expected: 12,
                got: 13
            })
        );
    }

    #[test]
    fn response_errors() {
        use ParseError::*;
        assert_eq!(Response::parse(&[]), Err(Truncated { need: 2, got: 0 }));
        assert_eq!(Response::parse(&[0]), Err(Truncated { need: 2, got: 1 }));
        assert_eq!(
            Response::parse(&[2, 128, 0, 0, 0, 0, 0, 0]),
            Err(UnsupportedVersion { version: 2 })
        );
        // A request is not a response, and OP 0 is only a response in the exact
        // Unsupported Version form.
        assert_eq!(Response::parse(&[0, 0]), Err(NotAResponse { opcode: 0 }));
        assert_eq!(
            Response::parse(&[0, 0, 0, 0, 0, 0, 0, 0]),
            Err(NotAResponse { opcode: 0 })
        );
        assert_eq!(
            Response::parse(&[0, 0, 0, 1, 0, 0, 0, 0, 0]),
            Err(NotAResponse { opcode: 0 })
        );
        assert_eq!(
            Response::parse(&[0, 1, 0, 0, 0, 80, 0, 80, 0, 0, 0, 0]),
            Err(NotAResponse { opcode: 1 })
        );
        assert_eq!(
            Response::parse(&[0, 131, 0, 5]),
            Err(UnknownResponseOpcode { opcode: 131 })
        );
        assert_eq!(
            Response::parse(&[0, 128, 0, 0, 0, 0, 0, 0]),
            Err(Truncated { need: 12, got: 8 })
        );
        assert_eq!(
            Response::parse(&[0, 128, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5]),
            Err(WrongLength {
                expected: 12,
                got: 13
            })
        );
        assert_eq!(
            Response::parse(&[0, 129, 0, 0, 0, 0, 0, 0, 0, 80, 0, 80]),
            Err(Truncated { need: 16, got: 12 })
        );
        assert_eq!(
            Response::parse(&[0, 130, 0, 0, 0, 0, 0, 0, 0, 80, 0, 80, 0, 0, 0, 1, 0]),
            Err(WrongLength {
                expected: 16,
                got: 17
            })
        );
    }

    #[test]
    fn parse_errors_display() {
        assert_eq!(
            ParseError::Truncated { need: 12, got: 3 }.to_string(),
            "truncated NAT-PMP message: need 12 bytes, got 3"
        );
        assert_eq!(
            ParseError::NotARequest { opcode: 130 }.to_string(),
            "NAT-PMP opcode 130 is a response, not a request"
        );
    }

    // ---- result codes ----

    #[test]
    fn result_codes() {
        let all = [
            (ResultCode::SUCCESS, "0 (Success)"),
            (ResultCode::UNSUPPORTED_VERSION, "1 (Unsupported Version)"),
            (ResultCode::NOT_AUTHORIZED, "2 (Not Authorized/Refused)"),
            (ResultCode::NETWORK_FAILURE, "3 (Network Failure)"),
            (ResultCode::OUT_OF_RESOURCES, "4 (Out of resources)"),
            (ResultCode::UNSUPPORTED_OPCODE, "5 (Unsupported opcode)"),
            (ResultCode(6), "6 (unknown result code)"),
            (ResultCode(65535), "65535 (unknown result code)"),
        ];
        for (i, (code, shown)) in all.iter().enumerate() {
            assert_eq!(code.to_string(), *shown);
            assert_eq!(code.is_success(), i == 0);
        }
    }

    #[test]
    fn response_accessors() {
        let map = MapResponse {
            protocol: Protocol::Udp,
            result: ResultCode::OUT_OF_RESOURCES,
            epoch: 42,
            internal_port: 1,
            external_port: 0,
            lifetime: 0,
        };
        assert_eq!(Response::Map(map).epoch(), 42);
        assert_eq!(Response::Map(map).result(), ResultCode::OUT_OF_RESOURCES);
        assert_eq!(Response::Map(map).opcode(), 129);
        assert_eq!(Request::ExternalAddress.opcode(), 0);
    }

    #[test]
    fn constants() {
        assert_eq!(SERVER_PORT, 5351);
        assert_eq!(CLIENT_PORT, 5350);
        assert_eq!(ANNOUNCE_ADDR, Ipv4Addr::new(224, 0, 0, 1));
        assert!(ANNOUNCE_ADDR.is_multicast());
        assert_eq!(Request::MAX_LEN, 12);
        assert_eq!(Response::MAX_LEN, 16);
    }

    // ---- properties ----

    fn protocol() -> impl Strategy<Value = Protocol> {
        prop_oneof![Just(Protocol::Udp), Just(Protocol::Tcp)]
    }

    fn result_code() -> impl Strategy<Value = ResultCode> {
        // Weighted towards the defined codes, success in particular.
        prop_oneof![
            3 => Just(ResultCode::SUCCESS),
            2 => (1u16..=5).prop_map(ResultCode),
            1 => any::<u16>().prop_map(ResultCode),
        ]
    }

    fn map_request() -> impl Strategy<Value = MapRequest> {
        (protocol(), any::<u16>(), any::<u16>(), any::<u32>()).prop_map(
            |(protocol, internal_port, suggested_external_port, lifetime)| MapRequest {
                protocol,
                internal_port,
                suggested_external_port,
                lifetime,
            },
        )
    }

    fn request() -> impl Strategy<Value = Request> {
        prop_oneof![
            Just(Request::ExternalAddress),
            map_request().prop_map(Request::Map),
            // Deletions, whose suggested port the RFC zeroes.
            map_request().prop_map(|map| Request::Map(MapRequest { lifetime: 0, ..map })),
        ]
    }

    fn response() -> impl Strategy<Value = Response> {
        let external =
            (result_code(), any::<u32>(), any::<[u8; 4]>()).prop_map(|(result, epoch, address)| {
                Response::ExternalAddress(ExternalAddressResponse {
                    result,
                    epoch,
                    address: address.into(),
                })
            });
        let map = (
            protocol(),
            result_code(),
            any::<u32>(),
            any::<u16>(),
            any::<u16>(),
            any::<u32>(),
        )
            .prop_map(
                |(protocol, result, epoch, internal_port, external_port, lifetime)| {
                    Response::Map(MapResponse {
                        protocol,
                        result,
                        epoch,
                        internal_port,
                        external_port,
                        lifetime,
                    })
                },
            );
        let unsupported = any::<u32>().prop_map(|epoch| Response::UnsupportedVersion { epoch });
        prop_oneof![external, map, unsupported]
    }

    /// What the RFC lets through the wire: the MUST-ignore fields zeroed.
    fn normalized_request(request: Request) -> Request {
        match request {
            Request::Map(map) => Request::Map(map.normalized()),
            other => other,
        }
    }

    fn normalized_response(response: Response) -> Response {
        match response {
            Response::ExternalAddress(r) => Response::ExternalAddress(r.normalized()),
            Response::Map(r) => Response::Map(r.normalized()),
            other => other,
        }
    }

    proptest! {
        #[test]
        fn request_round_trip(request in request()) {
            let request = normalized_request(request);
            let mut buf = [0u8; Request::MAX_LEN];
            let len = request.emit(&mut buf);
            prop_assert_eq!(len, request.buffer_len());
            prop_assert_eq!(Request::parse(&buf[..len]), Ok(request));
        }

        #[test]
        fn response_round_trip(response in response()) {
            let response = normalized_response(response);
            let mut buf = [0u8; Response::MAX_LEN];
            let len = response.emit(&mut buf);
            prop_assert_eq!(len, response.buffer_len());
            prop_assert_eq!(Response::parse(&buf[..len]), Ok(response));
        }

        #[test]
        fn request_emit_normalizes(request in request()) {
            let mut buf = [0u8; Request::MAX_LEN];
            let len = request.emit(&mut buf);
            prop_assert_eq!(Request::parse(&buf[..len]), Ok(normalized_request(request)));
        }

        #[test]
        fn response_emit_normalizes(response in response()) {
            let mut buf = [0u8; Response::MAX_LEN];
            let len = response.emit(&mut buf);
            prop_assert_eq!(Response::parse(&buf[..len]), Ok(normalized_response(response)));
        }

        #[test]
        fn request_parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..=1200)) {
            if let Ok(request) = Request::parse(&bytes) {
                // Strict lengths: anything accepted re-emits byte for byte, bar ignored fields.
                let mut buf = [0u8; Request::MAX_LEN];
                let len = request.emit(&mut buf);
                prop_assert_eq!(len, bytes.len());
                prop_assert_eq!(Request::parse(&buf[..len]), Ok(request));
            }
        }

        #[test]
        fn response_parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..=1200)) {
            if let Ok(response) = Response::parse(&bytes) {
                let mut buf = [0u8; Response::MAX_LEN];
                let len = response.emit(&mut buf);
                prop_assert_eq!(len, bytes.len());
                prop_assert_eq!(Response::parse(&buf[..len]), Ok(response));
            }
        }

        // Random 1200-byte inputs almost never get past the version byte; version 0, a chosen
        // opcode and a short tail reach every branch, including the successful ones.
        #[test]
        fn parse_structured_inputs(
            opcode in prop::sample::select(vec![0u8, 1, 2, 3, 127, 128, 129, 130, 131, 255]),
            tail in prop::collection::vec(any::<u8>(), 0..=18),
        ) {
            let mut bytes = vec![VERSION, opcode];
            bytes.extend_from_slice(&tail);
            if let Ok(request) = Request::parse(&bytes) {
                let mut buf = [0u8; Request::MAX_LEN];
                let len = request.emit(&mut buf);
                prop_assert_eq!(len, bytes.len());
                prop_assert_eq!(Request::parse(&buf[..len]), Ok(request));
            }
            if let Ok(response) = Response::parse(&bytes) {
                let mut buf = [0u8; Response::MAX_LEN];
                let len = response.emit(&mut buf);
                prop_assert_eq!(len, bytes.len());
                prop_assert_eq!(Response::parse(&buf[..len]), Ok(response));
            }
        }

        #[test]
        fn unsupported_opcode_echo(
            request in prop::collection::vec(any::<u8>(), 0..=1200),
            buf_len in 0usize..=1300,
        ) {
            let mut buf = vec![0xffu8; buf_len];
            let len = emit_unsupported_opcode(&request, &mut buf);
            let expected_len = if buf_len < 4 { 0 } else { request.len().max(4).min(buf_len) };
            prop_assert_eq!(len, expected_len);
            for (i, byte) in buf[..len].iter().enumerate() {
                let expected = match i {
                    1 => request.get(1).copied().unwrap_or(0) | 0x80,
                    2 => 0,
                    3 => 5,
                    _ => request.get(i).copied().unwrap_or(0),
                };
                prop_assert_eq!(*byte, expected);
            }
            prop_assert!(buf[len..].iter().all(|&b| b == 0xff));
        }
    }
}
