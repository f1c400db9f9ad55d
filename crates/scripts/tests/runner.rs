//! The runner against real processes: small shell scripts written into a temporary module folder.
//!
//! Robust on a loaded machine: waits poll with generous deadlines, never sleep a fixed time.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mirrorkit_module::{Script, ScriptKind, SCRIPT_DEFAULT_PATH, SCRIPT_ENV_VARS};
use mirrorkit_scripts::{
    EventLog, KillMechanism, Runner, RunnerOptions, ScriptEnv, ScriptFailure, ScriptRole,
};

/// Variables a shell adds to its own environment (dash: PWD; bash also SHLVL and _): not the
/// daemon's doing.
const SHELL_VARS: &[&str] = &["PWD", "SHLVL", "_", "OLDPWD"];

struct Fixture {
    _dir: tempfile::TempDir,
    module_dir: PathBuf,
    run_dir: PathBuf,
    log: EventLog,
    runner: Runner,
}

fn fixture(name: &str, use_cgroup: bool, env: &[(&str, &str)]) -> Fixture {
    fixture_with(name, use_cgroup, env, 5_000)
}

fn fixture_with(name: &str, use_cgroup: bool, env: &[(&str, &str)], grace_ms: u64) -> Fixture {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = tempfile::tempdir().unwrap();
    // Unique per test and per test process: the cgroup name is made of it.
    let module = format!(
        "t{}-{}-{name}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let module_dir = dir.path().join("modules").join(name);
    fs::create_dir_all(&module_dir).unwrap();
    let run_dir = dir.path().join("run").join(&module);
    let log = EventLog::open(&dir.path().join("state").join(&module).join("events.log")).unwrap();
    let script_env = ScriptEnv {
        module,
        node: "alpha".to_owned(),
        module_dir: module_dir.clone(),
        run_dir: run_dir.clone(),
        vips: vec!["192.0.2.10".to_owned(), "2001:db8::10".to_owned()],
        mirror_dirs: vec![dir.path().join("data/one"), dir.path().join("data/two")],
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    };
    let options = RunnerOptions {
        kill_grace_ms: grace_ms,
        use_cgroup,
        cgroup_scope: None,
    };
    let runner = Runner::with_options(script_env, log.clone(), options).unwrap();
    Fixture {
        _dir: dir,
        module_dir,
        run_dir,
        log,
        runner,
    }
}

impl Fixture {
    /// A `/bin/sh` script named `name` in the module folder, executable, with a 10 s timeout.
    fn script(&self, name: &str, body: &str) -> Script {
        let path = self.module_dir.join(name);
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        Script {
            path: PathBuf::from(name),
            timeout_ms: 10_000,
        }
    }

    async fn run_one(
        &self,
        kind: ScriptKind,
        script: Script,
        role: ScriptRole,
    ) -> Result<(), ScriptFailure> {
        self.runner.run(&[(kind, script)], role).await
    }

    fn log_texts(&self) -> Vec<String> {
        self.log
            .tail(10_000)
            .unwrap()
            .into_iter()
            .map(|e| e.text)
            .collect()
    }

    fn read_pid(&self, file: &str) -> i32 {
        fs::read_to_string(self.run_dir.join(file))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

/// Whether `f` becomes true within `deadline_ms`, polling.
fn eventually(deadline_ms: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_millis(deadline_ms);
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Gone, or a zombie that its (foreign) parent has not reaped yet.
fn is_gone(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

fn cgroup_expected() -> bool {
    let is_root = fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    let has_cgroup2 = fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.contains(" - cgroup2 "));
    is_root && has_cgroup2
}

#[tokio::test]
async fn environment_is_exactly_the_documented_one() {
    let f = fixture("envcheck", true, &[("SHOP_PORT", "8080"), ("EMPTY", "")]);
    let script = f.script(
        "start_prim",
        r#"/usr/bin/env -0 > "$MIRRORKIT_RUN_DIR/env"
pwd > "$MIRRORKIT_RUN_DIR/cwd"
if read line; then echo "stdin not empty" >&2; exit 1; fi"#,
    );
    f.run_one(ScriptKind::StartPrim, script, ScriptRole::Primary)
        .await
        .unwrap();

    let raw = fs::read(f.run_dir.join("env")).unwrap();
    let mut seen: BTreeMap<String, String> = String::from_utf8(raw)
        .unwrap()
        .split('\0')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect();
    if let Some(pwd) = seen.get("PWD") {
        assert_eq!(Path::new(pwd), f.module_dir);
    }
    seen.retain(|k, _| !SHELL_VARS.contains(&k.as_str()));

    let env = f.runner.env();
    let mirrors = &env.mirror_dirs;
    let expected: BTreeMap<String, String> = [
        ("PATH", SCRIPT_DEFAULT_PATH.to_owned()),
        ("SHOP_PORT", "8080".to_owned()),
        ("EMPTY", String::new()),
        ("MIRRORKIT_MODULE", env.module.clone()),
        ("MIRRORKIT_NODE", "alpha".to_owned()),
        ("MIRRORKIT_ROLE", "primary".to_owned()),
        ("MIRRORKIT_SCRIPT", "start_prim".to_owned()),
        ("MIRRORKIT_RUN_DIR", f.run_dir.display().to_string()),
        ("MIRRORKIT_VIP", "192.0.2.10 2001:db8::10".to_owned()),
        ("MIRRORKIT_MIRROR_DIR", mirrors[0].display().to_string()),
        (
            "MIRRORKIT_MIRROR_DIRS",
            format!("{}\n{}", mirrors[0].display(), mirrors[1].display()),
        ),
        ("MIRRORKIT_MODULE_DIR", f.module_dir.display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(seen, expected);
    // Every documented variable but the checker's is set for a script.
    for var in SCRIPT_ENV_VARS {
        assert_eq!(
            seen.contains_key(*var),
            *var != "MIRRORKIT_CHECKER",
            "{var}"
        );
    }
    // Nothing of the test's own environment (HOME, cargo's variables...) leaked in.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        assert!(
            expected.contains_key(&*name) || !seen.contains_key(&*name),
            "{name}"
        );
    }

    let cwd = fs::read_to_string(f.run_dir.join("cwd")).unwrap();
    assert_eq!(Path::new(cwd.trim()), f.module_dir);
    let mode = fs::metadata(&f.run_dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[tokio::test]
async fn env_may_set_path_and_roles_are_spelled_out() {
    let f = fixture(
        "pathset",
        false,
        &[("PATH", "/opt/custom/bin:/usr/bin:/bin")],
    );
    let script = f.script(
        "prestart",
        r#"echo "$PATH $MIRRORKIT_ROLE $MIRRORKIT_SCRIPT" >> "$MIRRORKIT_RUN_DIR/seen""#,
    );
    for role in [ScriptRole::None, ScriptRole::Secondary] {
        f.run_one(ScriptKind::Prestart, script.clone(), role)
            .await
            .unwrap();
    }
    let seen = fs::read_to_string(f.run_dir.join("seen")).unwrap();
    assert_eq!(
        seen,
        "/opt/custom/bin:/usr/bin:/bin none prestart\n/opt/custom/bin:/usr/bin:/bin secondary prestart\n"
    );
}

#[tokio::test]
async fn batch_runs_in_order_and_stops_at_the_first_failure() {
    let f = fixture("order", true, &[]);
    let record = r#"echo "$MIRRORKIT_SCRIPT" >> "$MIRRORKIT_RUN_DIR/order""#;
    let ok = f.script("ok", record);
    let failing = f.script(
        "failing",
        &format!(
            "{record}\nfor i in 1 2 3 4 5 6 7 8; do echo \"err $i\" >&2; done\necho out\nexit 3"
        ),
    );
    let batch = [
        (ScriptKind::Prestart, ok.clone()),
        (ScriptKind::StartBoth, failing),
        (ScriptKind::StartPrim, ok.clone()),
    ];
    let failure = f.runner.run(&batch, ScriptRole::Primary).await.unwrap_err();
    assert_eq!(
        fs::read_to_string(f.run_dir.join("order")).unwrap(),
        "prestart\nstart_both\n"
    );
    assert_eq!(failure.script, ScriptKind::StartBoth);
    assert_eq!(failure.exit_status, Some(3));
    let path = f.module_dir.join("failing");
    assert_eq!(
        failure.detail,
        format!(
            "start_both ({}) exited with status 3: err 4 | err 5 | err 6 | err 7 | err 8",
            path.display()
        )
    );
    assert_eq!(failure.to_string(), failure.detail);
    assert!(f.log_texts().contains(&failure.detail));

    // Without standard error, the last lines of standard output are quoted.
    let quiet = f.script("quiet", "echo 'no such thing'\nexit 1");
    let failure = f
        .run_one(ScriptKind::StopPrim, quiet, ScriptRole::Primary)
        .await
        .unwrap_err();
    assert!(failure
        .detail
        .ends_with("exited with status 1: no such thing"));

    // A batch of successes succeeds.
    fs::remove_file(f.run_dir.join("order")).unwrap();
    let batch = [
        (ScriptKind::StopBoth, ok.clone()),
        (ScriptKind::Poststop, ok),
    ];
    f.runner.run(&batch, ScriptRole::Secondary).await.unwrap();
    assert_eq!(
        fs::read_to_string(f.run_dir.join("order")).unwrap(),
        "stop_both\npoststop\n"
    );
    f.runner.run(&[], ScriptRole::None).await.unwrap();
}

#[tokio::test]
async fn output_lines_reach_the_event_log() {
    let f = fixture("output", true, &[]);
    let script = f.script(
        "start_prim",
        "echo hello\necho oops >&2\nprintf 'no newline at the end'",
    );
    f.run_one(ScriptKind::StartPrim, script, ScriptRole::Primary)
        .await
        .unwrap();
    let texts = f.log_texts();
    for want in [
        "start_prim stdout: hello",
        "start_prim stderr: oops",
        "start_prim stdout: no newline at the end",
    ] {
        assert!(texts.iter().any(|t| t == want), "{want} not in {texts:?}");
    }
    assert!(
        texts[0].starts_with("start_prim (")
            && texts[0].ends_with("starts (role primary, timeout 10 s)")
    );
    assert!(texts
        .last()
        .unwrap()
        .starts_with("start_prim succeeded in "));
}

#[tokio::test]
async fn a_timed_out_script_gets_sigterm() {
    let f = fixture("term", true, &[]);
    let mut script = f.script("start_prim", "echo waiting\nsleep 100");
    script.timeout_ms = 300;
    let started = Instant::now();
    let failure = f
        .run_one(ScriptKind::StartPrim, script, ScriptRole::Primary)
        .await
        .unwrap_err();
    // SIGTERM was enough: no wait for the 5 s grace.
    assert!(
        started.elapsed() < Duration::from_millis(4_000),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(failure.exit_status, None);
    assert!(
        failure
            .detail
            .ends_with("timed out after 300 ms: stopped with SIGTERM: waiting"),
        "{}",
        failure.detail
    );
}

#[tokio::test]
async fn a_script_that_ignores_sigterm_gets_sigkill_after_the_grace() {
    let f = fixture_with("kill", false, &[], 300);
    let mut script = f.script(
        "stop_prim",
        "trap 'echo got TERM' TERM\necho $$ > \"$MIRRORKIT_RUN_DIR/pid\"\nwhile :; do sleep 0.05; done",
    );
    script.timeout_ms = 300;
    let started = Instant::now();
    let failure = f
        .run_one(ScriptKind::StopPrim, script, ScriptRole::Primary)
        .await
        .unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(600));
    assert!(
        failure.detail.contains(
            "timed out after 300 ms: still running 300 ms after SIGTERM: killed with SIGKILL"
        ),
        "{}",
        failure.detail
    );
    // The script saw the SIGTERM (its trap ran) before the SIGKILL.
    assert!(f
        .log_texts()
        .iter()
        .any(|t| t == "stop_prim stdout: got TERM"));
    assert!(is_gone(f.read_pid("pid")));
}

async fn background_process_is_found_by_kill_all(f: &Fixture) {
    let script = f.script(
        "start_prim",
        "sleep 1000 &\necho $! > \"$MIRRORKIT_RUN_DIR/app.pid\"\necho started",
    );
    let started = Instant::now();
    f.run_one(ScriptKind::StartPrim, script, ScriptRole::Primary)
        .await
        .unwrap();
    // The sleep holds the script's stdout and stderr open: the run did not wait for it.
    assert!(
        started.elapsed() < Duration::from_millis(3_000),
        "{:?}",
        started.elapsed()
    );
    assert!(f
        .log_texts()
        .iter()
        .any(|t| t == "start_prim stdout: started"));
    let pid = f.read_pid("app.pid");
    assert!(!is_gone(pid));

    assert!(f.runner.kill_all() >= 1);
    assert!(
        eventually(5_000, || is_gone(pid)),
        "pid {pid} survived kill_all"
    );
    assert!(f
        .log_texts()
        .last()
        .unwrap()
        .starts_with("killed 1 process of the module with SIGKILL"));
    // Nothing left: a second call kills nothing.
    assert_eq!(f.runner.kill_all(), 0);
}

#[tokio::test]
async fn kill_all_with_a_cgroup() {
    let f = fixture("cgroup", true, &[]);
    let KillMechanism::Cgroup(cgroup) = f.runner.kill_mechanism() else {
        assert!(
            !cgroup_expected(),
            "root with cgroup2 mounted, yet no cgroup"
        );
        eprintln!("no cgroup v2 usable here: the cgroup path is not tested");
        return;
    };
    assert!(cgroup.ends_with(format!("mirrorkit/alpha-{}", f.runner.env().module)));
    background_process_is_found_by_kill_all(&f).await;

    // A process that detaches into a session of its own stays in the cgroup.
    let script = f.script(
        "start_prim",
        "setsid sleep 1000 </dev/null >/dev/null 2>&1 &\n\
         echo $! > \"$MIRRORKIT_RUN_DIR/app.pid\"",
    );
    f.run_one(ScriptKind::StartPrim, script, ScriptRole::Primary)
        .await
        .unwrap();
    // `setsid` forks when it is a group leader: find the sleep in the cgroup.
    let mut sleeper = None;
    assert!(eventually(5_000, || {
        sleeper = fs::read_to_string(cgroup.join("cgroup.procs"))
            .unwrap()
            .lines()
            .filter_map(|l| l.parse::<i32>().ok())
            .find(|pid| {
                fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
            });
        sleeper.is_some()
    }));
    let pid = sleeper.unwrap();
    let own_session = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    assert!(
        own_session.contains(&format!(" {pid} {pid} ")),
        "{own_session}"
    );
    assert!(f.runner.kill_all() >= 1);
    assert!(eventually(5_000, || is_gone(pid)));

    // The empty cgroup is removed with its runner.
    drop(f);
    assert!(!cgroup.exists());
}

#[tokio::test]
async fn kill_all_with_process_groups() {
    let f = fixture("pgroups", false, &[]);
    assert_eq!(f.runner.kill_mechanism(), KillMechanism::ProcessGroups);
    background_process_is_found_by_kill_all(&f).await;
}

#[tokio::test]
async fn scripts_that_cannot_start_fail_clearly() {
    let f = fixture("broken", true, &[]);
    let missing = Script {
        path: PathBuf::from("nope"),
        timeout_ms: 1_000,
    };
    let failure = f
        .run_one(ScriptKind::StartPrim, missing, ScriptRole::Primary)
        .await
        .unwrap_err();
    assert_eq!(
        failure.detail,
        format!(
            "start_prim ({}) could not be started: no such file",
            f.module_dir.join("nope").display()
        )
    );
    assert_eq!(failure.exit_status, None);

    let not_executable = f.script("stop_prim", "exit 0");
    let path = f.module_dir.join("stop_prim");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let failure = f
        .run_one(ScriptKind::StopPrim, not_executable, ScriptRole::Primary)
        .await
        .unwrap_err();
    assert!(
        failure.detail.starts_with(&format!(
            "stop_prim ({}) could not be started: permission denied",
            path.display()
        )),
        "{}",
        failure.detail
    );

    let bad_interpreter = f.script("poststop", "exit 0");
    fs::write(
        f.module_dir.join("poststop"),
        "#!/nonexistent/interpreter\nexit 0\n",
    )
    .unwrap();
    let failure = f
        .run_one(ScriptKind::Poststop, bad_interpreter, ScriptRole::None)
        .await
        .unwrap_err();
    assert!(
        failure
            .detail
            .ends_with("its interpreter (the #! line) was not found"),
        "{}",
        failure.detail
    );
    // A script that could not start is not a reason to give up the cgroup.
    if cgroup_expected() {
        assert!(matches!(
            f.runner.kill_mechanism(),
            KillMechanism::Cgroup(_)
        ));
    }
}

#[tokio::test]
async fn a_script_killed_by_a_signal_says_so() {
    let f = fixture("signal", true, &[]);
    let script = f.script("start_both", "kill -KILL $$");
    let failure = f
        .run_one(ScriptKind::StartBoth, script, ScriptRole::Secondary)
        .await
        .unwrap_err();
    assert!(
        failure.detail.ends_with("was killed by signal 9 (SIGKILL)"),
        "{}",
        failure.detail
    );
    assert_eq!(failure.exit_status, None);
}

#[tokio::test]
async fn clear_run_dir_empties_it_without_following_links() {
    let f = fixture("clear", true, &[]);
    let outside = f.module_dir.join("keep.txt");
    fs::write(&outside, "kept").unwrap();
    fs::write(f.run_dir.join("app.pid"), "1").unwrap();
    fs::create_dir_all(f.run_dir.join("sub/deeper")).unwrap();
    fs::write(f.run_dir.join("sub/deeper/file"), "x").unwrap();
    std::os::unix::fs::symlink(&f.module_dir, f.run_dir.join("link")).unwrap();
    f.runner.clear_run_dir().unwrap();
    assert_eq!(fs::read_dir(&f.run_dir).unwrap().count(), 0);
    assert_eq!(fs::read_to_string(&outside).unwrap(), "kept");
    // A run dir removed behind the daemon's back comes back.
    fs::remove_dir(&f.run_dir).unwrap();
    f.runner.clear_run_dir().unwrap();
    assert!(f.run_dir.is_dir());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_is_shared_between_tasks() {
    let f = fixture("shared", true, &[]);
    let script = f.script("start_both", "echo shared");
    let runner = Arc::new(f.runner);
    let task = {
        let runner = Arc::clone(&runner);
        tokio::spawn(async move {
            runner
                .run(&[(ScriptKind::StartBoth, script)], ScriptRole::Secondary)
                .await
        })
    };
    task.await.unwrap().unwrap();
    assert!(f
        .log
        .tail(10)
        .unwrap()
        .iter()
        .any(|e| e.text == "start_both stdout: shared"));
}

#[tokio::test]
async fn a_checker_script_sees_its_name_and_keeps_its_output_only_when_it_fails() {
    let f = fixture("checker", true, &[("SHOP_PORT", "8080")]);
    f.script(
        "check",
        r#"echo "$MIRRORKIT_SCRIPT $MIRRORKIT_CHECKER $MIRRORKIT_ROLE $SHOP_PORT" > "$MIRRORKIT_RUN_DIR/seen"
echo "checking"
[ ! -e "$MIRRORKIT_RUN_DIR/broken" ] || { echo "db not ready" >&2; exit 1; }"#,
    );
    f.runner
        .run_checker("deep", Path::new("check"), 2_000)
        .await
        .unwrap();
    assert_eq!(
        fs::read_to_string(f.run_dir.join("seen")).unwrap(),
        "checker deep primary 8080\n"
    );
    // A passing check leaves nothing in the event log.
    assert!(f.log_texts().is_empty(), "{:?}", f.log_texts());

    fs::write(f.run_dir.join("broken"), "").unwrap();
    let detail = f
        .runner
        .run_checker("deep", Path::new("check"), 2_000)
        .await
        .unwrap_err();
    assert_eq!(
        detail,
        format!(
            "{} exited with status 1: db not ready",
            f.module_dir.join("check").display()
        )
    );
    // Two pipes: their lines may come in either order.
    let mut texts = f.log_texts();
    texts.sort();
    assert_eq!(
        texts,
        [
            "checker deep stderr: db not ready",
            "checker deep stdout: checking"
        ]
    );
}

#[tokio::test]
async fn a_checker_script_is_killed_at_its_timeout() {
    let f = fixture("checkhang", false, &[]);
    f.script(
        "hang",
        "echo $$ > \"$MIRRORKIT_RUN_DIR/pid\"\nsleep 100 &\necho $! > \"$MIRRORKIT_RUN_DIR/child\"\ntrap '' TERM\necho hanging\nwait",
    );
    let started = Instant::now();
    let detail = f
        .runner
        .run_checker("hang", Path::new("hang"), 300)
        .await
        .unwrap_err();
    // SIGKILL at once: no grace after the timeout.
    assert!(
        started.elapsed() < Duration::from_millis(2_000),
        "{:?}",
        started.elapsed()
    );
    assert!(
        detail.ends_with("timed out after 300 ms: killed with SIGKILL: hanging"),
        "{detail}"
    );
    assert!(eventually(5_000, || is_gone(f.read_pid("pid"))));
    // The whole process group.
    assert!(eventually(5_000, || is_gone(f.read_pid("child"))));
}

#[tokio::test]
async fn a_checker_stopped_mid_check_kills_its_script() {
    let f = fixture("checkabort", false, &[]);
    f.script(
        "slow",
        "echo $$ > \"$MIRRORKIT_RUN_DIR/pid\"\nsleep 100 &\necho $! > \"$MIRRORKIT_RUN_DIR/child\"\nwait",
    );
    let run = f.runner.run_checker("slow", Path::new("slow"), 60_000);
    // Run until both pids are written, then drop the check.
    let dropped = tokio::time::timeout(Duration::from_millis(10_000), async {
        tokio::pin!(run);
        loop {
            tokio::select! {
                r = &mut run => return Err(r),
                () = tokio::time::sleep(Duration::from_millis(20)) => {
                    if f.run_dir.join("child").is_file()
                        && !fs::read_to_string(f.run_dir.join("child")).unwrap().is_empty()
                    {
                        return Ok(());
                    }
                }
            }
        }
    })
    .await;
    assert!(matches!(dropped, Ok(Ok(()))), "{dropped:?}");
    let (pid, child) = (f.read_pid("pid"), f.read_pid("child"));
    assert!(eventually(5_000, || is_gone(pid)), "script {pid} survived");
    assert!(
        eventually(5_000, || is_gone(child)),
        "child {child} survived"
    );
}

#[tokio::test]
async fn a_checker_script_that_cannot_start_says_why() {
    let f = fixture("checkmissing", false, &[]);
    let detail = f
        .runner
        .run_checker("c", Path::new("nope"), 1_000)
        .await
        .unwrap_err();
    assert_eq!(
        detail,
        format!(
            "{} could not be started: no such file",
            f.module_dir.join("nope").display()
        )
    );
}
