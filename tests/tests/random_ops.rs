//! A seeded random sequence of every kind of file system operation, run through the real mount
//! and, identically, on a plain native directory of the same file system. Every operation must
//! have the same outcome on both (success, byte count, bytes read, attributes, or errno: so
//! applications see ext4's own behaviour and error codes through the mirror). The link must
//! stay in sync throughout (a fallback to "alone" followed by a resync would hide a bug), and at
//! the end the secondary's copy must be identical to the primary's (exactly) and to the native
//! directory (but for modification times, which were taken at other instants). A second test
//! runs the same kind of sequence on a populated tree and kills and restarts the secondary a
//! third of the way through, so that operations also run while the primary is alone and
//! while it resynchronises the secondary.
//!
//! `MIRRORKIT_SEED=<u64>` replays a run (the seed is printed at the start and in every failure);
//! `MIRRORKIT_OPS=<n>` changes its length (default `DEFAULT_OPS`); `MIRRORKIT_TRACE=1` prints
//! every operation and its outcome.

use std::ffi::CString;
use std::fmt;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mirrorkit_module::MirrorFilter;
use mirrorkit_tests::fill::{self, TreeSpec};
use mirrorkit_tests::{require_root_and_fuse, tree, Mirror, MirrorOpts};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

/// Operations in a default run: a few thousand, well under a minute in a debug build.
const DEFAULT_OPS: usize = 5000;
/// Operations in a default run across a resynchronisation.
const DEFAULT_OPS_RESYNC: usize = 2500;
/// Operations between the kill of the secondary and its restart.
const RESTART_AFTER_OPS: usize = 100;
/// The tree both directories start from in a run across a resynchronisation: big enough
/// (some 15 MB) that operations run during the synchronisation.
const RESYNC_TREE: TreeSpec = TreeSpec {
    dirs: 20,
    files_per_dir: 20,
    max_file_bytes: 64 << 10,
};
/// Names of every path component: a small namespace, so that operations collide often (a
/// name is a file here and a directory there, renames replace, rmdir meets non-empty dirs).
const NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];
/// Files the sequence holds open at once.
const SLOTS: usize = 6;
/// An operation that takes longer than this is stuck: the watchdog kills the primary so
/// that the blocked call returns and the test fails with the seed instead of hanging.
const STUCK_AFTER_S: u64 = 60;
/// Compare both trees (without extents) every this many operations, to fail close to the
/// operation that broke them.
const CHECK_EVERY_OPS: usize = 500;
const PAGE_BYTES: u64 = 4096;

/// How a time is set by utimensat.
#[derive(Clone, Copy, Debug)]
enum TimeArg {
    Omit,
    Now,
    At(i64, i64),
}

#[derive(Clone, Debug)]
enum Op {
    Open {
        slot: usize,
        path: String,
        flags: i32,
        mode: u32,
    },
    Close {
        slot: usize,
    },
    /// Open (creating), unlink the name, then write to the still-open file.
    UnlinkOpen {
        slot: usize,
        path: String,
        off: u64,
        len: usize,
        fill: u64,
    },
    Write {
        slot: usize,
        len: usize,
        fill: u64,
    },
    Pwrite {
        slot: usize,
        off: u64,
        len: usize,
        fill: u64,
    },
    Read {
        slot: usize,
        off: u64,
        len: usize,
    },
    Ftruncate {
        slot: usize,
        size: u64,
    },
    Fallocate {
        slot: usize,
        mode: i32,
        off: u64,
        len: u64,
    },
    Fsync {
        slot: usize,
        datasync: bool,
    },
    /// Write through a MAP_SHARED mapping of a page-aligned range inside the file, then
    /// msync(MS_SYNC) it.
    Mmap {
        slot: usize,
        page: u64,
        len: usize,
        fill: u64,
    },
    Fchmod {
        slot: usize,
        mode: u32,
    },
    Futimens {
        slot: usize,
        atime: TimeArg,
        mtime: TimeArg,
    },
    Truncate {
        path: String,
        size: u64,
    },
    Mkdir {
        path: String,
        mode: u32,
    },
    Rmdir {
        path: String,
    },
    Unlink {
        path: String,
    },
    Rename {
        from: String,
        to: String,
        flags: u32,
    },
    Link {
        from: String,
        to: String,
    },
    Symlink {
        target: String,
        path: String,
    },
    Mkfifo {
        path: String,
        mode: u32,
    },
    Chmod {
        path: String,
        mode: u32,
    },
    Chown {
        path: String,
        uid: u32,
        gid: u32,
        follow: bool,
    },
    Utimens {
        path: String,
        atime: TimeArg,
        mtime: TimeArg,
        follow: bool,
    },
    SetXattr {
        path: String,
        name: String,
        len: usize,
        fill: u64,
        flags: i32,
        follow: bool,
    },
    RemoveXattr {
        path: String,
        name: String,
        follow: bool,
    },
    GetXattr {
        path: String,
        name: String,
        follow: bool,
    },
    Stat {
        path: String,
    },
}

impl Op {
    /// Whether the operation, if it succeeded, may have added, removed or renamed entries.
    fn changes_names(&self) -> bool {
        match self {
            Op::Open { flags, .. } => flags & libc::O_CREAT != 0,
            Op::UnlinkOpen { .. }
            | Op::Mkdir { .. }
            | Op::Rmdir { .. }
            | Op::Unlink { .. }
            | Op::Rename { .. }
            | Op::Link { .. }
            | Op::Symlink { .. }
            | Op::Mkfifo { .. } => true,
            _ => false,
        }
    }
}

