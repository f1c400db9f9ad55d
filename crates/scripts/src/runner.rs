//! Running a module's scripts: environment, session, output, timeout, and the failure message.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use mirrorkit_module::{
    Script, ScriptKind, RESERVED_ENV_PREFIX, SCRIPT_DEFAULT_PATH, SCRIPT_KILL_GRACE_MS,
};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};
use tokio::time::Instant;

use crate::event_log::{EventLog, Kind, Level};
use crate::output::{Output, Stream};
use crate::tracker::{self, KillMechanism, Tracker};

/// After a script exited, how long its output is still read: what it wrote just before exiting
/// may still be in the pipe. A process it left in the background may hold the pipe open for
/// ever: the run does not wait for that.
pub const OUTPUT_DRAIN_MS: u64 = 100;
/// How long to wait for a script to be reaped after SIGKILL before reporting it unkillable.
pub const KILL_REAP_WAIT_MS: u64 = 5_000;
/// While waiting out the grace after SIGTERM, how often to look whether the script's process
/// group is empty.
const GROUP_POLL_MS: u64 = 50;
/// Bytes read from a script's pipe at a time.
const READ_CHUNK_BYTES: usize = 4096;

/// `MIRRORKIT_ROLE`: the role the node is taking (start scripts) or leaving (stop scripts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScriptRole {
    Primary,
    Secondary,
    /// For `prestart` and `poststop`, which run before a role is set and after it is left.
    None,
}

impl ScriptRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ScriptRole::Primary => "primary",
            ScriptRole::Secondary => "secondary",
            ScriptRole::None => "none",
        }
    }
}

/// What a module's scripts see of the module and the node (docs/modules.md, "Script
/// environment").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptEnv {
    /// The module's `name`.
    pub module: String,
    /// This node's name.
    pub node: String,
    /// The module folder; scripts' paths are relative to it, and it is their working directory.
    pub module_dir: PathBuf,
    /// `MIRRORKIT_RUN_DIR`: created (mode 0700) by [`Runner::new`].
    pub run_dir: PathBuf,
    /// The virtual IP addresses, without prefix, in the order of the module file.
    pub vips: Vec<String>,
    /// The replicated directories as the daemon uses them, in the order of the module file.
    pub mirror_dirs: Vec<PathBuf>,
    /// The module's `[env]`.
    pub env: BTreeMap<String, String>,
}

/// A script that did not succeed: it could not be started, exited with a status other than 0,
/// was killed by a signal, or timed out.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct ScriptFailure {
    pub script: ScriptKind,
    /// For humans: the script, its path, what happened, and its last lines of output.
    pub detail: String,
    /// The exit status, when the script exited by itself (not killed, not timed out).
    pub exit_status: Option<i32>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("module {module}: cannot create its run directory {}: {source}", path.display())]
    RunDir {
        module: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("module {module}: its run directory {} exists but is not a directory", path.display())]
    RunDirNotDir { module: String, path: PathBuf },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunnerOptions {
    /// Between SIGTERM and SIGKILL after a timeout; [`SCRIPT_KILL_GRACE_MS`] by default.
    pub kill_grace_ms: u64,
    /// Track processes with a cgroup v2 when one can be created (the default); `false` tracks
    /// them by session and process group only.
    pub use_cgroup: bool,
    /// Prefix of the cgroup's name (`<scope>-<node>-<module>`), so that several clusters on
    /// one machine (tests, the demo) never share one: the daemon passes its cluster's name.
    pub cgroup_scope: Option<String>,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        RunnerOptions {
            kill_grace_ms: SCRIPT_KILL_GRACE_MS,
            use_cgroup: true,
            cgroup_scope: None,
        }
    }
}

/// Runs the scripts of one module on this node, and kills what they started.
#[derive(Debug)]
pub struct Runner {
    env: ScriptEnv,
    log: EventLog,
    options: RunnerOptions,
    tracker: Tracker,
}

/// What a run is for: a script slot, or a script checker (by name).
#[derive(Clone, Copy)]
enum What<'a> {
    Script(ScriptKind),
    Checker(&'a str),
}

impl What<'_> {
    /// `MIRRORKIT_SCRIPT`.
    fn slot(self) -> &'static str {
        match self {
            What::Script(kind) => kind.key(),
            What::Checker(_) => "checker",
        }
    }
}

