//! The mirrorkit wire format: what the two nodes say to each other on the replication stream.
//!
//! Owns: the message types, the frame layout, and the validation of everything decoded from the
//! network (path shape, sizes, which messages carry data). See `docs/protocol.md`.
//!
//! Never does: I/O of any kind, allocation proportional to an untrusted length before that length
//! has been checked against a limit, or panics on any input (a `cargo fuzz` target in `fuzz/` holds
//! it to that).
//!
//! Frame layout (all integers little endian):
//!
//! ```text
//! u32 frame_len   bytes that follow, <= MAX_FRAME_BYTES
//! u16 header_len  <= MAX_HEADER_BYTES
//! header          postcard encoding of `Message`
//! data            frame_len - 2 - header_len raw bytes (file data, xattr values); never serialized
//! ```

mod path;

pub use path::{RelPath, MAX_NAME_BYTES, MAX_PATH_BYTES};
use serde::{Deserialize, Serialize};

pub use mirrorkit_cluster::generation::{DataState, GenId, Role as DataRole};

/// Version of the protocol spoken on the replication stream; both ends must speak the same.
pub const PROTOCOL_VERSION: u16 = 3;
/// Granularity of comparison and of the primary's dirty record: one digest, one bit, per
/// chunk of this many bytes of a file.
pub const CHUNK_BYTES: u64 = 64 << 10;
/// What a `SyncProbe` found at its path on the secondary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProbeFile {
    /// A regular file with one name was there and was kept: the digests are of its content.
    Kept,
    /// Anything else was there (or nothing): it was replaced by a new, empty file.
    Created,
    /// The parent directory does not exist there (the application changed the namespace
    /// since the primary last synchronised it): nothing was changed, no digests follow.
    NoParent,
    /// `VerifyProbe`: no regular file there; no digests follow.
    Missing,
    /// `VerifyProbe`: a regular file of another size; no digests follow.
    OtherSize,
}

/// Size of one chunk digest in a `Probed` answer.
pub const DIGEST_BYTES: usize = 32;
/// Most ranges in one `SyncProbe`.
pub const MAX_PROBE_RANGES: usize = 2048;
/// Most chunks one `SyncProbe` may ask digests of (their digests fill at most `MAX_DATA_BYTES`).
pub const MAX_PROBE_CHUNKS: u64 = (MAX_DATA_BYTES / DIGEST_BYTES) as u64;
/// Largest data payload of one message: one FUSE write (the kernel caps at 1 MiB) or one sync chunk.
pub const MAX_DATA_BYTES: usize = 4 << 20;
/// Largest encoded header. Bounded so that a directory listing in `SyncDir` still fits
/// (the sender splits larger directories).
pub const MAX_HEADER_BYTES: usize = 60 << 10;
/// Largest frame (after the length prefix).
pub const MAX_FRAME_BYTES: usize = 2 + MAX_HEADER_BYTES + MAX_DATA_BYTES;
/// Bytes of the length prefix.
pub const LEN_PREFIX_BYTES: usize = 4;
/// Most entries named by one `SyncDir` message.
pub const MAX_DIR_ENTRIES: usize = 1024;
/// Most post-operation time fixes on one message.
pub const MAX_FIXES: usize = 4;

/// Seconds and nanoseconds since the epoch, as in `struct timespec`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timespec {
    pub sec: i64,
    pub nsec: u32,
}

/// What an operation acts on: a path under the replicated root, or a file the primary holds open
/// for writing (the secondary holds the matching descriptor; see `Op::Open`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    Path(RelPath),
    Handle(u64),
}

/// Attributes of a new inode, read back from the primary's disk after it made it, so that the
/// secondary's copy is identical (owner, mode with setgid inheritance, time).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Permission bits including setuid, setgid and sticky (no file type bits).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Timespec,
}

/// The modification time an inode had on the primary right after the operation; the secondary
/// sets it after applying, so that both copies carry the same times.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeFix {
    pub target: Target,
    pub mtime: Timespec,
}

/// Kind of a special file made by `mknod`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpecialKind {
    Fifo,
    Socket,
    Char,
    Block,
}

