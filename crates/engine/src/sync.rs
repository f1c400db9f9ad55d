//! Synchronisation (resync) of a connected peer while the application keeps writing.
//!
//! 1. Bulk pass: walk the backing tree and send every directory (with its complete listing,
//!    so that the peer removes what the primary does not have), symlink, special file and
//!    extended attribute, and probe every regular file (`SyncProbe`: the peer keeps its file,
//!    sets size and attributes, and answers with the digests of the chunks asked). Which
//!    chunks: in `Compare` mode all of them; in `Incremental` mode those the dirty record
//!    lists, or all of them for a path whose identity changed (created, renamed, linked,
//!    removed: `Mark::Entry`). Chunks whose digests differ are sent (holes as holes). Probes
//!    are pipelined; a file the peer did not have is sent whole without comparing.
//!    Application operations are not sent meanwhile; the link records what they change.
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

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;

use mirrorkit_module::MirrorFilter;
use mirrorkit_store::digest::{self, Digester};
use mirrorkit_store::sys;
use mirrorkit_wire::{
    Meta, Op, ProbeFile, RelPath, SpecialKind, SyncMode, Target, CHUNK_BYTES, DIGEST_BYTES,
    MAX_DIR_ENTRIES, MAX_PROBE_CHUNKS, MAX_PROBE_RANGES,
};
use tracing::{info, trace};

use crate::core::{meta_of, Core};
use crate::link::{MarkSet, SessionLost, Ticket};

/// Size of one `SyncData` chunk.
pub const SYNC_CHUNK_BYTES: usize = 1 << 20;
/// Catch-up passes run without stopping the application while more paths than this remain.
pub const SWITCH_DIRTY_PATHS: usize = 256;
/// Most catch-up passes before switching anyway (the application then waits for the rest).
pub const MAX_CATCH_UP_PASSES: usize = 8;
/// Longest the synchroniser waits for the peer to apply and flush what a pass sent (the
/// application does not wait on it; a dead peer ends the connection sooner). Default 60 s.
pub const SYNC_DRAIN_TIMEOUT_MS: u64 = 60_000;
/// Longest the primary waits for a peer to copy its divergent tree aside (`preserve`) before
/// a resync overwrites it. Default 1 hour.
pub const PRESERVE_WAIT_MS: u64 = 3_600_000;
/// Most probes sent and not yet answered.
pub const MAX_OUTSTANDING_PROBES: usize = 32;

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

/// A probe sent, waiting for its answer.
struct Probe {
    ticket: Ticket,
    path: RelPath,
    fd: OwnedFd,
    ranges: Vec<(u64, u64)>,
}

struct Pass<'a> {
    core: &'a Core,
    session: u64,
    /// What this pass must bring over besides the namespace and attributes.
    marks: MarkSet,
    /// Compare every chunk of every file.
    compare_all: bool,
    /// The last pass, made with the application held: nothing it sends may be left for later.
    last: bool,
    /// What this pass probes was counted in the synchronisation's planned bytes already.
    planned: bool,
    outstanding: VecDeque<Probe>,
    /// Files the peer did not have and that were sent whole in this pass.
    sent_whole: HashSet<RelPath>,
    digester: Digester,
    /// (device, inode) of inodes with several links → the path sent first in this pass.
    linked: HashMap<(u64, u64), RelPath>,
    /// (device, inode) of inodes with several links → every name seen so far, in any pass of
    /// this synchronisation (some may be gone or name another inode by now).
    names: HashMap<(u64, u64), BTreeSet<RelPath>>,
    /// Names of inodes with several links sent in this pass.
    visited: HashSet<RelPath>,
    /// Files of this pass the peer did not make (gone here, or parent missing there): no
    /// other name may be linked to them.
    absent: HashSet<RelPath>,
    /// Links sent, to check once the pass is settled.
    links: Vec<(Ticket, RelPath)>,
    pacer: Pacer,
    buf: Vec<u8>,
}

/// Paces a synchronisation's file data to a configured rate (`LinkConfig::resync_bytes_per_sec`)
/// over the whole synchronisation, so that a short pause is made up for and a burst is not.
pub struct Pacer {
    bytes_per_sec: Option<u64>,
    started: std::time::Instant,
    sent: u64,
}