/// What an operation returned, comparable between the two sides.
#[derive(PartialEq, Eq)]
enum Outcome {
    Done,
    Count(usize),
    /// Bytes read: length and blake3.
    Data(usize, [u8; 32]),
    /// Attributes that must be equal whatever the instant: kind and mode, owner, links, size.
    Stat(u32, u32, u32, u64, i64),
}

impl fmt::Debug for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Done => write!(f, "ok"),
            Outcome::Count(n) => write!(f, "ok({n})"),
            Outcome::Data(n, h) => write!(f, "data({n} bytes, blake3 {:02x}{:02x}..)", h[0], h[1]),
            Outcome::Stat(mode, uid, gid, nlink, size) => write!(
                f,
                "stat(mode {mode:o} uid {uid} gid {gid} nlink {nlink} size {size})"
            ),
        }
    }
}

/// An operation's result: the outcome, or the errno.
type Res = Result<Outcome, i32>;

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn cvt(r: libc::c_int) -> Result<libc::c_int, i32> {
    if r < 0 {
        Err(errno())
    } else {
        Ok(r)
    }
}

fn cvt_size(r: libc::ssize_t) -> Result<usize, i32> {
    if r < 0 {
        Err(errno())
    } else {
        Ok(r as usize)
    }
}

/// Deterministic content for a write.
fn data(fill: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    StdRng::seed_from_u64(fill).fill_bytes(&mut v);
    v
}

fn timespec(t: TimeArg) -> libc::timespec {
    match t {
        TimeArg::Omit => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        TimeArg::Now => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        TimeArg::At(s, n) => libc::timespec {
            tv_sec: s,
            tv_nsec: n,
        },
    }
}

/// One of the two directories the sequence runs on, with its open files.
struct Side {
    root: PathBuf,
    slots: Vec<Option<OwnedFd>>,
}

impl Side {
    fn new(root: &Path) -> Side {
        Side {
            root: root.to_path_buf(),
            slots: (0..SLOTS).map(|_| None).collect(),
        }
    }

    fn path(&self, rel: &str) -> CString {
        CString::new(self.root.join(rel).as_os_str().as_bytes()).expect("no NUL in test paths")
    }

    fn fd(&self, slot: usize) -> libc::c_int {
        self.slots[slot].as_ref().map_or(-1, |f| f.as_raw_fd())
    }

