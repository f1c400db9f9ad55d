//! Read passthrough (`mirror primary --read-passthrough`): read-only opens are served by the
//! kernel from the backing file, without the engine; writers still go through the engine and
//! reach the peer, waiting for passthrough readers of the same file to close (the kernel allows
//! no caching open of an inode while a passthrough one exists).

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mirrorkit_tests::{
    require_root_and_fuse, skip_unless_ci, tree, wait_for, Mirror, MirrorOpts, Status,
};

/// A mirror whose primary passes reads through; `None` (skipped) where that is unavailable.
fn start(test: &str) -> Option<Mirror> {
    if !require_root_and_fuse(test) {
        return None;
    }
    let mut m = Mirror::new(MirrorOpts::default());
    m.start_secondary();
    if let Err(log) = m.start_primary_with(&["--read-passthrough"]) {
        panic!("primary did not start:\n{log}");
    }
    let s = m.wait_primary_mode("in-sync", Duration::from_secs(30));
    if !s.read_passthrough {
        skip_unless_ci(&format!(
            "{test}: read passthrough unavailable here: {}",
            s.read_passthrough_reason
        ));
        return None;
    }
    Some(m)
}

/// The primary's status once `f` holds for it (the status file is rewritten every 100 ms).
fn status_when(m: &Mirror, what: &str, f: impl Fn(&Status) -> bool) -> Status {
    wait_for(Duration::from_secs(5), || m.a.status().filter(|s| f(s)))
        .unwrap_or_else(|| panic!("primary status never showed {what}: {:?}", m.a.status()))
}

/// Let the status file catch up with everything done so far, then return it.
fn settled(m: &Mirror) -> Status {
    std::thread::sleep(Duration::from_millis(250));
    m.a.status().expect("primary status")
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .rotate_left(seed as u32 % 31) as u8
                ^ seed
        })
        .collect()
}

fn read_all(path: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut v))
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    v
}

#[test]
fn read_only_opens_pass_through_and_read_the_data() {
    let Some(m) = start("read_only_opens_pass_through_and_read_the_data") else {
        return;
    };
    let f = m.primary_dir().join("data.bin");
    let data = pattern(5 << 20, 3);
    std::fs::write(&f, &data).expect("write through the mount");
    let before = settled(&m);

    assert!(
        read_all(&f) == data,
        "passthrough read returned other bytes"
    );
    // Also at an offset, and across the end of the file.
    let file = File::open(&f).expect("open");
    let mut buf = vec![0u8; 8192];
    let n = file
        .read_at(&mut buf, (data.len() - 4096) as u64)
        .expect("pread");
    assert_eq!(&buf[..n], &data[data.len() - 4096..]);
    drop(file);

    let after = status_when(&m, "two passthrough opens", |s| {
        s.passthrough_opens >= before.passthrough_opens + 2
    });
    assert_eq!(
        after.engine_reads, before.engine_reads,
        "the engine served FUSE reads for passthrough opens"
    );
    assert_eq!(after.engine_read_opens, before.engine_read_opens);
}

