//! Cutting the application off a mount at once (fencing, forcestop): abort the FUSE connection
//! (every pending and future request of the application fails; replies the engine still sends
//! are dropped by the kernel), and detach the mount point.

use std::path::Path;

use tracing::{error, warn};

/// The FUSE control file system, where each connection can be aborted.
const FUSECTL: &str = "/sys/fs/fuse/connections";

/// The device number of the file system mounted at `dir` (read right after mounting, while
/// the file system answers).
pub fn device_of(dir: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).ok().map(|m| m.dev())
}

/// Abort the FUSE connection of device `dev`.
pub fn abort_fuse(dev: u64) {
    let minor = libc::minor(dev);
    let dir = Path::new(FUSECTL);
    if !dir.join(minor.to_string()).exists() {
        // Not mounted yet on this machine: mount it (it is tiny and global).
        let out = std::process::Command::new("mount")
            .args(["-t", "fusectl", "none", FUSECTL])
            .output();
        if let Err(e) = out {
            warn!("cannot mount the FUSE control file system at {FUSECTL}: {e}");
        }
    }
    let abort = dir.join(minor.to_string()).join("abort");
    if let Err(e) = std::fs::write(&abort, b"1") {
        error!(file = %abort.display(), "cannot abort the FUSE connection: {e}");
    }
}

/// Detach the mount at `dir` (lazy unmount): the real directory shows again for new opens.
pub fn detach(dir: &Path) {
    match mirrorkit_store::sys::cstr(dir.as_os_str().as_encoded_bytes()) {
        Ok(c) => {
            // SAFETY: valid C string.
            let r = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                warn!(dir = %dir.display(), "cannot detach the mount: {e}");
            }
        }
        Err(e) => error!(dir = %dir.display(), "cannot detach the mount: {e}"),
    }
}