    fn apply(&mut self, op: &Op) -> Res {
        // SAFETY (for every call below): valid C strings and buffers that outlive the call;
        // descriptors are owned by `slots` (or -1, which the kernel refuses with EBADF).
        unsafe {
            match op {
                Op::Open {
                    slot,
                    path,
                    flags,
                    mode,
                } => {
                    let p = self.path(path);
                    let fd = cvt(libc::open(
                        p.as_ptr(),
                        flags | libc::O_CLOEXEC | libc::O_NONBLOCK,
                        *mode,
                    ))?;
                    self.slots[*slot] = Some(OwnedFd::from_raw_fd(fd));
                    Ok(Outcome::Done)
                }
                Op::Close { slot } => {
                    self.slots[*slot] = None;
                    Ok(Outcome::Done)
                }
                Op::UnlinkOpen {
                    slot,
                    path,
                    off,
                    len,
                    fill,
                } => {
                    let p = self.path(path);
                    let fd = cvt(libc::open(
                        p.as_ptr(),
                        libc::O_RDWR | libc::O_CREAT | libc::O_CLOEXEC | libc::O_NONBLOCK,
                        0o644,
                    ))?;
                    let fd = OwnedFd::from_raw_fd(fd);
                    cvt(libc::unlink(p.as_ptr()))?;
                    let d = data(*fill, *len);
                    let n = cvt_size(libc::pwrite(
                        fd.as_raw_fd(),
                        d.as_ptr().cast(),
                        d.len(),
                        *off as i64,
                    ))?;
                    self.slots[*slot] = Some(fd);
                    Ok(Outcome::Count(n))
                }
                Op::Write { slot, len, fill } => {
                    let d = data(*fill, *len);
                    cvt_size(libc::write(self.fd(*slot), d.as_ptr().cast(), d.len()))
                        .map(Outcome::Count)
                }
                Op::Pwrite {
                    slot,
                    off,
                    len,
                    fill,
                } => {
                    let d = data(*fill, *len);
                    cvt_size(libc::pwrite(
                        self.fd(*slot),
                        d.as_ptr().cast(),
                        d.len(),
                        *off as i64,
                    ))
                    .map(Outcome::Count)
                }
                Op::Read { slot, off, len } => {
                    let mut buf = vec![0u8; *len];
                    let n = cvt_size(libc::pread(
                        self.fd(*slot),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        *off as i64,
                    ))?;
                    Ok(Outcome::Data(n, *blake3::hash(&buf[..n]).as_bytes()))
                }
                Op::Ftruncate { slot, size } => {
                    cvt(libc::ftruncate(self.fd(*slot), *size as i64)).map(|_| Outcome::Done)
                }
                Op::Fallocate {
                    slot,
                    mode,
                    off,
                    len,
                } => cvt(libc::fallocate(
                    self.fd(*slot),
                    *mode,
                    *off as i64,
                    *len as i64,
                ))
                .map(|_| Outcome::Done),
                Op::Fsync { slot, datasync } => {
                    let r = if *datasync {
                        libc::fdatasync(self.fd(*slot))
                    } else {
                        libc::fsync(self.fd(*slot))
                    };
                    cvt(r).map(|_| Outcome::Done)
                }
                Op::Mmap {
                    slot,
                    page,
                    len,
                    fill,
                } => self.mmap_write(*slot, *page, *len, *fill),
                Op::Fchmod { slot, mode } => {
                    cvt(libc::fchmod(self.fd(*slot), *mode)).map(|_| Outcome::Done)
                }
                Op::Futimens { slot, atime, mtime } => {
                    let t = [timespec(*atime), timespec(*mtime)];
                    cvt(libc::futimens(self.fd(*slot), t.as_ptr())).map(|_| Outcome::Done)
                }
                Op::Truncate { path, size } => {
                    cvt(libc::truncate(self.path(path).as_ptr(), *size as i64))
                        .map(|_| Outcome::Done)
                }
                Op::Mkdir { path, mode } => {
                    cvt(libc::mkdir(self.path(path).as_ptr(), *mode)).map(|_| Outcome::Done)
                }
                Op::Rmdir { path } => {
                    cvt(libc::rmdir(self.path(path).as_ptr())).map(|_| Outcome::Done)
                }
                Op::Unlink { path } => {
                    cvt(libc::unlink(self.path(path).as_ptr())).map(|_| Outcome::Done)
                }
                Op::Rename { from, to, flags } => cvt(libc::renameat2(
                    libc::AT_FDCWD,
                    self.path(from).as_ptr(),
                    libc::AT_FDCWD,
                    self.path(to).as_ptr(),
                    *flags,
                ))
                .map(|_| Outcome::Done),
                Op::Link { from, to } => cvt(libc::linkat(
                    libc::AT_FDCWD,
                    self.path(from).as_ptr(),
                    libc::AT_FDCWD,
                    self.path(to).as_ptr(),
                    0,
                ))
                .map(|_| Outcome::Done),
                Op::Symlink { target, path } => {
                    let t = CString::new(target.as_bytes()).expect("no NUL");
                    cvt(libc::symlink(t.as_ptr(), self.path(path).as_ptr())).map(|_| Outcome::Done)
                }
                Op::Mkfifo { path, mode } => {
                    cvt(libc::mkfifo(self.path(path).as_ptr(), *mode)).map(|_| Outcome::Done)
                }
                Op::Chmod { path, mode } => {
                    cvt(libc::chmod(self.path(path).as_ptr(), *mode)).map(|_| Outcome::Done)
                }
                Op::Chown {
                    path,
                    uid,
                    gid,
                    follow,
                } => {
                    let flags = if *follow {
                        0
                    } else {
                        libc::AT_SYMLINK_NOFOLLOW
                    };
                    cvt(libc::fchownat(
                        libc::AT_FDCWD,
                        self.path(path).as_ptr(),
                        *uid,
                        *gid,
                        flags,
                    ))
                    .map(|_| Outcome::Done)
                }
                Op::Utimens {
                    path,
                    atime,
                    mtime,
                    follow,
                } => {
                    let t = [timespec(*atime), timespec(*mtime)];
                    let flags = if *follow {
                        0
                    } else {
                        libc::AT_SYMLINK_NOFOLLOW
                    };
                    cvt(libc::utimensat(
                        libc::AT_FDCWD,
                        self.path(path).as_ptr(),
                        t.as_ptr(),
                        flags,
                    ))
                    .map(|_| Outcome::Done)
                }
                Op::SetXattr {
                    path,
                    name,
                    len,
                    fill,
                    flags,
                    follow,
                } => {
                    let (p, n, v) = (
                        self.path(path),
                        CString::new(name.as_bytes()).expect("no NUL"),
                        data(*fill, *len),
                    );
                    let r = if *follow {
                        libc::setxattr(p.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), *flags)
                    } else {
                        libc::lsetxattr(p.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), *flags)
                    };
                    cvt(r).map(|_| Outcome::Done)
                }
                Op::RemoveXattr { path, name, follow } => {
                    let (p, n) = (
                        self.path(path),
                        CString::new(name.as_bytes()).expect("no NUL"),
                    );
                    let r = if *follow {
                        libc::removexattr(p.as_ptr(), n.as_ptr())
                    } else {
                        libc::lremovexattr(p.as_ptr(), n.as_ptr())
                    };
                    cvt(r).map(|_| Outcome::Done)
                }
                Op::GetXattr { path, name, follow } => {
                    let (p, n) = (
                        self.path(path),
                        CString::new(name.as_bytes()).expect("no NUL"),
                    );
                    let mut buf = vec![0u8; 65536];
                    let r = if *follow {
                        libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
                    } else {
                        libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
                    };
                    let n = cvt_size(r)?;
                    Ok(Outcome::Data(n, *blake3::hash(&buf[..n]).as_bytes()))
                }
                Op::Stat { path } => {
                    let mut st = std::mem::zeroed::<libc::stat>();
                    cvt(libc::lstat(self.path(path).as_ptr(), &mut st))?;
                    // A directory's size is the file system's business, not the mirror's.
                    let size = if st.st_mode & libc::S_IFMT == libc::S_IFREG {
                        st.st_size
                    } else {
                        -1
                    };
                    Ok(Outcome::Stat(
                        st.st_mode,
                        st.st_uid,
                        st.st_gid,
                        st.st_nlink,
                        size,
                    ))
                }
            }
        }
    }

    /// Map a page-aligned range inside the file (chosen from this side's size, which the
    /// outcome carries, so that two sides of different sizes differ), write, msync, unmap.
    fn mmap_write(&mut self, slot: usize, page: u64, len: usize, fill: u64) -> Res {
        let fd = self.fd(slot);
        // SAFETY: fstat into a zeroed stat; mmap'd memory is used only within the mapping's
        // length, which lies inside the file (no SIGBUS), and unmapped before returning.
        unsafe {
            let mut st = std::mem::zeroed::<libc::stat>();
            cvt(libc::fstat(fd, &mut st))?;
            let size = st.st_size as u64;
            let regular = st.st_mode & libc::S_IFMT == libc::S_IFREG;
            let (start, len) = if !regular {
                (0, PAGE_BYTES as usize)
            } else if size == 0 {
                return Ok(Outcome::Count(0));
            } else {
                let pages = size.div_ceil(PAGE_BYTES);
                let start = (page % pages) * PAGE_BYTES;
                (start, len.min((size - start) as usize).max(1))
            };
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                start as i64,
            );
            if p == libc::MAP_FAILED {
                return Err(errno());
            }
            let r = if regular {
                let d = data(fill, len);
                std::ptr::copy_nonoverlapping(d.as_ptr(), p.cast::<u8>(), len);
                cvt(libc::msync(p, len, libc::MS_SYNC))
            } else {
                Ok(0)
            };
            libc::munmap(p, len);
            r.map(|_| Outcome::Count(len))
        }
    }
}

