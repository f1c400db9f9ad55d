//! The primary's replicated tree: the backing directory (reached through a descriptor opened
//! before the FUSE mount hid it), the inode and handle tables the FUSE layer needs, the
//! ordering lock, and the link.
//!
//! Ordering (docs/architecture.md, "The contract", clause 2): every mutating operation takes
//! `order`, performs its local system call, and submits itself to the link before releasing
//! it. So the order of submission, which is the order the peer applies, is the order in which
//! the operations completed here. The wait for the peer happens after `order` is released, so
//! many operations are in flight at once.

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use mirrorkit_store::sys::{self, TimeSet};
use mirrorkit_wire::{Meta, RelPath, Target, TimeFix};

pub use crate::link::Mark;
use crate::link::{Link, Ticket};
use crate::passthrough::{Io, Passthrough};

/// FUSE's inode number of the root.
pub const ROOT_INO: u64 = 1;

/// One inode the kernel knows about.
pub struct Node {
    /// O_PATH descriptor of the backing inode.
    pub fd: Arc<OwnedFd>,
    /// `S_IFMT` bits.
    pub kind: u32,
    /// Names this inode is known by: (parent inode, name). Directories have one.
    pub links: Vec<(u64, Vec<u8>)>,
    pub lookups: u64,
}

/// A file the application has open.
pub struct Handle {
    pub fd: OwnedFd,
    pub ino: u64,
    pub writable: bool,
    /// O_SYNC (false) or O_DSYNC (true): every write is followed by a durable flush.
    pub sync: Option<bool>,
    /// Session in which the peer opened its matching descriptor (0: it has none).
    pub remote_session: AtomicU64,
    /// How the kernel does this open's I/O (read passthrough or through the engine).
    pub io: Io,
}

pub struct Core {
    pub mirror: String,
    pub root: OwnedFd,
    order: Mutex<()>,
    pub link: Link,
    nodes: Mutex<HashMap<u64, Node>>,
    handles: RwLock<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    root_st_ino: u64,
    /// Read passthrough: which opens bypass the engine for their reads.
    pub passthrough: Passthrough,
}

/// The ordering lock, held while an operation is made here and submitted. Dropping it hands
/// the operation's marks to a running synchronisation pass if `submit` did not (an operation
/// that made a change but sent nothing, e.g. on a file without a name): the change is done by
/// then, so a pass that takes the marks reads the new bytes.
pub struct OrderGuard<'a> {
    link: &'a Link,
    _lock: MutexGuard<'a, ()>,
}

impl Drop for OrderGuard<'_> {
    fn drop(&mut self) {
        self.link.release_slot();
    }
}

