//! Read passthrough: read-only opens served by the kernel straight from the backing file
//! (FUSE passthrough, Linux 6.9 and later), so their reads, `mmap` and `sendfile` never reach
//! the engine and run at the backing file system's speed.
//!
//! Only opens that cannot write pass through: `O_RDONLY` without `O_TRUNC`. A writable open
//! passed through would write to the backing file behind the engine's back, so nothing would
//! reach the peer.
//!
//! The kernel's rules (fs/fuse/iomode.c, checked on 6.18 with a real mount, see
//! docs/architecture.md "Reads"): an inode is either in caching mode (some open without
//! `FOPEN_PASSTHROUGH`) or in passthrough mode (some open with it), never both. A passthrough
//! open while a caching open exists, and a caching open (even with `FOPEN_DIRECT_IO`) while a
//! passthrough open exists, fail in `open(2)` with EIO. All passthrough opens of an inode must
//! use the same backing file (another one: EIO), `FOPEN_KEEP_CACHE` is refused with
//! passthrough (EIO), and a live `mmap` keeps its open in force after `close`. The kernel
//! leaves passthrough mode when the last such file is closed, before the engine gets the
//! RELEASE.
//!
//! So, per inode, this module admits an open either as passthrough (read-only, no caching
//! open exists) or as caching. A caching open (any writable open) that finds passthrough opens
//! waits for them to close, up to [`DRAIN_WAIT`]; meanwhile new read-only opens of the inode
//! queue behind it. If they do not close in time, the open fails with ETXTBSY ("file busy",
//! what Linux answers for a write open of a file the kernel is reading) rather than the
//! kernel's EIO: this is the price of read passthrough, which is why it is off unless asked
//! for.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fuser::BackingId;
use tracing::{info, warn};

/// Longest a caching (for example writable) open waits for the passthrough opens of its inode
/// to close before it fails with ETXTBSY.
pub const DRAIN_WAIT: Duration = Duration::from_secs(5);

/// Most FUSE worker threads waiting at once for passthrough opens to close; the others stay
/// free, among others for the RELEASE requests that end the waits.
pub const MAX_WAITING_THREADS: usize = crate::mount::FUSE_THREADS / 2;

/// `Passthrough::reason` until FUSE_INIT has been answered.
pub const NOT_INITIALISED: &str = "FUSE not initialised yet";

/// Environment variable that turns read passthrough on (`1`, `on`, `true`, `yes`) or off when
/// the caller does not choose explicitly.
pub const ENV: &str = "MIRRORKIT_READ_PASSTHROUGH";

/// How an open file's I/O goes, as admitted here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Io {
    /// Not tracked: passthrough was not requested, or not a regular file.
    Untracked,
    /// Through the engine and the FUSE page cache.
    Caching,
    /// Straight to the backing file.
    Passthrough,
}

/// Counters for the status file, benchmarks and tests.
#[derive(Debug, Default)]
pub struct Counters {
    /// Opens answered with passthrough.
    pub passthrough_opens: AtomicU64,
    /// Read-only opens that went through the engine although passthrough is active (the
    /// inode had caching opens, or a registration failed).
    pub read_opens_through_engine: AtomicU64,
    /// FUSE READ requests the engine served.
    pub engine_reads: AtomicU64,
    /// Caching opens that had to wait for passthrough opens of their inode to close.
    pub opens_waited: AtomicU64,
    /// Caching opens refused (ETXTBSY) because passthrough opens stayed open.
    pub opens_refused: AtomicU64,
}

/// Per inode, the opens the engine answered and the kernel has not released.
#[derive(Default)]
struct InodeIo {
    passthrough: u32,
    caching: u32,
    /// Caching opens waiting for `passthrough` to reach 0.
    waiting: u32,
    /// The backing file all passthrough opens of the inode share, while any is open.
    backing: Option<Arc<BackingId>>,
}

/// What [`Passthrough::admit_read`] decided for a read-only open.
pub enum ReadAdmission {
    /// Answer with passthrough through this backing file.
    Passthrough(Arc<BackingId>),
    /// Answer as a caching open (already counted).
    Caching,
}

pub struct Passthrough {
    requested: bool,
    /// Whether opens may pass through now: set at FUSE_INIT when the kernel offered it,
    /// cleared for good at the first registration the kernel refuses.
    active: AtomicBool,
    /// Why reads are not passed through (empty while active).
    reason: Mutex<String>,
    inodes: Mutex<HashMap<u64, InodeIo>>,
    changed: Condvar,
    waiting_threads: AtomicUsize,
    pub counters: Counters,
}

