//! Mounting the mirror over the replicated directory on the primary.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{Config, MountOption, SessionACL};
use mirrorkit_store::StateFile;
use tracing::{debug, info, warn};

use crate::core::Core;
use crate::fs::MirrorFs;
use crate::link::{Link, LinkConfig};

/// FUSE worker threads: requests wait on the network, so more than the cores. Default 16.
pub const FUSE_THREADS: usize = 16;

/// Readahead of the mount, KiB: as large as one FUSE request (1 MiB, `fs::MAX_WRITE_BYTES`).
/// The kernel caps it at its own default (128 KiB) at FUSE_INIT; it is raised after mounting
/// through the mount's `/sys/class/bdi/<major>:<minor>/read_ahead_kb`.
pub const READAHEAD_KB: u32 = crate::fs::MAX_WRITE_BYTES / 1024;

/// How to mount, beyond the link's configuration.
#[derive(Clone, Debug, Default)]
pub struct MountOptions {
    /// Pass read-only opens through to the backing files (`crate::passthrough`; Linux 6.9 or
    /// later, CAP_SYS_ADMIN). Off by default: while a file is open for reading this way, an
    /// open of it for writing waits for that reader, and fails with ETXTBSY after
    /// `passthrough::DRAIN_WAIT`.
    pub read_passthrough: bool,
}

impl MountOptions {
    /// The defaults, with read passthrough as `MIRRORKIT_READ_PASSTHROUGH` says.
    pub fn from_env() -> Self {
        MountOptions {
            read_passthrough: crate::passthrough::requested_by_env(),
        }
    }
}

/// A mounted, replicating directory. Unmounts when dropped.
pub struct Mounted {
    pub core: Arc<Core>,
    session: Option<fuser::BackgroundSession>,
    pub dir: PathBuf,
}

impl Mounted {
    /// Unmount and wait for the FUSE threads to stop; then, if the peer is in sync, have it
    /// flush and record the clean stop (the next start need not compare all data). Call
    /// outside async code, with the runtime still running.
    pub fn unmount(mut self) -> std::io::Result<()> {
        let r = match self.session.take() {
            Some(s) => s.umount_and_join(),
            None => Ok(()),
        };
        if r.is_ok() {
            self.core.link.clean_stop();
        }
        r
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            if let Err(e) = s.umount_and_join() {
                warn!(dir = %self.dir.display(), "unmount failed: {e}");
            }
        }
    }
}

/// Whether `dir` is currently a mirrorkit FUSE mount point (for example left behind by a
/// daemon that was killed): then it is detached so that the real directory shows again.
pub fn detach_stale_mount(dir: &Path) -> std::io::Result<bool> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let target = dir.to_string_lossy();
    let stale = info.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let sep = f.iter().position(|x| *x == "-");
        f.len() > 4
            && unescape(f[4]) == target
            && sep.is_some_and(|i| {
                // Type "fuse.mirrorkit" when the kernel records the subtype; else type "fuse"
                // with the source "mirrorkit:<mirror>" (our FSName).
                let fstype = f.get(i + 1).copied().unwrap_or_default();
                let source = f.get(i + 2).copied().unwrap_or_default();
                fstype.starts_with("fuse")
                    && (fstype.contains("mirrorkit") || source.starts_with("mirrorkit:"))
            })
    });
    if !stale {
        return Ok(false);
    }
    let c = mirrorkit_store::sys::cstr(dir.as_os_str().as_encoded_bytes())?;
    // SAFETY: valid C string.
    let r = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    warn!(dir = %dir.display(), "detached a stale mirrorkit mount left by a previous daemon");
    Ok(true)
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Open `dir`, then mount the mirror over it. The application keeps using `dir`. Options
/// from the environment (`MountOptions::from_env`).
pub fn mount(
    mirror: &str,
    dir: &Path,
    state_dir: &Path,
    cfg: LinkConfig,
) -> Result<Mounted, String> {
    mount_with(mirror, dir, state_dir, cfg, MountOptions::from_env())
}

