//! Thin, safe wrappers over the Linux system calls the replicated tree needs, all relative to a
//! directory descriptor. Every wrapper returns `io::Result` carrying the kernel's errno, so that
//! the error an application sees through the mirror is the one ext4 gave.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

use mirrorkit_wire::{RelPath, Timespec};

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cvt_ssize(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// A C string from bytes that must not contain NUL (names from `RelPath` never do).
pub fn cstr(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Resolution flags used for every path the mirror resolves: stay beneath the directory, never
/// follow a symbolic link or a /proc magic link, never cross into another mount.
pub const RESOLVE_STRICT: u64 = libc::RESOLVE_BENEATH
    | libc::RESOLVE_NO_SYMLINKS
    | libc::RESOLVE_NO_MAGICLINKS
    | libc::RESOLVE_NO_XDEV;

/// `struct open_how` of openat2(2) (libc's is non-exhaustive).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// `openat2(2)` with the given resolve flags.
pub fn openat2(
    dir: BorrowedFd<'_>,
    path: &CStr,
    flags: i32,
    mode: u32,
    resolve: u64,
) -> io::Result<OwnedFd> {
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: if flags & (libc::O_CREAT | libc::O_TMPFILE) != 0 {
            mode as u64
        } else {
            0
        },
        resolve,
    };
    loop {
        // SAFETY: valid fd, NUL-terminated path, `how` lives across the call with its true size.
        let r = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                path.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if r >= 0 {
            // SAFETY: the kernel returned a new descriptor that nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) });
        }
        let e = io::Error::last_os_error();
        // openat2 returns EAGAIN when a concurrent rename raced with RESOLVE_BENEATH checks.
        if e.raw_os_error() != Some(libc::EAGAIN) {
            return Err(e);
        }
    }
}

/// Open `rel` strictly beneath `root` (the root itself for the empty path).
pub fn open_beneath(
    root: BorrowedFd<'_>,
    rel: &RelPath,
    flags: i32,
    mode: u32,
) -> io::Result<OwnedFd> {
    let p = if rel.is_root() {
        cstr(b".")?
    } else {
        cstr(rel.as_bytes())?
    };
    openat2(root, &p, flags, mode, RESOLVE_STRICT)
}

/// Open the parent directory of `rel` (as O_PATH) and return it with the last component.
/// Fails with EINVAL for the root, which has no parent beneath itself.
pub fn open_parent(root: BorrowedFd<'_>, rel: &RelPath) -> io::Result<(OwnedFd, CString)> {
    let (parent, name) = rel
        .split_last()
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    let dir = open_beneath(root, &parent, libc::O_PATH | libc::O_DIRECTORY, 0)?;
    Ok((dir, cstr(name)?))
}

pub fn fstatat(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: st is a valid out pointer of the right type.
    cvt(unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), st.as_mut_ptr(), flags) })?;
    // SAFETY: fstatat succeeded and filled it.
    Ok(unsafe { st.assume_init() })
}

/// `fstat` of a descriptor (O_PATH descriptors included).
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    fstatat(fd, c"", libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW)
}

pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: valid fd and C string.
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }).map(drop)
}

pub fn mknodat(dir: BorrowedFd<'_>, name: &CStr, mode: u32, rdev: u64) -> io::Result<()> {
    // SAFETY: valid fd and C string.
    cvt(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, rdev) }).map(drop)
}

pub fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: valid fd and C strings.
    cvt(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(drop)
}

pub fn linkat(
    olddir: BorrowedFd<'_>,
    oldname: &CStr,
    newdir: BorrowedFd<'_>,
    newname: &CStr,
    flags: i32,
) -> io::Result<()> {
    // SAFETY: valid fds and C strings.
    cvt(unsafe {
        libc::linkat(
            olddir.as_raw_fd(),
            oldname.as_ptr(),
            newdir.as_raw_fd(),
            newname.as_ptr(),
            flags,
        )
    })
    .map(drop)
}

pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> io::Result<()> {
    // SAFETY: valid fd and C string.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

pub fn renameat2(
    olddir: BorrowedFd<'_>,
    oldname: &CStr,
    newdir: BorrowedFd<'_>,
    newname: &CStr,
    flags: u32,
) -> io::Result<()> {
    // SAFETY: valid fds and C strings.
    cvt(unsafe {
        libc::renameat2(
            olddir.as_raw_fd(),
            oldname.as_ptr(),
            newdir.as_raw_fd(),
            newname.as_ptr(),
            flags,
        )
    })
    .map(drop)
}

pub fn fchownat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    uid: u32,
    gid: u32,
    flags: i32,
) -> io::Result<()> {
    // SAFETY: valid fd and C string.
    cvt(unsafe { libc::fchownat(dir.as_raw_fd(), name.as_ptr(), uid, gid, flags) }).map(drop)
}

