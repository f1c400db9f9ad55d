//! What a reader needs to judge the figures: the exact command, the date, the machine, the
//! file system under test, the load, and which code was measured.

use std::path::Path;
use std::process::Command;

use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu: String,
    pub kernel: String,
    pub memory_gib: f64,
    /// File system type, device and mount point holding the benchmark's directories.
    pub fs_type: String,
    pub fs_device: String,
    pub fs_mount: String,
    /// The file system's mount options (`discard`, for one, puts deletions' cost in later runs).
    pub fs_options: String,
    /// Whether a DAMON scheme pages out memory it sees as idle (page cache included): then
    /// "cached" data may not stay cached.
    pub damon_pageout: bool,
    /// Whether a virtio balloon reports free pages to the hypervisor, which takes them back:
    /// memory the guest frees (dropping the caches frees a lot) costs a fault in the host when
    /// it is used again, which makes cold figures vary.
    pub free_page_reporting: bool,
}

impl Machine {
    pub fn probe(base: &Path) -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let memory_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
            .map(|kb| kb / (1024.0 * 1024.0))
            .unwrap_or(f64::NAN);
        let m = mount_of(base).unwrap_or_else(|| {
            let u = "unknown".to_string();
            Mount {
                fs_type: u.clone(),
                device: u.clone(),
                point: u.clone(),
                options: u,
            }
        });
        Machine {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu,
            kernel,
            memory_gib,
            fs_type: m.fs_type,
            fs_device: m.device,
            fs_mount: m.point,
            fs_options: m.options,
            damon_pageout: damon_pageout(),
            free_page_reporting: free_page_reporting(),
        }
    }
}

/// A running kdamond with a `pageout` scheme, or the damon_reclaim module enabled.
fn damon_pageout() -> bool {
    let read = |p: &Path| std::fs::read_to_string(p).map(|s| s.trim().to_string());
    if read(Path::new("/sys/module/damon_reclaim/parameters/enabled")).is_ok_and(|s| s == "Y") {
        return true;
    }
    let Ok(kdamonds) = std::fs::read_dir("/sys/kernel/mm/damon/admin/kdamonds") else {
        return false;
    };
    kdamonds.flatten().any(|k| {
        let on = read(&k.path().join("state")).is_ok_and(|s| s == "on");
        let pageout = std::fs::read_dir(k.path().join("contexts"))
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|c| {
                std::fs::read_dir(c.path().join("schemes"))
                    .into_iter()
                    .flatten()
                    .flatten()
            })
            .any(|s| read(&s.path().join("action")).is_ok_and(|a| a == "pageout"));
        on && pageout
    })
}

/// A virtio balloon device (id 5) offering free page reporting (feature bit 5; sysfs lists
/// the negotiated features bit 0 first).
fn free_page_reporting() -> bool {
    let Ok(devices) = std::fs::read_dir("/sys/bus/virtio/devices") else {
        return false;
    };
    devices.flatten().any(|d| {
        let read = |f: &str| std::fs::read_to_string(d.path().join(f)).unwrap_or_default();
        read("device").trim() == "0x0005" && read("features").as_bytes().get(5) == Some(&b'1')
    })
}

/// A mounted file system, from /proc/self/mountinfo.
pub struct Mount {
    pub fs_type: String,
    pub device: String,
    pub point: String,
    /// Per-mount and file-system-wide options together.
    pub options: String,
}

/// The mount holding `path`: the longest mount point that is a prefix of its canonical path.
pub fn mount_of(path: &Path) -> Option<Mount> {
    let path = std::fs::canonicalize(path).ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            let point = f.get(4)?.replace("\\040", " ");
            path.starts_with(&point).then(|| Mount {
                fs_type: f.get(sep + 1).unwrap_or(&"?").to_string(),
                device: f.get(sep + 2).unwrap_or(&"?").to_string(),
                options: {
                    let mut o: Vec<&str> = Vec::new();
                    for opt in [f.get(5), f.get(sep + 3)]
                        .into_iter()
                        .flatten()
                        .flat_map(|x| x.split(','))
                    {
                        if !opt.is_empty() && !o.contains(&opt) {
                            o.push(opt);
                        }
                    }
                    o.join(",")
                },
                point,
            })
        })
        .max_by_key(|m| m.point.len())
}

/// The 1, 5 and 15 minute load averages, as the kernel prints them.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// CPU pressure (PSI): the share of the last minute in which some runnable task waited for
/// a CPU, as "some avg60" in /proc/pressure/cpu.
pub fn cpu_pressure() -> String {
    std::fs::read_to_string("/proc/pressure/cpu")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("some"))
                .and_then(|l| l.split_whitespace().find(|f| f.starts_with("avg60=")))
                .map(|f| format!("{}%", &f["avg60=".len()..]))
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Nanoseconds that this thread and every thread of `pids` spent runnable but waiting for a
/// CPU (the second field of schedstat). Threads that exited are no longer counted.
pub fn run_delay_ns(pids: &[u32]) -> u64 {
    let delay = |p: &Path| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|s| {
                s.split_whitespace()
                    .nth(1)
                    .and_then(|f| f.parse::<u64>().ok())
            })
            .unwrap_or(0)
    };
    let mut total = delay(Path::new("/proc/thread-self/schedstat"));
    for pid in pids {
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            total += tasks
                .flatten()
                .map(|t| delay(&t.path().join("schedstat")))
                .sum::<u64>();
        }
    }
    total
}

/// The command line of this process, quoted so that it can be pasted into a shell.
pub fn command_line() -> String {
    std::env::args()
        .map(|a| shell_quote(&a))
        .collect::<Vec<_>>()
        .join(" ")
}

fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+%".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The commit of the workspace this benchmark was built from, with "+dirty" when the tree
/// has changes; "unknown" without git or outside the source tree.
pub fn git_revision() -> String {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(&ws)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(rev) => match git(&["status", "--porcelain", "--untracked-files=no"]) {
            Some(s) if !s.is_empty() => format!("{rev}+dirty"),
            _ => rev,
        },
        None => "unknown".into(),
    }
}

/// Now, in UTC, as `YYYY-MM-DD HH:MM:SSZ`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    utc_date(secs)
}

fn utc_date(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = mirrorkit_scripts::civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(utc_date(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc_date(951_782_400), "2000-02-29 00:00:00Z");
        assert_eq!(utc_date(1_700_000_000), "2023-11-14 22:13:20Z");
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("--json=out.json"), "--json=out.json");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn run_delay_ignores_processes_that_are_gone() {
        // No process has this id (above pid_max); only this thread is counted.
        let own = run_delay_ns(&[]);
        let with_gone = run_delay_ns(&[u32::MAX]);
        assert!(with_gone >= own);
        assert!(with_gone - own < 1_000_000_000, "{own} then {with_gone}");
    }

    #[test]
    fn root_is_mounted() {
        let m = mount_of(Path::new("/")).unwrap();
        assert_eq!(m.point, "/");
        assert!(m.options.starts_with("r"), "{}", m.options);
    }
}
