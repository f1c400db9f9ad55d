//! The secondary's applier: performs the primary's operations, in order, strictly beneath the
//! replicated root.
//!
//! Every path arrives as a validated `RelPath` and is resolved with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)` for its parent directory,
//! then acted on with an `*at` call on the last component that never follows it. So no message
//! can reach outside the root, whatever symlinks the tree holds. Checks that can fail (unknown
//! handle, bad sequence) run before anything is changed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mirrorkit_module::MirrorFilter;
use mirrorkit_wire::{Meta, Op, ProbeFile, RelPath, SpecialKind, Target, TimeFix};

use crate::digest::{self, Digester};
use crate::sys::{self, TimeSet};

/// Most files the primary may hold open for writing at once (bounds this side's descriptors).
pub const MAX_HANDLES: usize = 65_536;

/// Why an operation could not be applied.
#[derive(Debug, thiserror::Error)]
#[error("{op} {what}: {source}")]
pub struct ApplyError {
    pub op: &'static str,
    /// The path or handle concerned.
    pub what: String,
    #[source]
    pub source: io::Error,
}

impl ApplyError {
    pub fn errno(&self) -> i32 {
        sys::errno(&self.source)
    }
}

/// The secondary's side of one mirror.
pub struct Store {
    root_path: PathBuf,
    root: OwnedFd,
    handles: HashMap<u64, OwnedFd>,
    /// Entries named so far by a `SyncDir` listing split over several messages.
    sync_listing: Option<(RelPath, HashSet<Vec<u8>>)>,
    /// Files being filled by `SyncData`/`SyncHole`, most recent last, with their final mtime:
    /// the primary sends a file's data after the answer to its probe, so several are open.
    sync_files: VecDeque<(RelPath, OwnedFd, Meta)>,
    digester: Digester,
    /// Answer to the last `SyncProbe`: what became of its file, and the digests.
    probe: (ProbeFile, Vec<u8>),
    /// Between `SyncBegin` and `SyncDone`: the primary's synchroniser is the only sender.
    syncing: bool,
    /// Files removed or replaced while being filled (the application moved them after their
    /// probe): their remaining `SyncData`/`SyncHole` are skipped, a later pass sends them.
    forgotten: HashSet<RelPath>,
    /// What the primary replicates (its `include`/`exclude` patterns, from its greeting).
    /// Entries outside it are this node's own: a listing does not remove them, and a
    /// directory the primary removes or replaces is emptied of them first.
    filter: Arc<MirrorFilter>,
}

/// Most files kept open for `SyncData` (the primary has fewer probes outstanding).
pub const MAX_SYNC_FILES: usize = 128;

