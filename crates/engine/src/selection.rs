//! What the primary does when an operation involves entries outside the replicated set
//! (`module.toml`'s `include`/`exclude` patterns, [`mirrorkit_module::MirrorFilter`]).
//!
//! Entries outside the set live on this node only: operations on them are done here and not
//! sent. An entry that moves into the set by a rename is sent whole, an entry that moves out of
//! it is removed from the peer. What cannot be moved across the boundary as one atomic change
//! on both nodes is refused with `EXDEV`, the error of a rename or link between two file
//! systems, which applications and tools (`mv`) already handle by copying:
//!
//! - a hard link whose two names are not both in or both out of the set;
//! - a rename into the set of anything but a regular file (a directory, a symbolic link, a
//!   special file), or of a regular file that has several names;
//! - a rename out of the set of a regular file that has several names, or of a directory
//!   holding one (every name of an inode stays on one side);
//! - `RENAME_EXCHANGE` where either entry would cross the boundary;
//! - a rename of a directory that changes, for something below it, whether it is replicated
//!   (`exclude = ["a/cache"]` and `mv a b`).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;

use mirrorkit_store::{digest, sys};
use mirrorkit_wire::{Op, RelPath, Target};

use crate::core::{meta_of, Core};
use crate::link::Ticket;

/// Bytes of file data per message when a file enters the replicated set.
const CHUNK: usize = 1 << 20;

