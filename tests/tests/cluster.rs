//! The cluster manager end to end, in network namespaces (`mirrorkit_tests::lab`): two real
//! daemons running the demo module behind a virtual IP, a client talking to that IP.

use std::time::{Duration, Instant};

use mirrorkit_tests::lab::{ok, require_lab, Lab, LabModule, Writer};
use mirrorkit_tests::tree;

const BOOT: Duration = Duration::from_secs(90);
const MOVE: Duration = Duration::from_secs(60);

fn notes(lab: &Lab, m: &LabModule) -> Option<String> {
    match lab.http(m.vip_addr(), "GET", "/notes", "") {
        Ok((200, body)) => Some(body),
        _ => None,
    }
}

fn post(lab: &Lab, m: &LabModule, note: &str) {
    let r = lab.http(m.vip_addr(), "POST", "/notes", note);
    assert!(matches!(r, Ok((201, _))), "POST {note}: {r:?}");
}

fn wait_notes(lab: &Lab, m: &LabModule, want: &[&str], timeout: Duration) -> Duration {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < timeout {
        last = notes(lab, m);
        if last
            .as_ref()
            .is_some_and(|b| want.iter().all(|w| b.contains(w)))
        {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("notes {want:?} not served through the virtual IP within {timeout:?}; last answer {last:?}\n--- alpha log:\n{}\n--- beta log:\n{}",
        mirrorkit_tests::lab::tail(&lab.log(0), 60), mirrorkit_tests::lab::tail(&lab.log(1), 60));
}

/// Bytes of file data the primary on node `i` compared by digest in its synchronisations (a
/// comparison of all data digests every chunk; an incremental resync only the recorded ones).
fn sync_compared_bytes(lab: &Lab, i: usize) -> u64 {
    lab.status(i)
        .and_then(|s| s["modules"][0]["replication"]["sync_compared_bytes"].as_u64())
        .unwrap_or_else(|| panic!("no replication status on node {i}"))
}

/// Scenario: the primary's daemon is killed: the other node takes the virtual IP and serves
/// every acknowledged note; the old primary returns as SECOND and resyncs; swap both ways.
#[test]
fn failover_return_and_swap_both_ways() {
    if !require_lab("failover_return_and_swap_both_ways") {
        return;
    }
    let m = LabModule::demo("demo", 8080, 80);
    let mut lab = Lab::new(vec![m.clone()]);
    lab.start(0);
    lab.start(1);
    // Both new: the smaller name leads.
    lab.wait_states("demo", [Some("PRIM"), Some("SECOND")], BOOT);
    assert!(lab.holds_vip(0, &m) && !lab.holds_vip(1, &m));
    post(&lab, &m, "one");
    post(&lab, &m, "two");

    // Failover, while a client writes: every note acknowledged before, during or after it
    // is served by the new primary.
    let writer = Writer::start(&lab.client.path(), m.vip_addr(), "w");
    std::thread::sleep(Duration::from_millis(500));
    let killed = Instant::now();
    lab.kill9(0);
    lab.wait_states("demo", [None, Some("ALONE")], MOVE);
    let served = wait_notes(&lab, &m, &["one", "two"], MOVE);
    std::thread::sleep(Duration::from_millis(500));
    let acked = writer.stop();
    assert!(
        acked.len() >= 5,
        "the writer got too few acknowledgements to prove anything: {acked:?}"
    );
    let all = notes(&lab, &m).expect("notes after failover");
    let lost: Vec<&String> = acked
        .iter()
        .filter(|n| !all.lines().any(|l| l.ends_with(n.as_str())))
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged notes lost in the failover: {lost:?} of {}",
        acked.len()
    );
    eprintln!(
        "failover: beta ALONE and serving after {:?} ({:?} after ALONE)",
        killed.elapsed(),
        served
    );
    assert!(lab.holds_vip(1, &m));
    post(&lab, &m, "three");

    // The old primary returns: SECOND, resynced, its leftovers (VIP, application) gone.
    lab.start(0);
    lab.wait_states("demo", [Some("SECOND"), Some("PRIM")], MOVE);
    assert!(
        !lab.holds_vip(0, &m),
        "the returning node still holds the virtual IP"
    );
    tree::compare(&lab.data_dir(1, &m), &lab.data_dir(0, &m), 20)
        .expect("copies identical after the resync");

    // Swap, asked on the secondary: alpha primary again. The handover proved that alpha
    // holds everything: its term starts from beta's generation, so the resync that follows is
    // incremental (it compares nothing), not a comparison of all data.
    std::fs::write(lab.data_dir(1, &m).join("bulk"), vec![5u8; 4 << 20]).expect("write bulk");
    ok(lab.cli(0, &["swap", "demo"]), "swap on the secondary");
    lab.wait_states("demo", [Some("PRIM"), Some("SECOND")], MOVE);
    let compared = sync_compared_bytes(&lab, 0);
    assert!(
        compared < 1 << 20,
        "the resync after a swap compared {compared} bytes: it compared all data"
    );
    wait_notes(&lab, &m, &["one", "two", "three"], MOVE);
    assert!(lab.holds_vip(0, &m) && !lab.holds_vip(1, &m));
    post(&lab, &m, "four");

    // Swap, asked on the primary: beta primary.
    ok(lab.cli(0, &["swap", "demo"]), "swap on the primary");
    lab.wait_states("demo", [Some("SECOND"), Some("PRIM")], MOVE);
    wait_notes(&lab, &m, &["one", "two", "three", "four"], MOVE);
    tree::compare(&lab.data_dir(1, &m), &lab.data_dir(0, &m), 20).expect("copies identical");

    // The event log tells the story.
    let log = ok(lab.cli(0, &["log", "demo", "-n", "200"]), "log");
    assert!(log.contains("swap") && log.contains("SECOND"), "{log}");
    let table = ok(lab.cli(1, &["status"]), "status");
    assert!(table.contains("demo") && table.contains("PRIM"), "{table}");

    // A verb for a module that does not exist: a clear refusal, nothing changes.
    let out = lab.cli(1, &["swap", "nosuch"]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && text.contains("no module \"nosuch\""),
        "{text}"
    );
    lab.wait_states("demo", [Some("SECOND"), Some("PRIM")], MOVE);

    // A clean stop of the primary's daemon hands over.
    lab.stop(1, MOVE);
    lab.wait_states("demo", [Some("ALONE"), None], MOVE);
    wait_notes(&lab, &m, &["one", "two", "three", "four"], MOVE);
    post(&lab, &m, "five");

    // Never start on stale data: beta (which handed over, then missed "five") starts alone
    // and must wait, not serve its older copy.
    lab.stop(0, MOVE);
    lab.start(1);
    lab.wait_states("demo", [None, Some("WAIT")], MOVE);
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(lab.state(1, "demo").as_deref(), Some("WAIT"));
    assert!(
        !lab.holds_vip(1, &m),
        "a node on stale data took the virtual IP"
    );
    let status = lab.status(1).expect("status");
    let reason = status["modules"][0]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(reason.contains("waits for alpha"), "{reason}");
    // The node with the newest data returns: it leads, with every note.
    lab.start(0);
    lab.wait_states("demo", [Some("PRIM"), Some("SECOND")], MOVE);
    wait_notes(&lab, &m, &["one", "two", "three", "four", "five"], MOVE);
}

/// Two modules, each preferring another node: each runs primary on its own node.
#[test]
fn two_modules_primary_on_opposite_nodes() {
    if !require_lab("two_modules_primary_on_opposite_nodes") {
        return;
    }
    let mut a = LabModule::demo("shop", 8080, 80);
    a.default_primary = Some("alpha".into());
    let mut b = LabModule::demo("stock", 8081, 81);
    b.default_primary = Some("beta".into());
    let mut lab = Lab::new(vec![a.clone(), b.clone()]);
    lab.start(0);
    lab.start(1);
    lab.wait_states("shop", [Some("PRIM"), Some("SECOND")], BOOT);
    lab.wait_states("stock", [Some("SECOND"), Some("PRIM")], BOOT);
    post(&lab, &a, "a1");
    post(&lab, &b, "b1");
    assert!(lab.holds_vip(0, &a) && lab.holds_vip(1, &b));
    assert!(!lab.holds_vip(1, &a) && !lab.holds_vip(0, &b));
    wait_notes(&lab, &a, &["a1"], MOVE);
    wait_notes(&lab, &b, &["b1"], MOVE);
}

/// Cut the link between the nodes (no witness): the secondary takes over, so both are
/// primary while apart (the documented outcome without a witness); when the link heals, the
/// split brain is reported and exactly one stays primary, the other waits with its data
/// untouched.
#[test]
fn cut_link_without_witness_then_heal() {
    if !require_lab("cut_link_without_witness_then_heal") {
        return;
    }
    let m = LabModule::demo("demo", 8080, 80);
    let mut lab = Lab::new(vec![m.clone()]);
    lab.start(0);
    lab.start(1);
    lab.wait_states("demo", [Some("PRIM"), Some("SECOND")], BOOT);
    post(&lab, &m, "before");
    lab.set_link(0, false);
    lab.wait_states("demo", [Some("ALONE"), Some("ALONE")], MOVE);
    lab.set_link(0, true);
    let deadline = Instant::now() + MOVE;
    loop {
        let s = (lab.state(0, "demo"), lab.state(1, "demo"));
        let primaries = [&s.0, &s.1]
            .iter()
            .filter(|x| matches!(x.as_deref(), Some("ALONE" | "PRIM")))
            .count();
        if primaries == 1 && [&s.0, &s.1].iter().any(|x| x.as_deref() == Some("WAIT")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after healing: {s:?}\n{}\n{}",
            lab.log(0),
            lab.log(1)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = [lab.status(0).unwrap(), lab.status(1).unwrap()];
    assert!(
        status
            .iter()
            .any(|s| s["modules"][0]["split_brain"] == true),
        "split brain not reported: {status:?}"
    );
}

/// With the fast profile (peer lost after 0.5 s), the application writes as fast as it can
/// through the mirror for several seconds: replication saturates the link and both cores, and
/// no heartbeat is missed long enough to fail over.
#[test]
fn no_false_failover_while_replication_saturates_the_link() {
    if !require_lab("no_false_failover_while_replication_saturates_the_link") {
        return;
    }
    let m = LabModule {
        heartbeat: "fast",
        ..LabModule::demo("demo", 8080, 80)
    };
    let mut lab = Lab::new(vec![m.clone()]);
    lab.start(0);
    lab.start(1);
    lab.wait_states("demo", [Some("PRIM"), Some("SECOND")], BOOT);
    let file = lab.data_dir(0, &m).join("bulk.bin");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || -> u64 {
            use std::io::{Seek, Write};
            let mut f = std::fs::File::create(&file).expect("create bulk.bin on the mirror");
            let chunk = vec![0x5au8; 1 << 20];
            let mut written = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // A 256 MiB file written over and over: the link, not the disk, is the limit.
                if written % (256 << 20) == 0 {
                    f.rewind().expect("rewind");
                }
                f.write_all(&chunk).expect("write through the mirror");
                written += chunk.len() as u64;
            }
            f.sync_all().expect("fsync");
            written
        })
    };
    let start = Instant::now();
    let mut samples = 0;
    while start.elapsed() < Duration::from_secs(8) {
        let s = [lab.status_now(0), lab.status_now(1)].map(|s| {
            s.and_then(|s| s.modules.into_iter().next())
                .and_then(|m| m.state)
                .map(|k| k.name())
        });
        samples += 1;
        assert_eq!(
            s,
            [Some("PRIM"), Some("SECOND")],
            "the module moved under replication load after {:?}\n--- alpha:\n{}\n--- beta:\n{}",
            start.elapsed(),
            mirrorkit_tests::lab::tail(&lab.log(0), 40),
            mirrorkit_tests::lab::tail(&lab.log(1), 40)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.join().expect("writer");
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "replicated {} MiB in {secs:.1} s ({:.0} MiB/s) with the fast profile: {samples} samples, no state change",
        written >> 20,
        (written >> 20) as f64 / secs
    );
    assert!(
        written >= 64 << 20,
        "too little load to prove anything: {written} bytes"
    );
    let alone = lab
        .status_now(0)
        .and_then(|s| s.modules.into_iter().next())
        .and_then(|m| m.replication)
        .map(|r| r.times_alone);
    assert_eq!(
        alone,
        Some(0),
        "the primary's link went on alone under load"
    );
    for i in 0..2 {
        let log = lab.log(i);
        assert!(
            !log.contains("peer lost"),
            "node {i} lost its peer under load:\n{}",
            mirrorkit_tests::lab::tail(&log, 40)
        );
    }
}

/// Module files are watched: an invalid change is refused with its problems in the status and
/// the module keeps running; a valid change (a checker added) applies at once; a change of the
/// virtual IP waits until the module is stopped on the node.
#[test]
fn module_file_changes_apply_live_and_invalid_ones_are_refused() {
    if !require_lab("module_file_changes_apply_live_and_invalid_ones_are_refused") {
        return;
    }
    let m = LabModule::demo("demo", 8080, 80);
    let mut lab = Lab::new(vec![m.clone()]);
    lab.start(0);
    lab.start(1);
    lab.wait_states("demo", [Some("PRIM"), Some("SECOND")], BOOT);
    let file = lab.dir.path().join("modules/demo/module.toml");
    let original = std::fs::read_to_string(&file).expect("module.toml");
    let write = |text: &str| {
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, &file).expect("rename");
    };
    let module = |lab: &Lab, i: usize| lab.status(i).map(|s| s["modules"][0].clone());
    let wait_for = |lab: &Lab, what: &str, f: &dyn Fn(&serde_json::Value) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let both: Vec<_> = (0..2).map(|i| module(lab, i)).collect();
            if both.iter().all(|m| m.as_ref().is_some_and(f)) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: {both:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    write(&format!("{original}\nbogus_field = 1\n"));
    wait_for(&lab, "invalid change reported", &|m| {
        m["config_problems"].as_array().is_some_and(|p| {
            p.iter()
                .any(|p| p.as_str().is_some_and(|p| p.contains("bogus_field")))
        })
    });
    assert_eq!(lab.state(0, "demo").as_deref(), Some("PRIM"));
    post(&lab, &m, "still-running");

    write(&format!(
        "{original}\n[[checker]]\nname = \"http\"\nkind = \"tcp\"\naddress = \"127.0.0.1:8080\"\ninterval_ms = 500\n"
    ));
    wait_for(&lab, "checker added", &|m| {
        m["config_problems"]
            .as_array()
            .is_some_and(|p| p.is_empty())
            && m["checkers"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["name"] == "http"))
    });
    let st = lab.status(0).expect("status");
    assert_eq!(
        st["modules"][0]["checkers"][0]["running"], true,
        "the primary runs its application checker: {st}"
    );

    let moved = original.replace(
        &format!("{}.80/24", mirrorkit_tests::lab::LAN_PREFIX),
        &format!("{}.82/24", mirrorkit_tests::lab::LAN_PREFIX),
    );
    assert_ne!(moved, original);
    write(&moved);
    wait_for(&lab, "virtual IP change pending", &|m| {
        m["config_problems"].as_array().is_some_and(|p| {
            p.iter()
                .any(|p| p.as_str().is_some_and(|p| p.starts_with("pending")))
        })
    });
    assert!(
        lab.holds_vip(0, &m),
        "the virtual IP moved under a running application"
    );
    ok(lab.cli(1, &["stop", "demo"]), "stop on beta");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !module(&lab, 1).is_some_and(|m| {
        m["config_problems"]
            .as_array()
            .is_some_and(|p| p.is_empty())
    }) {
        assert!(
            Instant::now() < deadline,
            "beta did not apply the change once stopped: {:?}",
            module(&lab, 1)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The secondary's daemon is killed while the application writes: the primary's writes stall
/// for the heartbeats' detection (fast profile: 0.5 s) and a short grace, not for the
/// replication's peer timeout (3 s), and the module goes on ALONE.
#[test]
fn killed_secondary_stalls_writes_only_until_the_heartbeats_notice() {
    if !require_lab("killed_secondary_stalls_writes_only_until_the_heartbeats_notice") {
        return;
    }
    let m = LabModule {
        heartbeat: "fast",
        default_primary: Some("alpha".into()),
        ..LabModule::demo("demo", 8080, 80)
    };
    let mut lab = Lab::new(vec![m.clone()]);
    lab.start(0);
    lab.start(1);
    lab.wait_states("demo", [Some("PRIM"), Some("SECOND")], BOOT);
    let file = lab.data_dir(0, &m).join("probe.bin");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || -> Vec<(Instant, Duration)> {
            use std::os::unix::fs::FileExt;
            let f = std::fs::File::create(&file).expect("create probe.bin on the mirror");
            let block = vec![0x42u8; 4096];
            let mut took = Vec::new();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                f.write_all_at(&block, (n % 256) * 4096)
                    .expect("write through the mirror");
                took.push((t, t.elapsed()));
                n += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            took
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let killed = Instant::now();
    lab.kill9(1);
    let deadline = Instant::now() + MOVE;
    while lab.state(0, "demo").as_deref() != Some("ALONE") {
        assert!(
            Instant::now() < deadline,
            "alpha not ALONE after the secondary was killed:\n{}",
            mirrorkit_tests::lab::tail(&lab.log(0), 40)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let took = writer.join().expect("writer");
    let longest = took
        .iter()
        .filter(|(t, _)| *t + Duration::from_secs(1) >= killed)
        .map(|(_, d)| *d)
        .max()
        .unwrap_or_default();
    let log = lab.log(0);
    eprintln!(
        "killed secondary: {} writes, the longest after the kill took {longest:?}",
        took.len()
    );
    // The peer timeout is 3 s; detection (0.5 s) and grace (0.25 s) leave a wide margin.
    assert!(
        longest < Duration::from_millis(2_500),
        "a write stalled {longest:?}: as long as the peer timeout, not the heartbeats' detection\n{}",
        mirrorkit_tests::lab::tail(&log, 40)
    );
    assert!(
        log.contains("replication waits only while the peer acknowledges"),
        "the link was not told:\n{}",
        mirrorkit_tests::lab::tail(&log, 40)
    );
}

/// `[replication]` reaches the engine: a returning secondary is resynced no faster than the
/// module's `resync_limit_mib_per_s`, and the engine's own rate says so.
#[test]
fn resync_follows_the_modules_bandwidth_limit() {
    if !require_lab("resync_follows_the_modules_bandwidth_limit") {
        return;
    }
    const LIMIT_MIB: u64 = 4;
    const DATA_MIB: u64 = 16;
    let m = LabModule {
        default_primary: Some("alpha".into()),
        extra: format!("[replication]\nresync_limit_mib_per_s = {LIMIT_MIB}\n"),
        // The daemon applies the module's patterns: an excluded file stays on its node.
        mirror_extra: "exclude = [\"scratch\"]\n".into(),
        ..LabModule::demo("demo", 8080, 80)
    };
    let mut lab = Lab::new(vec![m.clone()]);
    lab.start(0);
    lab.start(1);
    lab.wait_states("demo", [Some("PRIM"), Some("SECOND")], BOOT);
    lab.stop(1, MOVE);
    lab.wait_states("demo", [Some("ALONE"), None], MOVE);
    {
        use std::io::Write;
        let mut f = std::fs::File::create(lab.data_dir(0, &m).join("bulk.bin"))
            .expect("create bulk.bin on the mirror");
        let chunk: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
        for _ in 0..DATA_MIB {
            f.write_all(&chunk).expect("write");
        }
        f.sync_all().expect("fsync");
        std::fs::create_dir_all(lab.data_dir(0, &m).join("scratch")).expect("mkdir scratch");
        std::fs::write(lab.data_dir(0, &m).join("scratch/big"), vec![9u8; 8 << 20])
            .expect("write an excluded file");
    }
    let started = Instant::now();
    lab.start(1);
    lab.wait_states("demo", [Some("PRIM"), Some("SECOND")], MOVE);
    let took = started.elapsed();
    let r = lab
        .status_now(0)
        .and_then(|s| s.modules.into_iter().next())
        .and_then(|m| m.replication)
        .expect("the primary's replication status");
    eprintln!(
        "resync of {} MiB limited to {LIMIT_MIB} MiB/s: in sync {took:?} after the restart, engine rate {} B/s",
        r.sync_data_bytes_sent >> 20,
        r.sync_rate
    );
    assert!(
        r.sync_data_bytes_sent >= DATA_MIB << 20,
        "the resync sent only {} bytes",
        r.sync_data_bytes_sent
    );
    // Lower bounds only: a loaded machine makes a resync slower, never faster.
    let floor = Duration::from_secs_f64(DATA_MIB as f64 / LIMIT_MIB as f64 * 0.75);
    assert!(
        took >= floor,
        "{DATA_MIB} MiB resynced in {took:?}: faster than {LIMIT_MIB} MiB/s allows"
    );
    assert!(
        r.sync_rate <= (LIMIT_MIB << 20) + (LIMIT_MIB << 18),
        "engine rate {} B/s above the limit",
        r.sync_rate
    );
    assert!(
        !lab.data_dir(1, &m).join("scratch").exists(),
        "the excluded directory reached the secondary"
    );
    assert!(
        r.sync_data_bytes_sent < (DATA_MIB + 8) << 20,
        "the resync sent the excluded file too: {} bytes",
        r.sync_data_bytes_sent
    );
    let selection = mirrorkit_module::MirrorFilter::from_patterns(
        &["**".to_string()],
        &["scratch".to_string()],
    )
    .expect("patterns");
    tree::compare_selected(
        &lab.data_dir(0, &m),
        &lab.data_dir(1, &m),
        20,
        &selection,
        tree::CompareOpts::default(),
    )
    .expect("copies identical after the resync, but for the excluded directory");

    // The patterns change while the module is stopped: the excluded directory enters the set.
    // The secondary holds a file of its own there, of the same name and size: the dirty record
    // knows nothing of it, so the resync must compare all data, not trust the record.
    lab.stop(1, MOVE);
    lab.wait_states("demo", [Some("ALONE"), None], MOVE);
    lab.stop(0, MOVE);
    std::fs::create_dir_all(lab.data_dir(1, &m).join("scratch")).expect("mkdir scratch");
    std::fs::write(lab.data_dir(1, &m).join("scratch/big"), vec![7u8; 8 << 20])
        .expect("the secondary's own file");
    let toml = lab.dir.path().join("modules/demo/module.toml");
    let text = std::fs::read_to_string(&toml).expect("module.toml");
    assert!(text.contains("exclude = [\"scratch\"]"), "{text}");
    std::fs::write(&toml, text.replace("exclude = [\"scratch\"]", "")).expect("module.toml");
    lab.start(0);
    lab.start(1);
    lab.wait_states("demo", [Some("PRIM"), Some("SECOND")], BOOT);
    tree::compare_selected(
        &lab.data_dir(0, &m),
        &lab.data_dir(1, &m),
        20,
        &mirrorkit_module::MirrorFilter::everything(),
        tree::CompareOpts::default(),
    )
    .expect("copies identical once the excluded directory entered the set");
    assert!(
        lab.log(0)
            .contains("what is replicated changed since the peer was last in sync"),
        "the primary did not compare all data after its patterns changed:\n{}",
        lab.log(0)
    );
}

/// The module's scripts run in the documented order on each node: `prestart`, the data role,
/// `start_both` where the module starts (secondary too), `start_prim` and then the virtual IP on
/// the primary; a swap moves only the primary's half; a stop removes the virtual IP before the
/// stop scripts and ends with `poststop`.
#[test]
fn scripts_run_in_the_documented_order_on_both_nodes() {
    if !require_lab("scripts_run_in_the_documented_order_on_both_nodes") {
        return;
    }
    let mut m = LabModule {
        default_primary: Some("alpha".into()),
        scripts: [
            "prestart = \"log_step\"",
            "start_both = \"log_step\"",
            "stop_both = \"log_step\"",
            "poststop = \"log_step\"",
        ]
        .join("\n"),
        ..LabModule::demo("demo", 8080, 80)
    };
    let vip = m.vip_addr().ip();
    m.files.push((
        "log_step".into(),
        format!(
            "#!/bin/sh\n\
             if ip -o addr show | grep -qF ' {vip}/'; then vip=yes; else vip=no; fi\n\
             echo \"$MIRRORKIT_SCRIPT $MIRRORKIT_ROLE vip:$vip\" >> \"$MIRRORKIT_RUN_DIR/steps.log\"\n"
        ),
    ));
    let mut lab = Lab::new(vec![m.clone()]);
    let steps = |lab: &Lab, i: usize| -> Vec<String> {
        std::fs::read_to_string(lab.run_dir(i, "demo").join("steps.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    };
    lab.start(0);
    lab.start(1);
    lab.wait_states("demo", [Some("PRIM"), Some("SECOND")], BOOT);
    assert_eq!(
        steps(&lab, 0),
        ["prestart none vip:no", "start_both primary vip:no"],
        "alpha, primary"
    );
    // The secondary's start_both may still be running just after SECOND.
    let deadline = Instant::now() + MOVE;
    while steps(&lab, 1).len() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        steps(&lab, 1),
        ["prestart none vip:no", "start_both secondary vip:no"],
        "beta, secondary"
    );
    assert!(lab.holds_vip(0, &m));

    // A swap moves the primary's half only.
    std::fs::write(lab.data_dir(0, &m).join("bulk"), vec![6u8; 4 << 20]).expect("write bulk");
    ok(lab.cli(0, &["swap", "demo"]), "swap");
    lab.wait_states("demo", [Some("SECOND"), Some("PRIM")], MOVE);
    // Beta was never primary: it holds the selection in sync as secondary, and its first term
    // starts from alpha's generation, so its resync of alpha compares nothing.
    let compared = sync_compared_bytes(&lab, 1);
    assert!(
        compared < 1 << 20,
        "the resync after the first swap onto beta compared {compared} bytes: all data"
    );
    post(&lab, &m, "after-swap");
    assert_eq!(steps(&lab, 0).len(), 2, "{:?}", steps(&lab, 0));
    assert_eq!(steps(&lab, 1).len(), 2, "{:?}", steps(&lab, 1));

    // Stop the secondary, then the primary: stop_both with the role left, the virtual IP
    // already gone, poststop last.
    ok(lab.cli(0, &["stop", "demo"]), "stop on alpha");
    assert_eq!(
        steps(&lab, 0)[2..],
        ["stop_both secondary vip:no", "poststop none vip:no"],
        "alpha, stopped as secondary"
    );
    ok(lab.cli(1, &["stop", "demo"]), "stop on beta");
    assert_eq!(
        steps(&lab, 1)[2..],
        ["stop_both primary vip:no", "poststop none vip:no"],
        "beta, stopped as primary"
    );
    assert!(!lab.holds_vip(1, &m));
    assert_eq!(lab.state(0, "demo").as_deref(), Some("STOP"));
    assert_eq!(lab.state(1, "demo").as_deref(), Some("STOP"));
}
