//! Losing the secondary: a write waits for it at most the peer timeout, the primary records
//! durably that its peer is out of sync before that write returns, continues alone, and
//! resynchronises the secondary when it comes back (after a freeze, or a kill -9 and restart).

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use mirrorkit_store::StateFile;
use mirrorkit_tests::{require_root_and_fuse, tree, wait_for, Mirror, MirrorOpts, Status};

/// Peer timeout of these tests.
const PEER_TIMEOUT_MS: u64 = 1000;
/// How much longer than the peer timeout a blocked write may take (scheduling, the durable
/// state-file write, a loaded CI machine).
const SLACK_MS: u64 = 1500;
/// A returning secondary is resynchronised within this (reconnect delay, handshake, sync).
const RESYNC_TIMEOUT: Duration = Duration::from_secs(30);

fn opts() -> MirrorOpts {
    MirrorOpts {
        peer_timeout_ms: PEER_TIMEOUT_MS,
        ..MirrorOpts::default()
    }
}

fn peer_in_sync(m: &Mirror) -> bool {
    StateFile::new(&m.a.dirs.state)
        .load()
        .expect("primary state file")
        .peer_in_sync
}

/// Write through the mount to a file opened before; returns how long it took.
fn timed_write(f: &std::fs::File, data: &[u8], off: u64) -> Duration {
    let t = Instant::now();
    f.write_all_at(data, off)
        .expect("a write while the peer is gone must succeed");
    t.elapsed()
}

/// Changes the primary makes while alone: new, changed, renamed and removed entries.
fn change_alone(m: &Mirror) {
    let p = m.primary_dir();
    for i in 0..20 {
        let t = Instant::now();
        std::fs::write(
            p.join(format!("alone/n{i}")),
            vec![i as u8; 10_000 + i * 1000],
        )
        .unwrap();
        assert!(
            t.elapsed() < Duration::from_millis(PEER_TIMEOUT_MS / 2),
            "a write while alone took {:?}: it waited for the absent peer",
            t.elapsed()
        );
    }
    std::fs::rename(p.join("base/f3"), p.join("alone/moved")).unwrap();
    std::fs::remove_file(p.join("base/f4")).unwrap();
    std::fs::remove_dir_all(p.join("base/sub")).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(p.join("base/f5"))
        .unwrap();
    f.write_all_at(b"changed while alone", 1 << 20).unwrap();
    f.sync_all().unwrap();
}

/// A tree in sync before the peer goes: `base/` files and a subdirectory, an empty `alone/`.
fn base_tree(m: &Mirror) {
    let p = m.primary_dir();
    std::fs::create_dir_all(p.join("base/sub")).unwrap();
    std::fs::create_dir(p.join("alone")).unwrap();
    for i in 0..8 {
        std::fs::write(p.join(format!("base/f{i}")), vec![b'a' + i as u8; 50_000]).unwrap();
    }
    std::fs::write(p.join("base/sub/x"), b"x").unwrap();
    tree::compare(m.primary_dir(), m.secondary_dir(), 20).expect("in sync before the loss");
}

/// Wait until the primary is in sync again in session `session` (or a later one).
fn wait_in_sync_session(m: &Mirror, session: u64) -> Status {
    wait_for(RESYNC_TIMEOUT, || {
        m.a.status()
            .filter(|s| s.mode == "in-sync" && s.sessions >= session)
    })
    .unwrap_or_else(|| {
        panic!(
            "not in sync in session {session} within {RESYNC_TIMEOUT:?}: {:?}\n--- primary log\n{}\n--- secondary log\n{}",
            m.a.status(),
            m.a.log(),
            m.b.log()
        )
    })
}

fn assert_resynced(m: &Mirror, what: &str) {
    let s = wait_in_sync_session(m, 2);
    assert!(
        s.times_alone >= 1,
        "{what}: expected a second session after a time alone: {s:?}"
    );
    assert!(
        peer_in_sync(m),
        "{what}: in sync, but the state file says otherwise"
    );
    tree::drop_page_caches().expect("drop page caches (needs root)");
    tree::compare(m.primary_dir(), m.secondary_dir(), 30)
        .unwrap_or_else(|e| panic!("{what}: after the resynchronisation: {e}"));
    assert_eq!(
        std::fs::read(m.secondary_dir().join("alone/n19")).unwrap(),
        vec![19u8; 29_000],
        "{what}: a write made alone is missing on the secondary's disk"
    );
    let sstate = StateFile::new(&m.b.dirs.state).load().unwrap();
    assert!(sstate.consistent, "{what}: secondary state {sstate:?}");
}