/// Generates the operations from the seed, what is open, and what exists.
struct Gen {
    rng: StdRng,
    /// Every entry of the native tree (path, `S_IFMT` bits), sorted: most operations pick an
    /// existing entry, so that they succeed often enough to matter.
    tree: Vec<(String, u32)>,
}

/// Deepest directory that gets new entries (keeps paths short).
const MAX_DEPTH: usize = 4;

impl Gen {
    /// A path of one to three random names (often missing, or of an unexpected kind).
    fn random_path(&mut self) -> String {
        let depth = match self.rng.gen_range(0..100) {
            0..50 => 1,
            50..85 => 2,
            _ => 3,
        };
        (0..depth)
            .map(|_| NAMES[self.rng.gen_range(0..NAMES.len())])
            .collect::<Vec<_>>()
            .join("/")
    }

    /// An existing entry of kind `kind` (any kind for 0), if there is one.
    fn existing(&mut self, kind: u32) -> Option<String> {
        let c: Vec<&String> = self
            .tree
            .iter()
            .filter(|(_, k)| kind == 0 || *k == kind)
            .map(|(p, _)| p)
            .collect();
        (!c.is_empty()).then(|| c[self.rng.gen_range(0..c.len())].clone())
    }

    /// Mostly an existing entry, else a random path.
    fn path(&mut self) -> String {
        if self.rng.gen_range(0..100) < 60 {
            if let Some(p) = self.existing(0) {
                return p;
            }
        }
        self.random_path()
    }

    fn file_path(&mut self) -> String {
        if self.rng.gen_range(0..100) < 70 {
            if let Some(p) = self.existing(libc::S_IFREG) {
                return p;
            }
        }
        self.path()
    }

    fn dir_path(&mut self) -> String {
        if self.rng.gen_range(0..100) < 70 {
            if let Some(p) = self.existing(libc::S_IFDIR) {
                return p;
            }
        }
        self.path()
    }

    /// Mostly a random name in an existing directory (the root included), else any path.
    fn new_path(&mut self) -> String {
        let name = NAMES[self.rng.gen_range(0..NAMES.len())];
        if self.rng.gen_range(0..100) < 75 {
            match self.existing(libc::S_IFDIR) {
                Some(d) if self.rng.gen() && d.split('/').count() < MAX_DEPTH => {
                    return format!("{d}/{name}");
                }
                _ => return name.to_string(),
            }
        }
        self.path()
    }

    fn offset(&mut self) -> u64 {
        match self.rng.gen_range(0..100) {
            0..75 => self.rng.gen_range(0..200_000),
            75..95 => self.rng.gen_range(0..2_000_000),
            _ => self.rng.gen_range(0..8_000_000),
        }
    }

    fn len(&mut self) -> usize {
        match self.rng.gen_range(0..100) {
            0..3 => 0,
            3..80 => self.rng.gen_range(1..16_384),
            _ => self.rng.gen_range(1..300_000),
        }
    }

    fn mode(&mut self) -> u32 {
        match self.rng.gen_range(0..10) {
            0 => self.rng.gen_range(0..0o10000),
            1 => 0o4755,
            2 => 0o2775,
            3 => 0o1777,
            4 => 0o600,
            5 => 0o755,
            _ => 0o644,
        }
    }

    fn id(&mut self) -> u32 {
        [0, 0, 1000, 1001, 65534, u32::MAX][self.rng.gen_range(0..6)]
    }

    fn time(&mut self) -> TimeArg {
        match self.rng.gen_range(0..10) {
            0 => TimeArg::Omit,
            1..4 => TimeArg::Now,
            _ => TimeArg::At(
                self.rng.gen_range(0..2_000_000_000),
                self.rng.gen_range(0..1_000_000_000),
            ),
        }
    }

