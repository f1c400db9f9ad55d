//! `mirrorkit module check`: its output format and exit status, on real module folders.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn mirrorkit(args: &[&str], dirs: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mirrorkit"))
        .args(args)
        .args(dirs)
        .env("RUST_LOG", "off")
        .output()
        .expect("run mirrorkit")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn module(dir: &Path, toml: &str) {
    fs::create_dir_all(dir).expect("mkdir");
    fs::write(dir.join("module.toml"), toml).expect("write module.toml");
}

fn script(path: &Path, mode: u32) {
    fs::write(path, "#!/bin/sh\nexit 0\n").expect("write script");
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

const BAD: &str = r#"name = "shop"
heartbeat = "fsat"

[[mirror]]
dir = "/srv/shop"
exlude = ["cache"]

[scripts]
start_prim = "start"
stop_prim = "stop"
"#;

#[test]
fn a_bad_module_prints_every_problem_and_exits_1() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("shop");
    module(&dir, BAD);
    script(&dir.join("start"), 0o755);
    script(&dir.join("stop"), 0o644);

    let out = mirrorkit(&["module", "check"], &[&dir]);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", text(&out.stderr));
    let file = dir.join("module.toml");
    let f = file.display();
    let expected = [
        format!("{f}:2:13: heartbeat: unknown heartbeat profile \"fsat\": did you mean \"fast\"? (one of \"default\", \"fast\")"),
        format!("{f}:6:1: mirror[0].exlude: unknown field \"exlude\" in a [[mirror]] section: did you mean \"exclude\"?"),
    ];
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines, expected, "stdout:\n{stdout}");
    assert!(
        text(&out.stderr).contains("2 problems in 1 of 1 module folder"),
        "{}",
        text(&out.stderr)
    );

    // Once the text is right, the files it names are checked: the stop script is not executable.
    module(
        &dir,
        &BAD.replace("fsat", "fast").replace("exlude", "exclude"),
    );
    let out = mirrorkit(&["module", "check"], &[&dir]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stdout),
        format!(
            "{f}:10:13: scripts.stop_prim: stop is not executable: run chmod +x {}\n",
            dir.join("stop").display()
        )
    );

    script(&dir.join("stop"), 0o755);
    let out = mirrorkit(&["module", "check"], &[&dir]);
    assert_eq!(out.status.code(), Some(0), "stdout: {}", text(&out.stdout));
    assert_eq!(
        text(&out.stdout),
        format!("{f}: module \"shop\" is valid: 1 replicated directory, 0 virtual IPs, 2 scripts, 0 checkers\n")
    );
}

#[test]
fn node_names_and_other_modules_are_checked_too() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    module(
        &a,
        "name = \"a\"\ndefault_primary = \"gamma\"\n[[mirror]]\ndir = \"/srv/x\"\n",
    );
    module(&b, "name = \"b\"\n[[mirror]]\ndir = \"/srv/x/y\"\n");

    let out = mirrorkit(&["module", "check", "--nodes", "alpha,beta"], &[&a, &b]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(stdout.contains(&format!(
        "{}:2:19: default_primary: \"gamma\" is not a node of this cluster (its nodes: alpha, beta)",
        a.join("module.toml").display()
    )), "{stdout}");

    let out = mirrorkit(&["module", "check"], &[&a, &b]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with(&format!(
            "{}:3:7: mirror[0].dir: /srv/x/y is inside a directory replicated by module \"a\"",
            b.join("module.toml").display()
        )),
        "{stdout}"
    );
}

#[test]
fn the_shipped_demo_module_is_valid() {
    let demo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../modules/demo");
    let out = mirrorkit(&["module", "check"], &[&demo]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains(
        "module \"demo\" is valid: 1 replicated directory, 1 virtual IP, 2 scripts, 2 checkers"
    ));
}

#[test]
fn a_missing_folder_is_a_problem_not_a_crash() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = mirrorkit(&["module", "check"], &[&tmp.path().join("nope")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("cannot open the module folder"),
        "{}",
        text(&out.stdout)
    );
    let out = mirrorkit(&["module", "check"], &[]);
    assert_eq!(out.status.code(), Some(2), "clap's usage error");
}

#[test]
fn a_valid_module_the_daemon_would_refuse_says_so() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let none = tmp.path().join("none");
    module(&none, "name = \"batch\"\n");
    let two = tmp.path().join("two");
    module(
        &two,
        "name = \"db\"\n[[mirror]]\ndir = \"/srv/db\"\n[[mirror]]\ndir = \"/srv/wal\"\n",
    );
    let out = mirrorkit(&["module", "check"], &[&none, &two]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("module \"batch\" is valid: 0 replicated directories")
            && stdout.contains(
                "at least one [[mirror]] (this one has none); the daemon would not start it"
            ),
        "{stdout}"
    );
    // Several directories run: no warning for them.
    assert!(
        stdout.contains("module \"db\" is valid: 2 replicated directories")
            && stdout.matches("warning:").count() == 1,
        "{stdout}"
    );
}
