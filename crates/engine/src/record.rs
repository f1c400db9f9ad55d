//! The primary's dirty record: every region and name the application changed since the peer
//! last held this node's data, persisted so that a crash of the primary at any instant loses
//! none of it.
//!
//! Scheme: an append-only log in the state directory (`dirty-record`), written and flushed
//! with `fdatasync` before the change it describes is made (see `Core::premark`). A chunk or
//! name is logged once per record; later changes of it cost nothing. On load the log is read
//! up to its first torn or corrupt entry (a crash mid-append) and rewritten compacted.
//!
//! What it holds:
//! - data: per backing inode number, a bitmap of `CHUNK_BYTES` chunks written, truncated
//!   (from a size on), punched or allocated;
//! - names: paths whose entry was created, removed, renamed or linked (their content on the
//!   peer may belong to another file: they are compared in full).
//!
//! Cost: one bit per 64 KiB chunk in memory, 2 MiB per TiB of changed data; on disk 25 bytes
//! per newly dirty range (a write covering many chunks is one entry), compacted on load.
//!
//! The log starts with the generation it is relative to (the peer's generation when recording
//! started, `DataState::bitmap`). A log for another generation is not trusted.

use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use mirrorkit_wire::{GenId, RelPath, CHUNK_BYTES};

const MAGIC: &[u8; 8] = b"MKDIRTY1";
const KIND_DATA: u8 = 1;
const KIND_NAME: u8 = 2;

/// A change the application makes, for the record and for a synchronisation in progress.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mark {
    /// Whatever is at this path changes identity (created, removed, renamed, linked): sync it
    /// again recursively, comparing all its data.
    Entry(RelPath),
    /// Only the attributes of this path change.
    Meta(RelPath),
    /// Bytes `[start, end)` of backing inode `ino` change (`end` = `u64::MAX`: from `start`
    /// to the end of the file, for a truncation).
    Data { ino: u64, start: u64, end: u64 },
}

/// A set of marks: chunk bitmaps per inode and paths.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MarkSet {
    /// Backing inode → bitmap of dirty chunks (bit i of word w: chunk 64 w + i).
    pub chunks: HashMap<u64, Vec<u64>>,
    /// Backing inode → first chunk dirty up to the end of the file (truncation).
    pub tails: HashMap<u64, u64>,
    pub entries: BTreeSet<RelPath>,
    pub metas: BTreeSet<RelPath>,
}

/// Chunk indices `[first, last]` covering `[start, end)` (`end` > `start`).
fn chunk_span(start: u64, end: u64) -> (u64, u64) {
    (start / CHUNK_BYTES, (end - 1) / CHUNK_BYTES)
}

/// Most chunks one data mark sets bit by bit; a longer range is recorded as a tail.
const MAX_MARK_CHUNKS: u64 = 1 << 20;