    fn xattr_name(&mut self) -> String {
        format!("user.k{}", self.rng.gen_range(0..4))
    }

    fn open_flags(&mut self) -> i32 {
        let mut f = match self.rng.gen_range(0..100) {
            0..15 => libc::O_RDONLY,
            15..35 => libc::O_WRONLY,
            _ => libc::O_RDWR,
        };
        for (flag, percent) in [
            (libc::O_CREAT, 60),
            (libc::O_EXCL, 15),
            (libc::O_TRUNC, 12),
            (libc::O_APPEND, 15),
            (libc::O_SYNC, 5),
            (libc::O_DSYNC, 5),
        ] {
            if self.rng.gen_range(0..100) < percent {
                f |= flag;
            }
        }
        f
    }

    fn next(&mut self, open: &[bool]) -> Op {
        let opened: Vec<usize> = (0..SLOTS).filter(|&s| open[s]).collect();
        let free: Vec<usize> = (0..SLOTS).filter(|&s| !open[s]).collect();
        let k = self.rng.gen_range(0..1000);
        // Operations on open files, when there are some.
        if k < 450 && !opened.is_empty() {
            let slot = opened[self.rng.gen_range(0..opened.len())];
            let fill = self.rng.gen();
            return match k {
                0..40 => Op::Close { slot },
                40..110 => Op::Write {
                    slot,
                    len: self.len(),
                    fill,
                },
                110..210 => Op::Pwrite {
                    slot,
                    off: self.offset(),
                    len: self.len(),
                    fill,
                },
                210..260 => Op::Read {
                    slot,
                    off: self.offset(),
                    len: self.len(),
                },
                260..290 => Op::Ftruncate {
                    slot,
                    size: self.offset(),
                },
                290..340 => Op::Fallocate {
                    slot,
                    mode: [
                        0,
                        libc::FALLOC_FL_KEEP_SIZE,
                        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                        libc::FALLOC_FL_ZERO_RANGE,
                        libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                    ][self.rng.gen_range(0..5)],
                    off: self.offset(),
                    len: self.rng.gen_range(1..300_000),
                },
                340..370 => Op::Fsync {
                    slot,
                    datasync: self.rng.gen(),
                },
                370..410 => Op::Mmap {
                    slot,
                    page: self.rng.gen_range(0..64),
                    len: self.rng.gen_range(1..40_000),
                    fill,
                },
                410..430 => Op::Fchmod {
                    slot,
                    mode: self.mode(),
                },
                _ => Op::Futimens {
                    slot,
                    atime: self.time(),
                    mtime: self.time(),
                },
            };
        }
        if k < 450 || (600..700).contains(&k) || (700..720).contains(&k) {
            let Some(&slot) = free.first() else {
                return Op::Close {
                    slot: opened[self.rng.gen_range(0..opened.len())],
                };
            };
            if (700..720).contains(&k) {
                return Op::UnlinkOpen {
                    slot,
                    path: self.new_path(),
                    off: self.offset(),
                    len: self.len(),
                    fill: self.rng.gen(),
                };
            }
            let path = if self.rng.gen() {
                self.file_path()
            } else {
                self.new_path()
            };
            return Op::Open {
                slot,
                path,
                flags: self.open_flags(),
                mode: self.mode(),
            };
        }
        match k {
            450..500 => Op::Mkdir {
                path: self.new_path(),
                mode: self.mode() | 0o700,
            },
            500..530 => Op::Rmdir {
                path: self.dir_path(),
            },
            530..570 => Op::Unlink { path: self.path() },
            570..600 => Op::Truncate {
                path: self.file_path(),
                size: self.offset(),
            },
            720..790 => Op::Rename {
                from: self.path(),
                to: if self.rng.gen() {
                    self.new_path()
                } else {
                    self.path()
                },
                flags: [0, 0, libc::RENAME_NOREPLACE, libc::RENAME_EXCHANGE]
                    [self.rng.gen_range(0..4)],
            },
            790..820 => Op::Link {
                from: self.file_path(),
                to: self.new_path(),
            },
            820..840 => Op::Symlink {
                target: self.random_path(),
                path: self.new_path(),
            },
            840..850 => Op::Mkfifo {
                path: self.new_path(),
                mode: self.mode(),
            },
            850..870 => Op::Chmod {
                path: self.path(),
                mode: self.mode(),
            },
            870..890 => Op::Chown {
                path: self.path(),
                uid: self.id(),
                gid: self.id(),
                follow: self.rng.gen(),
            },
            890..910 => Op::Utimens {
                path: self.path(),
                atime: self.time(),
                mtime: self.time(),
                follow: self.rng.gen(),
            },
            910..950 => Op::SetXattr {
                path: self.path(),
                name: self.xattr_name(),
                len: if self.rng.gen_range(0..10) == 0 {
                    self.rng.gen_range(0..4000)
                } else {
                    self.rng.gen_range(0..64)
                },
                fill: self.rng.gen(),
                flags: [0, 0, libc::XATTR_CREATE, libc::XATTR_REPLACE][self.rng.gen_range(0..4)],
                follow: self.rng.gen_range(0..4) == 0,
            },
            950..965 => Op::RemoveXattr {
                path: self.path(),
                name: self.xattr_name(),
                follow: self.rng.gen_range(0..4) == 0,
            },
            965..975 => Op::GetXattr {
                path: self.path(),
                name: self.xattr_name(),
                follow: self.rng.gen(),
            },
            _ => Op::Stat { path: self.path() },
        }
    }
}

