//! Each probe against the real thing: processes, a TCP listener, scripts run by the module's
//! runner, the loopback interface, ICMP on loopback. The only traffic that leaves loopback is
//! one echo request to TEST-NET-3 (RFC 5737) and one to the IPv6 documentation prefix
//! (RFC 3849), which nobody answers.

use std::collections::BTreeMap;
use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mirrorkit_checkers::{ping, ping_with, probe, PingSocket};
use mirrorkit_module::{CheckAction, Checker, Probe, ProcessTarget};
use mirrorkit_scripts::{EventLog, Runner, RunnerOptions, ScriptEnv};

/// Documentation-only addresses (RFC 5737, RFC 3849) that nothing answers (a router may say
/// it cannot deliver there).
const SILENT_V4: &str = "203.0.113.1";
const SILENT_V6: &str = "2001:db8::1";

struct Module {
    _dir: tempfile::TempDir,
    module_dir: PathBuf,
    run_dir: PathBuf,
    log: EventLog,
    runner: Arc<Runner>,
}

fn module(name: &str) -> Module {
    let dir = tempfile::tempdir().expect("tempdir");
    let module_dir = dir.path().join("module");
    fs::create_dir_all(&module_dir).expect("mkdir");
    let run_dir = dir.path().join("run");
    let log = EventLog::open(&dir.path().join("events.log")).expect("event log");
    let env = ScriptEnv {
        module: format!("t{}-{name}", std::process::id()),
        node: "alpha".into(),
        module_dir: module_dir.clone(),
        run_dir: run_dir.clone(),
        vips: Vec::new(),
        mirror_dirs: Vec::new(),
        env: BTreeMap::new(),
    };
    let options = RunnerOptions {
        use_cgroup: false,
        ..RunnerOptions::default()
    };
    let runner = Arc::new(Runner::with_options(env, log.clone(), options).expect("runner"));
    Module {
        _dir: dir,
        module_dir,
        run_dir,
        log,
        runner,
    }
}

impl Module {
    fn script(&self, name: &str, body: &str) {
        let path = self.module_dir.join(name);
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
    }
}

fn checker(name: &str, probe: Probe, timeout_ms: u64) -> Checker {
    Checker {
        name: name.into(),
        probe,
        interval_ms: timeout_ms.max(100),
        timeout_ms,
        retries: 0,
        action: CheckAction::Restart,
        max_restarts: 3,
        restart_window_ms: 600_000,
    }
}

/// Whether `f` becomes true within `ms`, polling.
async fn eventually(ms: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_millis(ms);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Outside CI a test that cannot run here says why and passes; under CI it fails.
fn skip_or_fail(why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{why}; CI is set, so this test must run");
    }
    eprintln!("SKIPPED: {why}");
}