/// `mount` with explicit options.
pub fn mount_with(
    mirror: &str,
    dir: &Path,
    state_dir: &Path,
    cfg: LinkConfig,
    opts: MountOptions,
) -> Result<Mounted, String> {
    let dir = std::fs::canonicalize(dir)
        .map_err(|e| format!("replicated directory {}: {e}", dir.display()))?;
    detach_stale_mount(&dir)
        .map_err(|e| format!("cannot detach stale mount {}: {e}", dir.display()))?;
    let link = Link::new(mirror, cfg, StateFile::new(state_dir), state_dir, &dir)
        .map_err(|e| format!("mirror {mirror}: {e}"))?;
    let core = Arc::new(
        Core::open(mirror, &dir, link)
            .map_err(|e| format!("cannot open replicated directory {}: {e}", dir.display()))?
            .with_read_passthrough(opts.read_passthrough),
    );
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(format!("mirrorkit:{mirror}")),
        MountOption::Subtype("mirrorkit".into()),
        MountOption::DefaultPermissions,
        MountOption::RW,
        MountOption::Suid,
        MountOption::Dev,
    ];
    config.acl = SessionACL::All;
    config.n_threads = Some(FUSE_THREADS);
    config.clone_fd = true;
    let fs = MirrorFs { core: core.clone() };
    let session = fuser::Session::new(fs, &dir, &config)
        .map_err(|e| format!("cannot mount the mirror over {}: {e}", dir.display()))?;
    let session = session
        .spawn()
        .map_err(|e| format!("cannot start the FUSE threads for {}: {e}", dir.display()))?;
    info!(mirror, dir = %dir.display(), "mirror mounted");
    match raise_readahead(&dir, READAHEAD_KB) {
        Ok(bdi) => debug!(mirror, %bdi, "readahead of the mount raised to {READAHEAD_KB} KiB"),
        Err(e) => info!(
            mirror,
            "readahead of the mount left at the kernel's default (128 KiB): {e}"
        ),
    }
    Ok(Mounted {
        core,
        session: Some(session),
        dir,
    })
}

/// Set the readahead of the FUSE mount at `dir` (the last mount there) to `kb` KiB, through its
/// backing device info in sysfs (root only). Returns the bdi's name (`major:minor`).
pub fn raise_readahead(dir: &Path, kb: u32) -> std::io::Result<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let bdi = mount_device(&info, &dir.to_string_lossy()).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no FUSE mount at {} in /proc/self/mountinfo", dir.display()),
        )
    })?;
    let path = format!("/sys/class/bdi/{bdi}/read_ahead_kb");
    std::fs::write(&path, format!("{kb}\n"))
        .map_err(|e| std::io::Error::new(e.kind(), format!("{path}: {e}")))?;
    Ok(bdi)
}

/// `major:minor` of the last FUSE mount at `target` in a mountinfo text.
fn mount_device(mountinfo: &str, target: &str) -> Option<String> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            let fstype = f.get(sep + 1)?;
            (f.len() > 4 && unescape(f[4]) == target && fstype.starts_with("fuse"))
                .then(|| f[2].to_string())
        })
        .next_back()
}

/// Most open files the engine asks for when it may raise its hard limit (as root): the
/// kernel's default `fs.nr_open`.
pub const OPEN_FILES_WANTED: u64 = 1 << 20;

/// Raise this process's limit on open files as far as allowed: the soft limit to the hard one,
/// and, when privileged, both to `fs.nr_open` (at most [`OPEN_FILES_WANTED`]). The primary
/// holds one descriptor per inode the kernel caches through the mount, so the usual soft
/// limit (1024) would make an application's open or create fail with EMFILE once it has seen
/// that many files. Returns the limit before and after. Children (the modules' scripts and the
/// applications they start) inherit the raised limit, as under the shipped systemd unit.
pub fn raise_open_file_limit() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = lim.rlim_cur;
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(OPEN_FILES_WANTED)
        .min(OPEN_FILES_WANTED);
    if lim.rlim_max < nr_open {
        let raised = libc::rlimit {
            rlim_cur: nr_open,
            rlim_max: nr_open,
        };
        // SAFETY: a valid rlimit. Refused without CAP_SYS_RESOURCE: then the soft limit only.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok((before, nr_open));
        }
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: a valid rlimit, the soft limit at most the hard one.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((before, lim.rlim_cur))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_device_of_the_last_fuse_mount() {
        let info = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:51 / /srv/a\\040b rw,nosuid - fuse.mirrorkit mirrorkit:m rw,user_id=0
41 40 0:52 / /srv/a\\040b rw,nosuid - fuse.mirrorkit mirrorkit:m rw,user_id=0
42 22 0:53 / /srv/c rw - tmpfs tmpfs rw
";
        assert_eq!(mount_device(info, "/srv/a b").as_deref(), Some("0:52"));
        assert_eq!(mount_device(info, "/srv/c"), None);
        assert_eq!(mount_device(info, "/srv/x"), None);
    }
}