/// One mutating operation, as completed on the primary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Create a regular file (fails if it exists when `excl`; emptied if it exists when
    /// `truncate`), optionally keeping it open for writing as `handle`.
    Create {
        path: RelPath,
        meta: Meta,
        excl: bool,
        truncate: bool,
        handle: Option<u64>,
    },
    /// Open an existing regular file for writing as `handle`; `truncate` as O_TRUNC.
    Open {
        path: RelPath,
        handle: u64,
        truncate: bool,
    },
    /// Forget a handle (the primary's last close of it).
    Close {
        handle: u64,
    },
    /// Write the message's data at `offset`. Carries data.
    Write {
        handle: u64,
        offset: u64,
    },
    Truncate {
        target: Target,
        size: u64,
    },
    /// `fallocate(2)` with the primary's mode bits (punch hole, keep size, zero range).
    Fallocate {
        handle: u64,
        mode: i32,
        offset: u64,
        len: u64,
    },
    /// Make the file durable; acknowledged only after the secondary's fsync returned.
    Fsync {
        handle: u64,
        datasync: bool,
    },
    /// Make one directory or file durable by path (fsync of a directory, or of a file the
    /// primary holds open read-only).
    FsyncPath {
        path: RelPath,
    },
    Mkdir {
        path: RelPath,
        meta: Meta,
    },
    Mknod {
        path: RelPath,
        meta: Meta,
        kind: SpecialKind,
        rdev: u64,
    },
    Symlink {
        path: RelPath,
        target: Vec<u8>,
        uid: u32,
        gid: u32,
        mtime: Timespec,
    },
    Link {
        existing: RelPath,
        new: RelPath,
    },
    Unlink {
        path: RelPath,
    },
    Rmdir {
        path: RelPath,
    },
    /// `renameat2(2)` flags: 0, RENAME_NOREPLACE (1) or RENAME_EXCHANGE (2).
    Rename {
        from: RelPath,
        to: RelPath,
        flags: u32,
    },
    SetAttr {
        target: Target,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        atime: Option<Timespec>,
        mtime: Option<Timespec>,
    },
    /// Set an extended attribute; the value is the message's data.
    SetXattr {
        target: Target,
        name: Vec<u8>,
        flags: i32,
    },
    RemoveXattr {
        target: Target,
        name: Vec<u8>,
    },
    /// Make everything durable on the secondary's disk (syncfs). Acknowledged after it.
    Barrier,

    /// Full synchronisation: make `path` a directory with these attributes whose entries are
    /// exactly `entries` (the secondary removes any other entry). `first`/`last` mark the first
    /// and last chunk of a listing split over several messages.
    SyncDir {
        path: RelPath,
        meta: Meta,
        entries: Vec<Vec<u8>>,
        first: bool,
        last: bool,
    },
    /// Full synchronisation: make `path` a regular file of `size` bytes with these attributes,
    /// all holes, ready for `SyncData`. Any other kind of entry there is replaced.
    SyncFile {
        path: RelPath,
        meta: Meta,
        size: u64,
    },
    /// Full synchronisation: file data at `offset` of `path`. Carries data.
    SyncData {
        path: RelPath,
        offset: u64,
    },
    /// Full synchronisation: `path` becomes a hard link to `existing` (already synchronised).
    /// Answered with `Probed` (no digests): `Kept` when linked, `NoParent` when the parent of
    /// `path` is missing, `Missing` when `existing` is (the name is then absent).
    SyncLink {
        existing: RelPath,
        path: RelPath,
    },
    /// Full synchronisation: remove whatever is at `path` (recursively), if anything.
    SyncRemove {
        path: RelPath,
    },
    /// Full synchronisation: remove every extended attribute of `target` (then `SetXattr` follows).
    SyncClearXattrs {
        target: Target,
    },
    /// Full synchronisation is complete: the secondary makes everything durable and records
    /// that its copy is consistent. Acknowledged after that.
    SyncDone,
    /// First message of a resync: how the primary synchronises, so the secondary can check
    /// that its data allows it before anything changes.
    SyncBegin {
        mode: SyncMode,
        /// Split brain resolved by an operator in the primary's favour: the secondary keeps a
        /// copy of its divergent data outside the replicated root before anything changes.
        preserve: bool,
    },
    /// Make `path` a regular file of `size` bytes with `meta`, keeping the file already there
    /// if it is one, and answer with `Probed`: whether it was kept, and the digest of every
    /// `CHUNK_BYTES` chunk in `ranges` (chunk-aligned, ascending, clipped to `size`).
    SyncProbe {
        path: RelPath,
        meta: Meta,
        size: u64,
        ranges: Vec<(u64, u64)>,
    },
    /// Make `[offset, offset + len)` of `path` a hole (data sent after it fills it again).
    SyncHole {
        path: RelPath,
        offset: u64,
        len: u64,
    },
    /// Online verify, while in sync: answer with `Probed` and the digests of the chunks in
    /// `ranges` of the regular file at `path` if it has `size` bytes (else `Missing` or
    /// `OtherSize`, without digests). Changes nothing. Applied in order, so the answer is of
    /// the state the primary had when it sent it.
    VerifyProbe {
        path: RelPath,
        size: u64,
        ranges: Vec<(u64, u64)>,
    },
}