fn kill_and_reap(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn process_by_pid_file_follows_a_real_child() {
    let m = module("pidfile");
    let mut child = Command::new("sleep").arg("100").spawn().expect("sleep");
    let pid = child.id();
    // Relative to the run directory, as written in module.toml.
    fs::write(m.run_dir.join("app.pid"), format!("{pid}\n")).expect("pid file");
    let c = checker(
        "server",
        Probe::Process(ProcessTarget::PidFile("app.pid".into())),
        1_000,
    );
    assert_eq!(probe::check(&c, &m.runner).await, Ok(()));

    let file = m.run_dir.join("app.pid");
    // Killed but not reaped yet: a zombie is not a living process.
    child.kill().expect("kill");
    let zombie = eventually(5_000, || {
        fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
    })
    .await;
    assert!(zombie, "{pid} never became a zombie");
    assert_eq!(
        probe::check(&c, &m.runner).await,
        Err(format!(
            "process {pid} (from {}) has exited: it is a zombie that its parent has not reaped yet",
            file.display()
        ))
    );
    child.wait().expect("reap");
    assert_eq!(
        probe::check(&c, &m.runner).await,
        Err(format!(
            "no process with PID {pid} (from {})",
            file.display()
        ))
    );
    fs::remove_file(&file).expect("rm");
    assert_eq!(
        probe::check(&c, &m.runner).await,
        Err(format!("pid file {} does not exist", file.display()))
    );
    // An absolute pid file is used as is.
    let child = Command::new("sleep").arg("100").spawn().expect("sleep");
    let elsewhere = m.module_dir.join("elsewhere.pid");
    fs::write(&elsewhere, child.id().to_string()).expect("pid file");
    let c = checker(
        "server",
        Probe::Process(ProcessTarget::PidFile(elsewhere)),
        1_000,
    );
    assert_eq!(probe::check(&c, &m.runner).await, Ok(()));
    kill_and_reap(child);
}

#[tokio::test]
async fn process_by_name_finds_a_real_child() {
    let m = module("pname");
    // A copy of sleep with a name no other process has.
    let name = format!("mkc{}", std::process::id());
    let exe = m.module_dir.join(&name);
    let sleep = ["/bin/sleep", "/usr/bin/sleep"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("sleep");
    fs::copy(sleep, &exe).expect("copy sleep");
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).expect("chmod");
    let c = checker(
        "app",
        Probe::Process(ProcessTarget::Name(name.clone())),
        1_000,
    );
    assert_eq!(
        probe::check(&c, &m.runner).await,
        Err(format!("no process named {name:?} (as in /proc/PID/comm)"))
    );
    let child = Command::new(&exe).arg("100").spawn().expect("spawn");
    assert_eq!(probe::check(&c, &m.runner).await, Ok(()));
    kill_and_reap(child);
    assert!(probe::check(&c, &m.runner).await.is_err());
}

#[tokio::test]
async fn tcp_passes_while_a_listener_accepts() {
    let m = module("tcp");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("addr");
    let c = checker("http", Probe::Tcp { address }, 1_000);
    assert_eq!(probe::check(&c, &m.runner).await, Ok(()));
    drop(listener);
    assert_eq!(
        probe::check(&c, &m.runner).await,
        Err(format!("connection to {address} refused"))
    );
}

#[tokio::test]
async fn script_passes_then_fails_with_its_output() {
    let m = module("script");
    m.script(
        "check",
        "if [ -e \"$MIRRORKIT_RUN_DIR/down\" ]; then echo \"$MIRRORKIT_CHECKER: down\" >&2; exit 1; fi",
    );
    let c = checker(
        "deep",
        Probe::Script {
            path: "check".into(),
        },
        2_000,
    );
    assert_eq!(probe::check(&c, &m.runner).await, Ok(()));
    fs::write(m.run_dir.join("down"), "").expect("touch");
    let detail = probe::check(&c, &m.runner).await.expect_err("exit 1");
    assert_eq!(
        detail,
        format!(
            "{} exited with status 1: deep: down",
            m.module_dir.join("check").display()
        )
    );
    let texts: Vec<String> = m
        .log
        .tail(10)
        .expect("log")
        .into_iter()
        .map(|e| e.text)
        .collect();
    assert_eq!(texts, ["checker deep stderr: deep: down"]);
}

#[tokio::test]
async fn a_hanging_script_is_killed_at_its_timeout_and_fails() {
    let m = module("hang");
    m.script(
        "hang",
        "echo $$ > \"$MIRRORKIT_RUN_DIR/pid\"\nexec sleep 100",
    );
    let c = checker(
        "slow",
        Probe::Script {
            path: "hang".into(),
        },
        300,
    );
    let started = Instant::now();
    let detail = probe::check(&c, &m.runner).await.expect_err("timeout");
    assert!(
        started.elapsed() < Duration::from_millis(3_000),
        "{:?}",
        started.elapsed()
    );
    assert!(
        detail.ends_with("timed out after 300 ms: killed with SIGKILL"),
        "{detail}"
    );
    let pid = fs::read_to_string(m.run_dir.join("pid")).expect("pid");
    let gone = eventually(5_000, || {
        !Path::new(&format!("/proc/{}", pid.trim())).exists()
    })
    .await;
    assert!(gone, "script {} survived its timeout", pid.trim());
}

#[tokio::test]
async fn interface_lo_is_up_and_a_missing_one_is_not() {
    let m = module("iface");
    let lo = checker(
        "lo",
        Probe::Interface {
            interface: "lo".into(),
        },
        1_000,
    );
    assert_eq!(probe::check(&lo, &m.runner).await, Ok(()));
    let none = checker(
        "none",
        Probe::Interface {
            interface: "mkchk-none0".into(),
        },
        1_000,
    );
    assert_eq!(
        probe::check(&none, &m.runner).await,
        Err("interface mkchk-none0 does not exist".into())
    );
}

/// `Ok(())` passes; an error that says no ICMP socket could be opened skips when not root.
fn ping_passes_or_cannot_run(result: Result<(), String>, what: &str) -> bool {
    match result {
        Ok(()) => true,
        Err(e) if !is_root() && e.starts_with("cannot ping") => {
            skip_or_fail(&format!(
                "{what}: not root, and no ICMP socket allowed: {e}"
            ));
            false
        }
        Err(e) => panic!("{what}: {e}"),
    }
}

#[tokio::test]
async fn ping_loopback_answers() {
    let started = Instant::now();
    let v4 = ping(
        "127.0.0.1".parse().expect("ip"),
        Duration::from_millis(1_000),
    )
    .await;
    if !ping_passes_or_cannot_run(v4, "ping 127.0.0.1") {
        return;
    }
    assert!(started.elapsed() < Duration::from_millis(1_000));
    if fs::read_to_string("/proc/net/if_inet6").is_ok_and(|s| s.contains(" lo")) {
        let v6 = ping("::1".parse().expect("ip"), Duration::from_millis(1_000)).await;
        assert_eq!(v6, Ok(()), "ping ::1");
    } else {
        eprintln!("no IPv6 on lo: ::1 not pinged");
    }
    // Several at once (as several modules' checkers would): each sees its own reply.
    let all = futures_join(8).await;
    assert!(all.iter().all(Result::is_ok), "{all:?}");
}

async fn futures_join(n: usize) -> Vec<Result<(), String>> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            tokio::spawn(ping(
                "127.0.0.1".parse().expect("ip"),
                Duration::from_millis(2_000),
            ))
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap_or_else(|e| Err(e.to_string())));
    }
    out
}

