//! The primary holds one descriptor per inode the kernel caches (its inode table): an
//! application that makes more files than the process's soft limit on open files must not
//! get EMFILE from the mirror. The node raises its own limit at start; this test starts it
//! with a low soft limit (inherited from the test) and makes more files than that.

use std::time::Duration;

use mirrorkit_tests::{require_root_and_fuse, tree, Mirror, MirrorOpts};

/// The soft limit the nodes inherit.
const SOFT: u64 = 512;
/// More files than that (every one stays in the kernel's cache, so its descriptor stays open).
const FILES: usize = 1500;

#[test]
fn more_files_than_the_inherited_descriptor_limit() {
    if !require_root_and_fuse("more_files_than_the_inherited_descriptor_limit") {
        return;
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out-pointer.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    let saved = lim;
    lim.rlim_cur = SOFT.min(lim.rlim_max);
    // SAFETY: a valid rlimit; only this test process (and the nodes it starts) are affected.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    let m = Mirror::start(MirrorOpts::default());
    // The test's own descriptors need room again (the nodes are started).
    // SAFETY: as above.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &saved) }, 0);
    let p = m.primary_dir();
    for d in 0..10 {
        std::fs::create_dir(p.join(format!("d{d}"))).unwrap();
    }
    for i in 0..FILES {
        let path = p.join(format!("d{}/f{i}", i % 10));
        if let Err(e) = std::fs::write(&path, i.to_le_bytes()) {
            panic!(
                "file {i} of {FILES}: {}: {e}\n--- a log\n{}",
                path.display(),
                m.a.log()
            );
        }
    }
    tree::compare(m.primary_dir(), m.secondary_dir(), 20).unwrap();
    m.wait_primary_mode("in-sync", Duration::from_secs(1));

    // A limit reached anyway (here: lowered from outside to what the primary holds now, plus
    // a little) is an EMFILE for the application and an error in the node's log saying why.
    let pid = m.a.pid().expect("primary running") as libc::pid_t;
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64;
    let mut had = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointers; the primary is our child, and only its soft limit changes.
    assert_eq!(
        unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut had) },
        0
    );
    let low = libc::rlimit {
        rlim_cur: open + 20,
        rlim_max: had.rlim_max,
    };
    // SAFETY: as above.
    assert_eq!(
        unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &low, std::ptr::null_mut()) },
        0
    );
    let refused = (0..200usize).find_map(|i| {
        std::fs::write(p.join(format!("more{i}")), b"x")
            .err()
            .map(|e| (i, e))
    });
    let (i, e) = refused.expect("200 more files fitted in 20 descriptors");
    assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "file more{i}: {e}");
    let log = m.a.log();
    assert!(
        log.contains("the mirror cannot open a file"),
        "no explanation in the primary's log:\n{log}"
    );
    // Whatever the refused call left on the primary (a create that made the file but could
    // not look it up), the secondary has too: read through the mount once the primary has room
    // again, and after the kernel's attribute cache of the directory expired (1 s): a failed
    // create does not refresh the directory's cached time.
    // SAFETY: as above.
    let r = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &had, std::ptr::null_mut()) };
    assert_eq!(
        r,
        0,
        "{}; primary alive: {}\n{}",
        std::io::Error::last_os_error(),
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        m.a.log()
    );
    std::thread::sleep(Duration::from_millis(1100));
    if let Err(d) = tree::compare(m.primary_dir(), m.secondary_dir(), 20) {
        panic!("{d}\n--- a log\n{}\n--- b log\n{}", m.a.log(), m.b.log());
    }
}