/// How a resync decides what to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncMode {
    /// Only what the primary's dirty record lists (and the whole namespace and attributes).
    Incremental,
    /// Every file's chunks are compared by digest; only differing chunks travel.
    Compare,
}

impl Op {
    /// `SetAttr` of the modification time alone.
    pub fn set_mtime(target: Target, mtime: Timespec) -> Op {
        Op::SetAttr {
            target,
            mode: None,
            uid: None,
            gid: None,
            atime: None,
            mtime: Some(mtime),
        }
    }

    /// Whether this operation's message carries raw data after the header.
    pub fn carries_data(&self) -> bool {
        matches!(
            self,
            Op::Write { .. } | Op::SyncData { .. } | Op::SetXattr { .. }
        )
    }

    /// Short name for logs and counters.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Create { .. } => "create",
            Op::Open { .. } => "open",
            Op::Close { .. } => "close",
            Op::Write { .. } => "write",
            Op::Truncate { .. } => "truncate",
            Op::Fallocate { .. } => "fallocate",
            Op::Fsync { .. } => "fsync",
            Op::FsyncPath { .. } => "fsync-path",
            Op::Mkdir { .. } => "mkdir",
            Op::Mknod { .. } => "mknod",
            Op::Symlink { .. } => "symlink",
            Op::Link { .. } => "link",
            Op::Unlink { .. } => "unlink",
            Op::Rmdir { .. } => "rmdir",
            Op::Rename { .. } => "rename",
            Op::SetAttr { .. } => "setattr",
            Op::SetXattr { .. } => "setxattr",
            Op::RemoveXattr { .. } => "removexattr",
            Op::Barrier => "barrier",
            Op::SyncDir { .. } => "sync-dir",
            Op::SyncFile { .. } => "sync-file",
            Op::SyncData { .. } => "sync-data",
            Op::SyncLink { .. } => "sync-link",
            Op::SyncClearXattrs { .. } => "sync-clear-xattrs",
            Op::SyncRemove { .. } => "sync-remove",
            Op::SyncDone => "sync-done",
            Op::SyncBegin { .. } => "sync-begin",
            Op::SyncProbe { .. } => "sync-probe",
            Op::SyncHole { .. } => "sync-hole",
            Op::VerifyProbe { .. } => "verify-probe",
        }
    }
}

/// Role a node announces in its `Hello`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Primary,
    Secondary,
}

/// First message on the replication stream, in both directions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u16,
    /// Name of the sending node (must match its certificate).
    pub node: String,
    /// Name of the replicated directory set both ends must agree on.
    pub mirror: String,
    pub role: Role,
    /// What the sender knows of its data: generation, history, consistency.
    pub data: DataState,
    /// The primary's selection of what is replicated (`module.toml`'s `include` and `exclude`
    /// patterns): the secondary follows the primary's, so that both ends agree on one set.
    /// Empty from the secondary. At most `MAX_PATTERNS` each.
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

/// Most `include` or `exclude` patterns in a `Hello`.
pub const MAX_PATTERNS: usize = 256;

/// Every message on the replication stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    Hello(Hello),
    /// An operation, numbered: sequence numbers start at 1 on each connection and increase by one.
    Op {
        seq: u64,
        op: Op,
        fixes: Vec<TimeFix>,
    },
    /// The secondary applied operation `seq` and every one before it (durably, for durable ones).
    Ack {
        seq: u64,
    },
    /// Answer to `SyncProbe` `seq` (which it acknowledges): what became of the file, followed,
    /// unless its parent is missing, by `DIGEST_BYTES` per chunk asked (all zero for a chunk
    /// without data).
    Probed {
        seq: u64,
        file: ProbeFile,
    },
    /// The secondary could not apply operation `seq`; its copy is no longer in sync.
    Failed {
        seq: u64,
        errno: i32,
        reason: String,
    },
    /// A clean goodbye, with the reason.
    Bye {
        reason: String,
    },
}