/// Every entry beneath `root` with its kind, sorted (readdir order is the file system's).
fn list_tree(root: &Path) -> Vec<(String, u32)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, u32)>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(md) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let kind = std::os::unix::fs::MetadataExt::mode(&md) & libc::S_IFMT;
            if let Ok(rel) = p.strip_prefix(root) {
                out.push((rel.display().to_string(), kind));
            }
            if kind == libc::S_IFDIR {
                walk(root, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// What the watchdog watches: the operation running and since when.
struct Progress {
    index: usize,
    op: String,
    since: Instant,
}

/// Kill the primary if one operation takes longer than `STUCK_AFTER_S`: its blocked call
/// then fails (the FUSE connection is gone) and the test reports the seed.
fn watchdog(seed: u64, pid: u32, progress: Arc<Mutex<Progress>>, done: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        while !done.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(500));
            let p = progress.lock().unwrap_or_else(|e| e.into_inner());
            if p.since.elapsed() > Duration::from_secs(STUCK_AFTER_S) {
                eprintln!(
                    "seed {seed}: operation {} ({}) stuck for {STUCK_AFTER_S} s: killing the primary",
                    p.index, p.op
                );
                // SAFETY: signalling the test's own child process.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                return;
            }
        }
    });
}

#[test]
fn random_operations_match_native_and_mirror() {
    if !require_root_and_fuse("random_operations_match_native_and_mirror") {
        return;
    }
    run("random_ops", DEFAULT_OPS, None, None);
}

/// The same, with the secondary killed (kill -9) a third of the way through and restarted a
/// little later: the operations go on while the primary is alone and while it resynchronises
/// the secondary, under every kind of operation (open and unlinked files, FIFOs, xattrs,
/// hard links, renames).
#[test]
fn random_operations_across_a_resync() {
    if !require_root_and_fuse("random_operations_across_a_resync") {
        return;
    }
    run(
        "random_ops_resync",
        DEFAULT_OPS_RESYNC,
        Some(RESTART_AFTER_OPS),
        None,
    );
}

/// Excluded paths (every entry named `c`, the children of the top-level `e`): the same
/// operations, the secondary killed and restarted as above; what is replicated matches, the
/// secondary never fails to apply anything, and renames that move files across the boundary
/// (in and out) reach the peer. Operations the mirror refuses with EXDEV (see
/// `engine::selection`) are not generated: `selection` tests those.
#[test]
fn random_operations_with_excluded_paths() {
    if !require_root_and_fuse("random_operations_with_excluded_paths") {
        return;
    }
    run(
        "random_ops_selection",
        DEFAULT_OPS_RESYNC,
        Some(RESTART_AFTER_OPS),
        Some((vec!["**".into()], vec!["**/c".into(), "e/*".into()])),
    );
}

/// Only what `include` selects (files named `b` anywhere, everything below a top-level `a`;
/// directories always), less every entry named `d`: as above.
#[test]
fn random_operations_with_included_paths() {
    if !require_root_and_fuse("random_operations_with_included_paths") {
        return;
    }
    run(
        "random_ops_include",
        DEFAULT_OPS_RESYNC,
        Some(RESTART_AFTER_OPS),
        Some((vec!["a".into(), "**/b".into()], vec!["**/d".into()])),
    );
}

/// Whether the mirror would refuse `op` with EXDEV if the native directory `root` let it
/// through: the rules of `engine::selection`, on the native tree as it is.
fn crosses_refused(op: &Op, root: &Path, f: &MirrorFilter) -> bool {
    // The path the mirror sees: its parent resolved (a symlink on the way is followed).
    let resolved = |rel: &str| -> Option<String> {
        let p = Path::new(rel);
        let parent = std::fs::canonicalize(root.join(p.parent()?)).ok()?;
        let under = parent
            .strip_prefix(std::fs::canonicalize(root).ok()?)
            .ok()?;
        Some(under.join(p.file_name()?).to_string_lossy().into_owned())
    };
    let (from, to) = match op {
        Op::Link { from, to } | Op::Rename { from, to, .. } => {
            match (resolved(from), resolved(to)) {
                (Some(a), Some(b)) => (a, b),
                _ => return false,
            }
        }
        _ => return false,
    };
    let (from, to) = (from.as_str(), to.as_str());
    let st = |rel: &str| std::fs::symlink_metadata(root.join(rel)).ok();
    let rep = |rel: &str, dir: bool| f.replicates(Path::new(rel), dir);
    // Rename of the entry `md` from `from` to `to`: None if allowed, Some(inside) when both
    // names are on one side (inside the set or not), refused otherwise (Err).
    let crossing = |from: &str, to: &str, md: &std::fs::Metadata| -> Result<Option<bool>, ()> {
        use std::os::unix::fs::MetadataExt;
        let dir = md.is_dir();
        match (rep(from, dir), rep(to, dir)) {
            (true, true) => {
                if dir && below_changes(&root.join(from), from, to, f) {
                    return Err(());
                }
                Ok(Some(true))
            }
            (false, false) => Ok(Some(false)),
            (false, true) if !md.file_type().is_file() || md.nlink() > 1 => Err(()),
            (true, false) if md.file_type().is_file() && md.nlink() > 1 => Err(()),
            (true, false) if dir && holds_linked(&root.join(from)) => Err(()),
            _ => Ok(None),
        }
    };
    match op {
        Op::Link { .. } => match st(from) {
            Some(md) if !md.is_dir() => rep(from, false) != rep(to, false),
            _ => false,
        },
        Op::Rename { flags, .. } => {
            let Some(src) = st(from) else {
                return false;
            };
            let there = crossing(from, to, &src);
            if *flags & libc::RENAME_EXCHANGE == 0 {
                return there.is_err();
            }
            let Some(dst) = st(to) else {
                return false;
            };
            !matches!(
                (there, crossing(to, from, &dst)),
                (Ok(Some(a)), Ok(Some(b))) if a == b
            )
        }
        _ => false,
    }
}