impl Core {
    /// Open the backing directory. Call before mounting over it.
    pub fn open(mirror: &str, dir: &Path, link: Link) -> io::Result<Self> {
        let c = sys::cstr(dir.as_os_str().as_encoded_bytes())?;
        // SAFETY: AT_FDCWD is valid as a directory descriptor for the call.
        let cwd = unsafe { BorrowedFd::borrow_raw(libc::AT_FDCWD) };
        let root = sys::openat2(cwd, &c, libc::O_RDONLY | libc::O_DIRECTORY, 0, 0)?;
        let st = sys::fstat(root.as_fd())?;
        let root_path = sys::openat2(
            root.as_fd(),
            c".",
            libc::O_PATH | libc::O_DIRECTORY,
            0,
            sys::RESOLVE_STRICT,
        )?;
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT_INO,
            Node {
                fd: Arc::new(root_path),
                kind: libc::S_IFDIR,
                links: Vec::new(),
                lookups: 1,
            },
        );
        Ok(Core {
            mirror: mirror.to_string(),
            root,
            order: Mutex::new(()),
            link,
            nodes: Mutex::new(nodes),
            handles: RwLock::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            root_st_ino: st.st_ino,
            passthrough: Passthrough::new(false),
        })
    }

    /// Ask for read passthrough (`docs/architecture.md`, "Reads"). Before mounting.
    pub fn with_read_passthrough(mut self, requested: bool) -> Self {
        self.passthrough = Passthrough::new(requested);
        self
    }

    pub fn order(&self) -> OrderGuard<'_> {
        OrderGuard {
            link: &self.link,
            _lock: self.order.lock().unwrap_or_else(|p| p.into_inner()),
        }
    }

    /// Take the ordering lock for a change, and record what it changes first (durably while
    /// the peer is not confirmed in sync). Fails with EIO if that cannot be recorded: then the
    /// change must not be made, since a later resync would miss it.
    pub fn order_marked(&self, marks: impl FnOnce() -> Vec<Mark>) -> io::Result<OrderGuard<'_>> {
        let g = self.order();
        if let Err(e) = self.link.premark(marks()) {
            tracing::error!(mirror = %self.mirror, "{e}: change refused, it could not be recorded for the peer");
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(g)
    }

    /// Mark of a change to bytes `[start, end)` of the file of FUSE inode `ino`.
    pub fn data_mark(&self, ino: u64, start: u64, end: u64) -> Mark {
        Mark::Data {
            ino: self.backing_ino(ino),
            start,
            end,
        }
    }

    /// Backing inode number of a FUSE inode number (the inverse of `fuse_ino`, but for the
    /// root).
    pub fn backing_ino(&self, ino: u64) -> u64 {
        if ino == ROOT_INO {
            self.root_st_ino
        } else {
            ino.wrapping_sub(1)
        }
    }

    fn nodes(&self) -> MutexGuard<'_, HashMap<u64, Node>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// FUSE inode number of a backing inode.
    pub fn fuse_ino(&self, st_ino: u64) -> u64 {
        if st_ino == self.root_st_ino {
            ROOT_INO
        } else {
            // Backing inode numbers are unique and never 0, so +1 is unique and never 1.
            st_ino.wrapping_add(1)
        }
    }

    pub fn node_fd(&self, ino: u64) -> Option<Arc<OwnedFd>> {
        self.nodes().get(&ino).map(|n| n.fd.clone())
    }

    pub fn node_kind(&self, ino: u64) -> Option<u32> {
        self.nodes().get(&ino).map(|n| n.kind)
    }

    /// Record that the kernel looked `parent/name` up (or it was just made): take a reference
    /// on its node, creating the node with `fd` if new. Returns the FUSE inode number.
    pub fn remember(&self, parent: u64, name: &[u8], fd: OwnedFd, st: &libc::stat) -> u64 {
        let ino = self.fuse_ino(st.st_ino);
        let mut nodes = self.nodes();
        let node = nodes.entry(ino).or_insert_with(|| Node {
            fd: Arc::new(fd),
            kind: st.st_mode & libc::S_IFMT,
            links: Vec::new(),
            lookups: 0,
        });
        node.lookups += 1;
        let link = (parent, name.to_vec());
        if node.kind == libc::S_IFDIR {
            node.links = vec![link];
        } else if !node.links.contains(&link) {
            node.links.push(link);
        }
        ino
    }

    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        let mut nodes = self.nodes();
        if let Some(node) = nodes.get_mut(&ino) {
            node.lookups = node.lookups.saturating_sub(n);
            if node.lookups == 0 {
                nodes.remove(&ino);
            }
        }
    }

    /// The inode `parent/name` no longer names (unlink, rename away).
    pub fn drop_link(&self, ino: u64, parent: u64, name: &[u8]) {
        if let Some(node) = self.nodes().get_mut(&ino) {
            node.links.retain(|(p, n)| !(*p == parent && n == name));
        }
    }

    /// `ino` is now also (or, for a rename, instead) known as `parent/name`.
    pub fn move_link(&self, ino: u64, from: Option<(u64, &[u8])>, parent: u64, name: &[u8]) {
        if let Some(node) = self.nodes().get_mut(&ino) {
            if let Some((fp, fname)) = from {
                node.links.retain(|(p, n)| !(*p == fp && n == fname));
            }
            let link = (parent, name.to_vec());
            if node.kind == libc::S_IFDIR {
                node.links = vec![link];
            } else if !node.links.contains(&link) {
                node.links.insert(0, link);
            }
        }
    }

    /// A current path of an inode beneath the root, if it has one this node knows.
    pub fn path_of(&self, ino: u64) -> Option<RelPath> {
        let nodes = self.nodes();
        path_in(&nodes, ino, 0)
    }

    /// Every known path of an inode (all its hard links).
    pub fn all_paths_of(&self, ino: u64) -> Vec<RelPath> {
        let nodes = self.nodes();
        let Some(node) = nodes.get(&ino) else {
            return Vec::new();
        };
        node.links
            .iter()
            .filter_map(|(p, n)| path_in(&nodes, *p, 0).and_then(|pp| pp.join(n).ok()))
            .collect()
    }

    /// Parent inode of a directory.
    pub fn node_parent(&self, ino: u64) -> Option<u64> {
        self.nodes().get(&ino)?.links.first().map(|(p, _)| *p)
    }

    /// One (parent, name) of an inode.
    pub fn first_link(&self, ino: u64) -> Option<(u64, Vec<u8>)> {
        self.nodes().get(&ino)?.links.first().cloned()
    }

    /// Path of `parent/name`.
    pub fn child_path(&self, parent: u64, name: &[u8]) -> Option<RelPath> {
        self.path_of(parent).and_then(|p| p.join(name).ok())
    }

    pub fn new_handle(&self, h: Handle) -> u64 {
        self.new_handle_arc(Arc::new(h))
    }

    pub fn new_handle_arc(&self, h: Arc<Handle>) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, h);
        fh
    }

    pub fn handle(&self, fh: u64) -> Option<Arc<Handle>> {
        self.handles
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
            .cloned()
    }

    pub fn remove_handle(&self, fh: u64) -> Option<Arc<Handle>> {
        self.handles
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh)
    }

    /// Open writable handles (for the switch to in-sync after a synchronisation).
    /// Whether the file of FUSE inode `ino` is open here and has no name left (unlinked while
    /// open): its content no longer concerns the peer's tree.
    pub fn open_without_name(&self, ino: u64) -> bool {
        let handles = self.handles.read().unwrap_or_else(|p| p.into_inner());
        handles
            .values()
            .filter(|h| h.ino == ino)
            .any(|h| sys::fstat(h.fd.as_fd()).is_ok_and(|st| st.st_nlink == 0))
    }

    pub fn writable_handles(&self) -> Vec<(u64, Arc<Handle>)> {
        self.handles
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, h)| h.writable)
            .map(|(fh, h)| (*fh, h.clone()))
            .collect()
    }

    /// What the peer knows an inode by, for an operation on it: a path this node knows, else
    /// a file the peer holds open for it. When neither exists but the inode still has a name
    /// here (a hard link the kernel never looked up through this mount), the operation cannot
    /// reach the peer, nor be recorded for a synchronisation: the session ends, so that the
    /// next synchronisation repairs the copy. An inode without a name is unreachable: the peer
    /// needs nothing. Call with `order` held; `what` names the operation for the log.
    pub fn peer_target(&self, ino: u64, what: &str) -> Option<Target> {
        if let Some(p) = self.path_of(ino) {
            // Outside the replicated set: this node's own, the peer needs nothing.
            let replicated = self.filter().selects_everything()
                || self.replicates(&p, self.node_kind(ino) == Some(libc::S_IFDIR));
            return replicated.then_some(Target::Path(p));
        }
        if let Some(s) = self.link.in_sync_session() {
            let handles = self.handles.read().unwrap_or_else(|p| p.into_inner());
            let open = handles.iter().find(|(_, h)| {
                h.ino == ino && h.writable && h.remote_session.load(Ordering::Relaxed) == s
            });
            if let Some((fh, _)) = open {
                return Some(Target::Handle(*fh));
            }
        }
        let named = self
            .node_fd(ino)
            .and_then(|fd| sys::fstat(fd.as_fd()).ok())
            .is_some_and(|st| st.st_nlink > 0);
        if named {
            self.link.lost_current(&format!(
                "{what} of an inode whose path this node does not know"
            ));
        }
        None
    }

    /// Submit an operation on a handle: only if the peer holds the handle (or a
    /// synchronisation is recording what changed). Call with `order` held.
    pub fn submit_on_handle(
        &self,
        h: &Handle,
        op: mirrorkit_wire::Op,
        data: &[u8],
        fixes: Vec<TimeFix>,
    ) -> Option<Ticket> {
        if let Some(s) = self.link.in_sync_session() {
            if h.remote_session.load(Ordering::Relaxed) != s {
                // Opened before the peer knew it and not reachable by a path (unlinked):
                // its content cannot reach the tree, so the peer needs nothing.
                return None;
            }
        }
        self.link.submit(op, data, fixes)
    }

    /// Submit a path operation. Call with `order` held.
    pub fn submit(
        &self,
        op: mirrorkit_wire::Op,
        data: &[u8],
        fixes: Vec<TimeFix>,
    ) -> Option<Ticket> {
        self.link.submit(op, data, fixes)
    }

    /// Marks for a change to an inode that a resync must redo whole: all its known names.
    pub fn dirty_node(&self, ino: u64) -> Vec<Mark> {
        self.all_paths_of(ino)
            .into_iter()
            .map(Mark::Entry)
            .collect()
    }

    /// Marks for a change of an inode's attributes: all its known names.
    pub fn meta_node(&self, ino: u64) -> Vec<Mark> {
        self.all_paths_of(ino).into_iter().map(Mark::Meta).collect()
    }

    /// What this mirror replicates.
    pub fn filter(&self) -> &mirrorkit_module::MirrorFilter {
        &self.link.config().filter
    }

    /// Whether `path` is replicated, as a directory (`dir`) or as another entry.
    pub fn replicates(&self, path: &RelPath, dir: bool) -> bool {
        self.filter().replicates_bytes(path.as_bytes(), dir)
    }

    /// Wait for the peer, if the operation was sent.
    pub fn wait(&self, t: Option<Ticket>) {
        match t {
            Some(t) => self.link.wait(t),
            None => self.link.wait_released(),
        }
    }

    /// Time fix for a directory (after an entry in it changed).
    pub fn dir_fix(&self, ino: u64) -> Option<TimeFix> {
        let fd = self.node_fd(ino)?;
        let st = sys::fstat(fd.as_fd()).ok()?;
        Some(TimeFix {
            target: Target::Path(self.path_of(ino)?),
            mtime: sys::timespec(st.st_mtime, st.st_mtime_nsec),
        })
    }

    /// `/proc/self/fd` path of a node, for calls without an `*at` form.
    pub fn proc_path(&self, fd: &OwnedFd) -> CString {
        sys::proc_path(fd.as_fd(), None)
    }
}

