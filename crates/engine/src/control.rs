//! The primary's local control socket, `<state_dir>/control.sock` (mode 0600: root only), until
//! the cluster manager's API exists. One request per connection, one line:
//!
//! - `verify` / `verify repair`: run an online verify (`verify.rs`); the answer streams one line
//!   per difference, `DIFF <start> <end> <what> <path>` (`what` with `_` for spaces, `path` quoted
//!   and escaped as a Rust string), then `DONE files=<n> bytes=<n>
//!   differences=<n> repairing=<bool>`, or `ERROR <reason>`.
//!
//! Only one verify runs at a time; another request meanwhile is answered `ERROR busy: ...`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tracing::{info, warn};

use crate::core::Core;

/// File name of the control socket in a state directory.
pub const CONTROL_SOCKET: &str = "control.sock";

/// Serve the control socket of `core` on a thread of its own.
pub fn serve(core: Arc<Core>, state_dir: &Path) -> std::io::Result<PathBuf> {
    let path = state_dir.join(CONTROL_SOCKET);
    // A socket left by a previous run (nothing can listen on it any more).
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let busy = Arc::new(AtomicBool::new(false));
    std::thread::Builder::new()
        .name("mirrorkit-control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let core = core.clone();
                let busy = busy.clone();
                // A verify may take long: each request on its own thread.
                let spawned = std::thread::Builder::new()
                    .name("mirrorkit-control-req".into())
                    .spawn(move || handle(&core, conn, &busy));
                if let Err(e) = spawned {
                    warn!("control socket: cannot start a request thread: {e}");
                }
            }
        })?;
    Ok(path)
}

fn handle(core: &Core, conn: UnixStream, busy: &AtomicBool) {
    let mut line = String::new();
    let Ok(read) = conn.try_clone() else { return };
    if BufReader::new(read).read_line(&mut line).is_err() {
        return;
    }
    let mut out = conn;
    let request = line.trim();
    let repair = match request {
        "verify" => false,
        "verify repair" => true,
        other => {
            let _ = writeln!(
                out,
                "ERROR unknown request {other:?} (expected: verify, verify repair)"
            );
            return;
        }
    };
    if busy.swap(true, Ordering::AcqRel) {
        let _ = writeln!(
            out,
            "ERROR busy: a verify is already running on mirror {}",
            core.mirror
        );
        return;
    }
    info!(mirror = %core.mirror, request, "control: request");
    let result = crate::verify::verify(core, repair, |d| {
        let end = if d.end == u64::MAX {
            "end".to_string()
        } else {
            d.end.to_string()
        };
        // The path quoted and escaped: a name may hold spaces or newlines. A reader that went
        // away does not stop the verify.
        let path = format!("{:?}", d.path.to_string());
        let _ = writeln!(
            out,
            "DIFF {} {end} {} {path}",
            d.start,
            d.what.replace(' ', "_")
        );
    });
    busy.store(false, Ordering::Release);
    let _ = match result {
        Ok(r) => writeln!(
            out,
            "DONE files={} bytes={} differences={} repairing={}",
            r.files, r.bytes, r.differences, r.repairing
        ),
        Err(e) => writeln!(out, "ERROR {e}"),
    };
}
