//! One record's bytes in a segment: a 24-byte header, the payload, and zero
//! padding to a multiple of 8.
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | payload length, little endian |
//! | 4..8 | CRC-32 (IEEE) of bytes 8 to the payload's end |
//! | 8..16 | sequence number |
//! | 16..24 | when it was written, Unix ms (the journal's clock, never going back) |
//!
//! A frame is valid only if its CRC matches and its sequence number is the
//! one expected next. A segment is created full of zeros, and a record is
//! copied in whole before the next one starts, so the first invalid frame
//! is the end: either zeros, or the one record a killed process was copying
//! (whose request had not been answered).

use bytes::Bytes;

pub const HEADER: usize = 24;
/// A usage record is a few hundred bytes; anything near this is a bug.
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// A record read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub seq: u64,
    /// The journal's clock when the record was appended.
    pub written_ms: i64,
    pub payload: Bytes,
}

/// The bytes a payload takes in a segment, header and padding included.
pub fn frame_len(payload_len: usize) -> usize {
    HEADER + payload_len.next_multiple_of(8)
}

/// Writes a frame into `out`, which is exactly `frame_len(payload.len())`
/// bytes of zeros.
pub fn write(out: &mut [u8], seq: u64, written_ms: i64, payload: &[u8]) {
    out[8..16].copy_from_slice(&seq.to_le_bytes());
    out[16..24].copy_from_slice(&written_ms.to_le_bytes());
    out[HEADER..HEADER + payload.len()].copy_from_slice(payload);
    let crc = crc32fast::hash(&out[8..HEADER + payload.len()]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out[0..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
}

/// Why a parse stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The buffer ends inside (or right at) a frame's header or payload:
    /// reading further may find more.
    Short,
    /// Zeros, a torn record, or a number out of sequence: the segment's end.
    Invalid,
}

/// A valid frame's header, as found at the start of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub seq: u64,
    pub written_ms: i64,
    pub payload_len: usize,
    /// Header, payload and padding.
    pub frame_len: usize,
}

impl Parsed {
    /// The frame's record, out of the buffer it was parsed from.
    pub fn frame(&self, buf: &Bytes) -> Frame {
        Frame { seq: self.seq, written_ms: self.written_ms, payload: buf.slice(HEADER..HEADER + self.payload_len) }
    }
}

/// The frame at the start of `buf` if it is valid and numbered `expected`.
pub fn parse(buf: &[u8], expected: u64) -> Result<Parsed, End> {
    if buf.len() < HEADER {
        return Err(End::Short);
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
    if len > MAX_PAYLOAD {
        return Err(End::Invalid);
    }
    if buf.len() < HEADER + len {
        return Err(End::Short);
    }
    let crc = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    let seq = u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes"));
    if seq != expected || crc != crc32fast::hash(&buf[8..HEADER + len]) {
        return Err(End::Invalid);
    }
    let written_ms = i64::from_le_bytes(buf[16..24].try_into().expect("8 bytes"));
    Ok(Parsed { seq, written_ms, payload_len: len, frame_len: frame_len(len) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(seq: u64, payload: &[u8]) -> Bytes {
        let mut out = vec![0; frame_len(payload.len())];
        write(&mut out, seq, 1_000, payload);
        Bytes::from(out)
    }

    #[test]
    fn a_frame_reads_back_and_is_padded_to_eight_bytes() {
        let buf = framed(7, b"hello");
        assert_eq!(buf.len(), 32);
        let parsed = parse(&buf, 7).unwrap();
        let frame = parsed.frame(&buf);
        assert_eq!((frame.seq, frame.written_ms, &frame.payload[..], parsed.frame_len), (7, 1_000, &b"hello"[..], 32));
    }

    #[test]
    fn zeros_a_torn_copy_and_a_number_out_of_sequence_end_the_segment() {
        assert_eq!(parse(&[0; 64], 1), Err(End::Invalid), "zeros");
        assert_eq!(parse(&framed(7, b"hello"), 8), Err(End::Invalid), "out of sequence");
        let mut torn = framed(7, b"hello world, this is a record").to_vec();
        torn[30..].fill(0);
        assert_eq!(parse(&torn, 7), Err(End::Invalid), "torn");
        let mut huge = framed(7, b"x").to_vec();
        huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse(&huge, 7), Err(End::Invalid), "a length past the limit");
    }

    #[test]
    fn a_buffer_that_stops_inside_a_frame_is_short_not_invalid() {
        let buf = framed(3, b"some payload");
        assert_eq!(parse(&buf[..10], 3), Err(End::Short));
        assert_eq!(parse(&buf[..HEADER + 4], 3), Err(End::Short));
    }
}