/// Whether the environment asks for read passthrough.
pub fn requested_by_env() -> bool {
    std::env::var(ENV).is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "on" | "true" | "yes"
        )
    })
}

impl Passthrough {
    pub fn new(requested: bool) -> Self {
        Passthrough {
            requested,
            active: AtomicBool::new(false),
            reason: Mutex::new(if requested {
                NOT_INITIALISED.into()
            } else {
                format!("read passthrough not enabled (--read-passthrough or {ENV}=1)")
            }),
            inodes: Mutex::new(HashMap::new()),
            changed: Condvar::new(),
            waiting_threads: AtomicUsize::new(0),
            counters: Counters::default(),
        }
    }

    pub fn requested(&self) -> bool {
        self.requested
    }

    pub fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Why reads are not passed through; empty while they are.
    pub fn reason(&self) -> String {
        if self.active() {
            return String::new();
        }
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn inodes(&self) -> MutexGuard<'_, HashMap<u64, InodeIo>> {
        self.inodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// At FUSE_INIT: whether passthrough is in force, and the one log line saying so.
    pub fn initialised(&self, mirror: &str, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => {
                self.active.store(true, Ordering::Relaxed);
                info!(
                    mirror,
                    "reads pass through to the backing files (FUSE passthrough)"
                );
            }
            Err(why) => {
                if self.requested {
                    warn!(
                        mirror,
                        "reads are not passed through: {why}; they go through the engine"
                    );
                } else {
                    info!(mirror, "reads go through the engine: {why}");
                }
                *self.reason.lock().unwrap_or_else(|p| p.into_inner()) = why;
            }
        }
    }

    /// The kernel refused to register a backing file: no more passthrough on this mount.
    fn refused(&self, mirror: &str, e: &std::io::Error) {
        if self.active.swap(false, Ordering::Relaxed) {
            let why = format!("the kernel refused to register a backing file ({e})");
            warn!(
                mirror,
                "reads are not passed through from now on: {why}; they go through the engine"
            );
            *self.reason.lock().unwrap_or_else(|p| p.into_inner()) = why;
        }
    }

    /// Admit a read-only open (no `O_TRUNC`) of regular-file inode `ino`. `register` makes a
    /// backing id of the open's descriptor when the inode has none yet. `None`: not tracked.
    pub fn admit_read(
        &self,
        mirror: &str,
        ino: u64,
        register: impl FnOnce() -> std::io::Result<BackingId>,
    ) -> Option<ReadAdmission> {
        if !self.requested {
            return None;
        }
        let mut inodes = self.inodes();
        let st = inodes.entry(ino).or_default();
        if st.passthrough > 0 && st.waiting > 0 {
            // A caching open waits for the passthrough opens to close: queue behind it rather
            // than keep the inode in passthrough mode for ever.
            inodes = self.wait_for(inodes, ino, false, |s| s.passthrough == 0 || s.waiting == 0);
        }
        let st = inodes.entry(ino).or_default();
        if st.passthrough > 0 {
            // The inode is in passthrough mode: every open of it must be one, with the same
            // backing file. No registration needed.
            if let Some(id) = st.backing.clone() {
                st.passthrough += 1;
                self.counters
                    .passthrough_opens
                    .fetch_add(1, Ordering::Relaxed);
                return Some(ReadAdmission::Passthrough(id));
            }
        }
        // A new passthrough period only when no caching open exists or waits (a writer
        // woken by the last reader's release must not find the inode in passthrough again).
        if st.caching == 0 && st.passthrough == 0 && st.waiting == 0 && self.active() {
            match register() {
                Ok(id) => {
                    let id = Arc::new(id);
                    st.backing = Some(id.clone());
                    st.passthrough = 1;
                    self.counters
                        .passthrough_opens
                        .fetch_add(1, Ordering::Relaxed);
                    return Some(ReadAdmission::Passthrough(id));
                }
                Err(e) => {
                    let transient = matches!(
                        e.raw_os_error(),
                        Some(libc::ENOMEM | libc::EMFILE | libc::ENFILE | libc::EINTR)
                    );
                    if !transient {
                        self.refused(mirror, &e);
                    }
                }
            }
        }
        // Caching opens exist (the kernel refuses a passthrough open then), or passthrough is
        // off: through the engine.
        st.caching += 1;
        self.counters
            .read_opens_through_engine
            .fetch_add(1, Ordering::Relaxed);
        Some(ReadAdmission::Caching)
    }