fn path_in(nodes: &HashMap<u64, Node>, ino: u64, depth: usize) -> Option<RelPath> {
    if ino == ROOT_INO {
        return Some(RelPath::root());
    }
    // Deeper than any valid path: a cycle would be a bug; refuse rather than loop.
    if depth > mirrorkit_wire::MAX_PATH_BYTES / 2 {
        return None;
    }
    let node = nodes.get(&ino)?;
    node.links.iter().find_map(|(parent, name)| {
        path_in(nodes, *parent, depth + 1).and_then(|p| p.join(name).ok())
    })
}

/// Attributes of a fresh inode as the peer must reproduce them.
pub fn meta_of(st: &libc::stat) -> Meta {
    Meta {
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime: sys::timespec(st.st_mtime, st.st_mtime_nsec),
    }
}

/// Set a time on a path the FUSE layer resolved: for `Now`, the kernel's clock.
pub fn time_set(t: Option<fuser::TimeOrNow>) -> TimeSet {
    match t {
        None => TimeSet::Omit,
        Some(fuser::TimeOrNow::Now) => TimeSet::Now,
        Some(fuser::TimeOrNow::SpecificTime(t)) => {
            let (sec, nsec) = match t.duration_since(std::time::UNIX_EPOCH) {
                Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
                Err(e) => {
                    let d = e.duration();
                    let mut sec = -(d.as_secs() as i64);
                    let mut nsec = d.subsec_nanos();
                    if nsec > 0 {
                        sec -= 1;
                        nsec = 1_000_000_000 - nsec;
                    }
                    (sec, nsec)
                }
            };
            TimeSet::At(mirrorkit_wire::Timespec { sec, nsec })
        }
    }
}
