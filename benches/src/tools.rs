//! The resync benchmark's baselines: `rsync` and `cp -a` run as child processes and timed,
//! each followed by a `syncfs` of the destination (the mirror's resync ends with the peer's
//! `syncfs`, so both sides are timed to durable data). Also the CPU and disk use of a process.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

/// The options the incremental baseline runs rsync with (SRC/ DST/ follow). `--delete`: the
/// change removes and renames files, and a mirror removes them too. `--modify-window=-1`:
/// compare times to the nanosecond; by default rsync takes times within the same second as
/// equal and then leaves a directory it changed with its own time, not the source's (this
/// changes nothing else: the set's times are whole seconds). `--stats`: the literal and
/// matched bytes.
pub const RSYNC_ARGS: [&str; 6] = [
    "-a",
    "--delete",
    "--inplace",
    "--no-whole-file",
    "--modify-window=-1",
    "--stats",
];

/// One timed run of a baseline tool.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ToolRun {
    /// From the start of the tool to the end of the `syncfs` that follows it.
    pub seconds: f64,
    /// The tool alone (its data may still be only in the page cache).
    pub tool_seconds: f64,
    /// CPU time of the tool's processes (user + system).
    pub cpu_seconds: f64,
    /// Bytes the tool's processes read from and wrote to storage (block I/O accounting).
    pub read_bytes: u64,
    pub written_bytes: u64,
    /// rsync only: `Literal data` and `Matched data` of `--stats`.
    pub literal_bytes: Option<u64>,
    pub matched_bytes: Option<u64>,
}

/// `rsync --version`'s first line, or why rsync cannot be run.
pub fn rsync_version() -> Result<String> {
    let out = Command::new("rsync")
        .arg("--version")
        .output()
        .context("cannot run rsync (install it: apt-get install -y rsync)")?;
    if !out.status.success() {
        bail!("rsync --version failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("rsync")
        .trim()
        .to_string())
}

/// `rsync RSYNC_ARGS src/ dst/`, then `syncfs` of `dst`.
pub fn rsync(src: &Path, dst: &Path) -> Result<ToolRun> {
    let slash = |p: &Path| format!("{}/", p.display());
    let mut cmd = Command::new("rsync");
    cmd.args(RSYNC_ARGS).arg(slash(src)).arg(slash(dst));
    let (mut run, stdout) = timed(cmd, dst)?;
    run.literal_bytes = stat_bytes(&stdout, "Literal data:");
    run.matched_bytes = stat_bytes(&stdout, "Matched data:");
    if run.literal_bytes.is_none() {
        bail!("rsync --stats printed no 'Literal data' line:\n{stdout}");
    }
    Ok(run)
}

/// `cp -a src dst` (`dst` must not exist), then `syncfs` of `dst`.
pub fn cp_a(src: &Path, dst: &Path) -> Result<ToolRun> {
    if dst.exists() {
        bail!("{} exists: cp -a would copy into it", dst.display());
    }
    let mut cmd = Command::new("cp");
    cmd.arg("-a").arg(src).arg(dst);
    Ok(timed(cmd, dst)?.0)
}

/// A number of bytes from an rsync `--stats` line ("Literal data: 1,234 bytes").
fn stat_bytes(stats: &str, label: &str) -> Option<u64> {
    let line = stats.lines().find(|l| l.trim_start().starts_with(label))?;
    let rest = line.trim_start()[label.len()..].trim();
    let num: String = rest
        .split_whitespace()
        .next()?
        .chars()
        .filter(|c| *c != ',' && *c != '.')
        .collect();
    num.parse().ok()
}

/// Run `cmd` to completion, then `syncfs` the file system of `sync_dir`; its stdout.
fn timed(mut cmd: Command, sync_dir: &Path) -> Result<(ToolRun, String)> {
    let what = format!("{cmd:?}");
    let before = children_usage();
    let start = Instant::now();
    let out = cmd.output().with_context(|| format!("cannot run {what}"))?;
    let tool = start.elapsed();
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    syncfs(sync_dir)?;
    let total = start.elapsed();
    let after = children_usage();
    Ok((
        ToolRun {
            seconds: total.as_secs_f64(),
            tool_seconds: tool.as_secs_f64(),
            cpu_seconds: (after.cpu - before.cpu).as_secs_f64(),
            read_bytes: after.read_bytes.saturating_sub(before.read_bytes),
            written_bytes: after.written_bytes.saturating_sub(before.written_bytes),
            ..ToolRun::default()
        },
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

/// Write back the dirty data of the file system holding `dir`.
pub fn syncfs(dir: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(dir).with_context(|| format!("syncfs: {}", dir.display()))?;
    // SAFETY: a valid descriptor.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("syncfs {}", dir.display()));
    }
    Ok(())
}

struct Usage {
    cpu: Duration,
    read_bytes: u64,
    written_bytes: u64,
}

/// CPU and block I/O of this process's terminated and waited-for children.
fn children_usage() -> Usage {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Usage {
        cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
        read_bytes: ru.ru_inblock as u64 * 512,
        written_bytes: ru.ru_oublock as u64 * 512,
    }
}

/// CPU time and storage I/O of a running process so far (`/proc/<pid>/stat` and `io`).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ProcUsage {
    pub cpu_seconds: f64,
    pub read_bytes: u64,
    pub written_bytes: u64,
}

impl ProcUsage {
    pub fn of(pid: u32) -> Option<ProcUsage> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may hold spaces): state is field 3, utime 14,
        // stime 15.
        let rest = &stat[stat.rfind(')')? + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
        let field = |name: &str| {
            io.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        Some(ProcUsage {
            cpu_seconds: ticks as f64 / hz,
            read_bytes: field("read_bytes:"),
            written_bytes: field("write_bytes:"),
        })
    }

    pub fn since(self, earlier: ProcUsage) -> ProcUsage {
        ProcUsage {
            cpu_seconds: self.cpu_seconds - earlier.cpu_seconds,
            read_bytes: self.read_bytes.saturating_sub(earlier.read_bytes),
            written_bytes: self.written_bytes.saturating_sub(earlier.written_bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsync_stats_are_parsed() {
        let stats = "Number of files: 4,913 (reg: 4,912, dir: 52)\n\
                     Total file size: 4,294,967,296 bytes\n\
                     Literal data: 46,153,830 bytes\n\
                     Matched data: 3,207,000,064 bytes\n";
        assert_eq!(stat_bytes(stats, "Literal data:"), Some(46_153_830));
        assert_eq!(stat_bytes(stats, "Matched data:"), Some(3_207_000_064));
        assert_eq!(stat_bytes(stats, "Total bytes sent:"), None);
    }

    #[test]
    fn own_usage_is_read() {
        let u = ProcUsage::of(std::process::id()).unwrap();
        assert!(u.cpu_seconds >= 0.0);
        assert!(ProcUsage::of(u32::MAX).is_none());
    }

    #[test]
    fn cp_a_copies_and_refuses_an_existing_destination() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("sub/f"), b"x").unwrap();
        let dst = d.path().join("dst");
        let run = cp_a(&src, &dst).unwrap();
        assert!(run.seconds >= run.tool_seconds);
        assert_eq!(std::fs::read(dst.join("sub/f")).unwrap(), b"x");
        assert!(cp_a(&src, &dst).is_err());
    }
}