/// Why a frame was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("frame of {len} bytes is larger than the limit of {limit} bytes")]
    FrameTooLarge { len: usize, limit: usize },
    #[error("frame is truncated: {0}")]
    Truncated(&'static str),
    #[error("header of {len} bytes is larger than the limit of {limit} bytes")]
    HeaderTooLarge { len: usize, limit: usize },
    #[error("header does not decode: {0}")]
    BadHeader(String),
    #[error("header has {0} trailing bytes")]
    TrailingHeaderBytes(usize),
    #[error("{op} message carries {len} data bytes, expected {expected}")]
    DataMismatch {
        op: &'static str,
        len: usize,
        expected: &'static str,
    },
    #[error("data of {len} bytes is larger than the limit of {limit} bytes")]
    DataTooLarge { len: usize, limit: usize },
    #[error("invalid path: {0}")]
    BadPath(String),
    #[error("{what}: {count} items, limit {limit}")]
    TooMany {
        what: &'static str,
        count: usize,
        limit: usize,
    },
    #[error("header encoding failed: {0}")]
    Encode(String),
}

/// Encode a whole frame, length prefix included, into `out` (cleared first).
pub fn encode_frame(msg: &Message, data: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
    encode_header(msg, data.len(), out)?;
    out.extend_from_slice(data);
    Ok(())
}

/// Encode only the header part of a frame (length prefix, header length, header) into `out`
/// (cleared first), for a message whose `data_len` bytes of data the caller sends right after.
pub fn encode_header(msg: &Message, data_len: usize, out: &mut Vec<u8>) -> Result<(), WireError> {
    check_message(msg, data_len)?;
    out.clear();
    out.extend_from_slice(&[0u8; LEN_PREFIX_BYTES + 2]);
    let start = out.len();
    *out = postcard::to_extend(msg, std::mem::take(out))
        .map_err(|e| WireError::Encode(e.to_string()))?;
    let header_len = out.len() - start;
    if header_len > MAX_HEADER_BYTES {
        return Err(WireError::HeaderTooLarge {
            len: header_len,
            limit: MAX_HEADER_BYTES,
        });
    }
    // Bounded by MAX_FRAME_BYTES, which fits in u32; header_len by MAX_HEADER_BYTES (u16).
    let frame_len = out.len() - LEN_PREFIX_BYTES + data_len;
    out[..4].copy_from_slice(&(frame_len as u32).to_le_bytes());
    out[4..6].copy_from_slice(&(header_len as u16).to_le_bytes());
    Ok(())
}

/// Read the length prefix: how many bytes of frame follow.
pub fn frame_len(prefix: [u8; LEN_PREFIX_BYTES]) -> Result<usize, WireError> {
    let len = u32::from_le_bytes(prefix) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(WireError::FrameTooLarge {
            len,
            limit: MAX_FRAME_BYTES,
        });
    }
    if len < 2 {
        return Err(WireError::Truncated(
            "frame shorter than its header length field",
        ));
    }
    Ok(len)
}

/// Decode one frame (without its length prefix) into the message and its raw data.
pub fn decode_frame(frame: &[u8]) -> Result<(Message, &[u8]), WireError> {
    if frame.len() > MAX_FRAME_BYTES {
        return Err(WireError::FrameTooLarge {
            len: frame.len(),
            limit: MAX_FRAME_BYTES,
        });
    }
    let Some((hl, rest)) = frame.split_first_chunk::<2>() else {
        return Err(WireError::Truncated("no header length"));
    };
    let header_len = u16::from_le_bytes(*hl) as usize;
    if header_len > MAX_HEADER_BYTES {
        return Err(WireError::HeaderTooLarge {
            len: header_len,
            limit: MAX_HEADER_BYTES,
        });
    }
    if rest.len() < header_len {
        return Err(WireError::Truncated("header shorter than announced"));
    }
    let (header, data) = rest.split_at(header_len);
    path::take_refusal();
    let (msg, trailing) =
        postcard::take_from_bytes::<Message>(header).map_err(|e| match path::take_refusal() {
            Some(reason) => WireError::BadPath(reason),
            None => WireError::BadHeader(e.to_string()),
        })?;
    if !trailing.is_empty() {
        return Err(WireError::TrailingHeaderBytes(trailing.len()));
    }
    check_message(&msg, data.len())?;
    Ok((msg, data))
}

