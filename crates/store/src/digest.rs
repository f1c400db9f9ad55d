//! Chunk digests of a file, for comparing two copies without sending them.
//!
//! A chunk is `CHUNK_BYTES` of a file (the last one shorter). Its digest covers its content
//! and which parts of it hold data: a chunk that holds no data at all (holes and preallocated,
//! unwritten extents) has the all-zero digest; otherwise blake3 over, for each data range in
//! it, the range (relative to the chunk) then its bytes. So two copies with the same bytes but
//! different holes differ, and a resync keeps sparse files sparse.

use std::io;
use std::os::fd::BorrowedFd;

use mirrorkit_wire::{CHUNK_BYTES, DIGEST_BYTES};

use crate::sys;

/// Whether `ranges` cover little enough of a file of `size` bytes that reading them is
/// random access (readahead would read more than they hold).
pub fn sparse(ranges: &[(u64, u64)], size: u64) -> bool {
    let asked: u64 = ranges.iter().map(|(s, e)| e - s).sum();
    asked.saturating_mul(2) < size
}

/// The ranges of a file of `size` bytes that hold data: its data extents without the
/// preallocated (unwritten) ones, which read as zeros like holes.
pub fn data_ranges(fd: BorrowedFd<'_>, size: u64) -> io::Result<Vec<(u64, u64)>> {
    data_ranges_in(fd, 0, size)
}

/// The same within `[from, size)` only: what digests of chunks there need, without scanning
/// the rest of a large file.
pub fn data_ranges_in(fd: BorrowedFd<'_>, from: u64, size: u64) -> io::Result<Vec<(u64, u64)>> {
    let unwritten = sys::unwritten_ranges(fd, from, size)?;
    let mut out = Vec::new();
    let mut pos = from;
    while pos < size {
        let Some(start) = sys::seek_data_hole(fd, pos, libc::SEEK_DATA)? else {
            break;
        };
        if start >= size {
            break;
        }
        let end = sys::seek_data_hole(fd, start, libc::SEEK_HOLE)?
            .unwrap_or(size)
            .min(size);
        out.extend(without(start, end, &unwritten));
        pos = end.max(start + 1);
    }
    Ok(out)
}

/// The parts of `[start, end)` outside `skip` (sorted, non-overlapping ranges).
pub fn without(start: u64, end: u64, skip: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut pos = start;
    for &(s, e) in skip {
        if e <= pos || s >= end {
            continue;
        }
        if s > pos {
            out.push((pos, s));
        }
        pos = pos.max(e);
    }
    if pos < end {
        out.push((pos, end));
    }
    out
}

/// The parts of `data` (sorted ranges) inside `[start, end)`.
pub fn within(data: &[(u64, u64)], start: u64, end: u64) -> Vec<(u64, u64)> {
    let first = data.partition_point(|&(_, e)| e <= start);
    data[first..]
        .iter()
        .take_while(|&&(s, _)| s < end)
        .map(|&(s, e)| (s.max(start), e.min(end)))
        .filter(|(s, e)| s < e)
        .collect()
}

/// Computes digests of a file's chunks, reusing one buffer.
pub struct Digester {
    buf: Vec<u8>,
}

impl Default for Digester {
    fn default() -> Self {
        Digester {
            buf: vec![0u8; CHUNK_BYTES as usize],
        }
    }
}

impl Digester {
    /// Append to `out` the digest of every chunk in `ranges` (chunk-aligned, ascending) of the
    /// file `fd` of `size` bytes, reading its data map only where the ranges lie.
    pub fn file_digests(
        &mut self,
        fd: BorrowedFd<'_>,
        size: u64,
        ranges: &[(u64, u64)],
        out: &mut Vec<u8>,
    ) -> io::Result<()> {
        let (from, to) = match (ranges.first(), ranges.last()) {
            (Some(&(s, _)), Some(&(_, e))) => (s, e.min(size)),
            _ => (0, 0),
        };
        let data = if from < to {
            data_ranges_in(fd, from, to)?
        } else {
            Vec::new()
        };
        self.digests(fd, size, &data, ranges, out)
    }

    /// Append to `out` the digest of every chunk in `ranges` (chunk-aligned) of the file, whose
    /// size is `size` and data ranges `data`. Chunks past the end have the all-zero digest.
    pub fn digests(
        &mut self,
        fd: BorrowedFd<'_>,
        size: u64,
        data: &[(u64, u64)],
        ranges: &[(u64, u64)],
        out: &mut Vec<u8>,
    ) -> io::Result<()> {
        for &(start, end) in ranges {
            let mut c = start;
            while c < end {
                let d = self.chunk(fd, c, (c + CHUNK_BYTES).min(size), data)?;
                out.extend_from_slice(&d);
                c += CHUNK_BYTES;
            }
        }
        Ok(())
    }

    /// Digest of the chunk `[start, end)` (empty when `start >= end`: past the end of file).
    pub fn chunk(
        &mut self,
        fd: BorrowedFd<'_>,
        start: u64,
        end: u64,
        data: &[(u64, u64)],
    ) -> io::Result<[u8; DIGEST_BYTES]> {
        if start >= end {
            return Ok([0u8; DIGEST_BYTES]);
        }
        let parts = within(data, start, end);
        if parts.is_empty() {
            return Ok([0u8; DIGEST_BYTES]);
        }
        let mut h = blake3::Hasher::new();
        for (s, e) in parts {
            h.update(&(s - start).to_le_bytes());
            h.update(&(e - start).to_le_bytes());
            let want = (e - s) as usize;
            let buf = &mut self.buf[..want];
            let mut got = 0;
            while got < want {
                let n = sys::pread(fd, &mut buf[got..], s + got as u64)?;
                if n == 0 {
                    // The file shrank while read: the rest reads as nothing.
                    break;
                }
                got += n;
            }
            h.update(&buf[..got]);
        }
        Ok(*h.finalize().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_helpers() {
        assert_eq!(
            without(0, 100, &[(20, 30), (50, 60)]),
            [(0, 20), (30, 50), (60, 100)]
        );
        assert_eq!(without(10, 20, &[(0, 30)]), []);
        let data = [(0, 10), (20, 30), (40, 50)];
        assert_eq!(within(&data, 5, 25), [(5, 10), (20, 25)]);
        assert_eq!(within(&data, 10, 20), []);
        assert_eq!(within(&data, 45, 100), [(45, 50)]);
    }
}