/// SIGKILL to a script's process group if the run is dropped (a checker stopped in the middle of
/// a check) before the script was reaped: while it is not reaped, its PID, which names the group,
/// cannot be reused.
struct KillGroupOnDrop {
    pgid: Option<i32>,
}

impl KillGroupOnDrop {
    fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid {
            tracker::signal_group(pgid, libc::SIGKILL);
        }
    }
}

/// How a script run ended.
enum Ended {
    Exited(ExitStatus),
    WaitFailed(io::Error),
    TimedOut(Stopped),
}

/// What it took to stop a script that timed out.
enum Stopped {
    /// The script and its process group exited on SIGTERM.
    Term,
    /// The script exited on SIGTERM, what remained in its process group got SIGKILL.
    TermThenGroupKill,
    /// The script itself needed SIGKILL.
    Kill,
    /// The script was still there after SIGKILL.
    Unkillable,
}

impl Runner {
    pub fn new(env: ScriptEnv, log: EventLog) -> Result<Runner, RunnerError> {
        Self::with_options(env, log, RunnerOptions::default())
    }

    pub fn with_options(
        mut env: ScriptEnv,
        log: EventLog,
        options: RunnerOptions,
    ) -> Result<Runner, RunnerError> {
        // Scripts get absolute paths whatever the daemon's working directory.
        env.module_dir = std::path::absolute(&env.module_dir).unwrap_or(env.module_dir);
        env.run_dir = std::path::absolute(&env.run_dir).unwrap_or(env.run_dir);
        create_run_dir(&env)?;
        let owner = match &options.cgroup_scope {
            Some(scope) => format!("{scope}-{}", env.node),
            None => env.node.clone(),
        };
        let tracker = Tracker::new(&owner, &env.module, options.use_cgroup);
        Ok(Runner {
            env,
            log,
            options,
            tracker,
        })
    }

    pub fn env(&self) -> &ScriptEnv {
        &self.env
    }

    pub fn log(&self) -> &EventLog {
        &self.log
    }

    /// How [`Self::kill_all`] finds the module's processes.
    pub fn kill_mechanism(&self) -> KillMechanism {
        self.tracker.mechanism()
    }

    /// Run `batch` in order, each script with `role` and its own timeout; stop at the first
    /// failure and return it. The caller leaves out the slots the module does not declare.
    pub async fn run(
        &self,
        batch: &[(ScriptKind, Script)],
        role: ScriptRole,
    ) -> Result<(), ScriptFailure> {
        for (kind, script) in batch {
            self.run_one(*kind, script, role).await?;
        }
        Ok(())
    }

    /// SIGKILL every process the module's scripts started, the application included, at once
    /// (`forcestop`, self-fencing). Blocks up to [`tracker::KILL_ALL_WAIT_MS`] while they die.
    /// Returns how many processes were killed.
    /// (Logged, as a warning and in the event log, when it killed anything.)
    pub fn kill_all(&self) -> usize {
        let killed = self.tracker.kill_all();
        if killed == 0 {
            return 0;
        }
        let text = format!(
            "killed {killed} process{} of the module with SIGKILL ({})",
            if killed == 1 { "" } else { "es" },
            self.tracker.mechanism()
        );
        tracing::warn!(module = self.env.module, "{text}");
        self.log.append(Level::Warn, Kind::Log, &text);
        killed
    }

    /// Empty the run directory (the daemon starts a module fresh), creating it if it is gone.
    pub fn clear_run_dir(&self) -> io::Result<()> {
        create_run_dir(&self.env).map_err(io::Error::other)?;
        for entry in fs::read_dir(&self.env.run_dir)? {
            let entry = entry?;
            let path = entry.path();
            // `file_type` does not follow symbolic links: a link is removed, not its target.
            if entry.file_type()?.is_dir() {
                fs::remove_dir_all(&path)?;
            } else {
                fs::remove_file(&path)?;
            }
        }
        Ok(())
    }

