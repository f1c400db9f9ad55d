//! Mounting the mirror over the replicated directory on the primary.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{Config, MountOption, SessionACL};
use mirrorkit_store::StateFile;
use tracing::{info, warn};

use crate::core::Core;
use crate::fs::MirrorFs;
use crate::link::{Link, LinkConfig};

/// FUSE worker threads: requests wait on the network, so more than the cores. Default 16.
pub const FUSE_THREADS: usize = 16;

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

/// Open `dir`, then mount the mirror over it. The application keeps using `dir`.
pub fn mount(
    mirror: &str,
    dir: &Path,
    state_dir: &Path,
    cfg: LinkConfig,
) -> Result<Mounted, String> {
    let dir = std::fs::canonicalize(dir)
        .map_err(|e| format!("replicated directory {}: {e}", dir.display()))?;
    detach_stale_mount(&dir)
        .map_err(|e| format!("cannot detach stale mount {}: {e}", dir.display()))?;
    let link = Link::new(mirror, cfg, StateFile::new(state_dir), state_dir)
        .map_err(|e| format!("mirror {mirror}: {e}"))?;
    let core = Arc::new(
        Core::open(mirror, &dir, link)
            .map_err(|e| format!("cannot open replicated directory {}: {e}", dir.display()))?,
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
    Ok(Mounted {
        core,
        session: Some(session),
        dir,
    })
}