/// For a rename about to run: `Some(true)` if it moves an entry into the replicated set,
/// `Some(false)` out of it, `None` otherwise (for the counts printed at the end).
fn boundary_move(op: &Op, root: &Path, f: &MirrorFilter) -> Option<bool> {
    let Op::Rename { from, to, flags } = op else {
        return None;
    };
    if *flags & libc::RENAME_EXCHANGE != 0 || f.selects_everything() {
        return None;
    }
    let dir = std::fs::symlink_metadata(root.join(from)).ok()?.is_dir();
    let (was, will) = (
        f.replicates(Path::new(from), dir),
        f.replicates(Path::new(to), dir),
    );
    (was != will).then_some(will)
}

/// Whether anything below the directory `dir` but a directory has several names.
fn holds_linked(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries
        .flatten()
        .any(|e| match std::fs::symlink_metadata(e.path()) {
            Ok(md) if md.is_dir() => holds_linked(&e.path()),
            Ok(md) => md.nlink() > 1,
            Err(_) => false,
        })
}

/// Whether, below the directory `dir` (named `from`), being replicated differs between the
/// names `from` and `to`.
fn below_changes(dir: &Path, from: &str, to: &str, f: &MirrorFilter) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        let (a, b) = (format!("{from}/{name}"), format!("{to}/{name}"));
        let was = f.replicates(Path::new(&a), is_dir);
        if was != f.replicates(Path::new(&b), is_dir) {
            return true;
        }
        if is_dir && was && below_changes(&e.path(), &a, &b, f) {
            return true;
        }
    }
    false
}

/// Where the link is, for the checks between operations.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// In sync in session `n`: it must stay so.
    InSync(u64),
    /// The secondary is down or being resynchronised: nothing to check until in-sync.
    Away,
}

