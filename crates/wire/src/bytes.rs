//! Big-endian field access over ranges the `field` modules name, shared by the codecs.
//! Callers check lengths first; these only move bytes.

use core::ops::Range;

pub(crate) fn read_array<const N: usize>(bytes: &[u8], at: Range<usize>) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&bytes[at]);
    out
}

pub(crate) fn read_u16(bytes: &[u8], at: Range<usize>) -> u16 {
    u16::from_be_bytes(read_array(bytes, at))
}

pub(crate) fn read_u32(bytes: &[u8], at: Range<usize>) -> u32 {
    u32::from_be_bytes(read_array(bytes, at))
}

pub(crate) fn write_u16(out: &mut [u8], at: Range<usize>, value: u16) {
    out[at].copy_from_slice(&value.to_be_bytes());
}

pub(crate) fn write_u32(out: &mut [u8], at: Range<usize>, value: u32) {
    out[at].copy_from_slice(&value.to_be_bytes());
}
