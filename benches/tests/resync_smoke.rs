//! `mirrorkit-bench resync` runs end to end on a small set and reports both figures. Speed is
//! not asserted (CI machines are too noisy, and a small, warm set means nothing); what is
//! checked is that each part measured what it claims: the incremental resync used the dirty
//! record, the full one sent the whole set, and every copy was identical afterwards.

use std::process::Command;

use mirrorkit_tests::require_root_and_fuse;

/// Whether rsync (the incremental part's baseline) can run. Returns false (after printing
/// why) when the test should be skipped; panics under CI instead.
fn require_rsync(test: &str) -> bool {
    let ok = Command::new("rsync")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return true;
    }
    mirrorkit_tests::skip_unless_ci(&format!("{test}: needs rsync (apt-get install -y rsync)"))
}

#[test]
fn small_resync_run_reports_both_figures() {
    let name = "small_resync_run_reports_both_figures";
    if !require_root_and_fuse(name) || !require_rsync(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("resync.json");
    let out = Command::new(env!("CARGO_BIN_EXE_mirrorkit-bench"))
        .args(["resync", "--set-mib", "32", "--reps", "1"])
        // Dropping the page caches would slow every test running beside this one.
        .arg("--no-drop-caches")
        // As in smoke.rs: the binary is built before the tests (test.sh).
        .arg("--no-build")
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run mirrorkit-bench resync");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "mirrorkit-bench resync failed ({})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    for header in ["command:", "machine:", "set:", "rsync:", "date:"] {
        assert!(
            stdout.contains(header),
            "no {header:?} in the header:\n{stdout}"
        );
    }

    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("valid json");
    assert_eq!(j["copies_identical"], true, "{j:#}");
    let set_bytes = j["config"]["set_bytes"].as_u64().expect("set_bytes");
    assert!(set_bytes >= 32 << 20, "{j:#}");
    for id in ["incremental_resync_s", "full_resync_mb_s"] {
        let f = j["results"]
            .as_array()
            .expect("results")
            .iter()
            .find(|f| f["id"] == id)
            .unwrap_or_else(|| panic!("figure {id} missing:\n{j:#}"));
        for key in ["mirror_median", "baseline_median", "ratio"] {
            let v = f[key].as_f64().unwrap_or(f64::NAN);
            assert!(v.is_finite() && v > 0.0, "{id} {key}: {f}");
        }
        assert!(
            stdout.contains(f["what"].as_str().unwrap()),
            "{id} not in the table"
        );
    }
    let inc = &j["incremental"][0];
    let recorded = inc["mirror"]["recorded_bytes"].as_u64().unwrap();
    let compared = inc["mirror"]["compared_bytes"].as_u64().unwrap();
    assert!(
        recorded > 0 && compared < set_bytes / 2,
        "the incremental resync should compare what the record lists, not the set: {inc}"
    );
    assert!(
        inc["rsync"]["literal_bytes"].as_u64().unwrap() > 0,
        "rsync transferred nothing: {inc}"
    );
    let full = &j["full"][0];
    assert!(
        full["mirror"]["sent_bytes"].as_u64().unwrap() >= full["set_bytes"].as_u64().unwrap(),
        "the full resync should send the whole set: {full}"
    );
}
