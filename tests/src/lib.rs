//! Harness for mirrorkit's multi-node tests and benchmarks: start two real nodes (separate
//! `mirrorkit` processes, a real FUSE mount, real QUIC on loopback), wait for their states,
//! kill them, and compare the two trees.
//!
//! Tests that need root or FUSE call `require_root_and_fuse()`: without them they skip with a
//! printed reason, except when `CI` is set, where they fail loudly.

pub mod browser;
pub mod chaos;
pub mod fill;
pub mod lab;
pub mod pgwire;
pub mod postgres;
pub mod records;
pub mod tree;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use mirrorkit_engine::status::Status;

/// Whether this process may mount FUSE file systems. Returns false (after printing why) when
/// the test should be skipped; panics under CI instead.
pub fn require_root_and_fuse(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let fuse = Path::new("/dev/fuse").exists();
    if root && fuse {
        return true;
    }
    skip_unless_ci(&format!(
        "{test}: needs root and /dev/fuse (root: {root}, /dev/fuse: {fuse})"
    ))
}

/// A test cannot run here, for reason `why`: print that it is skipped and return false, or,
/// when `CI` is set, fail.
pub fn skip_unless_ci(why: &str) -> bool {
    if std::env::var_os("CI").is_some() {
        panic!("{why}; CI is set, so this is a failure, not a skip");
    }
    eprintln!("SKIPPED {why}");
    false
}

/// The `mirrorkit` binary built by cargo next to the test executable.
pub fn mirrorkit_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("MIRRORKIT_BIN") {
        return PathBuf::from(p);
    }
    // Test executables live in target/<profile>/deps; the binary in target/<profile>.
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("mirrorkit");
    assert!(
        bin.exists(),
        "{} not found: build it first (cargo build --bin mirrorkit) or set MIRRORKIT_BIN",
        bin.display()
    );
    bin
}

/// A free UDP port on loopback (for a QUIC endpoint).
pub fn free_udp_addr() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    let a = s.local_addr().expect("addr");
    // Also make sure nobody holds the TCP side, for symmetry with future listeners.
    drop(TcpListener::bind(a));
    a
}

/// One node's directories.
#[derive(Clone, Debug)]
pub struct NodeDirs {
    pub name: String,
    pub data: PathBuf,
    pub state: PathBuf,
    pub log: PathBuf,
    pub addr: SocketAddr,
}

/// A running (or stopped) node process.
pub struct NodeProc {
    pub dirs: NodeDirs,
    child: Option<Child>,
}

impl NodeProc {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, wait up to 10 s, then SIGKILL.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP / SIGCONT: a node that stops answering without closing anything. A stop
    /// returns once every thread of the process is stopped (the signal takes effect
    /// asynchronously: a thread running on another core could still answer for a moment).
    pub fn pause(&self, stop: bool) {
        if let Some(pid) = self.pid() {
            let sig = if stop { libc::SIGSTOP } else { libc::SIGCONT };
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid as i32, sig) };
            if stop {
                let all_stopped = || {
                    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                        return true;
                    };
                    tasks.flatten().all(|t| {
                        std::fs::read_to_string(t.path().join("stat")).is_ok_and(|st| {
                            // The state follows the command name in parentheses.
                            st.rsplit_once(") ").is_some_and(|(_, rest)| {
                                rest.starts_with('T') || rest.starts_with('t')
                            })
                        })
                    })
                };
                assert!(
                    wait_until(Duration::from_secs(5), all_stopped),
                    "process {pid} did not stop within 5 s of SIGSTOP"
                );
            }
        }
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn status(&self) -> Option<Status> {
        Status::read(&self.dirs.state).ok()
    }

    /// The node's log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.dirs.log).unwrap_or_default()
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Options of a test mirror.
#[derive(Clone, Debug)]
pub struct MirrorOpts {
    pub peer_timeout_ms: u64,
    /// The primary's `--resync-bandwidth` (bytes per second), if any.
    pub resync_bandwidth: Option<u64>,
    /// Extra `RUST_LOG` for the nodes.
    pub log_filter: String,
    /// The primary's `--include` and `--exclude` patterns (none: everything is replicated).
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

impl Default for MirrorOpts {
    fn default() -> Self {
        MirrorOpts {
            peer_timeout_ms: 3000,
            resync_bandwidth: None,
            // MIRRORKIT_TEST_LOG=info,mirrorkit_engine::sync=trace (say) to see more.
            log_filter: std::env::var("MIRRORKIT_TEST_LOG").unwrap_or_else(|_| "info".into()),
            include: Vec::new(),
            exclude: Vec::new(),
        }
    }
}

/// Two nodes of one mirror in a temporary directory: `a` primary, `b` secondary.
pub struct Mirror {
    pub base: tempfile::TempDir,
    pub certs: PathBuf,
    pub opts: MirrorOpts,
    pub a: NodeProc,
    pub b: NodeProc,
}

impl Mirror {
    /// Create directories and certificates; start nothing yet.
    pub fn new(opts: MirrorOpts) -> Mirror {
        let base = tempfile::Builder::new()
            .prefix("mirrorkit-test-")
            .tempdir_in(
                std::env::var_os("MIRRORKIT_TEST_DIR")
                    .map(PathBuf::from)
                    .unwrap_or_else(std::env::temp_dir),
            )
            .expect("tempdir");
        let certs = base.path().join("certs");
        mirrorkit_net::pki::generate_cluster(&certs, "test", &["a", "b"], false).expect("certs");
        let dirs = |name: &str| {
            let root = base.path().join(name);
            let d = NodeDirs {
                name: name.into(),
                data: root.join("data"),
                state: root.join("state"),
                log: root.join("node.log"),
                addr: free_udp_addr(),
            };
            std::fs::create_dir_all(&d.data).expect("data dir");
            std::fs::create_dir_all(&d.state).expect("state dir");
            d
        };
        let a = NodeProc {
            dirs: dirs("a"),
            child: None,
        };
        let b = NodeProc {
            dirs: dirs("b"),
            child: None,
        };
        Mirror {
            base,
            certs,
            opts,
            a,
            b,
        }
    }

