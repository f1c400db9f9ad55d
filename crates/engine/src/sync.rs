//! Full synchronisation of a connected peer while the application keeps writing.
//!
//! 1. Bulk pass: walk the backing tree and send every directory (with its complete listing,
//!    so that the peer removes what the primary does not have), file (data extents only: holes
//!    stay holes), symlink, special file and extended attribute. Application operations are
//!    not sent meanwhile; the link records the paths they touch.
//! 2. Catch-up passes: synchronise the recorded paths again, until few remain. After the bulk
//!    pass and each catch-up pass, wait (the application does not) until the peer has applied
//!    and flushed what was sent, so that the switch does not wait behind a deep backlog.
//! 3. Switch: under the ordering lock (the application's mutations wait), synchronise the last
//!    recorded paths, open on the peer every file the application holds open for writing,
//!    send `SyncDone`, and switch the link to in-sync. Release the lock. When the peer
//!    acknowledges `SyncDone` (it made everything durable), record that it is in sync.
//!
//! Hard links are kept within a pass (the second name of an inode becomes a link to the
//! first), and a catch-up pass that sends one name of an inode again sends every name of it
//! seen so far, so that names written, renamed or linked by the application while a
//! synchronisation runs stay links of one inode on the peer.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use mirrorkit_store::sys;
use mirrorkit_wire::{Meta, Op, RelPath, SpecialKind, Target, MAX_DIR_ENTRIES};
use tracing::info;

use crate::core::{meta_of, Core, Dirty};
use crate::link::SessionLost;

/// Size of one `SyncData` chunk.
pub const SYNC_CHUNK_BYTES: usize = 1 << 20;
/// Catch-up passes run without stopping the application while more paths than this remain.
pub const SWITCH_DIRTY_PATHS: usize = 256;
/// Most catch-up passes before switching anyway (the application then waits for the rest).
pub const MAX_CATCH_UP_PASSES: usize = 8;
/// Longest the synchroniser waits for the peer to apply and flush what a pass sent (the
/// application does not wait on it; a dead peer ends the connection sooner). Default 60 s.
pub const SYNC_DRAIN_TIMEOUT_MS: u64 = 60_000;

/// Why a synchronisation stopped.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Lost(#[from] SessionLost),
    #[error("cannot read {path} on this node: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

struct Pass<'a> {
    core: &'a Core,
    session: u64,
    /// (device, inode) of inodes with several links → the path sent first in this pass.
    linked: HashMap<(u64, u64), RelPath>,
    /// (device, inode) of inodes with several links → every name seen so far, in any pass of
    /// this synchronisation (some may be gone or name another inode by now).
    names: HashMap<(u64, u64), BTreeSet<RelPath>>,
    /// Names of inodes with several links sent in this pass.
    visited: HashSet<RelPath>,
    buf: Vec<u8>,
}

fn read_err(path: &RelPath) -> impl FnOnce(std::io::Error) -> SyncError + '_ {
    move |source| SyncError::Read {
        path: path.to_string(),
        source,
    }
}

