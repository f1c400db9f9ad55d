//! The checkers of a module as the daemon runs them: real tasks, real probes, short intervals.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mirrorkit_checkers::{CheckState, CheckerReport, CheckerSet, CheckerStatus, Verdict};
use mirrorkit_module::{CheckAction, Checker, CheckerScope, Probe};
use mirrorkit_scripts::{EventLog, Runner, RunnerOptions, ScriptEnv};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

struct Fixture {
    _dir: tempfile::TempDir,
    module_dir: PathBuf,
    run_dir: PathBuf,
    log: EventLog,
    runner: Arc<Runner>,
}

fn fixture(name: &str) -> Fixture {
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
    Fixture {
        _dir: dir,
        module_dir,
        run_dir,
        log,
        runner,
    }
}

/// A TCP address nothing listens on: bound, then closed.
async fn closed_port() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    l.local_addr().expect("addr")
}

fn tcp_checker(address: std::net::SocketAddr) -> Checker {
    Checker {
        name: "http".into(),
        probe: Probe::Tcp { address },
        interval_ms: 100,
        timeout_ms: 100,
        retries: 1,
        action: CheckAction::Restart,
        max_restarts: 2,
        restart_window_ms: 60_000,
    }
}

async fn next_report(rx: &mut UnboundedReceiver<CheckerReport>, within_ms: u64) -> CheckerReport {
    match tokio::time::timeout(Duration::from_millis(within_ms), rx.recv()).await {
        Ok(Some(r)) => r,
        Ok(None) => panic!("the report channel closed"),
        Err(_) => panic!("no report within {within_ms} ms"),
    }
}

fn status_of(set: &CheckerSet, name: &str) -> CheckerStatus {
    set.status()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no checker {name}"))
}

