//! Online verify (`mirrorkit verify`): both copies compared by chunk digests while the
//! application writes. No false difference under writes; every difference made behind the
//! mirror's back on the secondary is reported with its path and range; `--repair` brings the
//! copies back to identical through an incremental resync.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mirrorkit_tests::{mirrorkit_bin, require_root_and_fuse, tree, wait_for, Mirror, MirrorOpts};

/// Run `mirrorkit verify`; (exit code, stdout + stderr).
fn verify(m: &Mirror, repair: bool) -> (i32, String) {
    let mut cmd = Command::new(mirrorkit_bin());
    cmd.arg("verify").arg("--state-dir").arg(&m.a.dirs.state);
    if repair {
        cmd.arg("--repair");
    }
    let out = cmd.output().expect("run mirrorkit verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn verify_finds_every_difference_and_repairs_them_while_the_application_writes() {
    if !require_root_and_fuse(
        "verify_finds_every_difference_and_repairs_them_while_the_application_writes",
    ) {
        return;
    }
    let m = Mirror::start(MirrorOpts::default());
    let dir = m.primary_dir().to_path_buf();
    let mut block = vec![0u8; 1 << 20];
    for (i, b) in block.iter_mut().enumerate() {
        *b = (i * 7 % 251) as u8;
    }
    // 9 MiB: three verify groups; a small file; an empty one; a hard link; a sparse file.
    let mut big = std::fs::File::create(dir.join("big")).unwrap();
    for _ in 0..9 {
        big.write_all(&block).unwrap();
    }
    // Bulk, so that the verify lasts long enough for the application to write beside it.
    let mut bulk = std::fs::File::create(dir.join("bulk")).unwrap();
    for _ in 0..48 {
        bulk.write_all(&block).unwrap();
    }
    std::fs::write(dir.join("small"), b"small file\n").unwrap();
    std::fs::write(dir.join("empty"), b"").unwrap();
    std::fs::create_dir(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/gone"), b"will vanish on the peer\n").unwrap();
    std::fs::hard_link(dir.join("small"), dir.join("sub/small-link")).unwrap();
    let sparse = std::fs::File::create(dir.join("sparse")).unwrap();
    sparse.write_all_at(b"end", 5 << 20).unwrap();

    // The application writes all along the first verify: no difference may be reported.
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, count) = (stop.clone(), count.clone());
        let dir = dir.clone();
        std::thread::spawn(move || {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(dir.join("big"))
                .unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let off = (n * 1_234_567) % (9 << 20);
                f.write_all_at(&n.to_le_bytes().repeat(512), off).unwrap();
                std::fs::write(dir.join(format!("w{}", n % 5)), n.to_string()).unwrap();
                n += 1;
                count.store(n, Ordering::Relaxed);
            }
        })
    };
    assert!(
        wait_for(Duration::from_secs(10), || (count.load(Ordering::Relaxed)
            >= 20)
            .then_some(()))
        .is_some(),
        "the writer does not write"
    );
    let at_start = count.load(Ordering::Relaxed);
    let (code, out) = verify(&m, false);
    let during = count.load(Ordering::Relaxed) - at_start;
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    eprintln!("first verify ran beside {during} application writes");
    assert!(
        during > 0,
        "the application did not write during the verify: the test tests nothing"
    );
    assert_eq!(
        code, 0,
        "identical copies under writes ({during} writes):\n{out}"
    );
    assert!(out.contains("differences=0"), "{out}");

    // Differences made behind the mirror's back, on the secondary.
    let peer = m.secondary_dir();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(peer.join("big"))
        .unwrap();
    f.write_all_at(b"corrupted", (3 << 20) + 10).unwrap();
    f.write_all_at(b"corrupted too", (8 << 20) + 70_000)
        .unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(peer.join("small"))
        .unwrap()
        .set_len(3)
        .unwrap();
    std::fs::remove_file(peer.join("sub/gone")).unwrap();
    let (code, out) = verify(&m, false);
    assert_eq!(code, 1, "differences must be reported:\n{out}");
    for expected in [
        "differs: \"big\" bytes 3145728..3211264: content",
        "differs: \"big\" bytes 8454144..8519680: content",
        "differs: \"small\" bytes 0..end: other size on the peer",
        "differs: \"sub/gone\" bytes 0..end: missing on the peer",
        "differences=4",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    let before = m.a.status().unwrap();
    let sessions = before.sessions;

    // Repair: recorded, resynchronised, identical.
    let (code, out) = verify(&m, true);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("repairing=true"), "{out}");
    wait_for(Duration::from_secs(30), || {
        m.a.status()
            .filter(|s| s.mode == "in-sync" && s.sessions > sessions)
    })
    .unwrap_or_else(|| {
        panic!(
            "no resync after the repair: {:?}\n{}",
            m.a.status(),
            m.a.log()
        )
    });
    // The record also lists what the application wrote since the peer's last flush (it is
    // resent in case the peer lost it); only what differs travels.
    let s = m.a.status().unwrap();
    let sent = s.sync_data_bytes_sent - before.sync_data_bytes_sent;
    assert!(
        sent > 0 && sent <= 4 * 65536,
        "the repair sends the differing chunks, not everything: {sent} bytes; {s:?}"
    );
    tree::drop_page_caches().expect("drop page caches");
    tree::compare(m.primary_dir(), m.secondary_dir(), 20)
        .unwrap_or_else(|e| panic!("trees differ after the repair: {e}"));
    let (code, out) = verify(&m, false);
    assert_eq!(code, 0, "{out}");
}
