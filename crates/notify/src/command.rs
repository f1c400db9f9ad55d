//! The notify command: executed directly (no shell) in a process group of its own, in the
//! configured working directory, with the daemon's environment plus the module's extra environment plus `MIRRORKIT_NOTIFY_*`, the JSON
//! body on standard input, standard output and error captured (the last
//! [`OUTPUT_KEPT_BYTES`] of each) for the failure text. At its timeout, its whole process group
//! gets SIGKILL (what it started in the background too). A command that exits leaves what it
//! started in the background alone (a `sendmail` may deliver in the background).

use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::time::Instant;

use crate::{Failure, Notification};

/// Bytes of each of standard output and error kept for the failure text (the last ones: the
/// error is usually at the end).
pub const OUTPUT_KEPT_BYTES: usize = 4096;
/// After the command exits, how long its output may still take to reach end of file (a
/// background process it left may hold the pipes open: the delivery does not wait for it).
pub const OUTPUT_DRAIN_MS: u64 = 100;
/// After SIGKILL, how long to wait for the kernel to reap the command.
pub const KILL_REAP_WAIT_MS: u64 = 2_000;

/// The captured output of a failed command, rendered as `: <stderr> [stdout: <stdout>]`, or
/// nothing when both were empty.
#[derive(Debug, Default)]
pub(crate) struct Captured {
    pub stdout: String,
    pub stderr: String,
}

impl fmt::Display for Captured {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.stderr.is_empty(), self.stdout.is_empty()) {
            (true, true) => Ok(()),
            (false, true) => write!(f, ": {}", self.stderr),
            (true, false) => write!(f, ": [stdout: {}]", self.stdout),
            (false, false) => write!(f, ": {} [stdout: {}]", self.stderr, self.stdout),
        }
    }
}

/// The last bytes of a stream, and how many came before them.
#[derive(Default)]
struct Tail {
    kept: Vec<u8>,
    cut_bytes: u64,
}

impl Tail {
    fn push(&mut self, data: &[u8]) {
        self.kept.extend_from_slice(data);
        // Trimmed in batches, so that a chatty command costs linear time.
        if self.kept.len() > 2 * OUTPUT_KEPT_BYTES {
            let excess = self.kept.len() - OUTPUT_KEPT_BYTES;
            self.kept.drain(..excess);
            self.cut_bytes += excess as u64;
        }
    }

    fn text(&self) -> String {
        let start = self.kept.len().saturating_sub(OUTPUT_KEPT_BYTES);
        let cut = self.cut_bytes + start as u64;
        let text = String::from_utf8_lossy(&self.kept[start..]);
        let text = text.trim();
        if cut > 0 && !text.is_empty() {
            format!("[{cut} bytes cut] {text}")
        } else {
            text.to_owned()
        }
    }
}

/// SIGKILL to the command's process group if the delivery ends (the worker cancelled, the
/// runtime shut down) before the command was reaped. While the leader is not reaped its PID,
/// hence the group ID, cannot be reused.
struct GroupGuard {
    pgid: Option<i32>,
}