/// Structural checks that do not depend on the receiver's state.
fn check_message(msg: &Message, data_len: usize) -> Result<(), WireError> {
    if data_len > MAX_DATA_BYTES {
        return Err(WireError::DataTooLarge {
            len: data_len,
            limit: MAX_DATA_BYTES,
        });
    }
    if let Message::Probed { .. } = msg {
        return if data_len % DIGEST_BYTES == 0 {
            Ok(())
        } else {
            Err(WireError::DataMismatch {
                op: "probed",
                len: data_len,
                expected: "a multiple of 32",
            })
        };
    }
    let Message::Op { op, fixes, .. } = msg else {
        return if data_len == 0 {
            Ok(())
        } else {
            Err(WireError::DataMismatch {
                op: "control",
                len: data_len,
                expected: "none",
            })
        };
    };
    if fixes.len() > MAX_FIXES {
        return Err(WireError::TooMany {
            what: "time fixes",
            count: fixes.len(),
            limit: MAX_FIXES,
        });
    }
    match op {
        Op::Write { .. } | Op::SyncData { .. } if data_len == 0 => {
            return Err(WireError::DataMismatch {
                op: op.name(),
                len: 0,
                expected: "at least 1",
            })
        }
        _ if !op.carries_data() && data_len != 0 => {
            return Err(WireError::DataMismatch {
                op: op.name(),
                len: data_len,
                expected: "none",
            })
        }
        Op::SyncDir { entries, .. } => {
            if entries.len() > MAX_DIR_ENTRIES {
                return Err(WireError::TooMany {
                    what: "directory entries",
                    count: entries.len(),
                    limit: MAX_DIR_ENTRIES,
                });
            }
            for e in entries {
                path::check_name(e).map_err(WireError::BadPath)?;
            }
        }
        Op::Symlink { target, .. } if target.is_empty() || target.len() > MAX_PATH_BYTES => {
            return Err(WireError::BadPath(format!(
                "symlink target of {} bytes (must be 1..={MAX_PATH_BYTES})",
                target.len()
            )));
        }
        Op::SetXattr { name, .. } | Op::RemoveXattr { name, .. }
            if name.is_empty() || name.len() > 255 || name.contains(&0) =>
        {
            return Err(WireError::BadPath(format!(
                "extended attribute name of {} bytes is not valid",
                name.len()
            )));
        }
        Op::SyncProbe { ranges, .. } | Op::VerifyProbe { ranges, .. } => {
            check_probe_ranges(ranges)?
        }
        Op::SyncHole { offset, len, .. } if *len == 0 || offset.checked_add(*len).is_none() => {
            return Err(WireError::BadHeader(format!(
                "hole of {len} bytes at {offset} is not a valid range"
            )));
        }
        Op::Rename { flags, .. } if *flags > 2 => {
            return Err(WireError::BadHeader(format!(
                "rename flags {flags:#x} are not supported"
            )));
        }
        _ => {}
    }
    Ok(())
}

/// Ranges of a probe: chunk-aligned, non-empty, ascending, bounded in count and chunks.
fn check_probe_ranges(ranges: &[(u64, u64)]) -> Result<(), WireError> {
    if ranges.len() > MAX_PROBE_RANGES {
        return Err(WireError::TooMany {
            what: "probe ranges",
            count: ranges.len(),
            limit: MAX_PROBE_RANGES,
        });
    }
    let mut chunks = 0u64;
    let mut prev_end = 0u64;
    for (i, &(start, end)) in ranges.iter().enumerate() {
        if start % CHUNK_BYTES != 0
            || end % CHUNK_BYTES != 0
            || start >= end
            || (i > 0 && start < prev_end)
        {
            return Err(WireError::BadHeader(format!(
                "probe range {start}..{end} is not chunk-aligned, non-empty and ascending"
            )));
        }
        chunks += (end - start) / CHUNK_BYTES;
        prev_end = end;
    }
    if chunks > MAX_PROBE_CHUNKS {
        return Err(WireError::TooMany {
            what: "probed chunks",
            count: chunks as usize,
            limit: MAX_PROBE_CHUNKS as usize,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