#[test]
fn a_writer_waits_for_passthrough_readers_and_everyone_sees_its_data() {
    let Some(m) = start("a_writer_waits_for_passthrough_readers_and_everyone_sees_its_data") else {
        return;
    };
    let f = m.primary_dir().join("f");
    let v1 = pattern(1 << 20, 1);
    std::fs::write(&f, &v1).expect("write v1");
    let before = settled(&m);

    // A reader through passthrough holds the file.
    let reader = File::open(&f).expect("open reader");
    let mut buf = vec![0u8; 4096];
    reader.read_exact_at(&mut buf, 0).expect("read");
    assert_eq!(buf, v1[..4096]);

    // A writer opens: it must wait for the reader (the kernel would answer EIO otherwise).
    let (tx, rx) = mpsc::channel();
    let path = f.clone();
    let writer = std::thread::spawn(move || {
        let w = OpenOptions::new().write(true).open(&path);
        let _ = tx.send(());
        w
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "a writer opened while a passthrough reader held the file"
    );
    status_when(&m, "the writer waiting", |s| {
        s.passthrough_waits == before.passthrough_waits + 1
    });
    // A new read-only open queues behind the waiting writer.
    let (rtx, rrx) = mpsc::channel();
    let path = f.clone();
    let queued = std::thread::spawn(move || {
        let r = File::open(&path);
        let _ = rtx.send(());
        r
    });
    assert!(
        rrx.recv_timeout(Duration::from_millis(300)).is_err(),
        "a reader overtook the waiting writer"
    );
    // The passthrough reader still reads.
    reader.read_exact_at(&mut buf, 4096).expect("read");
    assert_eq!(buf, v1[4096..8192]);

    let t0 = Instant::now();
    drop(reader);
    rx.recv_timeout(Duration::from_secs(3))
        .expect("the writer's open proceeds once the reader closed");
    let w = writer
        .join()
        .expect("writer thread")
        .expect("open for writing");
    let queued = queued
        .join()
        .expect("reader thread")
        .expect("queued read-only open");
    eprintln!("writer admitted {:?} after the reader closed", t0.elapsed());

    // Writes go through the engine; the queued reader (a caching open, since a writer is
    // open) and a new one see them at once.
    let v2 = pattern(256 << 10, 2);
    w.write_all_at(&v2, 64 << 10).expect("write v2");
    let mut expected = v1.clone();
    expected[64 << 10..(64 << 10) + v2.len()].copy_from_slice(&v2);
    let mut got = vec![0u8; expected.len()];
    queued.read_exact_at(&mut got, 0).expect("read queued");
    assert!(got == expected, "caching reader missed the write");
    assert!(
        read_all(&f) == expected,
        "reader while writing missed the write"
    );
    let s = status_when(&m, "two read-only opens through the engine", |s| {
        s.engine_read_opens == before.engine_read_opens + 2
    });
    assert_eq!(s.passthrough_refusals, before.passthrough_refusals);
    drop(queued);
    drop(w);

    // Writer closed: passthrough again, reading the new bytes from the backing file.
    let pt = settled(&m).passthrough_opens;
    assert!(
        read_all(&f) == expected,
        "passthrough reader missed the write"
    );
    status_when(&m, "a new passthrough open", |s| {
        s.passthrough_opens == pt + 1
    });

    // And the peer has them.
    let on_peer = wait_for(Duration::from_secs(5), || {
        std::fs::read(m.secondary_dir().join("f"))
            .ok()
            .filter(|v| *v == expected)
    });
    assert!(on_peer.is_some(), "the secondary does not have the write");
    tree::compare(m.primary_dir(), m.secondary_dir(), 20).expect("trees identical");
}

#[test]
fn a_writer_is_refused_when_a_passthrough_reader_stays() {
    let Some(m) = start("a_writer_is_refused_when_a_passthrough_reader_stays") else {
        return;
    };
    let f = m.primary_dir().join("f");
    let v1 = pattern(100_000, 5);
    std::fs::write(&f, &v1).expect("write");
    let before = settled(&m);

    let reader = File::open(&f).expect("open reader");
    let t0 = Instant::now();
    let e = OpenOptions::new()
        .append(true)
        .open(&f)
        .expect_err("a writer opened while a passthrough reader held the file");
    let waited = t0.elapsed();
    assert_eq!(e.raw_os_error(), Some(libc::ETXTBSY), "{e}");
    assert!(
        waited >= Duration::from_millis(4500),
        "refused after {waited:?}, before the drain wait"
    );
    status_when(&m, "the refusal", |s| {
        s.passthrough_refusals == before.passthrough_refusals + 1
    });
    let mut v = Vec::new();
    (&reader)
        .read_to_end(&mut v)
        .expect("the reader still reads");
    assert!(v == v1);
    drop(reader);

    // Once the reader is gone the same open works, and its write is replicated.
    let mut w = OpenOptions::new()
        .append(true)
        .open(&f)
        .expect("open for append");
    std::io::Write::write_all(&mut w, b"tail").expect("append");
    drop(w);
    let mut expected = v1;
    expected.extend_from_slice(b"tail");
    assert!(read_all(&f) == expected);
    tree::compare(m.primary_dir(), m.secondary_dir(), 20).expect("trees identical");
}

#[test]
fn mmap_of_a_passthrough_open_reads_the_file() {
    let Some(m) = start("mmap_of_a_passthrough_open_reads_the_file") else {
        return;
    };
    let f = m.primary_dir().join("mapped");
    let data = pattern(3 << 20 | 123, 9);
    std::fs::write(&f, &data).expect("write");
    let before = settled(&m);

    let file = File::open(&f).expect("open");
    let len = data.len();
    // SAFETY: a fresh read-only shared mapping of an open file, unmapped below.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    assert_ne!(
        ptr,
        libc::MAP_FAILED,
        "mmap: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: the mapping is `len` bytes long and readable until munmap.
    let mapped = unsafe { std::slice::from_raw_parts(ptr as *const u8, len) };
    assert!(mapped == &data[..], "mapping differs from the file");
    // The mapping outlives the descriptor.
    drop(file);
    assert_eq!(mapped[len - 1], data[len - 1]);
    let s = status_when(&m, "the passthrough open", |s| {
        s.passthrough_opens == before.passthrough_opens + 1
    });
    assert_eq!(
        s.engine_reads, before.engine_reads,
        "mapped reads went through the engine"
    );
    // SAFETY: unmapping the mapping made above; `mapped` is not used after.
    assert_eq!(unsafe { libc::munmap(ptr, len) }, 0);

    // Unmapped and closed: a writer opens without waiting.
    let t0 = Instant::now();
    let w = OpenOptions::new()
        .write(true)
        .open(&f)
        .expect("open for writing");
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "writer waited {:?}",
        t0.elapsed()
    );
    w.write_all_at(b"new", 0).expect("write");
    drop(w);
    assert_eq!(&read_all(&f)[..3], b"new");
}
