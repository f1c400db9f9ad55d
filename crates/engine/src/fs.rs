//! The FUSE file system mounted over the replicated directory on the primary.
//!
//! Each mutating request: take the ordering lock, perform the system call on the backing
//! directory, submit the operation (with the times the kernel gave the inodes) to the link,
//! release the lock, wait for the peer, reply. Reads and attribute queries never touch the
//! link. Errors are the backing file system's own errno, so applications see ext4's codes;
//! permissions are checked by the kernel (`default_permissions`) exactly as for ext4.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BsdFileFlags, Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use mirrorkit_store::sys::{self, TimeSet};
use mirrorkit_wire::{Op, SpecialKind, Target, TimeFix};

use tracing::debug;

use crate::core::{meta_of, time_set, Core, Handle, Mark, ROOT_INO};
use crate::passthrough::{may_register, stack_depth_for, Io, ReadAdmission};
use crate::selection::{self, Crossing};

/// How long the kernel may cache attributes and names. Nothing changes the backing tree
/// behind the mount, so the kernel's cache stays true; one second bounds any surprise.
const TTL: Duration = Duration::from_secs(1);
/// Largest write the kernel sends in one request.
pub const MAX_WRITE_BYTES: u32 = 1 << 20;

/// The file system handed to fuser.
pub struct MirrorFs {
    pub core: Arc<Core>,
}

/// An open admitted by `Passthrough` and not yet a handle: released if the open fails.
struct Admitted<'a> {
    core: &'a Core,
    ino: u64,
    io: Io,
    armed: bool,
}

impl<'a> Admitted<'a> {
    fn new(core: &'a Core, ino: u64, io: Io) -> Self {
        Admitted {
            core,
            ino,
            io,
            armed: true,
        }
    }

    fn io(&self) -> Io {
        self.io
    }

    /// The open became a handle, which `release` accounts for.
    fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.core.passthrough.released(self.ino, self.io);
        }
    }
}

fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

fn errno_of(e: &std::io::Error) -> Errno {
    let n = sys::errno(e);
    if n == libc::EMFILE || n == libc::ENFILE {
        out_of_descriptors(n);
    }
    Errno::from_i32(n)
}

/// Seconds since the epoch of the last "out of descriptors" error logged (one per 10 s).
static DESCRIPTORS_LOGGED: AtomicU64 = AtomicU64::new(0);

/// The engine could not open a file: say why applications get EMFILE/ENFILE from the mount.
fn out_of_descriptors(errno: i32) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = DESCRIPTORS_LOGGED.load(Ordering::Relaxed);
    if now < last + 10
        || DESCRIPTORS_LOGGED
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out-pointer.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    let which = if errno == libc::ENFILE {
        "the system's limit on open files (fs.file-max)".to_string()
    } else {
        format!("this process's limit on open files ({})", lim.rlim_cur)
    };
    tracing::error!(
        "the mirror cannot open a file: {which} is reached. The primary keeps one open per file \
         the kernel caches through the mount; applications get \"Too many open files\" until \
         the kernel forgets some. Raise the limit (LimitNOFILE= of the systemd unit, fs.nr_open)"
    );
}

fn system_time(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec.clamp(0, 999_999_999) as u32)
    } else {
        UNIX_EPOCH - Duration::new(sec.unsigned_abs(), 0)
            + Duration::from_nanos(nsec.clamp(0, 999_999_999) as u64)
    }
}