    /// Run the script checker `checker` (its `script`, relative to the module folder) once, with
    /// the script environment plus `MIRRORKIT_SCRIPT=checker`, `MIRRORKIT_CHECKER=<checker>` and
    /// `MIRRORKIT_ROLE=primary` (script checkers run on the primary). Passes when it exits 0
    /// within `timeout_ms`; at the timeout its process group gets SIGKILL at once.
    ///
    /// Its output goes to `tracing` (debug), and to the event log only when the check fails;
    /// nothing else is written to the event log (the caller logs what the result changes).
    /// Dropping the returned future (a checker stopped mid-check) kills the script's process
    /// group. The error is the detail for operators: what happened and the last output lines.
    pub async fn run_checker(
        &self,
        checker: &str,
        script: &Path,
        timeout_ms: u64,
    ) -> Result<(), String> {
        let path = self.env.module_dir.join(script);
        let shown = path.display();
        self.tracker.prune();
        let mut child = self
            .spawn(What::Checker(checker), &path, ScriptRole::Primary)
            .map_err(|e| {
                format!(
                    "{shown} could not be started: {}",
                    describe_spawn_error(&e, &path)
                )
            })?;
        let pgid = child.id().and_then(|pid| i32::try_from(pid).ok());
        let mut guard = KillGroupOnDrop { pgid };
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        let label = format!("checker {checker}");
        let mut output = Output::held(&self.log, &self.env.module, &label);
        let timeout = Duration::from_millis(timeout_ms);
        let ended = {
            let guard = &mut guard;
            let wait = async {
                let ended = match tokio::time::timeout(timeout, child.wait()).await {
                    Ok(Ok(status)) => Ended::Exited(status),
                    Ok(Err(e)) => Ended::WaitFailed(e),
                    Err(_elapsed) => {
                        if let Some(pgid) = pgid {
                            tracker::signal_group(pgid, libc::SIGKILL);
                        }
                        let reap = Duration::from_millis(KILL_REAP_WAIT_MS);
                        match tokio::time::timeout(reap, child.wait()).await {
                            Ok(Ok(_)) => Ended::TimedOut(Stopped::Kill),
                            _ => Ended::TimedOut(Stopped::Unkillable),
                        }
                    }
                };
                // Reaped (its PID may be reused from now on), or no longer ours to wait for;
                // one still there after SIGKILL keeps the guard.
                if !matches!(ended, Ended::TimedOut(Stopped::Unkillable)) {
                    guard.disarm();
                }
                ended
            };
            let pump = pump(&mut stdout, &mut stderr, &mut output);
            tokio::pin!(wait, pump);
            let mut pumped = false;
            let ended = loop {
                tokio::select! {
                    ended = &mut wait => break ended,
                    () = &mut pump, if !pumped => pumped = true,
                }
            };
            if !pumped {
                let drain = Duration::from_millis(OUTPUT_DRAIN_MS);
                let _ = tokio::time::timeout(drain, &mut pump).await;
            }
            ended
        };
        output.finish();
        discard_rest(&self.env.module, &label, stdout, stderr);
        let what = match ended {
            Ended::Exited(status) if status.success() => return Ok(()),
            Ended::Exited(status) => match (status.code(), status.signal()) {
                (Some(code), _) => format!("exited with status {code}"),
                (None, Some(signal)) => format!("was killed by {}", signal_name(signal)),
                (None, None) => format!("ended with {status}"),
            },
            Ended::WaitFailed(e) => format!("could not be waited for: {e}"),
            Ended::TimedOut(Stopped::Unkillable) => format!(
                "timed out after {} and was still there {} after SIGKILL (stuck in the kernel?)",
                fmt_ms(timeout_ms),
                fmt_ms(KILL_REAP_WAIT_MS)
            ),
            Ended::TimedOut(_) => format!(
                "timed out after {}: killed with SIGKILL",
                fmt_ms(timeout_ms)
            ),
        };
        output.release();
        let mut detail = format!("{shown} {what}");
        if let Some(tail) = output.failure_tail() {
            detail.push_str(": ");
            detail.push_str(&tail);
        }
        Err(detail)
    }