#[tokio::test]
async fn restarts_up_to_max_restarts_then_failover() {
    let f = fixture("e2e");
    let address = closed_port().await;
    let (tx, mut rx) = unbounded_channel();
    let set = CheckerSet::new(vec![tcp_checker(address)], Arc::clone(&f.runner), tx);
    let st = status_of(&set, "http");
    assert_eq!(
        (st.running, st.state, st.last_result.as_str()),
        (false, CheckState::Off, "not checked yet")
    );

    let started = Instant::now();
    set.set_mode(true, true);
    // Failures at 100 and 200 ms (one interval after the start, then every interval): retries
    // = 1, so the second one acts.
    let first = next_report(&mut rx, 3_000).await;
    assert!(
        started.elapsed() >= Duration::from_millis(190),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        first,
        CheckerReport {
            checker: "http".into(),
            verdict: Verdict::Restart,
            detail: format!("connection to {address} refused"),
        }
    );
    let st = status_of(&set, "http");
    assert_eq!((st.running, st.state), (true, CheckState::Failed));
    assert_eq!(st.restarts_in_window, 1);
    assert_eq!(st.last_result, format!("connection to {address} refused"));
    assert!(st.last_check_unix_ms.is_some());

    // The daemon pauses the application checkers while it restarts the application: the
    // restart history survives.
    set.set_mode(false, true);
    assert_eq!(status_of(&set, "http").state, CheckState::Off);
    set.set_mode(true, true);
    assert_eq!(next_report(&mut rx, 3_000).await.verdict, Verdict::Restart);
    assert_eq!(status_of(&set, "http").restarts_in_window, 2);
    set.set_mode(false, true);
    set.set_mode(true, true);
    // max_restarts = 2 used up: the third action is a failover, and it stays one.
    assert_eq!(next_report(&mut rx, 3_000).await.verdict, Verdict::Failover);
    assert_eq!(next_report(&mut rx, 3_000).await.verdict, Verdict::Failover);

    // Stopped: what was sent before set_mode returned may still be queued; nothing after.
    set.set_mode(false, false);
    while let Ok(r) = rx.try_recv() {
        assert_eq!(r.verdict, Verdict::Failover);
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(rx.try_recv().is_err(), "a stopped checker reported");
    let st = status_of(&set, "http");
    assert_eq!((st.running, st.state), (false, CheckState::Off));
    assert_eq!(st.restarts_in_window, 2);

    // What the operator reads in the event log.
    let texts: Vec<String> = f
        .log
        .tail(100)
        .expect("log")
        .into_iter()
        .map(|e| e.text)
        .collect();
    assert!(
        texts.iter().any(|t| t
            == &format!("checker http failed: connection to {address} refused (failure 1 of 2 in a row before it acts)")),
        "{texts:#?}"
    );
    assert!(
        texts.iter().any(|t| t.starts_with(&format!(
            "checker http failed 2 times in a row (connection to {address} refused): asks for a restart of the application (restart 1 of at most 2"
        ))),
        "{texts:#?}"
    );
    assert!(
        texts.iter().any(|t| t.ends_with("asks for a failover")),
        "{texts:#?}"
    );
}

#[tokio::test]
async fn a_recovering_application_is_not_acted_on() {
    let f = fixture("recover");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("addr");
    let (tx, mut rx) = unbounded_channel();
    let mut c = tcp_checker(address);
    c.retries = 100;
    let set = CheckerSet::new(vec![c], Arc::clone(&f.runner), tx);
    set.set_mode(true, false);
    let ok = async {
        loop {
            if status_of(&set, "http").last_result == "ok" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(3), ok)
        .await
        .expect("a passing check");
    assert_eq!(status_of(&set, "http").state, CheckState::Ok);
    drop(listener);
    let failing = async {
        loop {
            let st = status_of(&set, "http");
            if st.consecutive_failures >= 2 {
                return st;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let st = tokio::time::timeout(Duration::from_secs(3), failing)
        .await
        .expect("failures");
    assert_eq!(st.state, CheckState::Failing);
    assert!(rx.try_recv().is_err());
}

#[tokio::test]
async fn node_checkers_run_alone_and_report_a_problem_once() {
    let f = fixture("node");
    let (tx, mut rx) = unbounded_channel();
    let nic = Checker {
        name: "uplink".into(),
        probe: Probe::Interface {
            interface: "mkchk-none0".into(),
        },
        interval_ms: 100,
        timeout_ms: 100,
        retries: 2,
        action: CheckAction::Failover,
        max_restarts: 3,
        restart_window_ms: 600_000,
    };
    let lo = Checker {
        name: "lo".into(),
        probe: Probe::Interface {
            interface: "lo".into(),
        },
        ..nic.clone()
    };
    let app = tcp_checker(closed_port().await);
    let set = CheckerSet::new(vec![app, nic, lo], Arc::clone(&f.runner), tx);
    // A secondary: node checkers only.
    let started = Instant::now();
    set.set_mode(false, true);
    let r = next_report(&mut rx, 3_000).await;
    // The first check at once, then every 100 ms: the third failure comes at about 200 ms.
    assert!(started.elapsed() < Duration::from_millis(1_500));
    assert_eq!(
        r,
        CheckerReport {
            checker: "uplink".into(),
            verdict: Verdict::NodeProblem("interface mkchk-none0 does not exist".into()),
            detail: "interface mkchk-none0 does not exist".into(),
        }
    );
    assert_eq!(
        set.node_problems(),
        [(
            "uplink".to_owned(),
            "interface mkchk-none0 does not exist".to_owned()
        )]
    );
    // The problem stands: not reported again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(rx.try_recv().is_err());
    let status = set.status();
    let summary: Vec<(&str, CheckerScope, bool, CheckState)> = status
        .iter()
        .map(|s| (s.name.as_str(), s.scope, s.running, s.state))
        .collect();
    assert_eq!(
        summary,
        [
            ("http", CheckerScope::Application, false, CheckState::Off),
            ("uplink", CheckerScope::Node, true, CheckState::Failed),
            ("lo", CheckerScope::Node, true, CheckState::Ok),
        ]
    );
    assert_eq!(status[2].last_result, "ok");
    // The status is what the CLI and the console read, as JSON.
    let json = serde_json::to_string(&status[1]).expect("json");
    assert!(json.contains("\"scope\":\"node\""), "{json}");
    assert!(json.contains("\"state\":\"failed\""), "{json}");
    let back: CheckerStatus = serde_json::from_str(&json).expect("parse");
    assert_eq!(back, status[1]);

    // Turned off: the problem is forgotten; turned on again, it is reported afresh.
    set.set_mode(false, false);
    assert!(set.node_problems().is_empty());
    set.set_mode(false, true);
    assert!(matches!(
        next_report(&mut rx, 3_000).await.verdict,
        Verdict::NodeProblem(_)
    ));
}

#[tokio::test]
async fn stopping_kills_a_running_checker_script() {
    let f = fixture("stop");
    let path = f.module_dir.join("check");
    fs::write(
        &path,
        "#!/bin/sh\necho $$ > \"$MIRRORKIT_RUN_DIR/pid\"\nexec sleep 100\n",
    )
    .expect("write");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
    let (tx, _rx) = unbounded_channel();
    let c = Checker {
        name: "deep".into(),
        probe: Probe::Script {
            path: "check".into(),
        },
        interval_ms: 1_000,
        timeout_ms: 1_000,
        retries: 0,
        action: CheckAction::Failover,
        max_restarts: 3,
        restart_window_ms: 600_000,
    };
    let set = CheckerSet::new(vec![c], Arc::clone(&f.runner), tx);
    set.set_mode(true, false);
    let pid_file = f.run_dir.join("pid");
    let started = async {
        loop {
            if let Some(pid) = fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
            {
                return pid;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let pid = tokio::time::timeout(Duration::from_secs(5), started)
        .await
        .expect("the checker script started");
    let stopped = Instant::now();
    set.set_mode(false, false);
    let gone = async {
        while Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), gone)
        .await
        .expect("the checker script is killed");
    // Killed by the stop, well before its own 1 s timeout would have.
    assert!(
        stopped.elapsed() < Duration::from_millis(800),
        "{:?}",
        stopped.elapsed()
    );
}

fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
    })
}

#[tokio::test]
async fn dropping_the_set_stops_its_checkers() {
    let f = fixture("drop");
    let (tx, mut rx) = unbounded_channel();
    let mut c = tcp_checker(closed_port().await);
    c.retries = 0;
    let set = CheckerSet::new(vec![c], Arc::clone(&f.runner), tx);
    set.set_mode(true, true);
    let clone = set.clone();
    drop(set);
    // A clone keeps them running.
    assert_eq!(next_report(&mut rx, 3_000).await.verdict, Verdict::Restart);
    drop(clone);
    // The tasks held the only sender: once they are gone the channel closes.
    let closed = tokio::time::timeout(Duration::from_secs(3), async {
        while rx.recv().await.is_some() {}
    })
    .await;
    assert!(closed.is_ok(), "the checker tasks outlived their set");
}