fn file_type(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn dtype(d: u8) -> FileType {
    match d {
        libc::DT_DIR => FileType::Directory,
        libc::DT_LNK => FileType::Symlink,
        libc::DT_FIFO => FileType::NamedPipe,
        libc::DT_SOCK => FileType::Socket,
        libc::DT_CHR => FileType::CharDevice,
        libc::DT_BLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn names(name: &OsStr) -> std::io::Result<std::ffi::CString> {
    sys::cstr(sys::os_bytes(name))
}

impl MirrorFs {
    fn attr(&self, st: &libc::stat) -> FileAttr {
        FileAttr {
            ino: INodeNo(self.core.fuse_ino(st.st_ino)),
            size: st.st_size as u64,
            blocks: st.st_blocks as u64,
            atime: system_time(st.st_atime, st.st_atime_nsec),
            mtime: system_time(st.st_mtime, st.st_mtime_nsec),
            ctime: system_time(st.st_ctime, st.st_ctime_nsec),
            crtime: UNIX_EPOCH,
            kind: file_type(st.st_mode),
            perm: (st.st_mode & 0o7777) as u16,
            nlink: st.st_nlink as u32,
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: st.st_rdev as u32,
            blksize: st.st_blksize as u32,
            flags: 0,
        }
    }

    /// The parent's descriptor and the entry's name as a C string.
    fn parent_and_name(
        &self,
        parent: INodeNo,
        name: &OsStr,
    ) -> Result<(Arc<OwnedFd>, std::ffi::CString), Errno> {
        let pfd = self.parent_fd(parent)?;
        let c = names(name).map_err(|e| errno_of(&e))?;
        Ok((pfd, c))
    }

    fn parent_fd(&self, parent: INodeNo) -> Result<Arc<OwnedFd>, Errno> {
        self.core.node_fd(parent.0).ok_or(Errno::ESTALE)
    }

    /// Look `parent/name` up in the backing tree and take a reference on its node.
    fn do_lookup(&self, parent: INodeNo, name: &OsStr) -> Result<FileAttr, Errno> {
        let pfd = self.parent_fd(parent)?;
        let c = names(name).map_err(|e| errno_of(&e))?;
        let fd = sys::openat2(
            pfd.as_fd(),
            &c,
            libc::O_PATH | libc::O_NOFOLLOW,
            0,
            sys::RESOLVE_STRICT,
        )
        .map_err(|e| errno_of(&e))?;
        let st = sys::fstat(fd.as_fd()).map_err(|e| errno_of(&e))?;
        self.core.remember(parent.0, sys::os_bytes(name), fd, &st);
        Ok(self.attr(&st))
    }

    /// Owner of a new inode made by root on behalf of the caller; the group stays the
    /// directory's when it is setgid (the kernel already gave it).
    fn chown_new(
        &self,
        req: &Request,
        pfd: &OwnedFd,
        name: &std::ffi::CStr,
    ) -> std::io::Result<()> {
        let pst = sys::fstat(pfd.as_fd())?;
        let gid = if pst.st_mode & libc::S_ISGID != 0 {
            u32::MAX
        } else {
            req.gid()
        };
        let st = sys::fstatat(pfd.as_fd(), name, libc::AT_SYMLINK_NOFOLLOW)?;
        if st.st_uid == req.uid() && (gid == u32::MAX || st.st_gid == gid) {
            return Ok(());
        }
        sys::fchownat(pfd.as_fd(), name, req.uid(), gid, libc::AT_SYMLINK_NOFOLLOW)?;
        // chown clears setuid/setgid even for root, but the creator keeps them on ext4 (the
        // kernel already stripped what it must from the mode it passed): put them back.
        let kept = libc::S_ISUID | libc::S_ISGID;
        if st.st_mode & kept != 0 && st.st_mode & libc::S_IFMT != libc::S_IFLNK {
            sys::fchmodat(pfd.as_fd(), name, st.st_mode & 0o7777)?;
        }
        Ok(())
    }

    /// After a namespace change in `parent`: the entry made (looked up), and fixes.
    fn made_entry(&self, parent: INodeNo, name: &OsStr) -> Result<(FileAttr, libc::stat), Errno> {
        let attr = self.do_lookup(parent, name)?;
        let pfd = self.parent_fd(parent)?;
        let c = names(name).map_err(|e| errno_of(&e))?;
        let st =
            sys::fstatat(pfd.as_fd(), &c, libc::AT_SYMLINK_NOFOLLOW).map_err(|e| errno_of(&e))?;
        Ok((attr, st))
    }

    fn dirty_entry(&self, parent: INodeNo, name: &OsStr) -> Vec<Mark> {
        let mut v = Vec::new();
        if let Some(p) = self.core.child_path(parent.0, sys::os_bytes(name)) {
            v.push(Mark::Entry(p));
        }
        if let Some(p) = self.core.path_of(parent.0) {
            v.push(Mark::Meta(p));
        }
        v
    }

    fn fixes(&self, dirs: &[INodeNo]) -> Vec<TimeFix> {
        let mut v: Vec<TimeFix> = Vec::new();
        for d in dirs {
            if let Some(f) = self.core.dir_fix(d.0) {
                if !v.iter().any(|x| x.target == f.target) {
                    v.push(f);
                }
            }
        }
        v
    }

    /// Make a new non-regular inode (dir, node, symlink) and replicate it.
    fn make_entry(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        make: impl FnOnce(&OwnedFd, &std::ffi::CStr) -> std::io::Result<()>,
        op: impl FnOnce(mirrorkit_wire::RelPath, &libc::stat) -> Op,
        reply: ReplyEntry,
    ) {
        let (pfd, c) = match self.parent_and_name(parent, name) {
            Ok(x) => x,
            Err(e) => return reply.error(e),
        };
        let order = match self.core.order_marked(|| self.dirty_entry(parent, name)) {
            Ok(g) => g,
            Err(e) => return reply.error(errno_of(&e)),
        };
        if let Err(e) = make(&pfd, &c) {
            return reply.error(errno_of(&e));
        }
        // The entry exists from here: whatever fails next (out of descriptors for its lookup,
        // say), the peer gets it as it is here, and the application the error.
        let made = self
            .chown_new(req, &pfd, &c)
            .map_err(|e| errno_of(&e))
            .and_then(|()| self.made_entry(parent, name));
        let st = match &made {
            Ok((_, st)) => Some(*st),
            Err(_) => sys::fstatat(pfd.as_fd(), &c, libc::AT_SYMLINK_NOFOLLOW).ok(),
        };
        let t = match (self.core.child_path(parent.0, sys::os_bytes(name)), st) {
            (Some(path), Some(st)) if self.core.replicates(&path, is_dir(&st)) => {
                let fixes = self.fixes(&[parent]);
                self.core.submit(op(path, &st), &[], fixes)
            }
            _ => None,
        };
        drop(order);
        self.core.wait(t);
        match made {
            Ok((attr, _)) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn open_handle(
        &self,
        ino: INodeNo,
        flags: i32,
        created: Option<OwnedFd>,
        io: Io,
    ) -> Result<(u64, Arc<Handle>), Errno> {
        let fd = match created {
            Some(fd) => fd,
            None => self.open_fd(ino, flags)?,
        };
        Ok(self.insert_handle(ino, flags, fd, io))
    }

    /// The engine's own descriptor of the backing file for an open with `flags`.
    fn open_fd(&self, ino: INodeNo, flags: i32) -> Result<OwnedFd, Errno> {
        let acc = flags & libc::O_ACCMODE;
        let node = self.core.node_fd(ino.0).ok_or(Errno::ESTALE)?;
        let mut oflags = acc | (flags & (libc::O_TRUNC | libc::O_NOATIME));
        oflags |= libc::O_CLOEXEC;
        let p = self.core.proc_path(&node);
        // SAFETY: a valid C string; the descriptor returned is owned below.
        let raw = unsafe { libc::open(p.as_ptr(), oflags) };
        if raw < 0 {
            return Err(errno_of(&std::io::Error::last_os_error()));
        }
        // SAFETY: open returned a fresh descriptor.
        Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) })
    }

    fn insert_handle(&self, ino: INodeNo, flags: i32, fd: OwnedFd, io: Io) -> (u64, Arc<Handle>) {
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let sync = if flags & libc::O_SYNC == libc::O_SYNC {
            Some(false)
        } else if flags & libc::O_DSYNC != 0 {
            Some(true)
        } else {
            None
        };
        let h = Arc::new(Handle {
            fd,
            ino: ino.0,
            writable,
            sync,
            remote_session: AtomicU64::new(0),
            io,
        });
        let fh = self.core.new_handle_arc(h.clone());
        (fh, h)
    }

    /// A read-only open without `O_TRUNC`: passed through to the backing file when the kernel
    /// and the inode's other opens allow it (`crate::passthrough`), else through the engine.
    fn open_read_only(&self, ino: INodeNo, flags: i32, reply: ReplyOpen) {
        let fd = match self.open_fd(ino, flags) {
            Ok(fd) => fd,
            Err(e) => return reply.error(e),
        };
        let admission = self
            .core
            .passthrough
            .admit_read(&self.core.mirror, ino.0, || reply.open_backing(fd.as_fd()));
        match admission {
            Some(ReadAdmission::Passthrough(id)) => {
                let (fh, _) = self.insert_handle(ino, flags, fd, Io::Passthrough);
                // No FOPEN_KEEP_CACHE: the kernel refuses it with passthrough.
                reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id);
            }
            Some(ReadAdmission::Caching) => {
                let (fh, _) = self.insert_handle(ino, flags, fd, Io::Caching);
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
            }
            None => {
                let (fh, _) = self.insert_handle(ino, flags, fd, Io::Untracked);
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
            }
        }
    }

    /// fsync of a handle or directory: both disks, in parallel.
    fn durable(
        &self,
        fd: &OwnedFd,
        remote: Option<crate::link::Ticket>,
        datasync: bool,
    ) -> Result<(), Errno> {
        let local = sys::fsync(fd.as_fd(), datasync);
        self.core.wait(remote);
        local.map_err(|e| errno_of(&e))
    }
}

impl fuser::Filesystem for MirrorFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE_BYTES);
        // The kernel offers its own ceiling (its default 128 KiB) and keeps the smaller of the
        // two: take what it allows; `mount` raises the mount's readahead afterwards.
        if let Err(max) = config.set_max_readahead(MAX_WRITE_BYTES) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config.set_max_background(64);
        // Never FUSE_WRITEBACK_CACHE: a write must reach us (and the peer) before it returns
        // (and the kernel refuses passthrough with it).
        for cap in [
            InitFlags::FUSE_ATOMIC_O_TRUNC,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_ASYNC_DIO,
        ] {
            let _ = config.add_capabilities(cap);
        }
        let pt = &self.core.passthrough;
        let outcome = if pt.requested() {
            may_register().and_then(|()| {
                config
                    .add_capabilities(InitFlags::FUSE_PASSTHROUGH)
                    .map_err(|_| {
                        "the kernel does not offer FUSE passthrough (it needs Linux 6.9 or later \
                         built with CONFIG_FUSE_PASSTHROUGH)"
                            .to_string()
                    })?;
                let depth = stack_depth_for(self.core.root.as_fd());
                config
                    .set_max_stack_depth(depth)
                    .map(drop)
                    .map_err(|max| format!("stacking depth {depth} refused (at most {max})"))
            })
        } else {
            Err(pt.reason())
        };
        pt.initialised(&self.core.mirror, outcome);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.do_lookup(parent, name) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.core.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let st = match fh.and_then(|f| self.core.handle(f.0)) {
            Some(h) => sys::fstat(h.fd.as_fd()),
            None => match self.core.node_fd(ino.0) {
                Some(fd) => sys::fstat(fd.as_fd()),
                None => return reply.error(Errno::ESTALE),
            },
        };
        match st {
            Ok(st) => reply.attr(&TTL, &self.attr(&st)),
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let Some(node) = self.core.node_fd(ino.0) else {
            return reply.error(Errno::ESTALE);
        };
        let kind = self.core.node_kind(ino.0).unwrap_or(libc::S_IFREG);
        let handle = fh.and_then(|f| self.core.handle(f.0).map(|h| (f.0, h)));
        let order = match self.core.order_marked(|| {
            let mut v = self.core.meta_node(ino.0);
            if let Some(size) = size {
                v.push(self.core.data_mark(ino.0, size, u64::MAX));
            }
            v
        }) {
            Ok(g) => g,
            Err(e) => return reply.error(errno_of(&e)),
        };
        // The peer's target: the handle it holds if this one is open for writing there,
        // else the path (or another handle of the inode).
        let remote_handle = handle.as_ref().filter(|(_, h)| {
            h.writable
                && self.core.link.in_sync_session()
                    == Some(h.remote_session.load(Ordering::Relaxed))
        });
        let target = match remote_handle {
            Some((fh, _)) => Some(Target::Handle(*fh)),
            None => self.core.peer_target(ino.0, "attribute change"),
        };
        let proc = self.core.proc_path(&node);
        let mut tickets = Vec::new();
        let result: std::io::Result<libc::stat> = (|| {
            if let Some(size) = size {
                match &handle {
                    Some((_, h)) if h.writable => sys::ftruncate(h.fd.as_fd(), size)?,
                    _ => {
                        // SAFETY: valid C string; the descriptor is owned right after.
                        let raw =
                            unsafe { libc::open(proc.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
                        if raw < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        // SAFETY: fresh descriptor from open.
                        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
                        sys::ftruncate(fd.as_fd(), size)?;
                    }
                }
                let st = sys::fstat(node.as_fd())?;
                if let Some(t) = &target {
                    let fix = TimeFix {
                        target: t.clone(),
                        mtime: sys::timespec(st.st_mtime, st.st_mtime_nsec),
                    };
                    tickets.push(self.core.submit(
                        Op::Truncate {
                            target: t.clone(),
                            size,
                        },
                        &[],
                        vec![fix],
                    ));
                }
            }
            if uid.is_some() || gid.is_some() {
                sys::fchownat(
                    node.as_fd(),
                    c"",
                    uid.unwrap_or(u32::MAX),
                    gid.unwrap_or(u32::MAX),
                    libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
                )?;
            }
            if let Some(mode) = mode {
                if kind != libc::S_IFLNK {
                    // SAFETY: valid C string.
                    let r = unsafe { libc::chmod(proc.as_ptr(), mode & 0o7777) };
                    if r < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
            }
            let (a, m) = (time_set(atime), time_set(mtime));
            if atime.is_some() || mtime.is_some() {
                if kind == libc::S_IFLNK {
                    let (p, name) = self
                        .link_parent(ino.0)
                        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ESTALE))?;
                    let c = sys::cstr(&name)?;
                    sys::utimensat(p.as_fd(), &c, a, m, libc::AT_SYMLINK_NOFOLLOW)?;
                } else {
                    // SAFETY: AT_FDCWD with an absolute path.
                    let cwd = unsafe { std::os::fd::BorrowedFd::borrow_raw(libc::AT_FDCWD) };
                    sys::utimensat(cwd, &proc, a, m, 0)?;
                }
            }
            let st = sys::fstat(node.as_fd())?;
            if mode.is_some()
                || uid.is_some()
                || gid.is_some()
                || atime.is_some()
                || mtime.is_some()
            {
                if let Some(t) = &target {
                    let ts = |set: TimeSet, sec, nsec| match set {
                        TimeSet::Omit => None,
                        _ => Some(sys::timespec(sec, nsec)),
                    };
                    let owner = uid.is_some() || gid.is_some();
                    tickets.push(self.core.submit(
                        Op::SetAttr {
                            target: t.clone(),
                            // chown may clear setuid bits: send the resulting mode.
                            mode: (mode.is_some() || owner).then_some(st.st_mode & 0o7777),
                            uid: owner.then_some(st.st_uid),
                            gid: owner.then_some(st.st_gid),
                            atime: ts(a, st.st_atime, st.st_atime_nsec),
                            mtime: ts(m, st.st_mtime, st.st_mtime_nsec),
                        },
                        &[],
                        Vec::new(),
                    ));
                }
            }
            Ok(st)
        })();
        drop(order);
        for t in tickets {
            self.core.wait(t);
        }
        match result {
            Ok(st) => reply.attr(&TTL, &self.attr(&st)),
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let Some(fd) = self.core.node_fd(ino.0) else {
            return reply.error(Errno::ESTALE);
        };
        match sys::readlinkat(fd.as_fd(), c"") {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let fmt = mode & libc::S_IFMT;
        let kind = match fmt {
            libc::S_IFIFO => SpecialKind::Fifo,
            libc::S_IFSOCK => SpecialKind::Socket,
            libc::S_IFCHR => SpecialKind::Char,
            libc::S_IFBLK => SpecialKind::Block,
            libc::S_IFREG | 0 => {
                // mknod of a regular file: create it empty.
                return self.make_entry(
                    req,
                    parent,
                    name,
                    |p, c| {
                        sys::openat2(
                            p.as_fd(),
                            c,
                            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW,
                            mode & !umask & 0o7777,
                            sys::RESOLVE_STRICT,
                        )
                        .map(drop)
                    },
                    |path, st| Op::Create {
                        path,
                        meta: meta_of(st),
                        excl: true,
                        truncate: false,
                        handle: None,
                    },
                    reply,
                );
            }
            _ => return reply.error(Errno::EINVAL),
        };
        self.make_entry(
            req,
            parent,
            name,
            |p, c| sys::mknodat(p.as_fd(), c, fmt | (mode & !umask & 0o7777), rdev as u64),
            |path, st| Op::Mknod {
                path,
                meta: meta_of(st),
                kind,
                rdev: st.st_rdev,
            },
            reply,
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.make_entry(
            req,
            parent,
            name,
            |p, c| sys::mkdirat(p.as_fd(), c, mode & !umask & 0o7777),
            |path, st| Op::Mkdir {
                path,
                meta: meta_of(st),
            },
            reply,
        );
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let t = target.as_os_str().as_encoded_bytes().to_vec();
        let tc = match sys::cstr(&t) {
            Ok(c) => c,
            Err(e) => return reply.error(errno_of(&e)),
        };
        self.make_entry(
            req,
            parent,
            link_name,
            |p, c| sys::symlinkat(&tc, p.as_fd(), c),
            |path, st| Op::Symlink {
                path,
                target: t.clone(),
                uid: st.st_uid,
                gid: st.st_gid,
                mtime: sys::timespec(st.st_mtime, st.st_mtime_nsec),
            },
            reply,
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, 0, reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, libc::AT_REMOVEDIR, reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let flags = flags.bits();
        if flags & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) != 0 {
            return reply.error(Errno::EINVAL);
        }
        let (pfd, npfd) = match (self.parent_fd(parent), self.parent_fd(newparent)) {
            (Ok(a), Ok(b)) => (a, b),
            _ => return reply.error(Errno::ESTALE),
        };
        let (c, nc) = match (names(name), names(newname)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => return reply.error(errno_of(&e)),
        };
        let order = match self.core.order_marked(|| {
            let mut v = self.dirty_entry(parent, name);
            v.extend(self.dirty_entry(newparent, newname));
            v
        }) {
            Ok(g) => g,
            Err(e) => return reply.error(errno_of(&e)),
        };
        let src = sys::fstatat(pfd.as_fd(), &c, libc::AT_SYMLINK_NOFOLLOW).ok();
        let dst = sys::fstatat(npfd.as_fd(), &nc, libc::AT_SYMLINK_NOFOLLOW).ok();
        let from = self.core.child_path(parent.0, sys::os_bytes(name));
        let to = self.core.child_path(newparent.0, sys::os_bytes(newname));
        let crossing = match (&from, &to, &src) {
            (Some(from), Some(to), Some(s)) => {
                let there = self.rename_crossing(&pfd, &c, from, to, s);
                match (&dst, flags & libc::RENAME_EXCHANGE != 0) {
                    // An exchange moves the destination entry the other way: done on the
                    // peer only if both entries are replicated before and after, else not.
                    (Some(d), true) => match (there, self.rename_crossing(&npfd, &nc, to, from, d))
                    {
                        (Crossing::Inside, Crossing::Inside) => Crossing::Inside,
                        (Crossing::Outside, Crossing::Outside) => Crossing::Outside,
                        (Crossing::Refused(why), _) | (_, Crossing::Refused(why)) => {
                            Crossing::Refused(why)
                        }
                        _ => Crossing::Refused(
                            "an exchanged entry would cross the boundary of the replicated set",
                        ),
                    },
                    _ => there,
                }
            }
            _ => Crossing::Inside,
        };
        if let Crossing::Refused(why) = crossing {
            debug!(mirror = %self.core.mirror, from = ?from, to = ?to, "rename refused with EXDEV: {why}");
            return reply.error(Errno::EXDEV);
        }
        if let Err(e) = sys::renameat2(pfd.as_fd(), &c, npfd.as_fd(), &nc, flags) {
            return reply.error(errno_of(&e));
        }
        let (nb, nnb) = (sys::os_bytes(name), sys::os_bytes(newname));
        if let Some(s) = &src {
            let ino = self.core.fuse_ino(s.st_ino);
            self.core
                .move_link(ino, Some((parent.0, nb)), newparent.0, nnb);
        }
        if let Some(d) = &dst {
            let ino = self.core.fuse_ino(d.st_ino);
            if flags & libc::RENAME_EXCHANGE != 0 {
                self.core
                    .move_link(ino, Some((newparent.0, nnb)), parent.0, nb);
            } else if src.map(|s| s.st_ino) != Some(d.st_ino) {
                self.core.drop_link(ino, newparent.0, nnb);
            }
        }
        let t = match (from, to) {
            (Some(_), Some(_)) if crossing == Crossing::Outside => None,
            (Some(from), Some(_)) if crossing == Crossing::Leaves => {
                let ino = src.map(|s| self.core.fuse_ino(s.st_ino));
                let closed = ino.and_then(|ino| selection::close_leaving_file(&self.core, ino));
                let fixes = self.fixes(&[parent]);
                let op = if src.is_some_and(|s| is_dir(&s)) {
                    Op::SyncRemove { path: from }
                } else {
                    Op::Unlink { path: from }
                };
                self.core.submit(op, &[], fixes).or(closed)
            }
            (Some(_), Some(to)) if crossing == Crossing::Enters => {
                let ino = src.map(|s| self.core.fuse_ino(s.st_ino));
                let sent = match (ino, self.core.link.in_sync_session()) {
                    (Some(ino), Some(_)) => self
                        .core
                        .node_fd(ino)
                        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ESTALE))
                        .and_then(|fd| selection::send_entering_file(&self.core, ino, &fd, &to)),
                    // Not in sync: the marks taken above list the new name for the next
                    // synchronisation.
                    _ => Ok(None),
                };
                match sent {
                    Ok(t) => t,
                    Err(e) => {
                        self.core.link.lost_current(&format!(
                            "cannot read {to}, renamed into the replicated set, to send it: {e}"
                        ));
                        None
                    }
                }
            }
            (Some(from), Some(to)) => {
                let fixes = self.fixes(&[parent, newparent]);
                self.core.submit(
                    Op::Rename {
                        from: from.clone(),
                        to,
                        flags,
                    },
                    &[],
                    fixes,
                )
            }
            _ => {
                self.core
                    .link
                    .lost_current("rename of an entry whose path this node does not know");
                None
            }
        };
        drop(order);
        self.core.wait(t);
        reply.ok();
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let (Some(fd), Ok(npfd)) = (self.core.node_fd(ino.0), self.parent_fd(newparent)) else {
            return reply.error(Errno::ESTALE);
        };
        let nc = match names(newname) {
            Ok(c) => c,
            Err(e) => return reply.error(errno_of(&e)),
        };
        let order = match self.core.order_marked(|| {
            let mut v = self.core.dirty_node(ino.0);
            v.extend(self.dirty_entry(newparent, newname));
            v
        }) {
            Ok(g) => g,
            Err(e) => return reply.error(errno_of(&e)),
        };
        let existing = self.core.path_of(ino.0);
        let new = self.core.child_path(newparent.0, sys::os_bytes(newname));
        let replicated = match (&existing, &new) {
            (Some(existing), Some(new)) => match selection::link_side(&self.core, existing, new) {
                Some(r) => r,
                None => {
                    debug!(mirror = %self.core.mirror, %existing, %new, "link refused with EXDEV: one name is replicated, the other is not");
                    return reply.error(Errno::EXDEV);
                }
            },
            _ => true,
        };
        if let Err(e) = sys::linkat(fd.as_fd(), c"", npfd.as_fd(), &nc, libc::AT_EMPTY_PATH) {
            return reply.error(errno_of(&e));
        }
        // The name exists from here: the peer gets it even if its lookup fails.
        let made = self.made_entry(newparent, newname);
        let t = match (existing, new) {
            _ if !replicated => None,
            (Some(existing), Some(new)) => {
                let fixes = self.fixes(&[newparent]);
                self.core.submit(Op::Link { existing, new }, &[], fixes)
            }
            _ => {
                self.core
                    .link
                    .lost_current("hard link of an inode whose path this node does not know");
                None
            }
        };
        drop(order);
        self.core.wait(t);
        match made {
            Ok((attr, _)) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let flags = flags.0;
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
        if !writable && flags & libc::O_TRUNC == 0 {
            return self.open_read_only(ino, flags, reply);
        }
        // Through the engine: first wait for passthrough opens of the inode to close (the
        // kernel refuses this open while any is left). Not under the ordering lock.
        let what = if writable {
            "an open for writing"
        } else {
            "an open with O_TRUNC"
        };
        let admitted = match self
            .core
            .passthrough
            .admit_caching(&self.core.mirror, ino.0, what)
        {
            Ok(io) => Admitted::new(&self.core, ino.0, io),
            Err(e) => return reply.error(Errno::from_i32(e)),
        };
        let order = match self.core.order_marked(|| {
            if flags & libc::O_TRUNC != 0 {
                vec![self.core.data_mark(ino.0, 0, u64::MAX)]
            } else {
                Vec::new()
            }
        }) {
            Ok(g) => g,
            Err(e) => return reply.error(errno_of(&e)),
        };
        if !writable {
            // O_RDONLY|O_TRUNC truncates on Linux: replicate the truncation, not a handle.
            let (fh, h) = match self.open_handle(ino, flags, None, admitted.io()) {
                Ok(x) => {
                    admitted.keep();
                    x
                }
                Err(e) => return reply.error(e),
            };
            let t = match (self.core.path_of(ino.0), sys::fstat(h.fd.as_fd())) {
                (Some(path), Ok(st)) if self.core.replicates(&path, false) => self.core.submit(
                    Op::Truncate {
                        target: Target::Path(path.clone()),
                        size: 0,
                    },
                    &[],
                    vec![TimeFix {
                        target: Target::Path(path),
                        mtime: sys::timespec(st.st_mtime, st.st_mtime_nsec),
                    }],
                ),
                _ => None,
            };
            drop(order);
            self.core.wait(t);
            return reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
        }
        let (fh, h) = match self.open_handle(ino, flags, None, admitted.io()) {
            Ok(x) => {
                admitted.keep();
                x
            }
            Err(e) => return reply.error(e),
        };
        let truncate = flags & libc::O_TRUNC != 0;
        let t = match self.core.path_of(ino.0) {
            Some(path) if self.core.replicates(&path, false) => {
                let fixes = if truncate {
                    sys::fstat(h.fd.as_fd())
                        .map(|st| {
                            vec![TimeFix {
                                target: Target::Handle(fh),
                                mtime: sys::timespec(st.st_mtime, st.st_mtime_nsec),
                            }]
                        })
                        .unwrap_or_default()
                } else {
                    Vec::new()
                };
                let t = self.core.submit(
                    Op::Open {
                        path,
                        handle: fh,
                        truncate,
                    },
                    &[],
                    fixes,
                );
                if let Some(s) = self.core.link.in_sync_session() {
                    if t.is_some() {
                        h.remote_session.store(s, Ordering::Relaxed);
                    }
                }
                t
            }
            _ => None,
        };
        drop(order);
        self.core.wait(t);
        reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(h) = self.core.handle(fh.0) else {
            return reply.error(Errno::EBADF);
        };
        self.core
            .passthrough
            .counters
            .engine_reads
            .fetch_add(1, Ordering::Relaxed);
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        while done < buf.len() {
            match sys::pread(h.fd.as_fd(), &mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return reply.error(errno_of(&e)),
            }
        }
        reply.data(&buf[..done]);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let Some(h) = self.core.handle(fh.0) else {
            return reply.error(Errno::EBADF);
        };
        // The kernel's offset, also for O_APPEND: it computed the end of the file under the
        // inode lock and put the data there in its page cache. Writes from the page cache
        // (mmap writeback) come through any writable handle, O_APPEND ones included.
        let order = match self.core.order_marked(|| {
            vec![self
                .core
                .data_mark(h.ino, offset, offset + data.len() as u64)]
        }) {
            Ok(g) => g,
            Err(e) => return reply.error(errno_of(&e)),
        };
        let n = match sys::pwrite(h.fd.as_fd(), data, offset) {
            Ok(n) => n,
            Err(e) => {
                let t = self.after_refused_change(&h, fh.0, None);
                drop(order);
                self.core.wait(t);
                return reply.error(errno_of(&e));
            }
        };
        let mut tickets = [None, None];
        if n > 0 {
            let fixes = match sys::fstat(h.fd.as_fd()) {
                Ok(st) => vec![TimeFix {
                    target: Target::Handle(fh.0),
                    mtime: sys::timespec(st.st_mtime, st.st_mtime_nsec),
                }],
                Err(_) => Vec::new(),
            };
            tickets[0] = self.core.submit_on_handle(
                &h,
                Op::Write {
                    handle: fh.0,
                    offset,
                },
                &data[..n],
                fixes,
            );
            if let Some(datasync) = h.sync {
                tickets[1] = self.core.submit_on_handle(
                    &h,
                    Op::Fsync {
                        handle: fh.0,
                        datasync,
                    },
                    &[],
                    Vec::new(),
                );
            }
        }
        drop(order);
        if let Some(datasync) = h.sync {
            if let Err(e) = self.durable(&h.fd, tickets[1], datasync) {
                return reply.error(e);
            }
        }
        self.core.wait(tickets[0]);
        reply.written(n as u32);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing is buffered here: every write already reached both nodes.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if let Some(h) = self.core.handle(fh.0) {
            // The ordering lock only for writable handles, which the peer may hold too.
            let _order = h.writable.then(|| self.core.order());
            if h.writable {
                // Not waited for: closing is not a durability point.
                if let Some(s) = self.core.link.in_sync_session() {
                    if h.remote_session.load(Ordering::Relaxed) == s {
                        self.core
                            .submit(Op::Close { handle: fh.0 }, &[], Vec::new());
                    }
                }
            }
            self.core.remove_handle(fh.0);
            self.core.passthrough.released(h.ino, h.io);
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let Some(h) = self.core.handle(fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let order = self.core.order();
        let t = if h.writable {
            self.core.submit_on_handle(
                &h,
                Op::Fsync {
                    handle: fh.0,
                    datasync,
                },
                &[],
                Vec::new(),
            )
        } else {
            match self.core.path_of(ino.0) {
                Some(path) if self.core.replicates(&path, false) => {
                    self.core.submit(Op::FsyncPath { path }, &[], Vec::new())
                }
                Some(_) => None,
                None => self.core.submit(Op::Barrier, &[], Vec::new()),
            }
        };
        drop(order);
        match self.durable(&h.fd, t, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let Some(node) = self.core.node_fd(ino.0) else {
            return reply.error(Errno::ESTALE);
        };
        let p = self.core.proc_path(&node);
        // SAFETY: valid C string; the descriptor is owned right after.
        let raw = unsafe {
            libc::open(
                p.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            return reply.error(errno_of(&std::io::Error::last_os_error()));
        }
        // SAFETY: fresh descriptor.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
        let h = Handle {
            fd,
            ino: ino.0,
            writable: false,
            sync: None,
            remote_session: AtomicU64::new(0),
            io: Io::Untracked,
        };
        let fh = self.core.new_handle(h);
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(h) = self.core.handle(fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let entries = match sys::read_dir(h.fd.as_fd()) {
            Ok(e) => e,
            Err(e) => return reply.error(errno_of(&e)),
        };
        let parent = if ino.0 == ROOT_INO {
            ROOT_INO
        } else {
            self.core.node_parent(ino.0).unwrap_or(ROOT_INO)
        };
        let dots = [
            (ino.0, FileType::Directory, b".".to_vec()),
            (parent, FileType::Directory, b"..".to_vec()),
        ];
        let all = dots.into_iter().chain(
            entries
                .into_iter()
                .map(|e| (self.core.fuse_ino(e.ino), dtype(e.kind), e.name)),
        );
        for (i, (ino, kind, name)) in all.enumerate().skip(offset as usize) {
            use std::os::unix::ffi::OsStrExt;
            if reply.add(INodeNo(ino), (i + 1) as u64, kind, OsStr::from_bytes(&name)) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.core.remove_handle(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let Some(h) = self.core.handle(fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let order = self.core.order();
        let t = match self.core.path_of(ino.0) {
            Some(path) if self.core.replicates(&path, true) => {
                self.core.submit(Op::FsyncPath { path }, &[], Vec::new())
            }
            _ => None,
        };
        drop(order);
        match self.durable(&h.fd, t, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let mut s = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
        // SAFETY: valid descriptor and out pointer.
        let r = unsafe {
            libc::fstatvfs(
                std::os::fd::AsRawFd::as_raw_fd(&self.core.root),
                s.as_mut_ptr(),
            )
        };
        if r < 0 {
            return reply.error(errno_of(&std::io::Error::last_os_error()));
        }
        // SAFETY: fstatvfs succeeded.
        let s = unsafe { s.assume_init() };
        reply.statfs(
            s.f_blocks,
            s.f_bfree,
            s.f_bavail,
            s.f_files,
            s.f_ffree,
            s.f_bsize as u32,
            s.f_namemax as u32,
            s.f_frsize as u32,
        );
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let c = match names(name) {
            Ok(c) => c,
            Err(e) => return reply.error(errno_of(&e)),
        };
        let order = match self.core.order_marked(|| self.core.dirty_node(ino.0)) {
            Ok(g) => g,
            Err(e) => return reply.error(errno_of(&e)),
        };
        if let Err(e) = self.with_xattr_path(ino.0, |p, follow| {
            sys::setxattr(p, follow, &c, value, flags)
        }) {
            return reply.error(errno_of(&e));
        }
        let t = match self.core.peer_target(ino.0, "extended attribute change") {
            Some(target) => self.core.submit(
                Op::SetXattr {
                    target,
                    name: sys::os_bytes(name).to_vec(),
                    flags,
                },
                value,
                Vec::new(),
            ),
            None => None,
        };
        drop(order);
        self.core.wait(t);
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let c = match names(name) {
            Ok(c) => c,
            Err(e) => return reply.error(errno_of(&e)),
        };
        let mut buf = vec![0u8; size as usize];
        match self.with_xattr_path(ino.0, |p, follow| sys::getxattr(p, follow, &c, &mut buf)) {
            Ok(n) if size == 0 => reply.size(n as u32),
            Ok(n) => reply.data(&buf[..n]),
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let mut buf = vec![0u8; size as usize];
        match self.with_xattr_path(ino.0, |p, follow| sys::listxattr(p, follow, &mut buf)) {
            Ok(n) if size == 0 => reply.size(n as u32),
            Ok(n) => reply.data(&buf[..n]),
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let c = match names(name) {
            Ok(c) => c,
            Err(e) => return reply.error(errno_of(&e)),
        };
        let order = match self.core.order_marked(|| self.core.dirty_node(ino.0)) {
            Ok(g) => g,
            Err(e) => return reply.error(errno_of(&e)),
        };
        if let Err(e) = self.with_xattr_path(ino.0, |p, follow| sys::removexattr(p, follow, &c)) {
            return reply.error(errno_of(&e));
        }
        let t = match self.core.peer_target(ino.0, "extended attribute removal") {
            Some(target) => self.core.submit(
                Op::RemoveXattr {
                    target,
                    name: sys::os_bytes(name).to_vec(),
                },
                &[],
                Vec::new(),
            ),
            None => None,
        };
        drop(order);
        self.core.wait(t);
        reply.ok();
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // With default_permissions the kernel decides; this is only reached for F_OK.
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (pfd, c) = match self.parent_and_name(parent, name) {
            Ok(x) => x,
            Err(e) => return reply.error(e),
        };
        let order = match self.core.order_marked(|| self.dirty_entry(parent, name)) {
            Ok(g) => g,
            Err(e) => return reply.error(errno_of(&e)),
        };
        let oflags = libc::O_CREAT
            | (flags & (libc::O_ACCMODE | libc::O_EXCL | libc::O_TRUNC | libc::O_NOATIME))
            | libc::O_NOFOLLOW;
        let fd = match sys::openat2(
            pfd.as_fd(),
            &c,
            oflags,
            mode & !umask & 0o7777,
            sys::RESOLVE_STRICT,
        ) {
            Ok(fd) => fd,
            Err(e) => return reply.error(errno_of(&e)),
        };
        let create = |path, st: &libc::stat, handle| Op::Create {
            path,
            meta: meta_of(st),
            excl: flags & libc::O_EXCL != 0,
            truncate: flags & libc::O_TRUNC != 0,
            handle,
        };
        let path = self
            .core
            .child_path(parent.0, sys::os_bytes(name))
            .filter(|p| self.core.replicates(p, false));
        // The file exists from here: whatever fails next (out of descriptors for its lookup,
        // say), the peer gets it as it is here (without a handle), and the application the
        // error.
        let made = self
            .chown_new(req, &pfd, &c)
            .map_err(|e| errno_of(&e))
            .and_then(|()| self.made_entry(parent, name));
        let (attr, st) = match made {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(mirror = %self.core.mirror, parent = parent.0, name = ?name,
                    "created, but cannot be looked up ({e:?}): replicated, and the create fails");
                let t = match (path, sys::fstat(fd.as_fd())) {
                    (Some(path), Ok(st)) => {
                        self.core
                            .submit(create(path, &st, None), &[], self.fixes(&[parent]))
                    }
                    _ => None,
                };
                drop(order);
                self.core.wait(t);
                return reply.error(e);
            }
        };
        let ino = attr.ino;
        let io = self.core.passthrough.created(ino.0);
        let (fh, h) = match self.open_handle(ino, flags, Some(fd), io) {
            Ok(x) => x,
            Err(e) => return reply.error(e),
        };
        let t = match path {
            Some(path) => {
                let fixes = self.fixes(&[parent]);
                let t = self
                    .core
                    .submit(create(path, &st, h.writable.then_some(fh)), &[], fixes);
                if let (Some(s), true) = (self.core.link.in_sync_session(), t.is_some()) {
                    h.remote_session.store(s, Ordering::Relaxed);
                }
                t
            }
            _ => None,
        };
        drop(order);
        self.core.wait(t);
        reply.created(
            &TTL,
            &attr,
            Generation(0),
            FileHandle(fh),
            FopenFlags::FOPEN_KEEP_CACHE,
        );
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let Some(h) = self.core.handle(fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let order = match self.core.order_marked(|| {
            vec![self
                .core
                .data_mark(h.ino, offset, offset.saturating_add(length))]
        }) {
            Ok(g) => g,
            Err(e) => return reply.error(errno_of(&e)),
        };
        let size_before = sys::fstat(h.fd.as_fd()).map(|st| st.st_size).ok();
        if let Err(e) = sys::fallocate(h.fd.as_fd(), mode, offset, length) {
            let t = self.after_refused_change(&h, fh.0, size_before.map(|s| (s, mode, offset)));
            drop(order);
            self.core.wait(t);
            return reply.error(errno_of(&e));
        }
        let fixes = sys::fstat(h.fd.as_fd())
            .map(|st| {
                vec![TimeFix {
                    target: Target::Handle(fh.0),
                    mtime: sys::timespec(st.st_mtime, st.st_mtime_nsec),
                }]
            })
            .unwrap_or_default();
        let t = self.core.submit_on_handle(
            &h,
            Op::Fallocate {
                handle: fh.0,
                mode,
                offset,
                len: length,
            },
            &[],
            fixes,
        );
        drop(order);
        self.core.wait(t);
        reply.ok();
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let Some(h) = self.core.handle(fh.0) else {
            return reply.error(Errno::EBADF);
        };
        // SAFETY: valid descriptor; SEEK_DATA/SEEK_HOLE do not depend on its position.
        let r = unsafe { libc::lseek(std::os::fd::AsRawFd::as_raw_fd(&h.fd), offset, whence) };
        if r < 0 {
            return reply.error(errno_of(&std::io::Error::last_os_error()));
        }
        reply.offset(r);
    }
}

impl MirrorFs {
    /// A write or fallocate the disk refused (full) may still have changed the file: the
    /// kernel sets the mtime before it looks for room, and ext4 keeps what an allocation got
    /// before it ran out, with the size grown that far. The peer gets the same allocation
    /// (`fallocate`: `(size before, mode, offset)`, redone up to the new size) and the mtime,
    /// so that the copies stay identical. Call under the ordering lock.
    fn after_refused_change(
        &self,
        h: &crate::core::Handle,
        fh: u64,
        fallocate: Option<(i64, i32, u64)>,
    ) -> Option<crate::link::Ticket> {
        let st = sys::fstat(h.fd.as_fd()).ok()?;
        let target = Target::Handle(fh);
        let mut t = None;
        if let Some((before, mode, offset)) = fallocate {
            let after = u64::try_from(st.st_size).unwrap_or(0);
            if st.st_size != before && after > offset {
                t = self.core.submit_on_handle(
                    h,
                    Op::Fallocate {
                        handle: fh,
                        mode,
                        offset,
                        len: after - offset,
                    },
                    &[],
                    Vec::new(),
                );
            }
        }
        let mtime = self.core.submit_on_handle(
            h,
            Op::set_mtime(target, sys::timespec(st.st_mtime, st.st_mtime_nsec)),
            &[],
            Vec::new(),
        );
        mtime.or(t)
    }

    fn remove(&self, parent: INodeNo, name: &OsStr, flags: i32, reply: ReplyEmpty) {
        let (pfd, c) = match self.parent_and_name(parent, name) {
            Ok(x) => x,
            Err(e) => return reply.error(e),
        };
        let order = match self.core.order_marked(|| {
            let mut v = self.dirty_entry(parent, name);
            if let Ok(st) = sys::fstatat(pfd.as_fd(), &c, libc::AT_SYMLINK_NOFOLLOW) {
                v.extend(self.core.dirty_node(self.core.fuse_ino(st.st_ino)));
            }
            v
        }) {
            Ok(g) => g,
            Err(e) => return reply.error(errno_of(&e)),
        };
        let st = sys::fstatat(pfd.as_fd(), &c, libc::AT_SYMLINK_NOFOLLOW).ok();
        let path = self.core.child_path(parent.0, sys::os_bytes(name));
        if let Err(e) = sys::unlinkat(pfd.as_fd(), &c, flags) {
            return reply.error(errno_of(&e));
        }
        if let Some(st) = st {
            self.core
                .drop_link(self.core.fuse_ino(st.st_ino), parent.0, sys::os_bytes(name));
        }
        let t = match path {
            Some(path) if self.core.replicates(&path, flags & libc::AT_REMOVEDIR != 0) => {
                let fixes = self.fixes(&[parent]);
                let op = if flags & libc::AT_REMOVEDIR != 0 {
                    Op::Rmdir { path }
                } else {
                    Op::Unlink { path }
                };
                self.core.submit(op, &[], fixes)
            }
            _ => None,
        };
        drop(order);
        self.core.wait(t);
        reply.ok();
    }

    /// How a rename of the entry `name` of `pfd` (`st`) from `from` to `to` concerns the peer.
    fn rename_crossing(
        &self,
        pfd: &OwnedFd,
        name: &std::ffi::CStr,
        from: &mirrorkit_wire::RelPath,
        to: &mirrorkit_wire::RelPath,
        st: &libc::stat,
    ) -> Crossing {
        if self.core.filter().selects_everything() {
            return Crossing::Inside;
        }
        let dir_fd = is_dir(st)
            .then(|| {
                sys::openat2(
                    pfd.as_fd(),
                    name,
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                    0,
                    sys::RESOLVE_STRICT,
                )
                .ok()
            })
            .flatten();
        if is_dir(st) && dir_fd.is_none() {
            return Crossing::Refused("cannot read the directory to check what is below it");
        }
        selection::rename_crossing(&self.core, from, to, st, dir_fd.as_ref())
    }

    /// The parent descriptor and name of one of an inode's links.
    fn link_parent(&self, ino: u64) -> Option<(Arc<OwnedFd>, Vec<u8>)> {
        let (parent, name) = self.core.first_link(ino)?;
        Some((self.core.node_fd(parent)?, name))
    }

    fn with_xattr_path<T>(
        &self,
        ino: u64,
        f: impl FnOnce(&std::ffi::CString, bool) -> std::io::Result<T>,
    ) -> std::io::Result<T> {
        let fd = self
            .core
            .node_fd(ino)
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ESTALE))?;
        if self.core.node_kind(ino) == Some(libc::S_IFLNK) {
            let (p, name) = self
                .link_parent(ino)
                .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ESTALE))?;
            let c = sys::cstr(&name)?;
            f(&sys::proc_path(p.as_fd(), Some(&c)), false)
        } else {
            f(&self.core.proc_path(&fd), true)
        }
    }
}
