//! The benchmark runs end to end in `--quick` mode and reports every figure. Speed is not
//! asserted: CI machines are too noisy for that, and quick sizes mean nothing.

use std::process::Command;

use mirrorkit_tests::require_root_and_fuse;

const FIGURES: [&str; 6] = [
    "seq_write_mb_s",
    "fsync_4k_p50_us",
    "fsync_4k_p99_us",
    "small_files_per_s",
    "read_cached_mb_s",
    "read_cold_mb_s",
];

#[test]
fn quick_run_reports_every_figure() {
    if !require_root_and_fuse("quick_run_reports_every_figure") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = Command::new(env!("CARGO_BIN_EXE_mirrorkit-bench"))
        .arg("--quick")
        // The binary is built before the tests (test.sh); rebuilding it here, with other
        // feature unification than the workspace build, would relink it under the feet of
        // the tests that run beside this one.
        .arg("--no-build")
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run mirrorkit-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "mirrorkit-bench --quick failed ({})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    for header in ["command:", "machine:", "nproc", "kernel", "fs:", "date:"] {
        assert!(
            stdout.contains(header),
            "no {header:?} in the header:\n{stdout}"
        );
    }

    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("valid json");
    assert_eq!(j["mirror_trees_identical"], true, "{j:#}");
    let results = j["results"].as_array().expect("results");
    for id in FIGURES {
        let r = results
            .iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("figure {id} missing from the results:\n{j:#}"));
        for side in ["native", "mirror"] {
            let values = r[side]["values"].as_array().expect("values");
            assert_eq!(values.len(), 2, "{id} {side}: one value per repetition");
            let median = r[side]["median"].as_f64().unwrap_or(f64::NAN);
            assert!(median.is_finite() && median > 0.0, "{id} {side}: {median}");
        }
        assert!(r["ratio"].as_f64().is_some_and(f64::is_finite), "{id}: {r}");
        assert!(
            stdout.contains(r["workload"].as_str().unwrap()),
            "{id} not in the table"
        );
    }
    let traffic = j["traffic"].as_array().expect("traffic");
    let seq = traffic
        .iter()
        .find(|t| t["workload"] == "seq-write")
        .expect("seq-write traffic");
    assert!(
        seq["data_mib_per_run"].as_f64().unwrap() >= 16.0,
        "the mirror did not carry the sequential writes: {seq}"
    );
}