    async fn run_one(
        &self,
        kind: ScriptKind,
        script: &Script,
        role: ScriptRole,
    ) -> Result<(), ScriptFailure> {
        let path = self.env.module_dir.join(&script.path);
        let label = format!("{kind} ({})", path.display());
        let timeout = Duration::from_millis(script.timeout_ms);
        self.tracker.prune();
        tracing::info!(module = self.env.module, script = %kind, path = %path.display(), role = role.as_str(), "running script");
        self.log.append(
            Level::Info,
            Kind::Script,
            &format!(
                "{label} starts (role {}, timeout {})",
                role.as_str(),
                fmt_ms(script.timeout_ms)
            ),
        );
        let started = Instant::now();
        let mut child = match self.spawn(What::Script(kind), &path, role) {
            Ok(child) => child,
            Err(e) => {
                let detail = format!(
                    "{label} could not be started: {}",
                    describe_spawn_error(&e, &path)
                );
                return Err(self.failure(kind, detail, None));
            }
        };
        let pgid = child.id().and_then(|pid| i32::try_from(pid).ok());
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        let mut output = Output::new(&self.log, &self.env.module, kind.key());
        let ended = {
            let supervise = supervise(
                &mut child,
                pgid,
                timeout,
                Duration::from_millis(self.options.kill_grace_ms),
            );
            let pump = pump(&mut stdout, &mut stderr, &mut output);
            tokio::pin!(supervise, pump);
            let mut pumped = false;
            let ended = loop {
                tokio::select! {
                    ended = &mut supervise => break ended,
                    () = &mut pump, if !pumped => pumped = true,
                }
            };
            if !pumped {
                let drain = Duration::from_millis(OUTPUT_DRAIN_MS);
                let _ = tokio::time::timeout(drain, &mut pump).await;
            }
            ended
        };
        output.finish();
        discard_rest(&self.env.module, kind.key(), stdout, stderr);
        let took = fmt_ms(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));

        let (what, exit_status) = match ended {
            Ended::Exited(status) if status.success() => {
                tracing::info!(module = self.env.module, script = %kind, "script succeeded in {took}");
                self.log.append(
                    Level::Info,
                    Kind::Script,
                    &format!("{kind} succeeded in {took}"),
                );
                return Ok(());
            }
            Ended::Exited(status) => match (status.code(), status.signal()) {
                (Some(code), _) => (format!("exited with status {code}"), Some(code)),
                (None, Some(signal)) => (format!("was killed by {}", signal_name(signal)), None),
                (None, None) => (format!("ended with {status}"), None),
            },
            Ended::WaitFailed(e) => (format!("could not be waited for: {e}"), None),
            Ended::TimedOut(stopped) => {
                let grace = fmt_ms(self.options.kill_grace_ms);
                let how = match stopped {
                    Stopped::Term => "stopped with SIGTERM".to_owned(),
                    Stopped::TermThenGroupKill => format!(
                        "stopped with SIGTERM; what it left in its process group got SIGKILL {grace} later"
                    ),
                    Stopped::Kill => format!("still running {grace} after SIGTERM: killed with SIGKILL"),
                    Stopped::Unkillable => format!(
                        "still running {grace} after SIGTERM, and {} after SIGKILL (stuck in the kernel?)",
                        fmt_ms(KILL_REAP_WAIT_MS)
                    ),
                };
                (
                    format!("timed out after {}: {how}", fmt_ms(script.timeout_ms)),
                    None,
                )
            }
        };
        let mut detail = format!("{label} {what}");
        if let Some(tail) = output.failure_tail() {
            detail.push_str(": ");
            detail.push_str(&tail);
        }
        Err(self.failure(kind, detail, exit_status))
    }

    fn failure(
        &self,
        script: ScriptKind,
        detail: String,
        exit_status: Option<i32>,
    ) -> ScriptFailure {
        tracing::error!(module = self.env.module, script = %script, "{detail}");
        self.log.append(Level::Error, Kind::Script, &detail);
        ScriptFailure {
            script,
            detail,
            exit_status,
        }
    }

    /// Start the script in a session of its own, in the module's cgroup when there is one.
    fn spawn(&self, what: What<'_>, path: &Path, role: ScriptRole) -> io::Result<Child> {
        let Some(procs) = self.tracker.join_file() else {
            return self.spawn_tracked(what, path, role);
        };
        match self
            .command(what, path, role, Some(procs.as_raw_fd()))
            .spawn()
        {
            Ok(child) => Ok(child),
            Err(first) => {
                // Either the script cannot be executed, or the child could not join the cgroup:
                // nothing ran yet, so try once without the cgroup to tell which.
                let child = self.spawn_tracked(what, path, role)?;
                self.tracker
                    .disable_cgroup(&format!("a script could not join it: {first}"));
                Ok(child)
            }
        }
    }

    fn spawn_tracked(&self, what: What<'_>, path: &Path, role: ScriptRole) -> io::Result<Child> {
        let child = self.command(what, path, role, None).spawn()?;
        if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
            self.tracker.track_session(pid);
        }
        Ok(child)
    }

    fn command(
        &self,
        what: What<'_>,
        path: &Path,
        role: ScriptRole,
        cgroup_procs_fd: Option<i32>,
    ) -> Command {
        let env = &self.env;
        let mut cmd = Command::new(path);
        cmd.env_clear()
            .env("PATH", SCRIPT_DEFAULT_PATH)
            .envs(
                env.env
                    .iter()
                    .filter(|(name, _)| !name.starts_with(RESERVED_ENV_PREFIX)),
            )
            .env("MIRRORKIT_MODULE", &env.module)
            .env("MIRRORKIT_NODE", &env.node)
            .env("MIRRORKIT_ROLE", role.as_str())
            .env("MIRRORKIT_SCRIPT", what.slot())
            .env("MIRRORKIT_RUN_DIR", &env.run_dir)
            .env("MIRRORKIT_VIP", env.vips.join(" "))
            .env(
                "MIRRORKIT_MIRROR_DIR",
                env.mirror_dirs
                    .first()
                    .map(|d| d.as_os_str())
                    .unwrap_or_default(),
            )
            .env("MIRRORKIT_MIRROR_DIRS", join_lines(&env.mirror_dirs))
            .env("MIRRORKIT_MODULE_DIR", &env.module_dir)
            .current_dir(&env.module_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(false);
        if let What::Checker(name) = what {
            cmd.env("MIRRORKIT_CHECKER", name);
        }
        // SAFETY: the closure runs between fork and exec, where only async-signal-safe calls are
        // allowed: it calls write(2) and setsid(2) and touches no memory but a static byte.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(fd) = cgroup_procs_fd {
                    // "0" moves the writing process: this child, before it runs anything.
                    if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(io::Error::last_os_error());
                    }
                }
                if libc::setsid() == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }
}