/// Run the operations; with `restart`, kill the secondary after a third of them and restart
/// it `restart` operations later; with `selection`, the primary replicates by these include
/// and exclude patterns.
fn run(
    name: &str,
    default_ops: usize,
    restart: Option<usize>,
    selection: Option<(Vec<String>, Vec<String>)>,
) {
    let seed: u64 = match std::env::var("MIRRORKIT_SEED") {
        Ok(s) => s.parse().expect("MIRRORKIT_SEED must be a u64"),
        Err(_) => rand::thread_rng().gen(),
    };
    let ops: usize = match std::env::var("MIRRORKIT_OPS") {
        Ok(s) => s.parse().expect("MIRRORKIT_OPS must be a number"),
        Err(_) => default_ops,
    };
    eprintln!("{name}: seed {seed} ({ops} operations); replay with MIRRORKIT_SEED={seed}");
    // MIRRORKIT_TRACE=1 prints every operation and its outcome (to replay a failure).
    let trace = std::env::var_os("MIRRORKIT_TRACE").is_some();
    let started = Instant::now();

    let (include, exclude) = selection.unwrap_or_default();
    let filter = if include.is_empty() {
        MirrorFilter::everything()
    } else {
        MirrorFilter::from_patterns(&include, &exclude).expect("valid patterns")
    };
    let mut m = Mirror::start(MirrorOpts {
        include,
        exclude,
        ..MirrorOpts::default()
    });
    let native_dir = m.base.path().join("native");
    std::fs::create_dir(&native_dir).unwrap();
    // Same attributes on both roots, so that they compare equal.
    let root_mode = std::fs::metadata(m.primary_dir()).unwrap().permissions();
    std::fs::set_permissions(&native_dir, root_mode).unwrap();

    if restart.is_some() {
        // Something to synchronise (every kind of entry, a few MB), and for the operations
        // to work on: the same tree in both directories. Without the symlink that leads out of
        // the tree, which operations would follow.
        for dir in [&native_dir, &m.primary_dir().to_path_buf()] {
            fill::populate(dir, RESYNC_TREE, seed);
            std::fs::remove_file(dir.join("sym/abs")).unwrap();
        }
    }
    let mut native = Side::new(&native_dir);
    let mut mirror = Side::new(m.primary_dir());
    let mut gen = Gen {
        rng: StdRng::seed_from_u64(seed),
        tree: Vec::new(),
    };
    let progress = Arc::new(Mutex::new(Progress {
        index: 0,
        op: String::new(),
        since: Instant::now(),
    }));
    let done = Arc::new(AtomicBool::new(false));
    watchdog(
        seed,
        m.a.pid().expect("primary running"),
        progress.clone(),
        done.clone(),
    );
    let mut counts = std::collections::BTreeMap::<String, (usize, usize)>::new();
    let kill_at = restart.map(|_| ops / 3);
    let mut phase = Phase::InSync(1);
    let mut tree_changed = true;
    let mut syncing_ops = 0usize;

    for i in 0..ops {
        if Some(i) == kill_at {
            eprintln!("{name}: seed {seed}: killing the secondary before operation {i}");
            m.b.kill9();
            phase = Phase::Away;
        }
        if let (Some(k), Some(r)) = (kill_at, restart) {
            if i == k + r {
                eprintln!("{name}: seed {seed}: restarting the secondary before operation {i}");
                m.start_secondary();
            }
        }
        if phase == Phase::Away {
            match m.a.status() {
                Some(s) if s.mode == "in-sync" && s.sessions == 2 => {
                    eprintln!(
                        "{name}: seed {seed}: in sync again before operation {i} ({syncing_ops} operations during the synchronisation)"
                    );
                    phase = Phase::InSync(2);
                }
                Some(s) if s.mode == "syncing" => syncing_ops += 1,
                _ => {}
            }
        }
        let open: Vec<bool> = native.slots.iter().map(Option::is_some).collect();
        if tree_changed {
            gen.tree = list_tree(&native_dir);
        }
        let mut op = gen.next(&open);
        while crosses_refused(&op, &native_dir, &filter) {
            op = gen.next(&open);
        }
        {
            let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
            p.index = i;
            p.op = format!("{op:?}");
            p.since = Instant::now();
        }
        let moves = boundary_move(&op, &native_dir, &filter);
        let expected = native.apply(&op);
        if let (Some(into), true) = (moves, expected.is_ok()) {
            let key = if into {
                "(into the set)"
            } else {
                "(out of the set)"
            };
            counts.entry(key.into()).or_default().0 += 1;
        }
        let got = mirror.apply(&op);
        tree_changed = expected.is_ok() && op.changes_names();
        if trace {
            eprintln!("{i} {op:?} -> {expected:?}");
        }
        assert_eq!(
            expected, got,
            "seed {seed}: operation {i} {op:?}: native directory gave {expected:?}, the mirror gave {got:?} (Ok: outcome, Err: errno)\n--- primary log\n{}",
            m.a.log()
        );
        let kind = format!("{op:?}");
        let kind = kind
            .split([' ', '{'])
            .next()
            .unwrap_or_default()
            .to_string();
        let c = counts.entry(kind).or_default();
        if expected.is_ok() {
            c.0 += 1;
        } else {
            c.1 += 1;
        }
        let Phase::InSync(sessions) = phase else {
            continue;
        };
        if i % 100 == 99 {
            assert_in_sync(&m, seed, i, sessions);
        }
        if i % CHECK_EVERY_OPS == CHECK_EVERY_OPS - 1 {
            let opts = tree::CompareOpts {
                extents: false,
                ..Default::default()
            };
            let r = tree::compare_selected(m.primary_dir(), m.secondary_dir(), 20, &filter, opts);
            if let Err(e) = r {
                panic!("seed {seed}: after operation {i}: primary and secondary differ: {e}");
            }
        }
    }
    done.store(true, Ordering::Relaxed);
    // Close everything (the last close of a mirrored file is not waited for: let it land).
    for s in 0..SLOTS {
        native.slots[s] = None;
        mirror.slots[s] = None;
    }
    let sessions = match phase {
        Phase::InSync(n) => n,
        Phase::Away => {
            m.wait_primary_mode("in-sync", Duration::from_secs(30));
            2
        }
    };
    // The status file is rewritten every 100 ms.
    std::thread::sleep(Duration::from_millis(300));
    assert_in_sync(&m, seed, ops, sessions);
    eprintln!("{name}: seed {seed}: operations (succeeded, failed) by kind: {counts:?}");

    tree::drop_page_caches().expect("drop page caches (needs root)");
    tree::compare_selected(
        m.primary_dir(),
        m.secondary_dir(),
        30,
        &filter,
        tree::CompareOpts::default(),
    )
    .unwrap_or_else(|e| panic!("seed {seed}: primary and secondary differ at the end: {e}"));
    // Not the data/hole maps: ext4 decides per page-cache folio whether a range written with
    // zeros through mmap is allocated (a whole large folio is written back), so the native
    // directory may hold allocated zeros where the mirror, fed the same operations through
    // FUSE, keeps an unwritten extent. The maps of primary and secondary are compared above.
    let opts = tree::CompareOpts {
        mtimes: false,
        extents: false,
    };
    tree::compare_selected(&native_dir, m.secondary_dir(), 30, &filter, opts)
        .unwrap_or_else(|e| panic!("seed {seed}: native directory and secondary differ: {e}"));
    assert_in_sync(&m, seed, ops, sessions);
    eprintln!(
        "{name}: seed {seed}: {ops} operations, trees identical, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// The link never left in-sync on its own: still session `sessions`, alone only as often as
/// the test made it. A fallback to alone followed by a full resync would otherwise repair (and
/// hide) an operation the secondary failed to apply.
fn assert_in_sync(m: &Mirror, seed: u64, i: usize, sessions: u64) {
    let s = m.a.status().expect("primary status");
    let refused = m.b.log().contains("cannot apply");
    assert!(
        s.mode == "in-sync" && s.sessions == sessions && s.times_alone == sessions - 1 && !refused,
        "seed {seed}: by operation {i} the link left in-sync: {s:?}\n--- primary log\n{}\n--- secondary log\n{}",
        m.a.log(),
        m.b.log()
    );
}
