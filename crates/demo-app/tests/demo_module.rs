//! The demo module's scripts (`modules/demo/start_prim`, `stop_prim`) start and stop this
//! application as the daemon will run them: with the environment of docs/modules.md.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../modules/demo")
        .join(name)
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("address").port()
}

struct Env {
    run: PathBuf,
    data: PathBuf,
    listen: String,
}

fn run(name: &str, env: &Env) -> Output {
    let out = Command::new(script(name))
        .current_dir(script(""))
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("MIRRORKIT_MODULE", "demo")
        .env("MIRRORKIT_NODE", "alpha")
        .env("MIRRORKIT_ROLE", "primary")
        .env("MIRRORKIT_RUN_DIR", &env.run)
        .env("MIRRORKIT_VIP", "192.0.2.80")
        .env("MIRRORKIT_MIRROR_DIR", &env.data)
        .env("MIRRORKIT_MODULE_DIR", script(""))
        .env("DEMO_LISTEN", &env.listen)
        .env("DEMO_APP", env!("CARGO_BIN_EXE_mirrorkit-demo-app"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
    eprintln!(
        "{name}: {}\nstdout: {}stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn pid_of(env: &Env) -> Option<u32> {
    std::fs::read_to_string(env.run.join("demo-app.pid"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

fn alive(pid: u32) -> bool {
    // A zombie (exited, not yet reaped) has an empty command line.
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
}

fn post_note(addr: &str, note: &str) -> String {
    let addr: SocketAddr = addr.parse().expect("address");
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        c,
        "POST /notes HTTP/1.1\r\nContent-Length: {}\r\n\r\n{note}",
        note.len()
    )
    .expect("send");
    let mut answer = String::new();
    c.read_to_string(&mut answer).expect("answer");
    answer
}

fn setup(base: &Path) -> Env {
    let env = Env {
        run: base.join("run"),
        data: base.join("data"),
        listen: format!("127.0.0.1:{}", free_port()),
    };
    std::fs::create_dir(&env.data).expect("mkdir data");
    env
}

#[test]
fn start_prim_starts_the_application_and_stop_prim_stops_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let env = setup(tmp.path());

    let out = run("start_prim", &env);
    assert!(out.status.success());
    let pid = pid_of(&env).expect("start_prim wrote the pid file");
    assert!(alive(pid));
    assert!(post_note(&env.listen, "kept across the switchover").starts_with("HTTP/1.1 201"));
    assert_eq!(
        std::fs::read_to_string(env.data.join("notes.log")).expect("notes in the data dir"),
        "kept across the switchover\n"
    );

    // Starting again is harmless: the same process keeps running.
    let out = run("start_prim", &env);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("already runs"));
    assert_eq!(pid_of(&env), Some(pid));

    let out = run("stop_prim", &env);
    assert!(out.status.success());
    assert!(!alive(pid), "pid {pid} still runs after stop_prim");
    assert_eq!(pid_of(&env), None);

    // Stopping what is not running is harmless too.
    let out = run("stop_prim", &env);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("not running"));
}

#[test]
fn start_prim_fails_clearly_when_the_application_cannot_start() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut env = setup(tmp.path());
    env.data = tmp.path().join("not-created");
    let out = run("start_prim", &env);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exited while starting"), "{err}");
    assert!(
        err.contains("does not exist"),
        "the log's end names the cause: {err}"
    );
    assert_eq!(pid_of(&env), None);
}

#[test]
fn stop_prim_ignores_a_stale_pid_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let env = setup(tmp.path());
    std::fs::create_dir_all(&env.run).expect("mkdir run");
    // PID 1 is alive but is not the demo application: it must not be signalled.
    std::fs::write(env.run.join("demo-app.pid"), "1\n").expect("write");
    let out = run("stop_prim", &env);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("had already stopped"));
    assert_eq!(pid_of(&env), None);
}
