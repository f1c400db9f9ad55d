//! Incremental resync from the primary's dirty record (docs/architecture.md, "Resync").
//!
//! A file set of 1 GiB (256 MiB for the variants) is laid down identically on both nodes before they start, so the first
//! synchronisation compares it by chunk digests and sends nothing. Then the secondary goes
//! away, the primary changes about 1% of the set (random writes, creates, deletes, renames,
//! a truncation and a hole), and the secondary returns: the file data sent must stay within
//! 1.25x of what the record listed, and both trees must end identical. Variants kill the
//! primary while alone, and kill either node in the middle of the resync.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use mirrorkit_tests::{require_root_and_fuse, tree, wait_for, Mirror, MirrorOpts, Status};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// Files of the set: 64 of `FULL` bytes (1 GiB), or of `SMALL` bytes for the variants that
/// kill nodes (what they test does not depend on the size).
const FILES: usize = 64;
const FULL: u64 = 16 << 20;
const SMALL: u64 = 4 << 20;
const RESYNC_TIMEOUT: Duration = Duration::from_secs(120);

fn opts() -> MirrorOpts {
    MirrorOpts {
        peer_timeout_ms: 1000,
        ..MirrorOpts::default()
    }
}

/// The same pseudo-random file set in `dir` for a given seed.
fn lay_down(dir: &Path, seed: u64, file_bytes: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    std::fs::create_dir_all(dir.join("set/a")).unwrap();
    std::fs::create_dir_all(dir.join("set/b")).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    for i in 0..FILES {
        let sub = if i % 2 == 0 { "a" } else { "b" };
        let f = std::fs::File::create(dir.join(format!("set/{sub}/f{i:03}"))).unwrap();
        for off in (0..file_bytes).step_by(buf.len()) {
            rng.fill(&mut buf[..]);
            f.write_all_at(&buf, off).unwrap();
        }
    }
}

/// Both nodes start from the same set; returns the mirror in sync.
fn start_with_set(seed: u64, file_bytes: u64, opts: MirrorOpts) -> Mirror {
    let started = std::time::Instant::now();
    let mut m = Mirror::new(opts);
    lay_down(&m.a.dirs.data, seed, file_bytes);
    lay_down(&m.b.dirs.data, seed, file_bytes);
    eprintln!(
        "seed {seed}: set of {} MiB laid down on both nodes in {:.1} s",
        (FILES as u64 * file_bytes) >> 20,
        started.elapsed().as_secs_f64()
    );
    m.start_secondary();
    m.start_primary();
    let s = m.wait_primary_mode("in-sync", RESYNC_TIMEOUT);
    assert_eq!(
        s.sync_data_bytes_sent, 0,
        "identical copies must not send file data; status {s:?}"
    );
    assert!(
        s.sync_compared_bytes >= FILES as u64 * file_bytes,
        "the first sync compares every chunk; status {s:?}"
    );
    eprintln!(
        "seed {seed}: first synchronisation compared the set in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    m
}

/// About 1% of a set of `file_bytes` files: random writes, new files, removals, renames, a
/// truncation, a hole. Round `round` (0, 1, ...) removes and truncates other files than the
/// rounds before it. Returns the bytes the application wrote.
fn change_one_percent(dir: &Path, seed: u64, round: usize, file_bytes: u64) -> u64 {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed ^ round as u64);
    let mut written = 0u64;
    let budget = FILES as u64 * file_bytes / 100;
    let mut buf = vec![0u8; 256 << 10];
    let name = |i: usize| format!("set/{}/f{i:03}", if i % 2 == 0 { "a" } else { "b" });
    let (gone, cut) = (3 * round, 3 * round + 2);
    while written < budget * 8 / 10 {
        let i = rng.gen_range(3 * round + 3..FILES);
        let len = rng.gen_range(4096..buf.len());
        let off = rng.gen_range(0..file_bytes - len as u64);
        rng.fill(&mut buf[..len]);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join(name(i)))
            .unwrap();
        f.write_all_at(&buf[..len], off).unwrap();
        written += len as u64;
    }
    let new = format!("set/new{round}");
    std::fs::create_dir_all(dir.join(&new)).unwrap();
    for n in 0..20 {
        let len = rng.gen_range(1000..200_000);
        rng.fill(&mut buf[..len]);
        std::fs::write(dir.join(format!("{new}/n{n}")), &buf[..len]).unwrap();
        written += len as u64;
    }
    std::fs::remove_file(dir.join(name(gone))).unwrap();
    std::fs::remove_file(dir.join(name(gone + 1))).unwrap();
    std::fs::rename(
        dir.join(format!("{new}/n0")),
        dir.join(format!("set/a/renamed{round}")),
    )
    .unwrap();
    std::fs::rename(dir.join(format!("{new}/n1")), dir.join(format!("{new}/n2"))).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join(name(cut)))
        .unwrap();
    f.set_len(file_bytes / 2).unwrap();
    // A punched hole, where the peer has data.
    // SAFETY: valid descriptor and range.
    let r = unsafe {
        libc::fallocate(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            1 << 20,
            256 << 10,
        )
    };
    assert_eq!(r, 0, "punch hole: {}", std::io::Error::last_os_error());
    f.sync_all().unwrap();
    written
}

