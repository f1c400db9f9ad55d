//! A full disk (contract clause 5): on the primary, the application's write fails as on ext4
//! and the peer gets nothing of it; on the secondary, the primary goes on alone with the
//! reason, and resynchronises the secondary once it has room again. Each data directory is a
//! small tmpfs mounted by the test.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mirrorkit_tests::{require_root_and_fuse, tree, wait_for, Mirror, MirrorOpts};

const SYNC: Duration = Duration::from_secs(60);

/// A tmpfs of `mib` MiB over `dir`, unmounted when dropped.
struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    fn mount(dir: &Path, mib: u64) -> SmallDisk {
        std::fs::create_dir_all(dir).expect("data dir");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0755"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .expect("mount");
        assert!(
            out.status.success(),
            "mount tmpfs on {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk {
            dir: dir.to_owned(),
        }
    }

    fn resize(&self, mib: u64) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={mib}m")])
            .arg(&self.dir)
            .output()
            .expect("remount");
        assert!(
            out.status.success(),
            "remount {}: {}",
            self.dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).output();
    }
}

/// Write 1 MiB blocks to `path` until the disk is full: the error of the first refused write.
fn fill(path: &Path) -> std::io::Error {
    let mut f = std::fs::File::create(path).expect("create the filler");
    let block = vec![0x6bu8; 1 << 20];
    for _ in 0..1024 {
        if let Err(e) = f.write_all(&block) {
            return e;
        }
    }
    panic!("{} never filled the disk", path.display());
}

#[test]
fn a_full_primary_disk_fails_the_write_as_ext4_does_and_the_copies_stay_identical() {
    if !require_root_and_fuse(
        "a_full_primary_disk_fails_the_write_as_ext4_does_and_the_copies_stay_identical",
    ) {
        return;
    }
    let mut m = Mirror::new(MirrorOpts::default());
    let disk = SmallDisk::mount(&m.a.dirs.data, 8);
    m.start_primary();
    m.start_secondary();
    m.wait_primary_mode("in-sync", SYNC);

    let e = fill(&m.primary_dir().join("filler.bin"));
    assert_eq!(
        e.raw_os_error(),
        Some(libc::ENOSPC),
        "the write must fail with ENOSPC, as on the disk itself: {e}"
    );
    // Nothing else changed: the link is still in sync, the peer holds what the primary does.
    let s = m.a.status().expect("primary status");
    assert!(
        s.mode == "in-sync" && s.times_alone == 0,
        "a full disk on the primary made the link leave in-sync: {s:?}\n{}",
        m.a.log()
    );
    std::fs::File::open(m.primary_dir().join("filler.bin"))
        .and_then(|f| f.sync_all())
        .expect("fsync the filler");
    tree::drop_page_caches().expect("drop page caches");
    tree::compare(m.primary_dir(), m.secondary_dir(), 30)
        .unwrap_or_else(|e| panic!("copies differ after ENOSPC: {e}\n{}", m.a.log()));

    // Room again: writes go on, replicated.
    std::fs::remove_file(m.primary_dir().join("filler.bin")).expect("remove the filler");
    std::fs::write(m.primary_dir().join("after.txt"), b"room again").expect("write after");
    tree::compare(m.primary_dir(), m.secondary_dir(), 30).expect("copies after");
    drop(m);
    drop(disk);
}