#[tokio::test]
async fn ping_an_address_that_does_not_answer_fails_within_its_timeout() {
    for target in [SILENT_V4, SILENT_V6] {
        silent(target.parse().expect("ip")).await;
    }
}

async fn silent(target: IpAddr) {
    let started = Instant::now();
    let result = ping(target, Duration::from_millis(500)).await;
    let took = started.elapsed();
    let detail = match result {
        Ok(()) => panic!("{target} answered a ping"),
        Err(e) if !is_root() && e.starts_with("cannot ping") => {
            skip_or_fail(&format!("not root, and no ICMP socket allowed: {e}"));
            return;
        }
        Err(e) if target.is_ipv6() && e.contains("Address family not supported") => {
            eprintln!("no IPv6 on this node: {target} not pinged ({e})");
            return;
        }
        Err(e) => e,
    };
    eprintln!("{target}: {detail} after {took:?}");
    assert!(took < Duration::from_millis(1_500), "{took:?}");
    // No reply, no route, or a router saying it cannot deliver: all are failures that say so.
    assert!(
        detail == format!("no ICMP echo reply from {target} within 500 ms")
            || detail.starts_with(&format!("no ICMP echo reply from {target}: "))
            || detail.starts_with(&format!("cannot send an ICMP echo request to {target}")),
        "{detail}"
    );
}

#[tokio::test]
async fn ping_over_an_unprivileged_socket_works_or_says_why_not() {
    let result = ping_with(
        "127.0.0.1".parse().expect("ip"),
        Duration::from_millis(1_000),
        PingSocket::Datagram,
    )
    .await;
    match result {
        Ok(()) => {}
        Err(e) => assert!(
            e.starts_with("cannot ping 127.0.0.1: an unprivileged ICMP socket was refused too")
                && e.contains("net.ipv4.ping_group_range is \""),
            "{e}"
        ),
    }
    // And the raw socket alone, as root.
    if is_root() {
        let raw = ping_with(
            "127.0.0.1".parse().expect("ip"),
            Duration::from_millis(1_000),
            PingSocket::Raw,
        )
        .await;
        assert_eq!(raw, Ok(()));
    }
}