impl MarkSet {
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
            && self.tails.is_empty()
            && self.entries.is_empty()
            && self.metas.is_empty()
    }

    /// Add a mark; true if it was not already covered.
    pub fn add(&mut self, m: &Mark) -> bool {
        match m {
            Mark::Entry(p) => self.entries.insert(p.clone()),
            Mark::Meta(p) => self.metas.insert(p.clone()),
            Mark::Data { ino, start, end } => {
                if end <= start {
                    return false;
                }
                let (first, last) = chunk_span(*start, *end);
                if *end == u64::MAX || last - first >= MAX_MARK_CHUNKS {
                    let t = self.tails.entry(*ino).or_insert(u64::MAX);
                    let new = first < *t;
                    *t = (*t).min(first);
                    return new;
                }
                if self.tails.get(ino).is_some_and(|&t| t <= first) {
                    return false;
                }
                let bits = self.chunks.entry(*ino).or_default();
                let words = (last / 64 + 1) as usize;
                if bits.len() < words {
                    bits.resize(words, 0);
                }
                let mut new = false;
                for c in first..=last {
                    let (w, b) = ((c / 64) as usize, c % 64);
                    if bits[w] & (1 << b) == 0 {
                        bits[w] |= 1 << b;
                        new = true;
                    }
                }
                new
            }
        }
    }

    pub fn extend(&mut self, other: &MarkSet) {
        for (ino, bits) in &other.chunks {
            let mine = self.chunks.entry(*ino).or_default();
            if mine.len() < bits.len() {
                mine.resize(bits.len(), 0);
            }
            for (m, b) in mine.iter_mut().zip(bits) {
                *m |= b;
            }
        }
        for (ino, t) in &other.tails {
            let mine = self.tails.entry(*ino).or_insert(u64::MAX);
            *mine = (*mine).min(*t);
        }
        self.entries.extend(other.entries.iter().cloned());
        self.metas.extend(other.metas.iter().cloned());
    }

    /// Whether any data of `ino` is marked.
    pub fn has_data(&self, ino: u64) -> bool {
        self.chunks.contains_key(&ino) || self.tails.contains_key(&ino)
    }

    /// The dirty ranges of `ino` within a file of `size` bytes, chunk-aligned, ascending,
    /// merged.
    pub fn ranges(&self, ino: u64, size: u64) -> Vec<(u64, u64)> {
        let end_chunk = size.div_ceil(CHUNK_BYTES);
        let tail = self.tails.get(&ino).copied().unwrap_or(u64::MAX);
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut push = |c: u64| match out.last_mut() {
            Some((_, e)) if *e == c * CHUNK_BYTES => *e += CHUNK_BYTES,
            _ => out.push((c * CHUNK_BYTES, (c + 1) * CHUNK_BYTES)),
        };
        if let Some(bits) = self.chunks.get(&ino) {
            for (w, word) in bits.iter().enumerate() {
                let mut word = *word;
                while word != 0 {
                    let b = word.trailing_zeros() as u64;
                    word &= word - 1;
                    let c = w as u64 * 64 + b;
                    if c < end_chunk && c < tail {
                        push(c);
                    }
                }
            }
        }
        for c in tail..end_chunk {
            push(c);
        }
        out
    }

    /// Bytes of data marked (for counters): chunks times their size, tails counted to `size`
    /// by the caller; here only the chunk bitmaps.
    pub fn chunk_bytes(&self) -> u64 {
        self.chunks
            .values()
            .flat_map(|b| b.iter())
            .map(|w| w.count_ones() as u64)
            .sum::<u64>()
            * CHUNK_BYTES
    }
}

/// Why the record could not be used.
#[derive(Debug, thiserror::Error)]
#[error("dirty record {path}: {source}")]
pub struct RecordError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// What `Record::open` found on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// A log relative to the generation asked, read up to its last complete entry.
    Valid,
    /// No log.
    Absent,
    /// A readable log relative to another generation (an earlier term's).
    OtherBase,
    /// A file that is not a log (its header is damaged).
    Unreadable,
}

/// The persisted record.
pub struct Record {
    path: PathBuf,
    file: File,
    base: Option<GenId>,
    marks: MarkSet,
    buf: Vec<u8>,
}