fn create_run_dir(env: &ScriptEnv) -> Result<(), RunnerError> {
    let path = &env.run_dir;
    match fs::metadata(path) {
        Ok(meta) if meta.is_dir() => return Ok(()),
        Ok(_) => {
            return Err(RunnerError::RunDirNotDir {
                module: env.module.clone(),
                path: path.clone(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(RunnerError::RunDir {
                module: env.module.clone(),
                path: path.clone(),
                source,
            })
        }
    }
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        // The umask may have taken bits off; 0700 is what the documentation promises.
        .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(0o700)))
        .map_err(|source| RunnerError::RunDir {
            module: env.module.clone(),
            path: path.clone(),
            source,
        })
}

fn join_lines(dirs: &[PathBuf]) -> OsString {
    let mut joined = OsString::new();
    for (i, dir) in dirs.iter().enumerate() {
        if i > 0 {
            joined.push("\n");
        }
        joined.push(dir);
    }
    joined
}

/// Wait for the script, within its timeout; past it, SIGTERM to its process group, then SIGKILL
/// after `grace`.
async fn supervise(
    child: &mut Child,
    pgid: Option<i32>,
    timeout: Duration,
    grace: Duration,
) -> Ended {
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => return Ended::Exited(status),
        Ok(Err(e)) => return Ended::WaitFailed(e),
        Err(_elapsed) => {}
    }
    let Some(pgid) = pgid else {
        // Already reaped by the runtime: it had exited just at the deadline.
        return Ended::TimedOut(Stopped::Term);
    };
    tracker::signal_group(pgid, libc::SIGTERM);
    let kill_at = Instant::now() + grace;
    if let Ok(Ok(_)) = tokio::time::timeout_at(kill_at, child.wait()).await {
        // The script is gone; what it started in its group gets the rest of the grace.
        while tracker::group_has_live_members(pgid) {
            let now = Instant::now();
            if now >= kill_at {
                tracker::signal_group(pgid, libc::SIGKILL);
                return Ended::TimedOut(Stopped::TermThenGroupKill);
            }
            tokio::time::sleep((kill_at - now).min(Duration::from_millis(GROUP_POLL_MS))).await;
        }
        return Ended::TimedOut(Stopped::Term);
    }
    tracker::signal_group(pgid, libc::SIGKILL);
    let reaped = tokio::time::timeout(Duration::from_millis(KILL_REAP_WAIT_MS), child.wait()).await;
    Ended::TimedOut(match reaped {
        Ok(Ok(_)) => Stopped::Kill,
        _ => Stopped::Unkillable,
    })
}

