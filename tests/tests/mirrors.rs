//! A module with several `[[mirror]]` directories, through the real daemon in network
//! namespaces: each directory has its own engine, and the module's data is one whole. It fails
//! over, resyncs and swaps with every directory; it is in sync only when every directory is, so
//! that a secondary whose resync of one directory is unfinished never takes over.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mirrorkit_module::MirrorFilter;
use mirrorkit_tests::lab::{ok, require_lab, Lab, LabModule};
use mirrorkit_tests::tree;

const BOOT: Duration = Duration::from_secs(90);
const MOVE: Duration = Duration::from_secs(60);

/// The second replicated directory of the lab's module, as declared.
fn logs_declared(m: &LabModule) -> String {
    format!("/var/lib/mirrorkit-lab/{}-logs", m.name)
}

/// A demo module with a second `[[mirror]]` (`scratch` excluded there) and `extra` TOML.
fn two_mirrors(extra: &str) -> LabModule {
    let mut m = LabModule {
        default_primary: Some("alpha".into()),
        ..LabModule::demo("demo", 8080, 80)
    };
    m.extra = format!(
        "{extra}\n[[mirror]]\ndir = \"{}\"\nexclude = [\"scratch\"]\n",
        logs_declared(&m)
    );
    m
}

/// The second directory on node `i` (created if missing).
fn logs_dir(lab: &Lab, i: usize, m: &LabModule) -> PathBuf {
    let d = lab.nodes[i]
        .base
        .join("data")
        .join(logs_declared(m).trim_start_matches('/'));
    std::fs::create_dir_all(&d).expect("second mirror directory");
    d
}

/// A lab running module `m` with both directories made: alpha primary, beta secondary.
fn started(m: &LabModule) -> Lab {
    let mut lab = Lab::new(vec![m.clone()]);
    for i in 0..2 {
        logs_dir(&lab, i, m);
    }
    lab.start(0);
    lab.start(1);
    lab.wait_states("demo", [Some("PRIM"), Some("SECOND")], BOOT);
    lab
}

fn without_scratch() -> MirrorFilter {
    MirrorFilter::from_patterns(&["**".to_string()], &["scratch".to_string()]).expect("patterns")
}

/// Both directories identical on the two nodes (`scratch` of the second one aside).
fn assert_identical(lab: &Lab, m: &LabModule, what: &str) {
    tree::compare(&lab.data_dir(0, m), &lab.data_dir(1, m), 20)
        .unwrap_or_else(|d| panic!("first directory, {what}: {d}"));
    tree::compare_selected(
        &logs_dir(lab, 0, m),
        &logs_dir(lab, 1, m),
        20,
        &without_scratch(),
        tree::CompareOpts::default(),
    )
    .unwrap_or_else(|d| panic!("second directory, {what}: {d}"));
}

#[test]
fn a_module_with_two_mirrors_fails_over_resyncs_and_swaps() {
    if !require_lab("a_module_with_two_mirrors_fails_over_resyncs_and_swaps") {
        return;
    }
    let m = two_mirrors("");
    let mut lab = started(&m);
    let status = lab.status(0).expect("status");
    let mirror = status["modules"][0]["mirror"].as_str().unwrap_or_default();
    assert!(
        mirror.contains(&logs_declared(&m)) && mirror.matches("in-sync").count() == 2,
        "the status shows each mirror: {mirror}"
    );

    // Writes reach the secondary in both directories, synchronously.
    let logs = logs_dir(&lab, 0, &m);
    std::fs::write(logs.join("a.log"), vec![b'a'; 1 << 20]).expect("write a.log");
    std::fs::create_dir_all(logs.join("scratch")).expect("mkdir scratch");
    std::fs::write(logs.join("scratch/tmp"), b"node-local").expect("write scratch/tmp");
    std::fs::write(lab.data_dir(0, &m).join("first.txt"), b"first").expect("write first.txt");
    assert_eq!(
        std::fs::read(logs_dir(&lab, 1, &m).join("a.log"))
            .expect("a.log on the secondary")
            .len(),
        1 << 20
    );
    assert!(!logs_dir(&lab, 1, &m).join("scratch/tmp").exists());
    assert_identical(&lab, &m, "in sync");

    // Failover: beta takes over with both directories.
    lab.kill9(0);
    lab.wait_states("demo", [None, Some("ALONE")], MOVE);
    let logs1 = logs_dir(&lab, 1, &m);
    assert_eq!(
        std::fs::read(lab.data_dir(1, &m).join("first.txt")).expect("first.txt after failover"),
        b"first"
    );
    std::fs::write(logs1.join("b.log"), b"written alone on beta").expect("write b.log");
    std::fs::write(logs1.join("a.log"), b"rewritten").expect("rewrite a.log");
    std::fs::write(lab.data_dir(1, &m).join("second.txt"), b"2").expect("write second.txt");

    // The old primary returns as secondary and both directories resync.
    lab.start(0);
    lab.wait_states("demo", [Some("SECOND"), Some("PRIM")], MOVE);
    assert_identical(&lab, &m, "after the failed node returned");
    assert_eq!(
        std::fs::read(logs_dir(&lab, 0, &m).join("scratch/tmp")).expect("alpha's own scratch"),
        b"node-local",
        "an excluded file stays on its node"
    );

    // Swap back: every directory's peer proves it holds everything, then alpha leads.
    ok(lab.cli(1, &["swap", "demo"]), "swap");
    lab.wait_states("demo", [Some("PRIM"), Some("SECOND")], MOVE);
    std::fs::write(logs_dir(&lab, 0, &m).join("c.log"), b"after the swap").expect("write c.log");
    assert_identical(&lab, &m, "after the swap");
}