impl Record {
    /// Open the record of `state_dir` relative to generation `base`. Returns the record and
    /// what was found there; unless it was `Found::Valid`, the record starts empty.
    pub fn open(state_dir: &Path, base: Option<GenId>) -> Result<(Record, Found), RecordError> {
        let path = state_dir.join("dirty-record");
        let err = |source| RecordError {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(state_dir).map_err(err)?;
        let (marks, found) = match File::open(&path) {
            Ok(mut f) => {
                let mut bytes = Vec::new();
                f.read_to_end(&mut bytes).map_err(err)?;
                match parse(&bytes) {
                    Some((b, marks)) if b == base => (marks, Found::Valid),
                    Some(_) => (MarkSet::default(), Found::OtherBase),
                    None => (MarkSet::default(), Found::Unreadable),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => (MarkSet::default(), Found::Absent),
            Err(e) => return Err(err(e)),
        };
        let file = write_compacted(&path, base, &marks).map_err(err)?;
        Ok((
            Record {
                path,
                file,
                base,
                marks,
                buf: Vec::new(),
            },
            found,
        ))
    }

    pub fn base(&self) -> Option<GenId> {
        self.base
    }

    pub fn marks(&self) -> &MarkSet {
        &self.marks
    }

    /// Record `marks` durably: the new ones are appended and flushed before this returns.
    pub fn add(&mut self, marks: &[Mark]) -> Result<(), RecordError> {
        self.buf.clear();
        for m in marks {
            if matches!(m, Mark::Meta(_)) {
                // Attributes are always compared by a resync: nothing to keep.
                continue;
            }
            if self.marks.add(m) {
                encode(m, &mut self.buf);
            }
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        let err = |source| RecordError {
            path: self.path.clone(),
            source,
        };
        self.file.write_all(&self.buf).map_err(err)?;
        self.file.sync_data().map_err(err)
    }

    /// Start over, relative to generation `base`, empty.
    pub fn reset(&mut self, base: Option<GenId>) -> Result<(), RecordError> {
        self.marks = MarkSet::default();
        self.base = base;
        self.file =
            write_compacted(&self.path, base, &self.marks).map_err(|source| RecordError {
                path: self.path.clone(),
                source,
            })?;
        Ok(())
    }
}

/// Check byte of an entry: a torn or zeroed tail is recognised by it.
fn check(entry: &[u8]) -> u8 {
    blake3::hash(entry).as_bytes()[0]
}

fn encode(m: &Mark, out: &mut Vec<u8>) {
    let start = out.len();
    match m {
        Mark::Data { ino, start, end } => {
            out.push(KIND_DATA);
            out.extend_from_slice(&ino.to_le_bytes());
            out.extend_from_slice(&start.to_le_bytes());
            out.extend_from_slice(&end.to_le_bytes());
        }
        Mark::Entry(p) => {
            out.push(KIND_NAME);
            let b = p.as_bytes();
            out.extend_from_slice(&(b.len() as u16).to_le_bytes());
            out.extend_from_slice(b);
        }
        Mark::Meta(_) => return,
    }
    let sum = check(&out[start..]);
    out.push(sum);
}

/// The base and marks of a log, up to its first incomplete entry; `None` if the header is not
/// one.
fn parse(bytes: &[u8]) -> Option<(Option<GenId>, MarkSet)> {
    let rest = bytes.strip_prefix(MAGIC)?;
    let (flag, rest) = rest.split_first()?;
    let (gen, mut rest) = rest.split_first_chunk::<8>()?;
    let base = (*flag == 1).then(|| GenId(u64::from_le_bytes(*gen)));
    let mut marks = MarkSet::default();
    while let Some((&kind, body)) = rest.split_first() {
        let (mark, len) = match kind {
            KIND_DATA => {
                let Some(b) = body.get(..24) else { break };
                let n = |i: usize| {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(&b[i..i + 8]);
                    u64::from_le_bytes(a)
                };
                (
                    Mark::Data {
                        ino: n(0),
                        start: n(8),
                        end: n(16),
                    },
                    1 + 24,
                )
            }
            KIND_NAME => {
                let Some(l) = body.get(..2) else { break };
                let l = u16::from_le_bytes([l[0], l[1]]) as usize;
                let Some(p) = body.get(2..2 + l) else { break };
                let Ok(p) = RelPath::new(p) else { break };
                (Mark::Entry(p), 1 + 2 + l)
            }
            _ => break,
        };
        let Some(&sum) = rest.get(len) else { break };
        if sum != check(&rest[..len]) {
            break;
        }
        marks.add(&mark);
        rest = &rest[len + 1..];
    }
    Some((base, marks))
}

/// Replace the log by one holding `marks` relative to `base` (atomically), and return it open
/// for appending.
fn write_compacted(path: &Path, base: Option<GenId>, marks: &MarkSet) -> io::Result<File> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(MAGIC);
    out.push(base.is_some() as u8);
    out.extend_from_slice(&base.map_or(0, |g| g.0).to_le_bytes());
    for p in &marks.entries {
        encode(&Mark::Entry(p.clone()), &mut out);
    }
    for (ino, bits) in &marks.chunks {
        // One entry per run of dirty chunks.
        let mut run: Option<(u64, u64)> = None;
        let flush = |r: Option<(u64, u64)>, out: &mut Vec<u8>| {
            if let Some((s, e)) = r {
                let m = Mark::Data {
                    ino: *ino,
                    start: s * CHUNK_BYTES,
                    end: e * CHUNK_BYTES,
                };
                encode(&m, out);
            }
        };
        for (w, word) in bits.iter().enumerate() {
            for b in 0..64u64 {
                let c = w as u64 * 64 + b;
                if word & (1 << b) != 0 {
                    run = match run {
                        Some((s, e)) if e == c => Some((s, c + 1)),
                        other => {
                            flush(other, &mut out);
                            Some((c, c + 1))
                        }
                    };
                }
            }
        }
        flush(run, &mut out);
    }
    for (ino, t) in &marks.tails {
        let m = Mark::Data {
            ino: *ino,
            start: t * CHUNK_BYTES,
            end: u64::MAX,
        };
        encode(&m, &mut out);
    }
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(&out)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    OpenOptions::new().append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(ino: u64, start: u64, end: u64) -> Mark {
        Mark::Data { ino, start, end }
    }

    #[test]
    fn marks_cover_chunks_and_tails() {
        let c = CHUNK_BYTES;
        let mut m = MarkSet::default();
        assert!(m.add(&data(5, 10, 20)));
        assert!(!m.add(&data(5, 30, 40)), "same chunk");
        assert!(m.add(&data(5, 3 * c - 1, 3 * c + 1)));
        assert_eq!(m.ranges(5, 10 * c), [(0, c), (2 * c, 4 * c)]);
        assert_eq!(
            m.ranges(5, 3 * c),
            [(0, c), (2 * c, 3 * c)],
            "clipped to size"
        );
        assert!(m.add(&data(5, 6 * c + 1, u64::MAX)));
        assert!(!m.add(&data(5, 7 * c, 7 * c + 5)), "under the tail");
        assert_eq!(
            m.ranges(5, 9 * c - 3),
            [(0, c), (2 * c, 4 * c), (6 * c, 9 * c)]
        );
        assert!(m.ranges(6, 100).is_empty());
    }

    #[test]
    fn log_survives_reopen_and_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let g = Some(GenId(42));
        let (mut r, found) = Record::open(dir.path(), g).unwrap();
        assert_eq!(found, Found::Absent);
        let p = RelPath::new(b"a/b").unwrap();
        r.add(&[data(7, 0, 100), Mark::Entry(p.clone())]).unwrap();
        r.add(&[data(7, 5 * CHUNK_BYTES, u64::MAX)]).unwrap();
        let expect = r.marks().clone();
        drop(r);
        // A torn append.
        let path = dir.path().join("dirty-record");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[KIND_DATA, 1, 2, 3]).unwrap();
        drop(f);
        let (r, found) = Record::open(dir.path(), g).unwrap();
        assert_eq!(found, Found::Valid);
        assert_eq!(r.marks(), &expect);
        drop(r);
        // Another generation: not trusted.
        let (r, found) = Record::open(dir.path(), Some(GenId(1))).unwrap();
        assert_eq!(found, Found::OtherBase);
        assert!(r.marks().is_empty());
        drop(r);
        // A damaged header: not a log.
        std::fs::write(&path, b"garbage").unwrap();
        let (r, found) = Record::open(dir.path(), g).unwrap();
        assert_eq!(found, Found::Unreadable);
        assert!(r.marks().is_empty());
    }

    #[test]
    fn corrupt_entry_ends_the_log() {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.push(0);
        out.extend_from_slice(&[0; 8]);
        encode(&data(1, 0, 1), &mut out);
        let good = out.len();
        encode(&data(2, 0, 1), &mut out);
        out[good + 3] ^= 0xff;
        let (base, marks) = parse(&out).unwrap();
        assert_eq!(base, None);
        assert!(marks.has_data(1) && !marks.has_data(2));
    }
}