#[test]
fn frozen_secondary_then_resync() {
    if !require_root_and_fuse("frozen_secondary_then_resync") {
        return;
    }
    let started = Instant::now();
    let m = Mirror::start(opts());
    base_tree(&m);
    assert!(peer_in_sync(&m));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(m.primary_dir().join("base/f0"))
        .unwrap();
    let in_sync_write = timed_write(&f, b"mirrored", 0);
    assert_eq!(
        &std::fs::read(m.secondary_dir().join("base/f0")).unwrap()[..8],
        b"mirrored",
        "an acknowledged write is not on the secondary's disk"
    );

    m.b.pause(true);
    let blocked = timed_write(&f, b"after the freeze", 100);
    // Read before anything else: the record must precede the write's return.
    let recorded = peer_in_sync(&m);
    assert!(
        !recorded,
        "the write returned after {blocked:?} while the state file still said the peer was in sync; status {:?}\n--- a log\n{}\n--- b log\n{}",
        m.a.status(),
        m.a.log(),
        m.b.log()
    );
    assert!(
        blocked >= Duration::from_millis(PEER_TIMEOUT_MS * 8 / 10)
            && blocked <= Duration::from_millis(PEER_TIMEOUT_MS + SLACK_MS),
        "a write with a frozen peer took {blocked:?} (peer timeout {PEER_TIMEOUT_MS} ms; in sync it took {in_sync_write:?})"
    );
    m.wait_primary_mode("alone", Duration::from_secs(2));
    change_alone(&m);
    // The frozen secondary's disk did not get them.
    assert!(!m.secondary_dir().join("alone/n0").exists());
    assert_eq!(
        &std::fs::read(m.secondary_dir().join("base/f0")).unwrap()[100..116],
        &[b'a'; 16],
        "the secondary got a write its primary gave up waiting for"
    );

    m.b.pause(false);
    assert_resynced(&m, "after SIGCONT");

    // Again, with an fsync as the first operation the frozen peer cannot acknowledge.
    f.write_all_at(b"before the second freeze", 300).unwrap();
    m.b.pause(true);
    let t = Instant::now();
    f.sync_data()
        .expect("fsync while the peer is frozen must succeed");
    let blocked_fsync = t.elapsed();
    assert!(
        !peer_in_sync(&m),
        "fsync returned while the state file still said the peer was in sync"
    );
    assert!(
        blocked_fsync <= Duration::from_millis(PEER_TIMEOUT_MS + SLACK_MS),
        "an fsync with a frozen peer took {blocked_fsync:?} (peer timeout {PEER_TIMEOUT_MS} ms)"
    );
    m.wait_primary_mode("alone", Duration::from_secs(2));
    std::fs::write(m.primary_dir().join("alone/second"), b"second time alone").unwrap();
    m.b.pause(false);
    wait_in_sync_session(&m, 3);
    tree::drop_page_caches().expect("drop page caches (needs root)");
    tree::compare(m.primary_dir(), m.secondary_dir(), 30)
        .unwrap_or_else(|e| panic!("after the second resynchronisation: {e}"));
    eprintln!(
        "frozen_secondary_then_resync: blocked write {blocked:?}, blocked fsync {blocked_fsync:?}, {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn killed_secondary_then_restart() {
    if !require_root_and_fuse("killed_secondary_then_restart") {
        return;
    }
    let started = Instant::now();
    let mut m = Mirror::start(opts());
    base_tree(&m);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(m.primary_dir().join("base/f0"))
        .unwrap();

    m.b.kill9();
    let blocked = timed_write(&f, b"after the kill", 100);
    assert!(
        !peer_in_sync(&m),
        "the write returned while the state file still said the peer was in sync"
    );
    assert!(
        blocked <= Duration::from_millis(PEER_TIMEOUT_MS + SLACK_MS),
        "a write with a dead peer took {blocked:?} (peer timeout {PEER_TIMEOUT_MS} ms)"
    );
    m.wait_primary_mode("alone", Duration::from_secs(2));
    change_alone(&m);
    assert!(!m.secondary_dir().join("alone/n0").exists());

    m.start_secondary();
    assert_resynced(&m, "after restarting the secondary");
    // The mirror works on: a write after the resync is on the secondary's disk when it returns.
    timed_write(&f, b"after the resync", 200);
    assert_eq!(
        &std::fs::read(m.secondary_dir().join("base/f0")).unwrap()[200..216],
        b"after the resync"
    );
    eprintln!(
        "killed_secondary_then_restart: blocked write {blocked:?}, {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