    /// Admit an open that must go through the engine (writable, or `O_TRUNC`): wait for the
    /// passthrough opens of the inode to close. `Err(ETXTBSY)` if they stay open.
    pub fn admit_caching(&self, mirror: &str, ino: u64, what: &str) -> Result<Io, i32> {
        if !self.requested {
            return Ok(Io::Untracked);
        }
        let mut inodes = self.inodes();
        if inodes.get(&ino).is_some_and(|s| s.passthrough > 0) {
            self.counters.opens_waited.fetch_add(1, Ordering::Relaxed);
            inodes = self.wait_for(inodes, ino, true, |s| s.passthrough == 0);
        }
        let st = inodes.entry(ino).or_default();
        if st.passthrough == 0 {
            st.caching += 1;
            return Ok(Io::Caching);
        }
        let readers = st.passthrough;
        drop(inodes);
        self.counters.opens_refused.fetch_add(1, Ordering::Relaxed);
        warn!(
            mirror,
            inode = ino,
            "{what} refused (ETXTBSY): the file stayed open for reading through passthrough \
             ({readers} open or mapped) for {} s; the kernel allows no other open meanwhile",
            DRAIN_WAIT.as_secs()
        );
        Err(libc::ETXTBSY)
    }

    /// Count a caching open that needed no admission (a file just created).
    pub fn created(&self, ino: u64) -> Io {
        if !self.requested {
            return Io::Untracked;
        }
        self.inodes().entry(ino).or_default().caching += 1;
        Io::Caching
    }