/// chmod of `dir/name`, which must not be a symbolic link (the caller checks with fstatat).
pub fn fchmodat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: valid fd and C string.
    cvt(unsafe { libc::fchmodat(dir.as_raw_fd(), name.as_ptr(), mode, 0) }).map(drop)
}

pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    // SAFETY: valid fd.
    cvt(unsafe { libc::fchmod(fd.as_raw_fd(), mode) }).map(drop)
}

pub fn fchown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: valid fd.
    cvt(unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) }).map(drop)
}

/// A `timespec` for utimensat: a given time, "now", or "leave unchanged".
#[derive(Clone, Copy, Debug)]
pub enum TimeSet {
    Omit,
    Now,
    At(Timespec),
}

fn ts(t: TimeSet) -> libc::timespec {
    match t {
        TimeSet::Omit => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        TimeSet::Now => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        TimeSet::At(t) => libc::timespec {
            tv_sec: t.sec,
            tv_nsec: t.nsec as i64,
        },
    }
}

pub fn utimensat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    atime: TimeSet,
    mtime: TimeSet,
    flags: i32,
) -> io::Result<()> {
    let times = [ts(atime), ts(mtime)];
    // SAFETY: valid fd, C string, and a two-element timespec array.
    cvt(unsafe { libc::utimensat(dir.as_raw_fd(), name.as_ptr(), times.as_ptr(), flags) }).map(drop)
}

pub fn futimens(fd: BorrowedFd<'_>, atime: TimeSet, mtime: TimeSet) -> io::Result<()> {
    let times = [ts(atime), ts(mtime)];
    // SAFETY: valid fd and a two-element timespec array.
    cvt(unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) }).map(drop)
}

pub fn ftruncate(fd: BorrowedFd<'_>, size: u64) -> io::Result<()> {
    let size = i64::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: valid fd.
    cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), size) }).map(drop)
}

pub fn fallocate(fd: BorrowedFd<'_>, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    let off = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    let len = i64::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: valid fd.
    cvt(unsafe { libc::fallocate(fd.as_raw_fd(), mode, off, len) }).map(drop)
}

