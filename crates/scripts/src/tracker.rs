//! Finding every process a module's scripts started, to kill them all at once (`forcestop`,
//! self-fencing), including an application a script started in the background before it exited.
//!
//! Two mechanisms, the first that works:
//!
//! 1. **A cgroup v2** per module and node, `<cgroup2 mount>/mirrorkit/<node>-<module>`: each
//!    script joins it between fork and exec, so everything it starts is inside, whatever it does
//!    with sessions or process groups. Killing uses `cgroup.kill` (Linux 5.14) when present, else
//!    reads `cgroup.procs` and kills each process until it is empty. The directory outlives the
//!    daemon while a process remains in it, so a restarted daemon still finds the application.
//! 2. **Process groups and sessions**: each script starts a session of its own (`setsid`), and
//!    the tracker remembers its id; killing finds the processes of those sessions and process
//!    groups in `/proc`. A process that starts a session of its own (a daemon that detaches)
//!    escapes, and an id is forgotten once no process uses it ("pruned"), since the kernel may
//!    then hand the number to an unrelated process. Hence the warning when this one is in use.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Folder under the cgroup2 mount that holds the modules' cgroups.
pub const CGROUP_PARENT: &str = "mirrorkit";
/// How long [`Tracker::kill_all`] waits for the killed processes to be gone. A process stuck in
/// the kernel (an unanswered FUSE or NFS request) does not die on SIGKILL until that returns:
/// `kill_all` reports it and returns rather than hang a self-fencing.
pub const KILL_ALL_WAIT_MS: u64 = 2_000;
const KILL_POLL_MS: u64 = 10;

/// How `kill_all` finds a module's processes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KillMechanism {
    /// The module's cgroup v2 directory.
    Cgroup(PathBuf),
    /// The sessions and process groups the scripts started.
    ProcessGroups,
}

impl fmt::Display for KillMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KillMechanism::Cgroup(dir) => write!(f, "cgroup {}", dir.display()),
            KillMechanism::ProcessGroups => f.write_str("process groups and sessions"),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Tracker {
    module: String,
    cgroup: Option<PathBuf>,
    /// Set when joining the cgroup failed: later scripts are tracked by session instead.
    cgroup_failed: AtomicBool,
    /// Sessions (= process groups, `setsid` makes both) of scripts started outside the cgroup.
    sessions: Mutex<BTreeSet<i32>>,
}

impl Tracker {
    pub(crate) fn new(node: &str, module: &str, use_cgroup: bool) -> Tracker {
        let cgroup = if use_cgroup {
            match create_cgroup(node, module) {
                Ok(dir) => {
                    tracing::info!(module, cgroup = %dir.display(), "script processes tracked in a cgroup");
                    Some(dir)
                }
                Err(why) => {
                    tracing::warn!(
                        module,
                        "no usable cgroup v2 ({why}): tracking script processes by session and \
                         process group; a process that detaches into a session of its own escapes \
                         forcestop"
                    );
                    None
                }
            }
        } else {
            tracing::warn!(
                module,
                "cgroups disabled: tracking script processes by session and process group"
            );
            None
        };
        Tracker {
            module: module.to_owned(),
            cgroup,
            cgroup_failed: AtomicBool::new(false),
            sessions: Mutex::new(BTreeSet::new()),
        }
    }

    pub(crate) fn mechanism(&self) -> KillMechanism {
        match &self.cgroup {
            Some(dir) if !self.cgroup_failed.load(Ordering::Relaxed) => {
                KillMechanism::Cgroup(dir.clone())
            }
            _ => KillMechanism::ProcessGroups,
        }
    }

    /// `cgroup.procs` of the module's cgroup, open for a new script to join it (by writing "0"
    /// between fork and exec); `None` when the cgroup is not in use.
    pub(crate) fn join_file(&self) -> Option<File> {
        let dir = self.cgroup.as_ref()?;
        if self.cgroup_failed.load(Ordering::Relaxed) {
            return None;
        }
        // Recreated if someone removed it while it was empty.
        let opened = fs::create_dir(dir)
            .or_else(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => Ok(()),
                _ => Err(e),
            })
            .and_then(|()| {
                OpenOptions::new()
                    .write(true)
                    .open(dir.join("cgroup.procs"))
            });
        match opened {
            Ok(file) => Some(file),
            Err(e) => {
                self.disable_cgroup(&format!("cannot open its cgroup.procs: {e}"));
                None
            }
        }
    }

    pub(crate) fn disable_cgroup(&self, why: &str) {
        if !self.cgroup_failed.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                module = self.module,
                "cgroup no longer usable ({why}): tracking new script processes by session and \
                 process group"
            );
        }
    }

    /// Remember the session of a script started outside the cgroup.
    pub(crate) fn track_session(&self, sid: i32) {
        if sid > 1 {
            self.lock_sessions().insert(sid);
        }
    }

    /// Forget the sessions no process uses any more: their numbers may be reused.
    pub(crate) fn prune(&self) {
        let mut sessions = self.lock_sessions();
        if sessions.is_empty() {
            return;
        }
        let live: BTreeSet<i32> = scan_proc()
            .into_iter()
            .flat_map(|p| [p.pgrp, p.session])
            .collect();
        sessions.retain(|sid| live.contains(sid));
    }

    /// SIGKILL every process of the module: the cgroup's, and those of the tracked sessions and
    /// process groups. Waits up to [`KILL_ALL_WAIT_MS`] for them to be gone. Returns how many
    /// processes were killed.
    pub(crate) fn kill_all(&self) -> usize {
        let deadline = Instant::now() + Duration::from_millis(KILL_ALL_WAIT_MS);
        let me = i32::try_from(std::process::id()).unwrap_or(0);
        let mut killed = BTreeSet::new();
        loop {
            let mut victims = BTreeSet::new();
            if let Some(dir) = &self.cgroup {
                victims.extend(read_procs(dir));
            }
            let sessions = self.lock_sessions().clone();
            if !sessions.is_empty() {
                victims.extend(
                    scan_proc()
                        .into_iter()
                        .filter(|p| sessions.contains(&p.session) || sessions.contains(&p.pgrp))
                        .map(|p| p.pid),
                );
            }
            victims.remove(&me);
            if victims.is_empty() {
                break;
            }
            if let Some(dir) = &self.cgroup {
                // Atomic against processes forking while we kill; fine to fail (older kernel).
                let _ = fs::write(dir.join("cgroup.kill"), b"1");
            }
            for &pid in &victims {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            killed.extend(victims.iter().copied());
            if Instant::now() >= deadline {
                tracing::error!(
                    module = self.module,
                    pids = ?victims,
                    "processes still present {KILL_ALL_WAIT_MS} ms after SIGKILL (stuck in the kernel?)"
                );
                break;
            }
            std::thread::sleep(Duration::from_millis(KILL_POLL_MS));
        }
        self.prune();
        killed.len()
    }

    fn lock_sessions(&self) -> MutexGuard<'_, BTreeSet<i32>> {
        self.sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        // Fails (EBUSY) while a process remains: the cgroup then stays, for the next daemon.
        if let Some(dir) = &self.cgroup {
            if fs::remove_dir(dir).is_ok() {
                tracing::debug!(module = self.module, cgroup = %dir.display(), "cgroup removed");
            }
        }
    }
}