fn err(op: &Op, what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> ApplyError {
    let op = op.name();
    let what = what.to_string();
    move |source| ApplyError { op, what, source }
}

impl Store {
    /// Open the replicated root of this node.
    pub fn open(root: &Path) -> io::Result<Self> {
        let c = sys::cstr(root.as_os_str().as_encoded_bytes())?;
        // SAFETY: AT_FDCWD is always a valid directory descriptor for the call.
        let cwd = unsafe { BorrowedFd::borrow_raw(libc::AT_FDCWD) };
        let fd = sys::openat2(cwd, &c, libc::O_RDONLY | libc::O_DIRECTORY, 0, 0)?;
        Ok(Store {
            root_path: root.to_path_buf(),
            root: fd,
            handles: HashMap::new(),
            sync_listing: None,
            sync_files: VecDeque::new(),
            digester: Digester::default(),
            probe: (ProbeFile::Created, Vec::new()),
            syncing: false,
            forgotten: HashSet::new(),
            filter: Arc::new(MirrorFilter::everything()),
        })
    }

    pub fn root_path(&self) -> &Path {
        &self.root_path
    }

    /// Number of open handles (for tests and metrics).
    pub fn open_handles(&self) -> usize {
        self.handles.len()
    }

    /// Follow the primary's selection of what is replicated (from its greeting).
    pub fn set_filter(&mut self, filter: Arc<MirrorFilter>) {
        self.filter = filter;
    }

    /// Whether the entry `name` of directory `dir` (at `parent`) is outside what the primary
    /// replicates: this node's own, never removed by a listing.
    fn local_only(&self, dir: BorrowedFd<'_>, parent: &RelPath, e: &sys::DirEntry) -> bool {
        if self.filter.selects_everything() {
            return false;
        }
        let Ok(path) = parent.join(&e.name) else {
            return false;
        };
        !self
            .filter
            .replicates_bytes(path.as_bytes(), sys::entry_is_dir(dir, e))
    }

    /// Remove, below the directory `path`, every entry outside what the primary replicates
    /// (and, recursively, from the replicated directories below): a directory the primary
    /// removes or replaces when it is empty there may still hold this node's own files.
    fn purge_local_only(&self, path: &RelPath) -> io::Result<()> {
        let dir = sys::open_beneath(self.root.as_fd(), path, libc::O_PATH | libc::O_DIRECTORY, 0)?;
        for e in sys::read_dir(dir.as_fd())? {
            let name = sys::cstr(&e.name)?;
            if self.local_only(dir.as_fd(), path, &e) {
                sys::remove_all_at(dir.as_fd(), &name)?;
            } else if e.kind == libc::DT_DIR {
                if let Ok(child) = path.join(&e.name) {
                    self.purge_local_only(&child)?;
                }
            }
        }
        Ok(())
    }

    /// Run `f`, a removal or replacement of the directory `path`; if it fails because the
    /// directory is not empty here and entries outside the replicated set may be why, remove
    /// those and run `f` again.
    fn emptied<T>(&self, path: &RelPath, mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
        match f() {
            Err(e)
                if !self.filter.selects_everything()
                    && matches!(e.raw_os_error(), Some(libc::ENOTEMPTY) | Some(libc::EEXIST)) =>
            {
                self.purge_local_only(path)?;
                f()
            }
            r => r,
        }
    }

    /// Forget all handles (the primary's session ended; it reopens what it needs).
    pub fn reset_session(&mut self) {
        self.handles.clear();
        self.sync_listing = None;
        self.sync_files.clear();
        self.forgotten.clear();
        self.syncing = false;
    }

    /// The answer to the last `SyncProbe` applied: what became of its file, and its chunk
    /// digests.
    pub fn last_probe(&self) -> (ProbeFile, &[u8]) {
        (self.probe.0, &self.probe.1)
    }

    fn remember_sync_file(&mut self, path: &RelPath, fd: OwnedFd, meta: Meta) {
        self.sync_files.retain(|(p, _, _)| p != path);
        if self.sync_files.len() >= MAX_SYNC_FILES {
            self.sync_files.pop_front();
        }
        self.sync_files.push_back((path.clone(), fd, meta));
    }

    /// Forget open files at `path` or beneath it (they were removed or replaced).
    fn forget_sync_files(&mut self, path: &RelPath) {
        let forgotten = &mut self.forgotten;
        self.sync_files.retain(|(p, _, _)| {
            let gone = p.starts_with(path);
            if gone {
                forgotten.insert(p.clone());
            }
            !gone
        });
    }

    /// Whether data for `path` comes after the file was removed or replaced here.
    fn was_forgotten(&self, path: &RelPath) -> bool {
        !self.sync_files.iter().any(|(p, _, _)| p == path) && self.forgotten.contains(path)
    }

    fn sync_file(&self, op: &Op, path: &RelPath) -> Result<(BorrowedFd<'_>, &Meta), ApplyError> {
        match self.sync_files.iter().rev().find(|(p, _, _)| p == path) {
            Some((_, fd, meta)) => Ok((fd.as_fd(), meta)),
            None => Err(ApplyError {
                op: op.name(),
                what: path.to_string(),
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "data for a file that is not being synchronised (out of sequence)",
                ),
            }),
        }
    }

    /// The parent descriptor and last name of `path`, or `None` when a parent is missing
    /// here, is not a directory, or is a symlink: during a resync that means the application
    /// changed the namespace after the primary last synchronised it, and a later pass sends
    /// that part of the tree again.
    fn parent_if_present(&self, path: &RelPath) -> io::Result<Option<(OwnedFd, CString)>> {
        match sys::open_parent(self.root.as_fd(), path) {
            Ok(x) => Ok(Some(x)),
            Err(e) if gone(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `SyncProbe`: keep the regular file at `path` (or make a new one), give it `size` and
    /// `meta`, and compute the digests asked.
    fn sync_probe(
        &mut self,
        op: &Op,
        path: &RelPath,
        meta: &Meta,
        size: u64,
        ranges: &[(u64, u64)],
    ) -> Result<(), ApplyError> {
        let e = || err(op, path);
        // No parent: nothing changes; the primary skips the file for now.
        let Some((dir, name)) = self.parent_if_present(path).map_err(e())? else {
            self.probe.0 = ProbeFile::NoParent;
            self.probe.1.clear();
            return Ok(());
        };
        let existing = match sys::fstatat(dir.as_fd(), &name, libc::AT_SYMLINK_NOFOLLOW) {
            // A file with other names here may hold another file's content for some of
            // them: only a file with one name is kept.
            Ok(st) => Some(st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_nlink == 1),
            Err(x) if x.raw_os_error() == Some(libc::ENOENT) => None,
            Err(x) => return Err(e()(x)),
        };
        let flags = libc::O_RDWR | libc::O_NOFOLLOW;
        let (fd, kept) = if existing == Some(true) {
            let fd = sys::openat2(dir.as_fd(), &name, flags, 0, sys::RESOLVE_STRICT).map_err(e())?;
            (fd, true)
        } else {
            let fd = sys::remove_all_at(dir.as_fd(), &name)
                .and_then(|()| {
                    sys::openat2(
                        dir.as_fd(),
                        &name,
                        flags | libc::O_CREAT | libc::O_EXCL,
                        0o600,
                        sys::RESOLVE_STRICT,
                    )
                })
                .map_err(e())?;
            (fd, false)
        };
        sys::ftruncate(fd.as_fd(), size)
            .and_then(|()| set_meta_fd(fd.as_fd(), meta))
            .map_err(e())?;
        if kept && digest::sparse(ranges, size) {
            sys::advise_random(fd.as_fd());
        }
        let mut out = std::mem::take(&mut self.probe.1);
        out.clear();
        let digests = self
            .digester
            .file_digests(fd.as_fd(), size, ranges, &mut out);
        let file = if kept {
            ProbeFile::Kept
        } else {
            ProbeFile::Created
        };
        self.probe = (file, out);
        digests.map_err(e())?;
        self.remember_sync_file(path, fd, *meta);
        Ok(())
    }

    /// `VerifyProbe`: the digests of `ranges` of the regular file at `path`, if it has `size`
    /// bytes. Reads only.
    fn verify_probe(
        &mut self,
        op: &Op,
        path: &RelPath,
        size: u64,
        ranges: &[(u64, u64)],
    ) -> Result<(), ApplyError> {
        let e = || err(op, path);
        self.probe.1.clear();
        let Some((dir, name)) = self.parent_if_present(path).map_err(e())? else {
            self.probe.0 = ProbeFile::NoParent;
            return Ok(());
        };
        let fd = match sys::openat2(
            dir.as_fd(),
            &name,
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
            0,
            sys::RESOLVE_STRICT,
        ) {
            Ok(fd) => fd,
            Err(x) if matches!(x.raw_os_error(), Some(libc::ENOENT | libc::ELOOP)) => {
                self.probe.0 = ProbeFile::Missing;
                return Ok(());
            }
            Err(x) => return Err(e()(x)),
        };
        let st = sys::fstat(fd.as_fd()).map_err(e())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            self.probe.0 = ProbeFile::Missing;
            return Ok(());
        }
        if st.st_size as u64 != size {
            self.probe.0 = ProbeFile::OtherSize;
            return Ok(());
        }
        let mut out = std::mem::take(&mut self.probe.1);
        let digests = self
            .digester
            .file_digests(fd.as_fd(), size, ranges, &mut out);
        self.probe = (ProbeFile::Kept, out);
        digests.map_err(e())
    }

    /// Apply one operation and its time fixes.
    pub fn apply(&mut self, op: &Op, data: &[u8], fixes: &[TimeFix]) -> Result<(), ApplyError> {
        match op {
            Op::SyncBegin { .. } => self.syncing = true,
            Op::SyncDone => self.syncing = false,
            _ => {}
        }
        match self.apply_op(op, data) {
            Err(e) if self.syncing && self.vanished(op, &e) => {
                // During a resync the synchroniser reads names while the application moves
                // them: a name whose path is gone here is under a name the application changed
                // after the synchroniser took its marks, and a later pass sends that again.
                tracing::debug!(
                    "{}: {} is gone here: skipped, the primary sends it again",
                    op.name(),
                    e.what
                );
                return Ok(());
            }
            r => r?,
        }
        for fix in fixes {
            self.set_mtime(&fix.target, fix.mtime)
                .map_err(err(op, format!("time of {}", self.describe(&fix.target))))?;
        }
        Ok(())
    }

    /// Whether `e`, from a resync's operation on a path, means that the path does not exist
    /// here (nor, perhaps, its parent).
    fn vanished(&self, op: &Op, e: &ApplyError) -> bool {
        if !gone(&e.source) {
            return false;
        }
        let path = match op {
            Op::SyncDir { path, .. }
            | Op::SyncRemove { path }
            | Op::Mknod { path, .. }
            | Op::Symlink { path, .. } => path,
            Op::SetAttr {
                target: Target::Path(path),
                ..
            }
            | Op::SetXattr {
                target: Target::Path(path),
                ..
            }
            | Op::RemoveXattr {
                target: Target::Path(path),
                ..
            }
            | Op::SyncClearXattrs {
                target: Target::Path(path),
            } => path,
            _ => return false,
        };
        match self.parent_if_present(path) {
            Ok(None) => true,
            Err(_) => false,
            // Creating ops fail with ENOENT only for a missing parent; the others also for a
            // missing name.
            Ok(Some((dir, name))) => {
                !matches!(
                    op,
                    Op::SyncDir { .. } | Op::Mknod { .. } | Op::Symlink { .. }
                ) && sys::fstatat(dir.as_fd(), &name, libc::AT_SYMLINK_NOFOLLOW)
                    .is_err_and(|x| x.raw_os_error() == Some(libc::ENOENT))
            }
        }
    }

    fn describe(&self, t: &Target) -> String {
        match t {
            Target::Path(p) => format!("path {p}"),
            Target::Handle(h) => format!("handle {h}"),
        }
    }

    fn handle(&self, op: &Op, h: u64) -> Result<BorrowedFd<'_>, ApplyError> {
        self.handles
            .get(&h)
            .map(|fd| fd.as_fd())
            .ok_or_else(|| ApplyError {
                op: op.name(),
                what: format!("handle {h}"),
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("handle {h} is not open on this node (message out of sequence)"),
                ),
            })
    }

    fn insert_handle(&mut self, op: &Op, h: u64, fd: OwnedFd) -> Result<(), ApplyError> {
        if self.handles.len() >= MAX_HANDLES && !self.handles.contains_key(&h) {
            return Err(ApplyError {
                op: op.name(),
                what: format!("handle {h}"),
                source: io::Error::new(
                    io::ErrorKind::OutOfMemory,
                    format!("more than {MAX_HANDLES} open handles"),
                ),
            });
        }
        self.handles.insert(h, fd);
        Ok(())
    }

    fn check_handle_free(&self, op: &Op, h: u64) -> Result<(), ApplyError> {
        if self.handles.contains_key(&h) {
            return Err(ApplyError {
                op: op.name(),
                what: format!("handle {h}"),
                source: io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("handle {h} is already open (message out of sequence)"),
                ),
            });
        }
        Ok(())
    }

    fn apply_op(&mut self, op: &Op, data: &[u8]) -> Result<(), ApplyError> {
        let root = self.root.as_fd();
        match op {
            Op::Create {
                path,
                meta,
                excl,
                truncate,
                handle,
            } => {
                if let Some(h) = handle {
                    self.check_handle_free(op, *h)?;
                }
                let e = err(op, path);
                let (dir, name) = sys::open_parent(root, path).map_err(e)?;
                let mut flags = libc::O_CREAT | libc::O_WRONLY | libc::O_NOFOLLOW;
                if *excl {
                    flags |= libc::O_EXCL;
                }
                if *truncate {
                    flags |= libc::O_TRUNC;
                }
                let fd = sys::openat2(dir.as_fd(), &name, flags, 0o600, sys::RESOLVE_STRICT)
                    .and_then(|fd| set_meta_fd(fd.as_fd(), meta).map(|()| fd))
                    .map_err(err(op, path))?;
                if let Some(h) = handle {
                    self.insert_handle(op, *h, fd)?;
                }
            }
            Op::Open {
                path,
                handle,
                truncate,
            } => {
                self.check_handle_free(op, *handle)?;
                let mut flags = libc::O_WRONLY | libc::O_NOFOLLOW;
                if *truncate {
                    flags |= libc::O_TRUNC;
                }
                let fd = sys::open_beneath(root, path, flags, 0).map_err(err(op, path))?;
                self.insert_handle(op, *handle, fd)?;
            }
            Op::Close { handle } => {
                self.handle(op, *handle)?;
                self.handles.remove(handle);
            }
            Op::Write { handle, offset } => {
                let fd = self.handle(op, *handle)?;
                sys::pwrite_all(fd, data, *offset).map_err(err(op, format!("handle {handle}")))?;
            }
            Op::Truncate { target, size } => {
                let what = self.describe(target);
                self.with_writable(op, target, |fd| sys::ftruncate(fd, *size))
                    .map_err(err(op, what))?;
            }
            Op::Fallocate {
                handle,
                mode,
                offset,
                len,
            } => {
                let fd = self.handle(op, *handle)?;
                sys::fallocate(fd, *mode, *offset, *len)
                    .map_err(err(op, format!("handle {handle}")))?;
            }
            Op::Fsync { handle, datasync } => {
                let fd = self.handle(op, *handle)?;
                sys::fsync(fd, *datasync).map_err(err(op, format!("handle {handle}")))?;
            }
            Op::FsyncPath { path } => {
                let fd = sys::open_beneath(root, path, libc::O_RDONLY | libc::O_NOFOLLOW, 0)
                    .map_err(err(op, path))?;
                sys::fsync(fd.as_fd(), false).map_err(err(op, path))?;
            }
            Op::Mkdir { path, meta } => {
                let (dir, name) = sys::open_parent(root, path).map_err(err(op, path))?;
                sys::mkdirat(dir.as_fd(), &name, 0o700)
                    .and_then(|()| set_meta_at(dir.as_fd(), &name, meta))
                    .map_err(err(op, path))?;
            }
            Op::Mknod {
                path,
                meta,
                kind,
                rdev,
            } => {
                let fmt = match kind {
                    SpecialKind::Fifo => libc::S_IFIFO,
                    SpecialKind::Socket => libc::S_IFSOCK,
                    SpecialKind::Char => libc::S_IFCHR,
                    SpecialKind::Block => libc::S_IFBLK,
                };
                let (dir, name) = sys::open_parent(root, path).map_err(err(op, path))?;
                sys::mknodat(dir.as_fd(), &name, fmt | 0o600, *rdev)
                    .and_then(|()| set_meta_at(dir.as_fd(), &name, meta))
                    .map_err(err(op, path))?;
            }
            Op::Symlink {
                path,
                target,
                uid,
                gid,
                mtime,
            } => {
                let (dir, name) = sys::open_parent(root, path).map_err(err(op, path))?;
                let t = sys::cstr(target).map_err(err(op, path))?;
                sys::symlinkat(&t, dir.as_fd(), &name)
                    .and_then(|()| {
                        sys::fchownat(dir.as_fd(), &name, *uid, *gid, libc::AT_SYMLINK_NOFOLLOW)
                    })
                    .and_then(|()| {
                        sys::utimensat(
                            dir.as_fd(),
                            &name,
                            TimeSet::Omit,
                            TimeSet::At(*mtime),
                            libc::AT_SYMLINK_NOFOLLOW,
                        )
                    })
                    .map_err(err(op, path))?;
            }
            Op::Link { existing, new } => {
                let what = format!("{existing} -> {new}");
                let (odir, oname) = sys::open_parent(root, existing).map_err(err(op, &what))?;
                let (ndir, nname) = sys::open_parent(root, new).map_err(err(op, &what))?;
                sys::linkat(odir.as_fd(), &oname, ndir.as_fd(), &nname, 0)
                    .map_err(err(op, &what))?;
            }
            Op::SyncLink {
                existing,
                path: new,
            } => {
                // Answered like a probe: Kept when linked; NoParent or Missing when the
                // application moved things meanwhile (the primary sends the name again later).
                let what = format!("{existing} -> {new}");
                self.probe.1.clear();
                let Some((ndir, nname)) = self.parent_if_present(new).map_err(err(op, &what))?
                else {
                    self.probe.0 = ProbeFile::NoParent;
                    return Ok(());
                };
                sys::remove_all_at(ndir.as_fd(), &nname).map_err(err(op, &what))?;
                let linked = sys::open_parent(root, existing).and_then(|(odir, oname)| {
                    sys::linkat(odir.as_fd(), &oname, ndir.as_fd(), &nname, 0)
                });
                self.forget_sync_files(new);
                self.probe.0 = match linked {
                    Ok(()) => ProbeFile::Kept,
                    Err(e) if gone(&e) => ProbeFile::Missing,
                    Err(e) => return Err(err(op, &what)(e)),
                };
            }
            Op::Unlink { path } => {
                let (dir, name) = sys::open_parent(root, path).map_err(err(op, path))?;
                sys::unlinkat(dir.as_fd(), &name, 0).map_err(err(op, path))?;
            }
            Op::Rmdir { path } => {
                let (dir, name) = sys::open_parent(root, path).map_err(err(op, path))?;
                self.emptied(path, || {
                    sys::unlinkat(dir.as_fd(), &name, libc::AT_REMOVEDIR)
                })
                .map_err(err(op, path))?;
            }
            Op::Rename { from, to, flags } => {
                let what = format!("{from} -> {to}");
                let (odir, oname) = sys::open_parent(root, from).map_err(err(op, &what))?;
                let (ndir, nname) = sys::open_parent(root, to).map_err(err(op, &what))?;
                self.emptied(to, || {
                    sys::renameat2(odir.as_fd(), &oname, ndir.as_fd(), &nname, *flags)
                })
                .map_err(err(op, &what))?;
            }
            Op::SetAttr {
                target,
                mode,
                uid,
                gid,
                atime,
                mtime,
            } => {
                let what = self.describe(target);
                self.set_attr(target, *mode, *uid, *gid, *atime, *mtime)
                    .map_err(err(op, what))?;
            }
            Op::SetXattr {
                target,
                name,
                flags,
            } => {
                let what = self.describe(target);
                let n = sys::cstr(name).map_err(err(op, &what))?;
                self.with_xattr_path(target, |p, follow| {
                    sys::setxattr(p, follow, &n, data, *flags)
                })
                .map_err(err(op, what))?;
            }
            Op::RemoveXattr { target, name } => {
                let what = self.describe(target);
                let n = sys::cstr(name).map_err(err(op, &what))?;
                self.with_xattr_path(target, |p, follow| sys::removexattr(p, follow, &n))
                    .map_err(err(op, what))?;
            }
            Op::SyncClearXattrs { target } => {
                let what = self.describe(target);
                self.with_xattr_path(target, |p, follow| {
                    for n in sys::list_xattr_names(p, follow)? {
                        sys::removexattr(p, follow, &sys::cstr(&n)?)?;
                    }
                    Ok(())
                })
                .map_err(err(op, what))?;
            }
            Op::Barrier | Op::SyncDone | Op::SyncBegin { .. } => {
                self.sync_files.clear();
                self.forgotten.clear();
                sys::syncfs(root).map_err(err(op, "replicated root"))?;
            }
            Op::SyncRemove { path } => {
                let (dir, name) = sys::open_parent(root, path).map_err(err(op, path))?;
                // An entry of this node's own outside the replicated set stays.
                if let Some((parent, last)) = path.split_last() {
                    let e = sys::DirEntry {
                        name: last.to_vec(),
                        ino: 0,
                        kind: libc::DT_UNKNOWN,
                    };
                    if self.local_only(dir.as_fd(), &parent, &e) {
                        return Ok(());
                    }
                }
                sys::remove_all_at(dir.as_fd(), &name).map_err(err(op, path))?;
                self.forget_sync_files(path);
            }
            Op::SyncDir {
                path,
                meta,
                entries,
                first,
                last,
            } => self.sync_dir(op, path, meta, entries, *first, *last)?,
            Op::SyncFile { path, meta, size } => {
                let e = err(op, path);
                let (dir, name) = sys::open_parent(root, path).map_err(e)?;
                // Always a fresh inode: an old file here may be a hard link shared with
                // another name that must keep its own content.
                let fd = sys::remove_all_at(dir.as_fd(), &name)
                    .and_then(|()| {
                        sys::openat2(
                            dir.as_fd(),
                            &name,
                            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW,
                            0o600,
                            sys::RESOLVE_STRICT,
                        )
                    })
                    .and_then(|fd| sys::ftruncate(fd.as_fd(), *size).map(|()| fd))
                    .and_then(|fd| set_meta_fd(fd.as_fd(), meta).map(|()| fd))
                    .map_err(err(op, path))?;
                self.remember_sync_file(path, fd, *meta);
            }
            Op::SyncProbe {
                path,
                meta,
                size,
                ranges,
            } => self.sync_probe(op, path, meta, *size, ranges)?,
            Op::SyncData { path, .. } | Op::SyncHole { path, .. } if self.was_forgotten(path) => {
                tracing::debug!(
                    "{}: {path} was removed or replaced since its probe: skipped",
                    op.name()
                );
            }
            Op::SyncData { path, offset } => {
                let (fd, meta) = self.sync_file(op, path)?;
                sys::pwrite_all(fd, data, *offset)
                    .and_then(|()| sys::futimens(fd, TimeSet::Omit, TimeSet::At(meta.mtime)))
                    .map_err(err(op, path))?;
            }
            Op::VerifyProbe { path, size, ranges } => {
                self.verify_probe(op, path, *size, ranges)?;
            }
            Op::SyncHole { path, offset, len } => {
                let (fd, meta) = self.sync_file(op, path)?;
                // A hole that reaches the end of the file goes on to the end of its last block:
                // punching only up to the size would zero the partial block and keep it
                // allocated, where the primary has none.
                let end = offset.saturating_add(*len);
                let len = match sys::fstat(fd) {
                    Ok(st) if end >= st.st_size as u64 => end
                        .checked_next_multiple_of(1 << 16)
                        .map_or(*len, |e| e - offset),
                    _ => *len,
                };
                sys::fallocate(
                    fd,
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    *offset,
                    len,
                )
                .and_then(|()| sys::futimens(fd, TimeSet::Omit, TimeSet::At(meta.mtime)))
                .map_err(err(op, path))?;
            }
        }
        Ok(())
    }

    fn sync_dir(
        &mut self,
        op: &Op,
        path: &RelPath,
        meta: &Meta,
        entries: &[Vec<u8>],
        first: bool,
        last: bool,
    ) -> Result<(), ApplyError> {
        let root = self.root.as_fd();
        if first {
            if !path.is_root() {
                let (dir, name) = sys::open_parent(root, path).map_err(err(op, path))?;
                let is_dir = match sys::fstatat(dir.as_fd(), &name, libc::AT_SYMLINK_NOFOLLOW) {
                    Ok(st) => st.st_mode & libc::S_IFMT == libc::S_IFDIR,
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => false,
                    Err(e) => return Err(err(op, path)(e)),
                };
                if !is_dir {
                    sys::remove_all_at(dir.as_fd(), &name)
                        .and_then(|()| sys::mkdirat(dir.as_fd(), &name, 0o700))
                        .map_err(err(op, path))?;
                }
            }
            self.sync_listing = Some((path.clone(), HashSet::new()));
        }
        match &mut self.sync_listing {
            Some((p, names)) if p == path => names.extend(entries.iter().cloned()),
            _ => {
                return Err(ApplyError {
                    op: op.name(),
                    what: path.to_string(),
                    source: io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "directory listing continued without its first part (out of sequence)",
                    ),
                })
            }
        }
        if !last {
            return Ok(());
        }
        let Some((_, keep)) = self.sync_listing.take() else {
            return Ok(());
        };
        let dir = sys::open_beneath(root, path, libc::O_PATH | libc::O_DIRECTORY, 0)
            .map_err(err(op, path))?;
        let mut removed = Vec::new();
        for e in sys::read_dir(dir.as_fd()).map_err(err(op, path))? {
            if !keep.contains(&e.name) && !self.local_only(dir.as_fd(), path, &e) {
                let name = sys::cstr(&e.name).map_err(err(op, path))?;
                sys::remove_all_at(dir.as_fd(), &name).map_err(err(op, path))?;
                removed.extend(path.join(&e.name).ok());
            }
        }
        for child in &removed {
            self.forget_sync_files(child);
        }
        let root = self.root.as_fd();
        if path.is_root() {
            set_meta_fd(root, meta).map_err(err(op, path))?;
        } else {
            let (pdir, name) = sys::open_parent(root, path).map_err(err(op, path))?;
            set_meta_at(pdir.as_fd(), &name, meta).map_err(err(op, path))?;
        }
        Ok(())
    }

    /// Run `f` on a writable descriptor of the target.
    fn with_writable(
        &self,
        op: &Op,
        target: &Target,
        f: impl FnOnce(BorrowedFd<'_>) -> io::Result<()>,
    ) -> io::Result<()> {
        match target {
            Target::Handle(h) => {
                let fd = self.handle(op, *h).map_err(|e| e.source)?;
                f(fd)
            }
            Target::Path(p) => {
                let fd =
                    sys::open_beneath(self.root.as_fd(), p, libc::O_WRONLY | libc::O_NOFOLLOW, 0)?;
                f(fd.as_fd())
            }
        }
    }

    /// Run `f` with a path the xattr calls can use: `/proc/self/fd/<handle>` (followed) or
    /// `/proc/self/fd/<parent>/<name>` (not followed).
    fn with_xattr_path<T>(
        &self,
        target: &Target,
        f: impl FnOnce(&CString, bool) -> io::Result<T>,
    ) -> io::Result<T> {
        match target {
            Target::Handle(h) => {
                let fd = self
                    .handles
                    .get(h)
                    .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))?;
                f(&sys::proc_path(fd.as_fd(), None), true)
            }
            Target::Path(p) if p.is_root() => f(&sys::proc_path(self.root.as_fd(), None), true),
            Target::Path(p) => {
                let (dir, name) = sys::open_parent(self.root.as_fd(), p)?;
                f(&sys::proc_path(dir.as_fd(), Some(&name)), false)
            }
        }
    }

    fn set_mtime(&self, target: &Target, mtime: mirrorkit_wire::Timespec) -> io::Result<()> {
        self.set_attr(target, None, None, None, None, Some(mtime))
    }

    fn set_attr(
        &self,
        target: &Target,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        atime: Option<mirrorkit_wire::Timespec>,
        mtime: Option<mirrorkit_wire::Timespec>,
    ) -> io::Result<()> {
        let a = atime.map_or(TimeSet::Omit, TimeSet::At);
        let m = mtime.map_or(TimeSet::Omit, TimeSet::At);
        let times = atime.is_some() || mtime.is_some();
        let owner = uid.is_some() || gid.is_some();
        let (u, g) = (uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX));
        // Owner first: chown clears setuid/setgid, and the mode sent is the final one.
        let on_fd = |fd: BorrowedFd<'_>| -> io::Result<()> {
            if owner {
                sys::fchown(fd, u, g)?;
            }
            if let Some(mode) = mode {
                sys::fchmod(fd, mode)?;
            }
            if times {
                sys::futimens(fd, a, m)?;
            }
            Ok(())
        };
        match target {
            Target::Handle(h) => on_fd(
                self.handles
                    .get(h)
                    .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))?
                    .as_fd(),
            )?,
            Target::Path(p) if p.is_root() => on_fd(self.root.as_fd())?,
            Target::Path(p) => {
                let (dir, name) = sys::open_parent(self.root.as_fd(), p)?;
                let dir = dir.as_fd();
                if owner {
                    sys::fchownat(dir, &name, u, g, libc::AT_SYMLINK_NOFOLLOW)?;
                }
                if let Some(mode) = mode {
                    let st = sys::fstatat(dir, &name, libc::AT_SYMLINK_NOFOLLOW)?;
                    // A symlink has no mode of its own: chmod would follow it.
                    if st.st_mode & libc::S_IFMT != libc::S_IFLNK {
                        sys::fchmodat(dir, &name, mode)?;
                    }
                }
                if times {
                    sys::utimensat(dir, &name, a, m, libc::AT_SYMLINK_NOFOLLOW)?;
                }
            }
        }
        Ok(())
    }
}

/// Owner, then mode (chown clears setuid/setgid), then time.
fn set_meta_fd(fd: BorrowedFd<'_>, meta: &Meta) -> io::Result<()> {
    sys::fchown(fd, meta.uid, meta.gid)?;
    sys::fchmod(fd, meta.mode & 0o7777)?;
    sys::futimens(fd, TimeSet::Omit, TimeSet::At(meta.mtime))
}

/// Whether an error says that a path, or a directory on it, does not exist (or is not a
/// directory, or is a symlink, which the strict resolution refuses to follow).
fn gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP)
    )
}

fn set_meta_at(dir: BorrowedFd<'_>, name: &CString, meta: &Meta) -> io::Result<()> {
    sys::fchownat(dir, name, meta.uid, meta.gid, libc::AT_SYMLINK_NOFOLLOW)?;
    sys::fchmodat(dir, name, meta.mode & 0o7777)?;
    sys::utimensat(
        dir,
        name,
        TimeSet::Omit,
        TimeSet::At(meta.mtime),
        libc::AT_SYMLINK_NOFOLLOW,
    )
}