fn same_trees(m: &Mirror, what: &str) {
    let _ = tree::drop_page_caches();
    if let Err(diff) = tree::compare(m.primary_dir(), m.secondary_dir(), 20) {
        panic!(
            "{what}: trees differ: {diff}\n--- a log\n{}\n--- b log\n{}",
            m.a.log(),
            m.b.log()
        );
    }
}

fn wait_resynced(m: &Mirror, sessions_before: u64) -> Status {
    wait_for(RESYNC_TIMEOUT, || {
        m.a.status()
            .filter(|s| s.mode == "in-sync" && s.sessions > sessions_before)
    })
    .unwrap_or_else(|| {
        panic!(
            "no resync within {RESYNC_TIMEOUT:?}; status {:?}\n--- a log\n{}\n--- b log\n{}",
            m.a.status(),
            m.a.log(),
            m.b.log()
        )
    })
}

#[test]
fn returning_secondary_gets_only_the_changed_regions() {
    if !require_root_and_fuse("returning_secondary_gets_only_the_changed_regions") {
        return;
    }
    let seed: u64 = rand::random();
    eprintln!("seed {seed}");
    let mut m = start_with_set(seed, FULL, opts());
    let before = m.a.status().unwrap();
    m.b.stop();
    m.wait_primary_mode("alone", Duration::from_secs(20));
    let written = change_one_percent(m.primary_dir(), seed, 0, FULL);
    let started = std::time::Instant::now();
    m.start_secondary();
    let s = wait_resynced(&m, before.sessions);
    eprintln!(
        "seed {seed}: secondary restarted and resynchronised in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let sent = s.sync_data_bytes_sent - before.sync_data_bytes_sent;
    eprintln!(
        "seed {seed}: application wrote {written} bytes; record listed {} bytes; resync sent {sent} bytes of file data, compared {} bytes",
        s.sync_recorded_bytes,
        s.sync_compared_bytes - before.sync_compared_bytes
    );
    assert!(
        s.sync_recorded_bytes > 0 && s.sync_recorded_bytes < FILES as u64 * FULL / 10,
        "seed {seed}: the record should list about 1% of the set; status {s:?}"
    );
    assert!(
        sent as f64 <= 1.25 * s.sync_recorded_bytes as f64,
        "seed {seed}: resync sent {sent} bytes of file data for {} recorded bytes",
        s.sync_recorded_bytes
    );
    assert!(
        s.sync_total_bytes > 0
            && s.sync_done_bytes == s.sync_total_bytes
            && s.sync_eta_secs == Some(0),
        "seed {seed}: a finished resync shows all its planned bytes done; status {s:?}"
    );
    same_trees(&m, &format!("seed {seed}"));
}

#[test]
fn primary_killed_while_alone_resyncs_from_its_record() {
    if !require_root_and_fuse("primary_killed_while_alone_resyncs_from_its_record") {
        return;
    }
    let seed: u64 = rand::random();
    eprintln!("seed {seed}");
    let mut m = start_with_set(seed, SMALL, opts());
    m.b.stop();
    m.wait_primary_mode("alone", Duration::from_secs(20));
    change_one_percent(m.primary_dir(), seed, 0, SMALL);
    m.a.kill9();
    let _ = mirrorkit_engine::mount::detach_stale_mount(&m.a.dirs.data);
    m.start_primary();
    m.start_secondary();
    let s = wait_resynced(&m, 0);
    assert!(
        s.sync_recorded_bytes > 0 && s.sync_recorded_bytes < FILES as u64 * SMALL / 10,
        "seed {seed}: after a kill -9 the record must still list the changes; status {s:?}"
    );
    assert!(
        s.sync_data_bytes_sent as f64 <= 1.25 * s.sync_recorded_bytes as f64,
        "seed {seed}: status {s:?}"
    );
    same_trees(&m, &format!("seed {seed}"));
}

#[test]
fn resync_interrupted_by_either_node_resumes_and_ends_identical() {
    if !require_root_and_fuse("resync_interrupted_by_either_node_resumes_and_ends_identical") {
        return;
    }
    let seed: u64 = rand::random();
    eprintln!("seed {seed}");
    // About 2.6 MB to resend at 1 MiB/s: the resync lasts long enough to be killed midway.
    let slow = MirrorOpts {
        resync_bandwidth: Some(1 << 20),
        ..opts()
    };
    let mut m = start_with_set(seed, SMALL, slow);
    for (round, victim) in ["secondary", "primary"].into_iter().enumerate() {
        m.b.stop();
        m.wait_primary_mode("alone", Duration::from_secs(20));
        change_one_percent(m.primary_dir(), seed, round, SMALL);
        // The counters add up over the process's synchronisations.
        let sent_before = m.a.status().map_or(0, |s| s.sync_data_bytes_sent);
        m.start_secondary();
        // Kill once the resync has sent some data.
        let syncing = wait_for(Duration::from_secs(30), || {
            m.a.status().filter(|s| {
                s.mode == "syncing" && s.sync_data_bytes_sent > sent_before + (256 << 10)
            })
        })
        .unwrap_or_else(|| {
            panic!(
                "seed {seed}: the resync never ran with data sent; status {:?}\n--- a log\n{}",
                m.a.status(),
                m.a.log()
            )
        });
        eprintln!(
            "seed {seed}: killing the {victim} mid-resync ({} bytes of data sent; progress {} of {} bytes, {} B/s, ETA {:?} s)",
            syncing.sync_data_bytes_sent,
            syncing.sync_done_bytes,
            syncing.sync_total_bytes,
            syncing.sync_rate,
            syncing.sync_eta_secs
        );
        assert!(
            syncing.sync_done_bytes > 0
                && syncing.sync_done_bytes < syncing.sync_total_bytes
                && syncing.sync_rate > 0
                && syncing.sync_eta_secs.is_some_and(|e| e > 0),
            "seed {seed}: a running resync shows its progress; status {syncing:?}"
        );
        if victim == "secondary" {
            m.b.kill9();
            m.start_secondary();
        } else {
            m.a.kill9();
            let _ = mirrorkit_engine::mount::detach_stale_mount(&m.a.dirs.data);
            m.start_primary();
        }
        let t = std::time::Instant::now();
        let s = wait_resynced(&m, 0);
        eprintln!(
            "seed {seed}: resynchronised {:.1} s after the {victim} restarted: {s:?}",
            t.elapsed().as_secs_f64()
        );
        if std::env::var_os("MIRRORKIT_RESYNC_LOG").is_some() {
            eprintln!("--- a log\n{}", m.a.log());
        }
        same_trees(&m, &format!("seed {seed}, {victim} killed mid-resync"));
    }
}