/// What a rename (without `RENAME_EXCHANGE`) of an entry of kind `mode` does to the peer.
#[derive(Debug, PartialEq, Eq)]
pub enum Crossing {
    /// Both names replicated: the rename is sent.
    Inside,
    /// Neither name replicated: nothing is sent.
    Outside,
    /// Into the set: the file is sent whole under its new name after the rename.
    Enters,
    /// Out of the set: the old name is removed from the peer.
    Leaves,
    /// Refused with `EXDEV` (see the module documentation); the reason, for the log.
    Refused(&'static str),
}

/// Decide a rename of the entry `st` from `from` to `to` (both known paths).
/// `dir_fd` is the entry itself when it is a directory (for the check of what is below it).
pub fn rename_crossing(
    core: &Core,
    from: &RelPath,
    to: &RelPath,
    st: &libc::stat,
    dir_fd: Option<&OwnedFd>,
) -> Crossing {
    if core.filter().selects_everything() {
        return Crossing::Inside;
    }
    let fmt = st.st_mode & libc::S_IFMT;
    let dir = fmt == libc::S_IFDIR;
    let (was, will) = (core.replicates(from, dir), core.replicates(to, dir));
    match (was, will) {
        (true, true) => {
            if let Some(fd) = dir_fd {
                if below_changes(core, from, to, fd) {
                    return Crossing::Refused(
                        "the rename of this directory would change whether something below it is replicated",
                    );
                }
            }
            Crossing::Inside
        }
        (false, false) => Crossing::Outside,
        (false, true) if fmt != libc::S_IFREG => Crossing::Refused(
            "only a regular file can be renamed into the replicated set (copy the rest)",
        ),
        (_, _) if fmt == libc::S_IFREG && st.st_nlink > 1 => Crossing::Refused(
            "a file with several names cannot cross the boundary of the replicated set",
        ),
        (false, true) => Crossing::Enters,
        (true, false) => match dir_fd {
            Some(fd) if holds_linked_file(fd) => Crossing::Refused(
                "a directory holding a file with several names cannot leave the replicated set",
            ),
            _ => Crossing::Leaves,
        },
    }
}

/// What a walk below a directory does with one entry.
enum Seen<T> {
    /// Stop: the answer is yes.
    Found,
    /// A directory to walk too, with what its entries need to know.
    Enter(T),
    Next,
}

/// Whether `visit` finds something below the directory `fd`, walking depth first; `top` is
/// what the entries of `fd` itself need to know. A directory that cannot be read counts as
/// found (the caller refuses rather than guess).
fn any_below<T>(
    fd: &OwnedFd,
    top: T,
    mut visit: impl FnMut(BorrowedFd<'_>, &sys::DirEntry, &T) -> Seen<T>,
) -> bool {
    let Ok(root) = fd.try_clone() else {
        return true;
    };
    let mut stack = vec![(root, top)];
    while let Some((dfd, at)) = stack.pop() {
        let Ok(entries) = sys::read_dir(dfd.as_fd()) else {
            return true;
        };
        for e in entries {
            match visit(dfd.as_fd(), &e, &at) {
                Seen::Found => return true,
                Seen::Next => {}
                Seen::Enter(next) => {
                    let opened = sys::cstr(&e.name).and_then(|c| {
                        sys::openat2(
                            dfd.as_fd(),
                            &c,
                            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                            0,
                            sys::RESOLVE_STRICT,
                        )
                    });
                    match opened {
                        Ok(child) => stack.push((child, next)),
                        Err(_) => return true,
                    }
                }
            }
        }
    }
    false
}

/// Whether, for anything below the directory `fd`, being replicated differs between the
/// directory's names `from` and `to`. Subtrees excluded under both names are not entered.
fn below_changes(core: &Core, from: &RelPath, to: &RelPath, fd: &OwnedFd) -> bool {
    any_below(fd, (from.clone(), to.clone()), |dir, e, (from, to)| {
        let (Ok(from), Ok(to)) = (from.join(&e.name), to.join(&e.name)) else {
            return Seen::Next;
        };
        let is_dir = sys::entry_is_dir(dir, e);
        let was = core.replicates(&from, is_dir);
        if was != core.replicates(&to, is_dir) {
            Seen::Found
        } else if is_dir && was {
            Seen::Enter((from, to))
        } else {
            Seen::Next
        }
    })
}

/// Whether anything below the directory `fd` other than a directory has several names (or
/// cannot be read: then refuse rather than guess).
fn holds_linked_file(fd: &OwnedFd) -> bool {
    any_below(fd, (), |dir, e, _| {
        let st = sys::cstr(&e.name).and_then(|c| sys::fstatat(dir, &c, libc::AT_SYMLINK_NOFOLLOW));
        match st {
            Err(_) => Seen::Found,
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => Seen::Enter(()),
            Ok(st) if st.st_nlink > 1 => Seen::Found,
            Ok(_) => Seen::Next,
        }
    })
}

/// Whether a hard link from `existing` to `new` (names of a non-directory) keeps both names on
/// the same side of the boundary; `Some(replicated)` if so, `None` to refuse it.
pub fn link_side(core: &Core, existing: &RelPath, new: &RelPath) -> Option<bool> {
    let (a, b) = (
        core.replicates(existing, false),
        core.replicates(new, false),
    );
    (a == b).then_some(a)
}

/// In sync: send the regular file `fd` (of FUSE inode `ino`), which just entered the replicated
/// set under `path`, whole: a fresh file, its data (its holes stay holes), its extended
/// attributes, its time; then open on the peer every handle this node holds open for writing
/// on it, so that what the application writes next reaches the peer too. Call with the
/// ordering lock held. Returns the last ticket (the peer acknowledges in order).
pub fn send_entering_file(
    core: &Core,
    ino: u64,
    fd: &OwnedFd,
    path: &RelPath,
) -> std::io::Result<Option<Ticket>> {
    // The node's descriptor is an O_PATH one: read through a descriptor of its own.
    let proc = sys::proc_path(fd.as_fd(), None);
    // SAFETY: a valid C string; the descriptor returned is owned right after.
    let raw = unsafe { libc::open(proc.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: open returned a fresh descriptor.
    let file = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    let fd = &file;
    let st = sys::fstat(fd.as_fd())?;
    let meta = meta_of(&st);
    let size = st.st_size as u64;
    let first = core.submit(
        Op::SyncFile {
            path: path.clone(),
            meta,
            size,
        },
        &[],
        Vec::new(),
    );
    if first.is_none() {
        return Ok(None);
    }
    // Its data ranges only: the new file is all holes, so the holes stay holes.
    let mut buf = vec![0u8; CHUNK];
    for (start, end) in digest::data_ranges(fd.as_fd(), size)? {
        let mut offset = start;
        while offset < end {
            let want = ((end - offset) as usize).min(CHUNK);
            let mut done = 0;
            while done < want {
                match sys::pread(fd.as_fd(), &mut buf[done..want], offset + done as u64) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if done == 0 {
                break;
            }
            core.submit(
                Op::SyncData {
                    path: path.clone(),
                    offset,
                },
                &buf[..done],
                Vec::new(),
            );
            offset += done as u64;
        }
    }
    let names = match sys::list_xattr_names(&proc, true) {
        Ok(n) => n,
        Err(e) if sys::errno(&e) == libc::ENOTSUP => Vec::new(),
        Err(e) => return Err(e),
    };
    let target = Target::Path(path.clone());
    for name in names {
        let c = sys::cstr(&name)?;
        let value = match sys::get_xattr_value(&proc, true, &c) {
            Ok(v) => v,
            Err(e) if sys::errno(&e) == libc::ENODATA => continue,
            Err(e) => return Err(e),
        };
        core.submit(
            Op::SetXattr {
                target: target.clone(),
                name,
                flags: 0,
            },
            &value,
            Vec::new(),
        );
    }
    // The data and attributes above changed the peer's time of the file: set the primary's.
    let mut last = core.submit(Op::set_mtime(target, meta.mtime), &[], Vec::new());
    if let Some(s) = core.link.in_sync_session() {
        for (fh, h) in core.writable_handles() {
            if h.ino != ino || h.remote_session.load(Ordering::Relaxed) == s {
                continue;
            }
            let t = core.submit(
                Op::Open {
                    path: path.clone(),
                    handle: fh,
                    truncate: false,
                },
                &[],
                Vec::new(),
            );
            if t.is_some() {
                h.remote_session.store(s, Ordering::Relaxed);
                last = t;
            }
        }
    }
    Ok(last)
}

/// In sync: a file left the replicated set; the peer forgets the handles it held open for it
/// (this node's writes to it no longer concern the peer). Call with the ordering lock held.
pub fn close_leaving_file(core: &Core, ino: u64) -> Option<Ticket> {
    let s = core.link.in_sync_session()?;
    let mut last = None;
    for (fh, h) in core.writable_handles() {
        if h.ino == ino && h.remote_session.load(Ordering::Relaxed) == s {
            let t = core.submit(Op::Close { handle: fh }, &[], Vec::new());
            h.remote_session.store(0, Ordering::Relaxed);
            last = t.or(last);
        }
    }
    last
}