impl Pacer {
    pub fn new(bytes_per_sec: Option<u64>) -> Self {
        Pacer {
            bytes_per_sec: bytes_per_sec.filter(|&r| r > 0),
            started: std::time::Instant::now(),
            sent: 0,
        }
    }

    /// How long to wait, `elapsed` into the synchronisation, after `n` more bytes.
    pub fn delay(&mut self, n: u64, elapsed: std::time::Duration) -> std::time::Duration {
        self.sent += n;
        match self.bytes_per_sec {
            Some(rate) => {
                let due = std::time::Duration::from_secs_f64(self.sent as f64 / rate as f64);
                due.saturating_sub(elapsed)
            }
            None => std::time::Duration::ZERO,
        }
    }

    fn pace(&mut self, n: u64) {
        if self.bytes_per_sec.is_some() {
            let d = self.delay(n, self.started.elapsed());
            if !d.is_zero() {
                std::thread::sleep(d);
            }
        }
    }
}

fn read_err(path: &RelPath) -> impl FnOnce(std::io::Error) -> SyncError + '_ {
    move |source| SyncError::Read {
        path: path.to_string(),
        source,
    }
}

/// Run a synchronisation for link session `session` in `mode`. Returns when the peer
/// confirmed it.
pub fn full_sync(
    core: &Core,
    session: u64,
    mode: SyncMode,
    preserve: bool,
) -> Result<(), SyncError> {
    let started = std::time::Instant::now();
    let recorded = match mode {
        SyncMode::Incremental => core.link.recorded(),
        SyncMode::Compare => MarkSet::default(),
    };
    core.link
        .counters()
        .sync_recorded_bytes
        .store(recorded.chunk_bytes(), Ordering::Relaxed);
    let c = core.link.counters();
    let planned = planned_bytes(core, &recorded, mode == SyncMode::Compare);
    c.sync_done_bytes.store(0, Ordering::Relaxed);
    c.sync_total_bytes.store(planned, Ordering::Relaxed);
    c.sync_started_ms.store(unix_ms(), Ordering::Relaxed);
    info!(mirror = %core.mirror, ?mode, preserve, recorded_names = recorded.entries.len(),
        recorded_files = recorded.chunks.len() + recorded.tails.len(), planned_bytes = planned,
        "synchronisation starts");
    let begin = core
        .link
        .submit_sync(session, &Op::SyncBegin { mode, preserve }, &[])?;
    if preserve {
        // The peer copies its whole tree aside before it acknowledges: wait for that alone,
        // else the next messages would fill the window and time out, and every new session
        // would start the copy again.
        info!(mirror = %core.mirror, "waiting for the peer to keep its divergent data aside");
        if !core.link.wait_acked_within(begin, PRESERVE_WAIT_MS) {
            return Err(SessionLost(format!(
                "the peer did not keep its divergent data aside within {} s",
                PRESERVE_WAIT_MS / 1000
            ))
            .into());
        }
    }
    let mut pass = Pass::new(core, session, HashMap::new(), recorded);
    pass.planned = true;
    pass.pacer = Pacer::new(core.link.config().resync_bytes_per_sec);
    pass.compare_all = mode == SyncMode::Compare;
    pass.entry(&RelPath::root())?;
    pass.settle_all()?;
    let mut names = pass.names;
    let mut pacer = pass.pacer;
    drain(core, session)?;
    for round in 0..MAX_CATCH_UP_PASSES {
        if core.link.dirty_len() <= SWITCH_DIRTY_PATHS {
            break;
        }
        let dirty = core.link.take_dirty(session)?;
        info!(mirror = %core.mirror, round, paths = dirty.entries.len() + dirty.metas.len(),
            files = dirty.chunks.len() + dirty.tails.len(), "synchronisation: catching up");
        let mut catch_up = Pass::new(core, session, names, MarkSet::default());
        catch_up.pacer = pacer;
        catch_up.dirty(dirty)?;
        names = catch_up.names;
        pacer = catch_up.pacer;
        drain(core, session)?;
    }
    let ticket = {
        let _order = core.order();
        let dirty = core.link.take_dirty(session)?;
        let mut last = Pass::new(core, session, names, MarkSet::default());
        // Not paced: the application waits for this pass.
        last.last = true;
        last.dirty(dirty)?;
        for (fh, h) in core.writable_handles() {
            if let Some(path) = last.handle_path(h.ino, &h.fd)? {
                if !core.replicates(&path, false) {
                    // Outside the replicated set: the peer does not open it.
                    continue;
                }
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
    let c = core.link.counters();
    info!(
        mirror = %core.mirror,
        seconds = started.elapsed().as_secs_f64(),
        data_bytes = c.sync_data_bytes_sent.load(Ordering::Relaxed),
        compared_bytes = c.sync_probe_bytes.load(Ordering::Relaxed),
        "synchronisation complete: peer in sync"
    );
    Ok(())
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Visit every regular file beneath `dir` (named `path`) once: the other names of a
/// hard-linked file are skipped (a resync links them; a verify need not read them twice).
/// Entries that vanish or cannot be read meanwhile are skipped: the application's business.
/// `visit` gets the file's path, its `lstat`, and whether it or a directory above it is in
/// `whole`; it may stop the walk with an error.
pub(crate) fn for_each_file<E>(
    dir: BorrowedFd<'_>,
    path: &RelPath,
    filter: &MirrorFilter,
    whole: &dyn Fn(&RelPath) -> bool,
    visit: &mut dyn FnMut(&RelPath, &libc::stat, bool) -> Result<(), E>,
) -> Result<(), E> {
    #[allow(clippy::too_many_arguments)]
    fn walk<E>(
        dir: BorrowedFd<'_>,
        path: &RelPath,
        filter: &MirrorFilter,
        under: bool,
        whole: &dyn Fn(&RelPath) -> bool,
        visit: &mut dyn FnMut(&RelPath, &libc::stat, bool) -> Result<(), E>,
        linked: &mut HashSet<u64>,
    ) -> Result<(), E> {
        let Ok(entries) = sys::read_dir(dir) else {
            return Ok(());
        };
        for e in entries {
            let (Ok(child), Ok(name)) = (path.join(&e.name), sys::cstr(&e.name)) else {
                continue;
            };
            let Ok(st) = sys::fstatat(dir, &name, libc::AT_SYMLINK_NOFOLLOW) else {
                continue;
            };
            let fmt = st.st_mode & libc::S_IFMT;
            if !filter.replicates_bytes(child.as_bytes(), fmt == libc::S_IFDIR) {
                continue;
            }
            let under = under || whole(&child);
            match fmt {
                libc::S_IFREG if st.st_nlink > 1 && !linked.insert(st.st_ino) => {}
                libc::S_IFREG => visit(&child, &st, under)?,
                libc::S_IFDIR => {
                    if let Ok(fd) = sys::openat2(
                        dir,
                        &name,
                        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                        0,
                        sys::RESOLVE_STRICT,
                    ) {
                        walk(fd.as_fd(), &child, filter, under, whole, visit, linked)?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
    walk(
        dir,
        path,
        filter,
        whole(path),
        whole,
        visit,
        &mut HashSet::new(),
    )
}

/// Bytes of file data the bulk pass will probe: a walk of the backing tree, metadata only,
/// with the bulk pass's choice of ranges per file (all chunks in `Compare` mode or under a
/// changed name, else the record's). An estimate for progress.
fn planned_bytes(core: &Core, marks: &MarkSet, compare_all: bool) -> u64 {
    let mut total = 0u64;
    let whole = |p: &RelPath| compare_all || marks.entries.contains(p);
    let _ = for_each_file::<()>(
        core.root.as_fd(),
        &RelPath::root(),
        core.filter(),
        &whole,
        &mut |_, st, whole| {
            let size = st.st_size as u64;
            total += if whole {
                size.div_ceil(CHUNK_BYTES) * CHUNK_BYTES
            } else {
                marks
                    .ranges(st.st_ino, size)
                    .iter()
                    .map(|(s, e)| e - s)
                    .sum()
            };
            Ok(())
        },
    );
    total
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
    fn new(
        core: &'a Core,
        session: u64,
        names: HashMap<(u64, u64), BTreeSet<RelPath>>,
        marks: MarkSet,
    ) -> Self {
        Pass {
            core,
            session,
            marks,
            compare_all: false,
            last: false,
            planned: false,
            outstanding: VecDeque::new(),
            sent_whole: HashSet::new(),
            digester: Digester::default(),
            linked: HashMap::new(),
            names,
            visited: HashSet::new(),
            absent: HashSet::new(),
            links: Vec::new(),
            pacer: Pacer::new(None),
            buf: vec![0u8; SYNC_CHUNK_BYTES],
        }
    }

    fn send(&self, op: &Op, data: &[u8]) -> Result<(), SyncError> {
        self.core.link.submit_sync(self.session, op, data)?;
        Ok(())
    }

    /// Synchronise what the application changed: entries recursively (skipping those
    /// beneath another recorded entry), the changed chunks of files, then attributes.
    fn dirty(&mut self, dirty: MarkSet) -> Result<(), SyncError> {
        let entries: Vec<RelPath> = dirty.entries.iter().cloned().collect();
        let mut metas = dirty.metas.clone();
        self.marks = dirty;
        let mut done: Vec<RelPath> = Vec::new();
        for p in entries {
            if done.iter().any(|d| p.starts_with(d)) {
                continue;
            }
            trace!(path = %p, "sync: changed entry");
            self.entry(&p)?;
            // Synchronising an entry replaces it on the peer, which changes its parent's time
            // there (a file's content change did not change it here): set it back.
            if let Some((parent, _)) = p.split_last() {
                metas.insert(parent);
            }
            done.push(p);
        }
        // Files whose data changed: by one of their names (the others are links to it).
        let inos: BTreeSet<u64> = self
            .marks
            .chunks
            .keys()
            .chain(self.marks.tails.keys())
            .copied()
            .collect();
        let mut unresolved = false;
        for ino in inos {
            let names = self.core.all_paths_of(self.core.fuse_ino(ino));
            trace!(ino, ?names, "sync: changed data");
            if names.is_empty() && self.core.open_without_name(self.core.fuse_ino(ino)) {
                // Written after its last name went: the peer's tree has nothing of it.
                continue;
            }
            let mut found = false;
            for p in names {
                if done.iter().any(|d| p.starts_with(d)) {
                    found = true;
                    break;
                }
                if let Some((st, _)) = self.lstat(&p)? {
                    if st.st_ino == ino
                        && st.st_mode & libc::S_IFMT == libc::S_IFREG
                        && !self.core.replicates(&p, false)
                    {
                        // Outside the replicated set: the peer needs none of its data.
                        found = true;
                        break;
                    }
                    if st.st_ino == ino && st.st_mode & libc::S_IFMT == libc::S_IFREG {
                        if st.st_nlink > 1 {
                            // The peer replaces a file with several names (its probe keeps
                            // only single-name files): through `entry`, so that the other
                            // names are linked to the new one below.
                            self.entry(&p)?;
                        } else {
                            self.file(&p, &st, meta_of(&st))?;
                        }
                        found = true;
                        break;
                    }
                }
            }
            unresolved |= !found;
        }
        if unresolved {
            // A changed file this node no longer knows by name (closed and forgotten by the
            // kernel, then renamed?): walk everything, probing what the marks list.
            info!(mirror = %self.core.mirror, "synchronisation: a changed file has no known name, walking the whole tree");
            self.entry(&RelPath::root())?;
        }
        self.settle_all()?;
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
            trace!(?pending, "sync: other names of linked inodes");
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
        self.settle_all()?;
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
        let fmt = st.st_mode & libc::S_IFMT;
        if fmt == libc::S_IFLNK || !self.core.replicates(path, fmt == libc::S_IFDIR) {
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
            // Gone here. Removed on the peer if it could be replicated there (the peer keeps
            // an entry of its own outside the replicated set).
            if !path.is_root()
                && (self.core.replicates(path, false) || self.core.replicates(path, true))
            {
                self.send(&Op::SyncRemove { path: path.clone() }, &[])?;
            }
            return Ok(());
        };
        if !self
            .core
            .replicates(path, st.st_mode & libc::S_IFMT == libc::S_IFDIR)
        {
            return Ok(());
        }
        let meta = meta_of(&st);
        // Any inode but a directory can have several names (symlinks and FIFOs too): the
        // second name sent in a pass becomes a link to the first.
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR && st.st_nlink > 1 {
            let key = (st.st_dev, st.st_ino);
            self.names.entry(key).or_default().insert(path.clone());
            self.visited.insert(path.clone());
            if let Some(existing) = self.linked.get(&key).cloned() {
                if existing == *path {
                    // Sent already in this pass (a walk after the changed entries): sending
                    // it again would make the peer replace it and lose the links made to it.
                    return Ok(());
                }
                // Linked only once the peer made the first name (its probe answered).
                while self.outstanding.iter().any(|p| p.path == existing) {
                    self.settle_one()?;
                }
                if !self.absent.contains(&existing) {
                    trace!(%path, %existing, "sync: link");
                    let t = self.core.link.submit_sync(
                        self.session,
                        &Op::SyncLink {
                            existing,
                            path: path.clone(),
                        },
                        &[],
                    )?;
                    self.links.push((t, path.clone()));
                    return Ok(());
                }
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

    /// The entry at `path` went away while this pass read it (the application removed or
    /// renamed it, or a parent: its operation is recorded, and waits for nothing): the next
    /// pass sends that path again. Not in the last pass, which runs with the application's
    /// changes held: there it is an error.
    fn vanished(&mut self, path: &RelPath, e: &std::io::Error) -> bool {
        if self.last || !matches!(sys::errno(e), libc::ENOENT | libc::ENOTDIR) {
            return false;
        }
        trace!(%path, "sync: gone while read, sending it again next pass");
        self.core
            .link
            .mark_pending(crate::link::Mark::Entry(path.clone()));
        true
    }

    fn xattrs(&mut self, path: &RelPath, fd: &OwnedFd, symlink: bool) -> Result<(), SyncError> {
        if symlink {
            let Some((parent, name)) = path.split_last() else {
                return Ok(());
            };
            let pfd = match sys::open_beneath(
                self.core.root.as_fd(),
                &parent,
                libc::O_PATH | libc::O_DIRECTORY,
                0,
            ) {
                Ok(fd) => fd,
                Err(e) if self.vanished(path, &e) => return Ok(()),
                Err(e) => return Err(read_err(path)(e)),
            };
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
            Err(e) if self.vanished(path, &e) => return Ok(()),
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
                Err(e) if self.vanished(path, &e) => return Ok(()),
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
        let everything = self.core.filter().selects_everything();
        let names: Vec<Vec<u8>> = entries
            .iter()
            .filter(|e| everything || self.listed(fd, path, e))
            .map(|e| e.name.clone())
            .collect();
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
        self.send(&Op::set_mtime(Target::Path(path.clone()), meta.mtime), &[])
    }

    /// Whether the entry `e` of the directory `fd` (at `path`) is replicated: only those are
    /// listed and sent (the peer keeps its own entries outside the replicated set).
    fn listed(&self, fd: &OwnedFd, path: &RelPath, e: &sys::DirEntry) -> bool {
        let Ok(child) = path.join(&e.name) else {
            return true;
        };
        self.core
            .replicates(&child, sys::entry_is_dir(fd.as_fd(), e))
    }

    /// Whether `path` or a directory above it changed identity (compare it whole).
    fn under_entry(&self, path: &RelPath) -> bool {
        if self.marks.entries.is_empty() {
            return false;
        }
        let mut p = path.clone();
        loop {
            if self.marks.entries.contains(&p) {
                return true;
            }
            match p.split_last() {
                Some((parent, _)) => p = parent,
                None => return false,
            }
        }
    }

    /// Probe a regular file: the chunks to compare depend on the mode and the marks.
    fn file(&mut self, path: &RelPath, st: &libc::stat, meta: Meta) -> Result<(), SyncError> {
        let fd = match sys::open_beneath(
            self.core.root.as_fd(),
            path,
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NOATIME,
            0,
        ) {
            Ok(fd) => fd,
            Err(e) if sys::errno(&e) == libc::ENOENT => {
                self.absent.insert(path.clone());
                return self.send(&Op::SyncRemove { path: path.clone() }, &[]);
            }
            Err(e) => return Err(read_err(path)(e)),
        };
        let size = st.st_size as u64;
        let end = size.div_ceil(CHUNK_BYTES) * CHUNK_BYTES;
        let ranges = if self.compare_all || self.under_entry(path) {
            if end == 0 {
                Vec::new()
            } else {
                vec![(0, end)]
            }
        } else {
            self.marks.ranges(st.st_ino, size)
        };
        trace!(%path, ino = st.st_ino, nlink = st.st_nlink, ranges = ranges.len(), "sync: probe");
        if !self.planned {
            let bytes: u64 = ranges.iter().map(|(s, e)| e - s).sum();
            self.core
                .link
                .counters()
                .sync_total_bytes
                .fetch_add(bytes, Ordering::Relaxed);
        }
        if digest::sparse(&ranges, size) {
            sys::advise_random(fd.as_fd());
        }
        let groups = probe_groups(&ranges);
        for (i, group) in groups.into_iter().enumerate() {
            // Each probe of a file sets its size and attributes again: harmless, and the
            // first one makes the file exist.
            let _ = i;
            let fd = fd.try_clone().map_err(read_err(path))?;
            let ticket = self.core.link.submit_sync(
                self.session,
                &Op::SyncProbe {
                    path: path.clone(),
                    meta,
                    size,
                    ranges: group.clone(),
                },
                &[],
            )?;
            self.outstanding.push_back(Probe {
                ticket,
                path: path.clone(),
                fd,
                ranges: group,
            });
            while self.outstanding.len() > MAX_OUTSTANDING_PROBES {
                self.settle_one()?;
            }
        }
        Ok(())
    }

    /// Settle every probe sent, then check the links sent: a name the peer could not link
    /// (the application moved its parent or the first name meanwhile) goes to the next pass;
    /// in the last pass nothing may be left.
    fn settle_all(&mut self) -> Result<(), SyncError> {
        while !self.outstanding.is_empty() {
            self.settle_one()?;
        }
        for (t, path) in std::mem::take(&mut self.links) {
            let (file, _) = self.core.link.wait_reply(t)?;
            if file == ProbeFile::Kept {
                continue;
            }
            if self.last {
                return Err(SessionLost(format!(
                    "the peer could not link {path} at the end of the synchronisation ({file:?})"
                ))
                .into());
            }
            trace!(%path, ?file, "sync: link did not take, sending the name again next pass");
            self.core.link.mark_pending(crate::link::Mark::Entry(path));
        }
        Ok(())
    }

    /// Wait for the oldest probe's answer and send what differs.
    fn settle_one(&mut self) -> Result<(), SyncError> {
        let Some(probe) = self.outstanding.pop_front() else {
            return Ok(());
        };
        let (file, remote) = self.core.link.wait_reply(probe.ticket)?;
        let path = &probe.path;
        let probed: u64 = probe.ranges.iter().map(|(s, e)| e - s).sum();
        self.core
            .link
            .counters()
            .sync_done_bytes
            .fetch_add(probed, Ordering::Relaxed);
        trace!(%path, ?file, "sync: probed");
        // Sent whole already in this pass, and the peer kept that file: nothing to compare. If
        // the peer made a new, empty file again (the one sent to had gained another name), it
        // must be sent whole again.
        if self.sent_whole.contains(path) && file == ProbeFile::Kept {
            return Ok(());
        }
        if file == ProbeFile::NoParent {
            if self.last {
                // Nothing can change now: the namespace sent must be complete.
                return Err(SessionLost(format!(
                    "the peer lacks the parent directory of {path} at the end of the synchronisation"
                ))
                .into());
            }
            // The application moved or made its directory after this pass took its marks: the
            // next pass sends that directory again, with this file.
            self.absent.insert(path.clone());
            return Ok(());
        }
        let kept = file == ProbeFile::Kept;
        let fd = probe.fd.as_fd();
        // The size now: the application may have changed it since (then it is marked).
        let size = sys::fstat(fd).map_err(read_err(path))?.st_size as u64;
        // A kept file is compared only where it was probed; a new one is sent whole.
        let from = if kept {
            probe.ranges.first().map_or(size, |r| r.0)
        } else {
            0
        };
        let to = if kept {
            probe.ranges.last().map_or(0, |r| r.1).min(size)
        } else {
            size
        };
        let data = if from < to {
            digest::data_ranges_in(fd, from, to).map_err(read_err(path))?
        } else {
            Vec::new()
        };
        if !kept {
            // A new file on the peer (all holes): send every data range, nothing to compare.
            self.sent_whole.insert(path.clone());
            for &(s, e) in &data {
                if !self.range(path, fd, s, e)? {
                    break;
                }
            }
            return Ok(());
        }
        self.core
            .link
            .counters()
            .sync_probe_bytes
            .fetch_add(probed, Ordering::Relaxed);
        let mut i = 0usize;
        for &(start, end) in &probe.ranges {
            let mut c = start;
            while c < end {
                let theirs = remote.get(i * DIGEST_BYTES..(i + 1) * DIGEST_BYTES);
                i += 1;
                let chunk_end = (c + CHUNK_BYTES).min(size);
                let ours = self
                    .digester
                    .chunk(fd, c, chunk_end, &data)
                    .map_err(read_err(path))?;
                if theirs != Some(&ours[..]) && c < chunk_end {
                    self.send_chunk(path, fd, c, chunk_end, &data)?;
                }
                c += CHUNK_BYTES;
            }
        }
        Ok(())
    }

    /// Make `[start, end)` of the peer's file identical to this node's: its data ranges are
    /// sent, the rest becomes a hole.
    fn send_chunk(
        &mut self,
        path: &RelPath,
        fd: BorrowedFd<'_>,
        start: u64,
        end: u64,
        data: &[(u64, u64)],
    ) -> Result<(), SyncError> {
        let parts = digest::within(data, start, end);
        let full = parts.len() == 1 && parts[0] == (start, end);
        if !full {
            self.send(
                &Op::SyncHole {
                    path: path.clone(),
                    offset: start,
                    len: end - start,
                },
                &[],
            )?;
        }
        for (s, e) in parts {
            if !self.range(path, fd, s, e)? {
                break;
            }
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
            self.pacer.pace(n as u64);
        }
        Ok(true)
    }
}

/// Split chunk-aligned ranges into groups that one probe may carry.
fn probe_groups(ranges: &[(u64, u64)]) -> Vec<Vec<(u64, u64)>> {
    let mut groups: Vec<Vec<(u64, u64)>> = vec![Vec::new()];
    let mut chunks = 0u64;
    for &(s, e) in ranges {
        let mut s = s;
        while s < e {
            let room = MAX_PROBE_CHUNKS - chunks;
            let take = ((e - s) / CHUNK_BYTES).min(room);
            let last = groups.last_mut().map(|g| g.len()).unwrap_or(0);
            if take == 0 || last >= MAX_PROBE_RANGES {
                groups.push(Vec::new());
                chunks = 0;
                continue;
            }
            if let Some(g) = groups.last_mut() {
                g.push((s, s + take * CHUNK_BYTES));
            }
            chunks += take;
            s += take * CHUNK_BYTES;
        }
    }
    groups
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
    fn the_pacer_keeps_the_average_rate() {
        use std::time::Duration;
        let mut p = Pacer::new(Some(1 << 20));
        // 1 MiB at once, no time passed: wait a second.
        assert_eq!(p.delay(1 << 20, Duration::ZERO), Duration::from_secs(1));
        // Half a MiB more, 2 s in (a pause): nothing to wait, the pause is made up for.
        assert_eq!(p.delay(512 << 10, Duration::from_secs(2)), Duration::ZERO);
        // Then 1.5 MiB at once, still 2 s in: due at 3 s.
        assert_eq!(
            p.delay(3 << 19, Duration::from_secs(2)),
            Duration::from_secs(1)
        );
        let mut free = Pacer::new(None);
        assert_eq!(free.delay(u64::MAX / 2, Duration::ZERO), Duration::ZERO);
        let mut zero = Pacer::new(Some(0));
        assert_eq!(zero.delay(1 << 30, Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn probe_groups_respect_the_limits() {
        let c = CHUNK_BYTES;
        assert_eq!(probe_groups(&[]), vec![Vec::<(u64, u64)>::new()]);
        assert_eq!(
            probe_groups(&[(0, c), (2 * c, 3 * c)]),
            vec![vec![(0, c), (2 * c, 3 * c)]]
        );
        let big = probe_groups(&[(0, (MAX_PROBE_CHUNKS + 5) * c)]);
        assert_eq!(
            big,
            vec![
                vec![(0, MAX_PROBE_CHUNKS * c)],
                vec![(MAX_PROBE_CHUNKS * c, (MAX_PROBE_CHUNKS + 5) * c)]
            ]
        );
        let many: Vec<(u64, u64)> = (0..MAX_PROBE_RANGES as u64 + 3)
            .map(|i| (2 * i * c, (2 * i + 1) * c))
            .collect();
        let g = probe_groups(&many);
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].len(), MAX_PROBE_RANGES);
        assert_eq!(g[1].len(), 3);
    }
}