#[test]
fn a_full_secondary_disk_leaves_the_primary_alone_with_the_reason_then_resyncs() {
    if !require_root_and_fuse(
        "a_full_secondary_disk_leaves_the_primary_alone_with_the_reason_then_resyncs",
    ) {
        return;
    }
    let mut m = Mirror::new(MirrorOpts {
        peer_timeout_ms: 1000,
        ..MirrorOpts::default()
    });
    let disk = SmallDisk::mount(&m.b.dirs.data, 8);
    m.start_primary();
    m.start_secondary();
    m.wait_primary_mode("in-sync", SYNC);

    // 16 MiB on a primary with room, a secondary with 8: every write succeeds.
    {
        let mut f = std::fs::File::create(m.primary_dir().join("big.bin")).expect("create");
        let block = vec![0x5au8; 1 << 20];
        for i in 0..16 {
            f.write_all(&block)
                .unwrap_or_else(|e| panic!("write {i} failed on the primary: {e}\n{}", m.a.log()));
        }
        f.sync_all().expect("fsync");
    }
    // The status file is rewritten every 100 ms.
    let left = wait_for(Duration::from_secs(10), || {
        m.a.status()
            .filter(|s| s.mode != "in-sync" && s.times_alone > 0)
    });
    assert!(
        left.is_some(),
        "the secondary cannot hold it, yet the primary says in sync: {:?}\n{}",
        m.a.status(),
        m.a.log()
    );
    let log = m.b.log();
    assert!(
        log.contains("No space left on device"),
        "the secondary does not say why:\n{log}"
    );

    // While it has no room, the primary retries without flooding, and says why.
    std::thread::sleep(Duration::from_secs(4));
    let s = m.a.status().expect("primary status");
    assert!(
        s.reason.contains("No space left on device") && s.reason.contains("next attempt in"),
        "the primary's reason does not say why: {s:?}"
    );
    // Attempts after 1, 2, 4 s...: a handful, not one every 200 ms.
    assert!(
        s.sessions <= 5,
        "{} sessions in 4 s against a full secondary:\n{}",
        s.sessions,
        m.a.log()
    );
    // Room on the secondary again: the resync brings it in sync, with identical copies.
    disk.resize(64);
    let s = wait_for(SYNC, || m.a.status().filter(|s| s.mode == "in-sync")).unwrap_or_else(|| {
        panic!(
            "no resync after the secondary got room: {:?}\n--- primary\n{}\n--- secondary\n{}",
            m.a.status(),
            m.a.log(),
            m.b.log()
        )
    });
    eprintln!(
        "full secondary: {} sessions, {} times alone, then in sync",
        s.sessions, s.times_alone
    );
    tree::drop_page_caches().expect("drop page caches");
    tree::compare(m.primary_dir(), m.secondary_dir(), 30).expect("copies identical");
    drop(m);
    drop(disk);
}

/// The daemon's state disk is full when the primary must record a new generation (its peer
/// died): the module waits, says why in the status, and the daemon keeps answering; once there
/// is room, the module goes on (ALONE).
#[test]
fn a_full_state_disk_stalls_the_module_not_the_daemon() {
    use mirrorkit_tests::lab::{require_lab, Lab, LabModule};
    if !require_lab("a_full_state_disk_stalls_the_module_not_the_daemon") {
        return;
    }
    let m = LabModule {
        default_primary: Some("alpha".into()),
        ..LabModule::demo("demo", 8080, 80)
    };
    let mut lab = Lab::new(vec![m]);
    let state = lab.nodes[0].base.join("state");
    let disk = SmallDisk::mount(&state, 4);
    lab.start(0);
    lab.start(1);
    lab.wait_states("demo", [Some("PRIM"), Some("SECOND")], SYNC);
    let filler = state.join("filler.bin");
    let e = fill(&filler);
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");

    lab.kill9(1);
    // The daemon answers, and the module says what it waits for.
    let stalled = wait_for(SYNC, || {
        let s = lab.status_now(0)?;
        let m = s.modules.into_iter().next()?;
        m.problems
            .iter()
            .any(|p| {
                (p.contains("cannot persist") || p.contains("cannot record"))
                    && p.contains("No space left on device")
            })
            .then_some(m)
    })
    .unwrap_or_else(|| {
        panic!(
            "no stall reported: {:?}\n{}",
            lab.status_now(0),
            mirrorkit_tests::lab::tail(&lab.log(0), 40)
        )
    });
    eprintln!("stalled: {:?}: {:?}", stalled.state, stalled.problems);
    // Still answering a while later (the daemon's loop is not stuck in the retries).
    std::thread::sleep(Duration::from_secs(1));
    assert!(lab.status_now(0).is_some(), "the daemon stopped answering");

    std::fs::remove_file(&filler).expect("remove the filler");
    let deadline = std::time::Instant::now() + SYNC;
    loop {
        let s = lab.status_now(0).and_then(|s| s.modules.into_iter().next());
        if let Some(m) = &s {
            if m.problems.is_empty() && m.state.map(|k| k.name()) == Some("ALONE") {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not ALONE once the disk had room: {s:?}\n{}",
            mirrorkit_tests::lab::tail(&lab.log(0), 40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(lab);
    drop(disk);
}