/// Run a full synchronisation for link session `session`. Returns when the peer confirmed it.
pub fn full_sync(core: &Core, session: u64) -> Result<(), SyncError> {
    let started = std::time::Instant::now();
    let mut pass = Pass::new(core, session, HashMap::new());
    pass.entry(&RelPath::root())?;
    let mut names = pass.names;
    drain(core, session)?;
    for round in 0..MAX_CATCH_UP_PASSES {
        if core.link.dirty_len() <= SWITCH_DIRTY_PATHS {
            break;
        }
        let dirty = core.link.take_dirty(session)?;
        info!(mirror = %core.mirror, round, paths = dirty.len(), "synchronisation: catching up");
        let mut catch_up = Pass::new(core, session, names);
        catch_up.dirty(dirty)?;
        names = catch_up.names;
        drain(core, session)?;
    }
    let ticket = {
        let _order = core.order();
        let dirty = core.link.take_dirty(session)?;
        let mut last = Pass::new(core, session, names);
        last.dirty(dirty)?;
        for (fh, h) in core.writable_handles() {
            if let Some(path) = last.handle_path(h.ino, &h.fd)? {
                core.link.submit_sync(
                    session,
                    &Op::Open {
                        path,
                        handle: fh,
                        truncate: false,
                    },
                    &[],
                )?;
                h.remote_session
                    .store(session, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let t = core.link.submit_sync(session, &Op::SyncDone, &[])?;
        core.link.enter_in_sync(session)?;
        t
    };
    if !core.link.wait_acked(ticket) {
        return Err(
            SessionLost("peer did not confirm the end of the synchronisation".into()).into(),
        );
    }
    core.link.record_in_sync(session)?;
    info!(
        mirror = %core.mirror,
        seconds = started.elapsed().as_secs_f64(),
        data_bytes = core.link.counters().sync_data_bytes_sent.load(std::sync::atomic::Ordering::Relaxed),
        "synchronisation complete: peer in sync"
    );
    Ok(())
}

/// Bytes of names in one `SyncDir` message: with the path (at most 4 KiB) and the per-name
/// length prefixes, the header stays under `MAX_HEADER_BYTES`.
const DIR_CHUNK_NAME_BYTES: usize = 40 << 10;

/// Split a listing into `SyncDir` chunks bounded by count and by bytes (at least one chunk,
/// possibly empty).
fn listing_chunks(names: &[Vec<u8>]) -> Vec<&[Vec<u8>]> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, n) in names.iter().enumerate() {
        if i > start && (i - start == MAX_DIR_ENTRIES || bytes + n.len() > DIR_CHUNK_NAME_BYTES) {
            chunks.push(&names[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += n.len();
    }
    chunks.push(&names[start..]);
    chunks
}

/// Wait, without holding up the application, until the peer has applied everything sent so
/// far and made it durable. A pass fills the in-flight window (up to `max_inflight_bytes`),
/// and the peer's flush of a whole copy can take longer than the peer timeout; without this,
/// `SyncDone` and the application's first operations in sync would wait behind all of it and
/// time out on a slow peer, and every new session would end the same way.
fn drain(core: &Core, session: u64) -> Result<(), SyncError> {
    let t = core.link.submit_sync(session, &Op::Barrier, &[])?;
    if !core.link.wait_acked_within(t, SYNC_DRAIN_TIMEOUT_MS) {
        return Err(SessionLost(format!(
            "peer did not apply and flush the synchronised data within {SYNC_DRAIN_TIMEOUT_MS} ms"
        ))
        .into());
    }
    Ok(())
}

impl<'a> Pass<'a> {
    fn new(core: &'a Core, session: u64, names: HashMap<(u64, u64), BTreeSet<RelPath>>) -> Self {
        Pass {
            core,
            session,
            linked: HashMap::new(),
            names,
            visited: HashSet::new(),
            buf: vec![0u8; SYNC_CHUNK_BYTES],
        }
    }

    fn send(&self, op: &Op, data: &[u8]) -> Result<(), SyncError> {
        self.core.link.submit_sync(self.session, op, data)?;
        Ok(())
    }

    /// Synchronise the recorded paths: entries recursively (skipping those beneath another
    /// recorded entry), then attributes of the others.
    fn dirty(&mut self, dirty: BTreeSet<Dirty>) -> Result<(), SyncError> {
        let mut entries: Vec<RelPath> = Vec::new();
        let mut metas = BTreeSet::new();
        for d in dirty {
            match d {
                Dirty::Entry(p) => entries.push(p),
                Dirty::Meta(p) => {
                    metas.insert(p);
                }
            }
        }
        entries.sort();
        let mut done: Vec<RelPath> = Vec::new();
        for p in entries {
            if done.iter().any(|d| p.starts_with(d)) {
                continue;
            }
            self.entry(&p)?;
            // Synchronising an entry replaces it on the peer, which changes its parent's time
            // there (a file's content change did not change it here): set it back.
            if let Some((parent, _)) = p.split_last() {
                metas.insert(parent);
            }
            done.push(p);
        }
        // Every name of an inode with several links that this pass sent again (itself, or
        // inside a directory it sent again) goes with it: the peer makes one fresh inode and
        // links the other names to it, else the names not sent would keep the old inode (and
        // its old content).
        loop {
            let keys: Vec<(u64, u64)> = self.linked.keys().copied().collect();
            let mut pending = Vec::new();
            for key in keys {
                for n in self.current_names(key)? {
                    if !self.visited.contains(&n) {
                        pending.push(n);
                    }
                }
            }
            if pending.is_empty() {
                break;
            }
            for p in pending {
                // Marked first: a name the application changes meanwhile is not retried.
                if !self.visited.insert(p.clone()) {
                    continue;
                }
                self.entry(&p)?;
                if let Some((parent, _)) = p.split_last() {
                    metas.insert(parent);
                }
            }
        }
        for p in metas {
            if done.iter().any(|d| p.starts_with(d)) {
                continue;
            }
            self.attrs_only(&p)?;
        }
        Ok(())
    }

    /// A path of a file the application holds open: one the FUSE layer knows, else one of the
    /// names this synchronisation saw (another hard link), `None` if it has no name left.
    fn handle_path(&mut self, ino: u64, fd: &OwnedFd) -> Result<Option<RelPath>, SyncError> {
        if let Some(p) = self.core.path_of(ino) {
            return Ok(Some(p));
        }
        let st = sys::fstat(fd.as_fd()).map_err(|source| SyncError::Read {
            path: format!("open file (inode {ino})"),
            source,
        })?;
        if st.st_nlink == 0 {
            return Ok(None);
        }
        match self
            .current_names((st.st_dev, st.st_ino))?
            .into_iter()
            .next()
        {
            Some(p) => Ok(Some(p)),
            // Its writes could not reach the peer: better no session than a silent gap.
            None => Err(SessionLost(format!(
                "a file open for writing (inode {}) has a name this node cannot find",
                st.st_ino
            ))
            .into()),
        }
    }

    /// The names recorded for an inode that still name it here (the others are forgotten:
    /// the application's change of them is recorded as dirty on its own).
    fn current_names(&mut self, key: (u64, u64)) -> Result<Vec<RelPath>, SyncError> {
        let Some(names) = self.names.get(&key).cloned() else {
            return Ok(Vec::new());
        };
        let mut current = Vec::new();
        for n in names {
            match self.lstat(&n)? {
                Some((st, _)) if (st.st_dev, st.st_ino) == key => current.push(n),
                _ => {
                    if let Some(set) = self.names.get_mut(&key) {
                        set.remove(&n);
                    }
                }
            }
        }
        Ok(current)
    }

    /// The parent descriptor and name of `path` on this node, or `None` if it is gone.
    fn lstat(&self, path: &RelPath) -> Result<Option<(libc::stat, OwnedFd)>, SyncError> {
        let fd = match sys::open_beneath(
            self.core.root.as_fd(),
            path,
            libc::O_PATH | libc::O_NOFOLLOW,
            0,
        ) {
            Ok(fd) => fd,
            Err(e) if matches!(sys::errno(&e), libc::ENOENT | libc::ENOTDIR | libc::ELOOP) => {
                // Gone, or a parent became a symlink or file: nothing is at this path.
                return Ok(None);
            }
            Err(e) => return Err(read_err(path)(e)),
        };
        let st = sys::fstat(fd.as_fd()).map_err(read_err(path))?;
        Ok(Some((st, fd)))
    }

    fn attrs_only(&mut self, path: &RelPath) -> Result<(), SyncError> {
        let Some((st, _)) = self.lstat(path)? else {
            return Ok(());
        };
        if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
            return Ok(());
        }
        self.send(
            &Op::SetAttr {
                target: Target::Path(path.clone()),
                mode: Some(st.st_mode & 0o7777),
                uid: Some(st.st_uid),
                gid: Some(st.st_gid),
                atime: None,
                mtime: Some(sys::timespec(st.st_mtime, st.st_mtime_nsec)),
            },
            &[],
        )
    }

    /// Make the peer's `path` identical to this node's, recursively.
    fn entry(&mut self, path: &RelPath) -> Result<(), SyncError> {
        let Some((st, fd)) = self.lstat(path)? else {
            if !path.is_root() {
                self.send(&Op::SyncRemove { path: path.clone() }, &[])?;
            }
            return Ok(());
        };
        let meta = meta_of(&st);
        // Any inode but a directory can have several names (symlinks and FIFOs too): the
        // second name sent in a pass becomes a link to the first.
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR && st.st_nlink > 1 {
            let key = (st.st_dev, st.st_ino);
            self.names.entry(key).or_default().insert(path.clone());
            self.visited.insert(path.clone());
            if let Some(existing) = self.linked.get(&key) {
                let existing = existing.clone();
                return self.send(
                    &Op::SyncLink {
                        existing,
                        path: path.clone(),
                    },
                    &[],
                );
            }
            self.linked.insert(key, path.clone());
        }
        match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => self.dir(path, &fd, meta)?,
            libc::S_IFREG => self.file(path, &st, meta)?,
            libc::S_IFLNK => {
                let target = sys::readlinkat(fd.as_fd(), c"").map_err(read_err(path))?;
                self.send(&Op::SyncRemove { path: path.clone() }, &[])?;
                self.send(
                    &Op::Symlink {
                        path: path.clone(),
                        target,
                        uid: st.st_uid,
                        gid: st.st_gid,
                        mtime: meta.mtime,
                    },
                    &[],
                )?;
            }
            fmt => {
                let kind = match fmt {
                    libc::S_IFIFO => SpecialKind::Fifo,
                    libc::S_IFSOCK => SpecialKind::Socket,
                    libc::S_IFCHR => SpecialKind::Char,
                    _ => SpecialKind::Block,
                };
                self.send(&Op::SyncRemove { path: path.clone() }, &[])?;
                self.send(
                    &Op::Mknod {
                        path: path.clone(),
                        meta,
                        kind,
                        rdev: st.st_rdev,
                    },
                    &[],
                )?;
            }
        }
        self.xattrs(path, &fd, st.st_mode & libc::S_IFMT == libc::S_IFLNK)
    }

    fn xattrs(&mut self, path: &RelPath, fd: &OwnedFd, symlink: bool) -> Result<(), SyncError> {
        if symlink {
            let Some((parent, name)) = path.split_last() else {
                return Ok(());
            };
            let pfd = sys::open_beneath(
                self.core.root.as_fd(),
                &parent,
                libc::O_PATH | libc::O_DIRECTORY,
                0,
            )
            .map_err(read_err(path))?;
            let c = sys::cstr(name).map_err(read_err(path))?;
            // `pfd` stays open while its /proc path is used.
            let p = sys::proc_path(pfd.as_fd(), Some(&c));
            return self.xattrs_at(path, &p, false);
        }
        self.xattrs_at(path, &sys::proc_path(fd.as_fd(), None), true)
    }

    fn xattrs_at(
        &mut self,
        path: &RelPath,
        p: &std::ffi::CString,
        follow: bool,
    ) -> Result<(), SyncError> {
        let target = Target::Path(path.clone());
        let names = match sys::list_xattr_names(p, follow) {
            Ok(n) => n,
            Err(e) if sys::errno(&e) == libc::ENOTSUP => return Ok(()),
            Err(e) => return Err(read_err(path)(e)),
        };
        self.send(
            &Op::SyncClearXattrs {
                target: target.clone(),
            },
            &[],
        )?;
        for name in names {
            let c = sys::cstr(&name).map_err(read_err(path))?;
            let value = match sys::get_xattr_value(p, follow, &c) {
                Ok(v) => v,
                Err(e) if sys::errno(&e) == libc::ENODATA => continue,
                Err(e) => return Err(read_err(path)(e)),
            };
            self.send(
                &Op::SetXattr {
                    target: target.clone(),
                    name,
                    flags: 0,
                },
                &value,
            )?;
        }
        Ok(())
    }

    fn dir(&mut self, path: &RelPath, fd: &OwnedFd, meta: Meta) -> Result<(), SyncError> {
        let entries = sys::read_dir(fd.as_fd()).map_err(read_err(path))?;
        let names: Vec<Vec<u8>> = entries.iter().map(|e| e.name.clone()).collect();
        let chunks = listing_chunks(&names);
        let n = chunks.len();
        for (i, chunk) in chunks.into_iter().enumerate() {
            self.send(
                &Op::SyncDir {
                    path: path.clone(),
                    meta,
                    entries: chunk.to_vec(),
                    first: i == 0,
                    last: i + 1 == n,
                },
                &[],
            )?;
        }
        for name in &names {
            let Ok(child) = path.join(name) else {
                continue;
            };
            self.entry(&child)?;
        }
        // Making the entries changed the peer's directory time: set it back.
        self.send(
            &Op::SetAttr {
                target: Target::Path(path.clone()),
                mode: None,
                uid: None,
                gid: None,
                atime: None,
                mtime: Some(meta.mtime),
            },
            &[],
        )
    }

    fn file(&mut self, path: &RelPath, st: &libc::stat, meta: Meta) -> Result<(), SyncError> {
        let fd = match sys::open_beneath(
            self.core.root.as_fd(),
            path,
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NOATIME,
            0,
        ) {
            Ok(fd) => fd,
            Err(e) if sys::errno(&e) == libc::ENOENT => {
                return self.send(&Op::SyncRemove { path: path.clone() }, &[]);
            }
            Err(e) => return Err(read_err(path)(e)),
        };
        let size = st.st_size as u64;
        self.send(
            &Op::SyncFile {
                path: path.clone(),
                meta,
                size,
            },
            &[],
        )?;
        self.data(path, fd.as_fd(), size)
    }

    /// Send the data extents of a file; holes are skipped and stay holes on the peer.
    fn data(&mut self, path: &RelPath, fd: BorrowedFd<'_>, size: u64) -> Result<(), SyncError> {
        // Preallocated (unwritten) extents are holes too: they read as zeros, and sending them
        // would allocate zeros on the peer where this node has none.
        let unwritten = sys::unwritten_ranges(fd, size).map_err(read_err(path))?;
        let mut pos = 0u64;
        while pos < size {
            let Some(start) =
                sys::seek_data_hole(fd, pos, libc::SEEK_DATA).map_err(read_err(path))?
            else {
                break;
            };
            let end = sys::seek_data_hole(fd, start, libc::SEEK_HOLE)
                .map_err(read_err(path))?
                .unwrap_or(size)
                .min(size);
            for (from, to) in without(start, end, &unwritten) {
                if !self.range(path, fd, from, to)? {
                    // The file shrank meanwhile: the application's change is recorded.
                    return Ok(());
                }
            }
            pos = end;
        }
        Ok(())
    }

    /// Send `[start, end)` of a file; false if the file ended before.
    fn range(
        &mut self,
        path: &RelPath,
        fd: BorrowedFd<'_>,
        start: u64,
        end: u64,
    ) -> Result<bool, SyncError> {
        let mut off = start;
        while off < end {
            let want = ((end - off) as usize).min(SYNC_CHUNK_BYTES);
            let n = sys::pread(fd, &mut self.buf[..want], off).map_err(read_err(path))?;
            if n == 0 {
                return Ok(false);
            }
            let chunk = std::mem::take(&mut self.buf);
            let r = self.send(
                &Op::SyncData {
                    path: path.clone(),
                    offset: off,
                },
                &chunk[..n],
            );
            self.buf = chunk;
            r?;
            off += n as u64;
        }
        Ok(true)
    }
}

/// The parts of `[start, end)` outside `skip` (sorted, non-overlapping ranges).
fn without(start: u64, end: u64, skip: &[(u64, u64)]) -> Vec<(u64, u64)> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use mirrorkit_wire::{encode_frame, Message, Timespec, MAX_NAME_BYTES};

    #[test]
    fn listing_chunks_fit_the_header_limit() {
        let long: Vec<Vec<u8>> = (0..3000)
            .map(|i| format!("{i:0>width$}", width = MAX_NAME_BYTES).into_bytes())
            .collect();
        let chunks = listing_chunks(&long);
        assert_eq!(chunks.iter().map(|c| c.len()).sum::<usize>(), 3000);
        let component = vec![b'p'; 255];
        let mut path = RelPath::root();
        while path.as_bytes().len() + 256 <= mirrorkit_wire::MAX_PATH_BYTES {
            path = path.join(&component).unwrap();
        }
        let mut buf = Vec::new();
        for c in chunks {
            let msg = Message::Op {
                seq: u64::MAX,
                op: Op::SyncDir {
                    path: path.clone(),
                    meta: Meta {
                        mode: 0o7777,
                        uid: u32::MAX,
                        gid: u32::MAX,
                        mtime: Timespec {
                            sec: i64::MIN,
                            nsec: 999_999_999,
                        },
                    },
                    entries: c.to_vec(),
                    first: true,
                    last: true,
                },
                fixes: vec![],
            };
            encode_frame(&msg, &[], &mut buf).unwrap();
        }
        let short: Vec<Vec<u8>> = (0..2500).map(|i| format!("{i}").into_bytes()).collect();
        let sizes: Vec<usize> = listing_chunks(&short).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [1024, 1024, 452]);
        assert_eq!(listing_chunks(&[]).len(), 1);
    }

    #[test]
    fn unwritten_ranges_are_cut_out_of_data_ranges() {
        assert_eq!(without(0, 100, &[]), [(0, 100)]);
        assert_eq!(
            without(0, 100, &[(20, 30), (50, 60)]),
            [(0, 20), (30, 50), (60, 100)]
        );
        assert_eq!(without(10, 100, &[(0, 20), (90, 200)]), [(20, 90)]);
        assert_eq!(without(10, 20, &[(0, 30)]), []);
        assert_eq!(without(10, 20, &[(0, 5), (25, 30)]), [(10, 20)]);
    }
}