/// Write all of `data` at `offset` (retrying short writes).
pub fn pwrite_all(fd: BorrowedFd<'_>, mut data: &[u8], mut offset: u64) -> io::Result<()> {
    while !data.is_empty() {
        let off = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
        // SAFETY: valid fd and buffer.
        let r = unsafe { libc::pwrite(fd.as_raw_fd(), data.as_ptr().cast(), data.len(), off) };
        match cvt_ssize(r) {
            Ok(0) => return Err(io::Error::from_raw_os_error(libc::EIO)),
            Ok(n) => {
                data = &data[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One `pwrite`, returning how many bytes were written.
pub fn pwrite(fd: BorrowedFd<'_>, data: &[u8], offset: u64) -> io::Result<usize> {
    let off = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: valid fd and buffer.
    cvt_ssize(unsafe { libc::pwrite(fd.as_raw_fd(), data.as_ptr().cast(), data.len(), off) })
}

/// One `pread` into `buf`, returning how many bytes were read.
pub fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let off = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: valid fd and buffer.
    cvt_ssize(unsafe { libc::pread(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), off) })
}

pub fn fsync(fd: BorrowedFd<'_>, datasync: bool) -> io::Result<()> {
    // SAFETY: valid fd.
    cvt(unsafe {
        if datasync {
            libc::fdatasync(fd.as_raw_fd())
        } else {
            libc::fsync(fd.as_raw_fd())
        }
    })
    .map(drop)
}

/// Tell the kernel that `fd` will be read at scattered offsets (no readahead): for the
/// chunks of a file that a resync compares when they are few. Advice only: errors ignored.
pub fn advise_random(fd: BorrowedFd<'_>) {
    // SAFETY: valid descriptor; the call only sets advice on it.
    unsafe {
        libc::posix_fadvise(fd.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM);
    }
}

pub fn syncfs(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: valid fd.
    cvt(unsafe { libc::syncfs(fd.as_raw_fd()) }).map(drop)
}

/// `FS_IOC_FIEMAP`: `_IOWR('f', 11, struct fiemap)` (libc does not define it).
const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
const FIEMAP_FLAG_SYNC: u32 = 0x1;
const FIEMAP_EXTENT_LAST: u32 = 0x1;
const FIEMAP_EXTENT_UNWRITTEN: u32 = 0x800;
/// Extents asked for per FIEMAP call.
const FIEMAP_BATCH: usize = 64;

/// `struct fiemap_extent` of linux/fiemap.h.
#[repr(C)]
#[derive(Clone, Copy)]
struct FiemapExtent {
    logical: u64,
    physical: u64,
    length: u64,
    reserved64: [u64; 2],
    flags: u32,
    reserved: [u32; 3],
}

/// `struct fiemap` with room for `FIEMAP_BATCH` extents.
#[repr(C)]
struct Fiemap {
    start: u64,
    length: u64,
    flags: u32,
    mapped_extents: u32,
    extent_count: u32,
    reserved: u32,
    extents: [FiemapExtent; FIEMAP_BATCH],
}

/// The ranges of `[from, to)` that the file system holds as unwritten (preallocated) extents,
/// sorted: they read as zeros, and `SEEK_DATA` reports them as data once their pages are in
/// the page cache. The file's dirty pages are written back first (`FIEMAP_FLAG_SYNC`), so a
/// range written but not yet flushed is never reported unwritten. Empty when the file system
/// cannot tell (no FIEMAP).
pub fn unwritten_ranges(fd: BorrowedFd<'_>, from: u64, to: u64) -> io::Result<Vec<(u64, u64)>> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut pos = from;
    let mut flags = FIEMAP_FLAG_SYNC;
    while pos < to {
        // SAFETY: an all-zero `Fiemap` is a valid value (plain integers).
        let mut m: Fiemap = unsafe { std::mem::zeroed() };
        m.start = pos;
        m.length = to - pos;
        m.flags = flags;
        m.extent_count = FIEMAP_BATCH as u32;
        // SAFETY: valid descriptor; `m` is a `struct fiemap` followed by room for
        // `extent_count` extents, as the ioctl expects.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_FIEMAP as _, &mut m as *mut Fiemap) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOTTY | libc::EOPNOTSUPP | libc::EINVAL | libc::EBADR) => {
                    Ok(Vec::new())
                }
                _ => Err(e),
            };
        }
        flags = 0;
        let mapped = (m.mapped_extents as usize).min(FIEMAP_BATCH);
        if mapped == 0 {
            break;
        }
        let mut last = false;
        for e in &m.extents[..mapped] {
            let end = e.logical.saturating_add(e.length);
            if e.flags & FIEMAP_EXTENT_UNWRITTEN != 0 && e.logical < to && end > from {
                let range = (e.logical.max(from), end.min(to));
                match out.last_mut() {
                    Some(prev) if prev.1 == range.0 => prev.1 = range.1,
                    _ => out.push(range),
                }
            }
            pos = pos.max(end);
            last |= e.flags & FIEMAP_EXTENT_LAST != 0;
        }
        if last {
            break;
        }
    }
    Ok(out)
}

/// `lseek` with SEEK_DATA / SEEK_HOLE; `None` at end of file (ENXIO).
pub fn seek_data_hole(fd: BorrowedFd<'_>, offset: u64, whence: i32) -> io::Result<Option<u64>> {
    let off = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: valid fd.
    let r = unsafe { libc::lseek(fd.as_raw_fd(), off, whence) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(r as u64))
}

pub fn readlinkat(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: valid fd, C string and buffer.
    let n = cvt_ssize(unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })?;
    buf.truncate(n);
    Ok(buf)
}

/// The `/proc/self/fd/N` path of a descriptor, optionally followed by `/name`: how the mirror
/// reaches an inode through a descriptor for calls that have no `*at` form (xattrs, chmod of an
/// O_PATH descriptor). The descriptor was resolved safely; the kernel follows the magic link to
/// exactly that inode.
pub fn proc_path(fd: BorrowedFd<'_>, name: Option<&CStr>) -> CString {
    let mut s = format!("/proc/self/fd/{}", fd.as_raw_fd()).into_bytes();
    if let Some(n) = name {
        s.push(b'/');
        s.extend_from_slice(n.to_bytes());
    }
    // A formatted number and a NUL-free name: no interior NUL.
    CString::new(s).unwrap_or_default()
}

