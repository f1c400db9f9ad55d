//! Numbered fixed-size records, written by the crash tests' writers and checked on the
//! secondary: each one says which it is, so that a missing, misplaced or torn record shows.

/// Size of one record: one page, so that a record is written (and written back from a
/// mapping) in one piece.
pub const RECORD_BYTES: usize = 4096;

/// The content of record `n` of the writer tagged `tag`: its number, the tag, then a pattern
/// of both.
pub fn record(tag: u64, n: u64) -> Vec<u8> {
    let mut r = Vec::with_capacity(RECORD_BYTES);
    r.extend_from_slice(&n.to_le_bytes());
    r.extend_from_slice(&tag.to_le_bytes());
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ tag;
    while r.len() < RECORD_BYTES {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        r.push(x as u8);
    }
    r
}