    /// Wait until `done` holds for the inode, [`DRAIN_WAIT`] at most; `caching`: as a caching
    /// open waiting for the passthrough opens to close (read-only opens then queue behind).
    fn wait_for<'a>(
        &'a self,
        mut inodes: MutexGuard<'a, HashMap<u64, InodeIo>>,
        ino: u64,
        caching: bool,
        done: impl Fn(&InodeIo) -> bool,
    ) -> MutexGuard<'a, HashMap<u64, InodeIo>> {
        // Keep workers free for the RELEASE requests that end the waits.
        if self.waiting_threads.fetch_add(1, Ordering::SeqCst) >= MAX_WAITING_THREADS {
            self.waiting_threads.fetch_sub(1, Ordering::SeqCst);
            return inodes;
        }
        if caching {
            inodes.entry(ino).or_default().waiting += 1;
        }
        let deadline = Instant::now() + DRAIN_WAIT;
        loop {
            if done(inodes.entry(ino).or_default()) {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            inodes = match self.changed.wait_timeout(inodes, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        if caching {
            let st = inodes.entry(ino).or_default();
            st.waiting = st.waiting.saturating_sub(1);
        }
        self.waiting_threads.fetch_sub(1, Ordering::SeqCst);
        // Read-only opens queued behind this one re-check.
        self.changed.notify_all();
        inodes
    }

    /// An open admitted as `io` was released by the kernel (or failed before it was used).
    pub fn released(&self, ino: u64, io: Io) {
        if io == Io::Untracked {
            return;
        }
        let mut inodes = self.inodes();
        let Some(st) = inodes.get_mut(&ino) else {
            return;
        };
        match io {
            Io::Passthrough => {
                st.passthrough = st.passthrough.saturating_sub(1);
                if st.passthrough == 0 {
                    // The kernel left passthrough mode at the last close; close the id.
                    st.backing = None;
                }
            }
            Io::Caching => st.caching = st.caching.saturating_sub(1),
            Io::Untracked => {}
        }
        let drained = st.passthrough == 0;
        if drained && st.caching == 0 && st.waiting == 0 {
            inodes.remove(&ino);
        }
        drop(inodes);
        if drained {
            self.changed.notify_all();
        }
    }

    /// Passthrough opens of `ino` the kernel has not released (for tests).
    pub fn open_passthrough(&self, ino: u64) -> u32 {
        self.inodes().get(&ino).map_or(0, |s| s.passthrough)
    }
}

/// `max_stack_depth` to ask for at FUSE_INIT: the backing file system's own depth plus one.
/// Backing files on a stacking file system (overlayfs, FUSE, eCryptfs) need 2; else 1, which
/// keeps the mount usable as a lower layer of an overlayfs.
pub fn stack_depth_for(root: std::os::fd::BorrowedFd<'_>) -> u32 {
    const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;
    const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
    const ECRYPTFS_SUPER_MAGIC: i64 = 0xf15f;
    let mut s = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: valid descriptor and out pointer.
    let r = unsafe { libc::fstatfs(std::os::fd::AsRawFd::as_raw_fd(&root), s.as_mut_ptr()) };
    if r < 0 {
        return 1;
    }
    // The type of `f_type` differs between targets (i64 here, i32 elsewhere).
    #[allow(clippy::unnecessary_cast)]
    // SAFETY: fstatfs succeeded.
    let t = unsafe { s.assume_init() }.f_type as i64;
    if matches!(
        t,
        OVERLAYFS_SUPER_MAGIC | FUSE_SUPER_MAGIC | ECRYPTFS_SUPER_MAGIC
    ) {
        2
    } else {
        1
    }
}

/// Whether this thread (a FUSE worker, whose siblings inherited its capabilities) may register
/// backing files: the kernel requires CAP_SYS_ADMIN in the initial user namespace.
/// `Err(why not)`.
pub fn may_register() -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/thread-self/status")
        .map_err(|e| format!("cannot read /proc/thread-self/status to check CAP_SYS_ADMIN: {e}"))?;
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or_else(|| "no CapEff line in /proc/thread-self/status".to_string())?;
    const CAP_SYS_ADMIN: u32 = 21;
    if cap_eff & (1 << CAP_SYS_ADMIN) == 0 {
        return Err(
            "the daemon lacks CAP_SYS_ADMIN, which the kernel requires to register \
                    backing files (run it as root)"
                .into(),
        );
    }
    // In a user namespace other than the initial one, the capability does not count.
    if let Ok(map) = std::fs::read_to_string("/proc/self/uid_map") {
        let initial = map
            .split_whitespace()
            .collect::<Vec<_>>()
            .as_slice()
            .starts_with(&["0", "0", "4294967295"]);
        if !initial {
            return Err(
                "the daemon runs in a user namespace: the kernel registers backing \
                        files only for CAP_SYS_ADMIN in the initial one"
                    .into(),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_requested_tracks_nothing() {
        let p = Passthrough::new(false);
        assert!(p
            .admit_read("t", 5, || Err(std::io::Error::other("never")))
            .is_none());
        assert_eq!(p.admit_caching("t", 5, "open"), Ok(Io::Untracked));
        assert_eq!(p.created(5), Io::Untracked);
        assert!(!p.reason().is_empty());
    }

    #[test]
    fn inactive_means_caching_opens() {
        let p = Passthrough::new(true);
        p.initialised("t", Err("kernel too old".into()));
        assert_eq!(p.reason(), "kernel too old");
        let a = p.admit_read("t", 5, || Err(std::io::Error::other("never")));
        assert!(matches!(a, Some(ReadAdmission::Caching)));
        assert_eq!(p.admit_caching("t", 5, "open"), Ok(Io::Caching));
        p.released(5, Io::Caching);
        p.released(5, Io::Caching);
        assert!(p.inodes().is_empty());
    }

    #[test]
    fn a_refused_registration_turns_passthrough_off() {
        let p = Passthrough::new(true);
        p.initialised("t", Ok(()));
        assert!(p.active());
        let a = p.admit_read("t", 5, || {
            Err(std::io::Error::from_raw_os_error(libc::EPERM))
        });
        assert!(matches!(a, Some(ReadAdmission::Caching)));
        assert!(!p.active());
        assert!(p.reason().contains("refused"), "{}", p.reason());
    }

    #[test]
    fn caching_open_waits_then_proceeds_when_readers_close() {
        // Without a kernel, no BackingId can exist: drive the counters directly.
        let p = Arc::new(Passthrough::new(true));
        p.initialised("t", Ok(()));
        p.inodes().entry(7).or_default().passthrough = 1;
        let p2 = p.clone();
        let t = std::thread::spawn(move || p2.admit_caching("t", 7, "open for writing"));
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !t.is_finished(),
            "must wait while a passthrough open exists"
        );
        p.released(7, Io::Passthrough);
        assert_eq!(t.join().ok(), Some(Ok(Io::Caching)));
        assert_eq!(p.counters.opens_waited.load(Ordering::Relaxed), 1);
    }
}