impl GroupGuard {
    fn kill(&self) {
        if let Some(pgid) = self.pgid {
            // SAFETY: kill(2) has no memory effects; a negative PID names the process group.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
    }

    fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

enum Ended {
    Exited(ExitStatus),
    WaitFailed(std::io::Error),
    Killed,
}

/// Run the command for `n`; Ok with the milliseconds it took.
pub(crate) async fn run(
    path: &Path,
    extra_env: &[(String, String)],
    working_dir: Option<&Path>,
    n: &Notification,
    body: &[u8],
    timeout_ms: u64,
) -> Result<u64, Failure> {
    let started = Instant::now();
    let deadline = started + Duration::from_millis(timeout_ms);
    let mut cmd = Command::new(path);
    if let Some(dir) = working_dir {
        cmd.current_dir(dir);
    }
    let mut child = cmd
        .envs(extra_env.iter().map(|(k, v)| (k, v)))
        .envs(n.env_vars())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| Failure::CommandSpawn {
            path: path.to_owned(),
            source,
        })?;
    let mut guard = GroupGuard {
        pgid: child.id().and_then(|pid| i32::try_from(pid).ok()),
    };
    if let Some(mut stdin) = child.stdin.take() {
        let body = body.to_vec();
        // Its own task: a command that does not read its input must not stall the delivery.
        // An error (EPIPE: the command did not read it all) is the command's business.
        tokio::spawn(async move {
            let _ = stdin.write_all(&body).await;
        });
    }
    let stdout = capture(child.stdout.take());
    let stderr = capture(child.stderr.take());

    let ended = match tokio::time::timeout_at(deadline, child.wait()).await {
        Ok(Ok(status)) => Ended::Exited(status),
        Ok(Err(e)) => Ended::WaitFailed(e),
        Err(_elapsed) => {
            guard.kill();
            let reap = Duration::from_millis(KILL_REAP_WAIT_MS);
            let _ = tokio::time::timeout(reap, child.wait()).await;
            Ended::Killed
        }
    };
    if !matches!(ended, Ended::WaitFailed(_)) {
        guard.disarm();
    }
    let drain_until = Instant::now() + Duration::from_millis(OUTPUT_DRAIN_MS);
    let output = Captured {
        stdout: stdout.text_by(drain_until).await,
        stderr: stderr.text_by(drain_until).await,
    };
    let path = path.to_owned();
    match ended {
        Ended::Exited(status) if status.success() => {
            Ok(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX))
        }
        Ended::Exited(status) => Err(match (status.code(), status.signal()) {
            (Some(code), _) => Failure::CommandExited { path, code, output },
            (None, Some(signal)) => Failure::CommandSignaled {
                path,
                signal,
                output,
            },
            (None, None) => Failure::CommandWait {
                path,
                source: std::io::Error::other(format!("ended with {status}")),
            },
        }),
        Ended::WaitFailed(source) => Err(Failure::CommandWait { path, source }),
        Ended::Killed => Err(Failure::CommandKilled {
            path,
            timeout_ms,
            output,
        }),
    }
}

/// A stream read to its end by a task of its own (so that a background process holding it
/// open never blocks the delivery), keeping its tail.
struct Capture {
    tail: Arc<Mutex<Tail>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

fn capture(stream: Option<impl AsyncRead + Unpin + Send + 'static>) -> Capture {
    let tail = Arc::new(Mutex::new(Tail::default()));
    let task = stream.map(|mut stream| {
        let tail = Arc::clone(&tail);
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            // A read error ends the capture like end of file: the output is only informative.
            while let Ok(n @ 1..) = stream.read(&mut buf).await {
                tail.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(&buf[..n]);
            }
        })
    });
    Capture { tail, task }
}

impl Capture {
    /// The tail read so far, once the stream ended or at `until`.
    async fn text_by(self, until: Instant) -> String {
        if let Some(task) = self.task {
            let _ = tokio::time::timeout_at(until, task).await;
        }
        let tail = self.tail.lock().unwrap_or_else(PoisonError::into_inner);
        tail.text()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_bytes() {
        let mut tail = Tail::default();
        tail.push(b"  short  \n");
        assert_eq!(tail.text(), "short");
        let mut tail = Tail::default();
        for _ in 0..10_000 {
            tail.push(b"0123456789");
        }
        tail.push(b"the end");
        let text = tail.text();
        assert!(text.starts_with("[95911 bytes cut] "), "{text}");
        assert!(text.ends_with("the end"));
        assert!(text.len() < OUTPUT_KEPT_BYTES + 32);
    }

    #[test]
    fn captured_output_in_failure_texts() {
        let mut c = Captured::default();
        assert_eq!(c.to_string(), "");
        c.stderr = "no such user".into();
        assert_eq!(c.to_string(), ": no such user");
        c.stdout = "trying".into();
        assert_eq!(c.to_string(), ": no such user [stdout: trying]");
        c.stderr.clear();
        assert_eq!(c.to_string(), ": [stdout: trying]");
    }
}