/// The crux of several mirrors: the secondary's copy is whole only when every directory's
/// resync has ended. One directory resyncs fast, the other slowly (a bandwidth limit); the
/// primary dies in between: the secondary must wait, not start the application on a
/// half-copied directory.
#[test]
fn a_secondary_with_one_directory_still_resyncing_never_takes_over() {
    if !require_lab("a_secondary_with_one_directory_still_resyncing_never_takes_over") {
        return;
    }
    let m = two_mirrors("[replication]\nresync_limit_mib_per_s = 2\n");
    let mut lab = started(&m);
    lab.stop(1, MOVE);
    lab.wait_states("demo", [Some("ALONE"), None], MOVE);
    // 24 MiB in the second directory (12 s at the limit), a little in the first.
    {
        use std::io::Write;
        let mut f =
            std::fs::File::create(logs_dir(&lab, 0, &m).join("big.log")).expect("create big.log");
        let chunk: Vec<u8> = (0..1u32 << 20).map(|i| (i % 253) as u8).collect();
        for _ in 0..24 {
            f.write_all(&chunk).expect("write");
        }
        f.sync_all().expect("fsync");
    }
    std::fs::write(lab.data_dir(0, &m).join("small.txt"), b"small").expect("small.txt");
    lab.start(1);
    // Wait until the first directory is in sync and the second still resyncing.
    let deadline = Instant::now() + MOVE;
    loop {
        let mirror = lab
            .status(0)
            .and_then(|s| s["modules"][0]["mirror"].as_str().map(str::to_owned))
            .unwrap_or_default();
        let parts: Vec<&str> = mirror.split("; ").collect();
        let first_in_sync = parts
            .iter()
            .any(|p| !p.contains(&logs_declared(&m)) && p.contains("in-sync"));
        let second_syncing = parts
            .iter()
            .any(|p| p.contains(&logs_declared(&m)) && p.contains("syncing"));
        if first_in_sync && second_syncing {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never saw the first directory in sync while the second resynced: {mirror}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(lab.state(1, "demo").as_deref(), Some("SECOND"));

    // The primary dies mid-resync of the second directory.
    lab.kill9(0);
    let until = Instant::now() + Duration::from_secs(8);
    let mut seen = None;
    while Instant::now() < until {
        let s = lab.state(1, "demo");
        assert!(
            !matches!(s.as_deref(), Some("ALONE") | Some("PRIM")),
            "beta took over with the second directory half copied:\n{}",
            lab.log(1)
        );
        seen = s;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(seen.as_deref(), Some("WAIT"), "{}", lab.log(1));
    let reason = lab
        .status(1)
        .and_then(|s| s["modules"][0]["reason"].as_str().map(str::to_owned))
        .unwrap_or_default();
    eprintln!("beta waits: {reason}");

    // Alpha returns: it leads (its data is the newest), beta finishes its resync.
    lab.start(0);
    lab.wait_states("demo", [Some("PRIM"), Some("SECOND")], MOVE);
    assert_identical(&lab, &m, "after the interrupted resync ended");
}