/// Whether a process other than a zombie is in process group `pgid`.
pub(crate) fn group_has_live_members(pgid: i32) -> bool {
    scan_proc().iter().any(|p| p.pgrp == pgid)
}

/// Send `signal` to process group `pgid`.
pub(crate) fn signal_group(pgid: i32, signal: i32) {
    if pgid > 1 {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(-pgid, signal) };
    }
}

fn create_cgroup(node: &str, module: &str) -> Result<PathBuf, String> {
    for name in [node, module] {
        if name.is_empty() || name.starts_with('.') || name.contains(['/', '\0']) {
            return Err(format!("{name:?} cannot name a cgroup"));
        }
    }
    let mount = cgroup2_mount()
        .map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?
        .ok_or("no cgroup2 file system mounted")?;
    let parent = mount.join(CGROUP_PARENT);
    let dir = parent.join(format!("{node}-{module}"));
    fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    // Proves that processes can be moved there (cgroup.procs writable); the write itself happens
    // in each script's child.
    OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.procs"))
        .map_err(|e| format!("opening {}/cgroup.procs: {e}", dir.display()))?;
    Ok(dir)
}

/// The mount point of the cgroup2 file system: `/sys/fs/cgroup` on a pure v2 machine,
/// `/sys/fs/cgroup/unified` in the hybrid layout.
fn cgroup2_mount() -> io::Result<Option<PathBuf>> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    Ok(parse_cgroup2_mount(&mountinfo))
}

fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS
        let (before, after) = line.split_once(" - ")?;
        if after.split(' ').next()? != "cgroup2" {
            return None;
        }
        let mount_point = before.split(' ').nth(4)?;
        Some(PathBuf::from(unescape_mountinfo(mount_point)))
    })
}

/// mountinfo writes space, tab, newline and backslash as `\ooo` octal escapes.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(value) = u8::from_str_radix(digits, 8) {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn read_procs(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// One live (not zombie) process, from `/proc/<pid>/stat`.
#[derive(Debug)]
struct ProcStat {
    pid: i32,
    pgrp: i32,
    session: i32,
}

/// Every live process of the machine (of this pid namespace). Processes that exit during the
/// scan are skipped.
fn scan_proc() -> Vec<ProcStat> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let entry = entry.ok()?;
        let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
        let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
        parse_stat(pid, &stat)
    })
    .collect()
}

fn parse_stat(pid: i32, stat: &str) -> Option<ProcStat> {
    // "PID (COMM) STATE PPID PGRP SESSION ...": COMM may hold spaces and parentheses.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    let session = fields.next()?.parse().ok()?;
    if state == "Z" || state == "X" {
        return None;
    }
    Some(ProcStat { pid, pgrp, session })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount() {
        let hybrid = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                      32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let pure =
            "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            parse_cgroup2_mount(pure),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        let escaped = "30 23 0:26 / /mnt/my\\040cgroup rw - cgroup2 none rw\n";
        assert_eq!(
            parse_cgroup2_mount(escaped),
            Some(PathBuf::from("/mnt/my cgroup"))
        );
        assert_eq!(
            parse_cgroup2_mount("31 23 0:28 / /x rw - tmpfs tmpfs rw\n"),
            None
        );
    }

    #[test]
    fn parses_stat() {
        let p = parse_stat(42, "42 (my (odd) name) S 1 40 39 0 -1 4194560").unwrap();
        assert_eq!((p.pid, p.pgrp, p.session), (42, 40, 39));
        assert!(parse_stat(43, "43 (sleep) Z 1 43 43 0").is_none());
        assert!(parse_stat(44, "garbage").is_none());
    }

    #[test]
    fn scan_sees_this_process() {
        let me = i32::try_from(std::process::id()).unwrap();
        assert!(scan_proc().iter().any(|p| p.pid == me));
    }

    #[test]
    fn bad_names_get_no_cgroup() {
        assert!(create_cgroup("node", "../x").is_err());
        assert!(create_cgroup("", "m").is_err());
    }
}