/// Read both pipes into `output` until both are closed; a closed pipe is set to `None`.
async fn pump(
    stdout: &mut Option<ChildStdout>,
    stderr: &mut Option<ChildStderr>,
    output: &mut Output<'_>,
) {
    let mut out_buf = [0u8; READ_CHUNK_BYTES];
    let mut err_buf = [0u8; READ_CHUNK_BYTES];
    while stdout.is_some() || stderr.is_some() {
        // `read` is cancel safe: when one branch completes, the other has read nothing.
        let (stream, read) = tokio::select! {
            r = read_some(stdout, &mut out_buf), if stdout.is_some() => (Stream::Stdout, r),
            r = read_some(stderr, &mut err_buf), if stderr.is_some() => (Stream::Stderr, r),
        };
        let buf = match stream {
            Stream::Stdout => &out_buf,
            Stream::Stderr => &err_buf,
        };
        match read {
            Ok(n) if n > 0 => output.feed(stream, &buf[..n]),
            _ => {
                output.close(stream);
                match stream {
                    Stream::Stdout => *stdout = None,
                    Stream::Stderr => *stderr = None,
                }
            }
        }
    }
}

async fn read_some<R: AsyncRead + Unpin>(
    reader: &mut Option<R>,
    buf: &mut [u8],
) -> io::Result<usize> {
    match reader {
        Some(reader) => reader.read(buf).await,
        None => std::future::pending().await,
    }
}

/// Keep reading, and dropping, what processes the script left in the background write to its
/// pipes: closing them would kill those processes with SIGPIPE at their next write, and not
/// reading would block them once the pipe is full. Each reader ends when the last writer does.
fn discard_rest(
    module: &str,
    script: &str,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
) {
    if stdout.is_none() && stderr.is_none() {
        return;
    }
    tracing::debug!(
        module,
        script,
        "the script exited but processes it started still hold its output open; their output is discarded"
    );
    if let Some(mut stdout) = stdout {
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut stdout, &mut tokio::io::sink()).await;
        });
    }
    if let Some(mut stderr) = stderr {
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await;
        });
    }
}

fn describe_spawn_error(e: &io::Error, path: &Path) -> String {
    match e.raw_os_error() {
        Some(libc::ENOENT) if path.exists() => {
            "its interpreter (the #! line) was not found".to_owned()
        }
        Some(libc::ENOENT) => "no such file".to_owned(),
        Some(libc::EACCES) => {
            format!(
                "permission denied (is it executable? chmod +x {})",
                path.display()
            )
        }
        Some(libc::ENOEXEC) => "not an executable: a binary, or a script with a #! line".to_owned(),
        Some(libc::ETXTBSY) => "the file is open for writing".to_owned(),
        _ => e.to_string(),
    }
}

fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        _ => return format!("signal {signal}"),
    };
    format!("signal {signal} ({name})")
}

/// `30000` → "30 s", `1500` → "1.5 s", `250` → "250 ms".
fn fmt_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms % 1000 == 0 {
        format!("{} s", ms / 1000)
    } else {
        format!("{}.{} s", ms / 1000, (ms % 1000) / 100)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(fmt_ms(30_000), "30 s");
        assert_eq!(fmt_ms(1_500), "1.5 s");
        assert_eq!(fmt_ms(250), "250 ms");
        assert_eq!(signal_name(libc::SIGKILL), "signal 9 (SIGKILL)");
        assert_eq!(signal_name(64), "signal 64");
    }
}