/// Extended attributes, on a path (`l*` variants: the final component is not followed) or,
/// with `follow`, on the inode a /proc path leads to.
pub fn setxattr(
    path: &CStr,
    follow: bool,
    name: &CStr,
    value: &[u8],
    flags: i32,
) -> io::Result<()> {
    // SAFETY: valid C strings and buffer.
    cvt(unsafe {
        if follow {
            libc::setxattr(
                path.as_ptr(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                flags,
            )
        } else {
            libc::lsetxattr(
                path.as_ptr(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                flags,
            )
        }
    })
    .map(drop)
}

pub fn getxattr(path: &CStr, follow: bool, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: valid C strings and buffer (a zero-length buffer asks for the size).
    cvt_ssize(unsafe {
        if follow {
            libc::getxattr(
                path.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        } else {
            libc::lgetxattr(
                path.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        }
    })
}

pub fn listxattr(path: &CStr, follow: bool, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: valid C string and buffer.
    cvt_ssize(unsafe {
        if follow {
            libc::listxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        } else {
            libc::llistxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        }
    })
}

pub fn removexattr(path: &CStr, follow: bool, name: &CStr) -> io::Result<()> {
    // SAFETY: valid C strings.
    cvt(unsafe {
        if follow {
            libc::removexattr(path.as_ptr(), name.as_ptr())
        } else {
            libc::lremovexattr(path.as_ptr(), name.as_ptr())
        }
    })
    .map(drop)
}

/// All extended attribute names of a path, each without its NUL.
pub fn list_xattr_names(path: &CStr, follow: bool) -> io::Result<Vec<Vec<u8>>> {
    loop {
        let size = listxattr(path, follow, &mut [])?;
        let mut buf = vec![0u8; size];
        match listxattr(path, follow, &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf
                    .split(|&b| b == 0)
                    .filter(|n| !n.is_empty())
                    .map(<[u8]>::to_vec)
                    .collect());
            }
            // The list grew between the two calls: ask again.
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// One extended attribute's value.
pub fn get_xattr_value(path: &CStr, follow: bool, name: &CStr) -> io::Result<Vec<u8>> {
    loop {
        let size = getxattr(path, follow, name, &mut [])?;
        let mut buf = vec![0u8; size];
        match getxattr(path, follow, name, &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// One directory entry: name, inode number, `d_type`.
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: u64,
    pub kind: u8,
}

/// Whether the entry `e` of the directory `dir` is a directory (`lstat` when the file system
/// did not say in the listing).
pub fn entry_is_dir(dir: BorrowedFd<'_>, e: &DirEntry) -> bool {
    match e.kind {
        libc::DT_DIR => true,
        libc::DT_UNKNOWN => cstr(&e.name)
            .and_then(|c| fstatat(dir, &c, libc::AT_SYMLINK_NOFOLLOW))
            .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR),
        _ => false,
    }
}

/// All entries of a directory except `.` and `..`, read through a fresh descriptor.
pub fn read_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<DirEntry>> {
    let fd = openat2(
        dir,
        c".",
        libc::O_RDONLY | libc::O_DIRECTORY,
        0,
        RESOLVE_STRICT,
    )?;
    let raw = std::os::fd::IntoRawFd::into_raw_fd(fd);
    // SAFETY: raw is an open directory descriptor whose ownership passes to the DIR stream.
    let dirp = unsafe { libc::fdopendir(raw) };
    if dirp.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so we still own raw.
        unsafe { libc::close(raw) };
        return Err(e);
    }
    let mut out = Vec::new();
    let result = loop {
        // SAFETY: errno is thread-local; reset so that end-of-stream is told from an error.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: dirp is a valid open stream.
        let ent = unsafe { libc::readdir64(dirp) };
        if ent.is_null() {
            let e = io::Error::last_os_error();
            break if e.raw_os_error() == Some(0) {
                Ok(())
            } else {
                Err(e)
            };
        }
        // SAFETY: readdir returned a valid entry that lives until the next call.
        let (name, ino, kind) = unsafe {
            let e = &*ent;
            (
                CStr::from_ptr(e.d_name.as_ptr()).to_bytes().to_vec(),
                e.d_ino,
                e.d_type,
            )
        };
        if name != b"." && name != b".." {
            out.push(DirEntry { name, ino, kind });
        }
    };
    // SAFETY: dirp is valid and closed once.
    unsafe { libc::closedir(dirp) };
    result.map(|()| out)
}

/// Remove `dir/name` whatever it is, recursively for directories, never following symlinks.
/// Missing is not an error.
pub fn remove_all_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let st = match fstatat(dir, name, libc::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return unlinkat(dir, name, 0);
    }
    let sub = openat2(
        dir,
        name,
        libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
        RESOLVE_STRICT,
    )?;
    for e in read_dir(sub.as_fd())? {
        remove_all_at(sub.as_fd(), &cstr(&e.name)?)?;
    }
    unlinkat(dir, name, libc::AT_REMOVEDIR)
}

/// `OsStr` to bytes for names coming from FUSE.
pub fn os_bytes(s: &OsStr) -> &[u8] {
    s.as_bytes()
}

/// Time of a `stat` field pair as a wire `Timespec`.
pub fn timespec(sec: i64, nsec: i64) -> Timespec {
    Timespec {
        sec,
        nsec: nsec.clamp(0, 999_999_999) as u32,
    }
}

/// The errno of an I/O error, EIO when it has none.
pub fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}