    /// Create and start both nodes, and wait until the primary is in sync.
    pub fn start(opts: MirrorOpts) -> Mirror {
        let mut m = Mirror::new(opts);
        m.start_secondary();
        m.start_primary();
        m.wait_primary_mode("in-sync", Duration::from_secs(30));
        m
    }

    fn spawn(&self, d: &NodeDirs, args: &[String]) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&d.log)
            .expect("log file");
        Command::new(mirrorkit_bin())
            .args(args)
            .env("RUST_LOG", &self.opts.log_filter)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn mirrorkit")
    }

    fn common_args(&self, role: &str, d: &NodeDirs) -> Vec<String> {
        vec![
            "mirror".into(),
            role.into(),
            "--mirror".into(),
            "test".into(),
            "--node".into(),
            d.name.clone(),
            "--dir".into(),
            d.data.display().to_string(),
            "--state-dir".into(),
            d.state.display().to_string(),
            "--certs".into(),
            self.certs.display().to_string(),
            "--listen".into(),
            d.addr.to_string(),
        ]
    }

    /// Start (or restart) the secondary `b`.
    pub fn start_secondary(&mut self) {
        let _ = std::fs::remove_file(self.b.dirs.state.join("status.json"));
        let mut args = self.common_args("secondary", &self.b.dirs);
        args.extend(["--peer".into(), self.a.dirs.name.clone()]);
        let child = self.spawn(&self.b.dirs, &args);
        self.b.child = Some(child);
        wait_for(Duration::from_secs(20), || self.b.status())
            .unwrap_or_else(|| panic!("secondary did not start:\n{}", self.b.log()));
    }

    /// Start (or restart) the primary `a`: mounts over `a/data`.
    pub fn start_primary(&mut self) {
        if let Err(log) = self.start_primary_with(&[]) {
            panic!("primary did not start:\n{log}");
        }
    }

    /// Swap the nodes' roles for the next starts: `a` (the primary) becomes the node that was
    /// `b`, and the other way round. Stop both first.
    pub fn swap_roles(&mut self) {
        std::mem::swap(&mut self.a, &mut self.b);
    }

    /// Start the primary `a` with extra arguments; `Err(its log)` if it exits instead of
    /// starting (a refused start).
    pub fn start_primary_with(&mut self, extra: &[&str]) -> Result<(), String> {
        let _ = std::fs::remove_file(self.a.dirs.state.join("status.json"));
        let mut args = self.common_args("primary", &self.a.dirs);
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend([
            "--peer".into(),
            format!("{}@{}", self.b.dirs.name, self.b.dirs.addr),
            "--peer-timeout-ms".into(),
            self.opts.peer_timeout_ms.to_string(),
        ]);
        if let Some(rate) = self.opts.resync_bandwidth {
            args.extend(["--resync-bandwidth".into(), rate.to_string()]);
        }
        for p in &self.opts.include {
            args.extend(["--include".into(), p.clone()]);
        }
        for p in &self.opts.exclude {
            args.extend(["--exclude".into(), p.clone()]);
        }
        let child = self.spawn(&self.a.dirs, &args);
        self.a.child = Some(child);
        let started = wait_for(Duration::from_secs(20), || {
            if self.a.status().is_some() {
                return Some(true);
            }
            match self.a.child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(_))) => Some(false),
                _ => None,
            }
        });
        match started {
            Some(true) => Ok(()),
            _ => {
                self.a.kill9();
                Err(self.a.log())
            }
        }
    }

    /// Wait until the primary's link mode is `mode` ("alone", "syncing", "in-sync").
    pub fn wait_primary_mode(&self, mode: &str, timeout: Duration) -> Status {
        wait_for(timeout, || self.a.status().filter(|s| s.mode == mode)).unwrap_or_else(|| {
            panic!(
                "primary did not reach {mode} within {timeout:?}; status {:?}\n--- a log\n{}\n--- b log\n{}",
                self.a.status(),
                self.a.log(),
                self.b.log()
            )
        })
    }

    /// The mounted directory on the primary (where applications write).
    pub fn primary_dir(&self) -> &Path {
        &self.a.dirs.data
    }

    /// The secondary's copy.
    pub fn secondary_dir(&self) -> &Path {
        &self.b.dirs.data
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.a.stop();
        self.b.stop();
        // A killed primary leaves its mount behind: detach it so the temp dir can go.
        let _ = mirrorkit_engine::mount::detach_stale_mount(&self.a.dirs.data);
    }
}

/// Poll `f` every 20 ms until it returns `Some`, up to `timeout`.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Like `wait_for` with a bool condition.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    wait_for(timeout, || f().then_some(())).is_some()
}
