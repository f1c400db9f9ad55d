//! Durability under a crash of the primary (the contract, clauses 1 and 2): every record whose
//! fsync (or O_SYNC / O_DSYNC write) returned to the application is on the secondary's disk,
//! intact and in order, and a file replaced atomically (write, fsync, rename, fsync of the
//! directory) is there whole in at least its last durable version, and every record msync'ed
//! through a shared mapping is there, when the primary daemon is killed with SIGKILL at a
//! random instant of the writers' loops.
//!
//! Each round: run writers through the mount, kill -9 the primary at a random moment (seeded;
//! the seed is printed, and `MIRRORKIT_SEED` replays it), check the secondary's copy and that
//! it still calls itself consistent, then restart the primary (it mounts again over the dead
//! FUSE mount its predecessor left; every other round the secondary is restarted too, else it
//! still holds the dead primary's session) and check that the pair converges to identical trees.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mirrorkit_tests::records::{record, RECORD_BYTES};
use mirrorkit_tests::{require_root_and_fuse, tree, wait_until, Mirror, MirrorOpts};
use rand::{Rng, SeedableRng};

/// Rounds of start, write, kill, check, restart (each about a second).
const ROUNDS: usize = 6;
/// Longest the writers run after their first acknowledged record before the kill.
const MAX_KILL_DELAY_MS: u64 = 700;
/// Longest a writer may take to notice that the daemon is gone.
const WRITER_EXIT_TIMEOUT_MS: u64 = 10_000;

/// How a writer makes each record durable.
#[derive(Clone, Copy, Debug)]
enum Durability {
    /// `write` then `fsync`.
    Fsync,
    /// `write` then `fdatasync`.
    Fdatasync,
    /// The file is opened `O_DSYNC`: each `write` is durable when it returns.
    ODsync,
    /// The file is opened `O_SYNC`.
    OSync,
    /// Records written into a shared mapping of a pre-sized file, each followed by
    /// `msync(MS_SYNC)`; by a child process (see `src/bin/mmap_writer.rs`).
    Msync,
    /// Not appended: each generation replaces the file `state` of a directory atomically
    /// (write `state.tmp`, fsync it, rename it over `state`, fsync the directory).
    Replace,
}

/// Size in records of an `Msync` writer's file.
const MSYNC_RECORDS: usize = 2048;
/// How often the progress of an `Msync` writer is read from its progress file.
const PROGRESS_POLL_MS: u64 = 2;

/// Records in one generation of a `Replace` writer's file.
const REPLACE_RECORDS: u64 = 2;

/// Append records to `path` until an error; after each record is durable, store the number of
/// durable records in `durable`. Returns the error that stopped it.
fn write_records(path: &Path, how: Durability, tag: u64, durable: &AtomicU64) -> std::io::Error {
    if let Durability::Replace = how {
        return replace_generations(path, tag, durable);
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.create_new(true).write(true);
    match how {
        Durability::ODsync => {
            opts.custom_flags(libc::O_DSYNC);
        }
        Durability::OSync => {
            opts.custom_flags(libc::O_SYNC);
        }
        Durability::Fsync | Durability::Fdatasync | Durability::Replace | Durability::Msync => {}
    }
    let mut f = match opts.open(path) {
        Ok(f) => f,
        Err(e) => return e,
    };
    for n in 0u64.. {
        let r = record(tag, n);
        // One write() call: the kernel sends it as one FUSE request, so a record is on the
        // secondary whole or not at all.
        match f.write(&r) {
            Ok(w) if w == r.len() => {}
            Ok(w) => return std::io::Error::other(format!("short write of {w} bytes")),
            Err(e) => return e,
        }
        let synced = match how {
            Durability::Fsync => f.sync_all(),
            Durability::Fdatasync => f.sync_data(),
            Durability::ODsync | Durability::OSync | Durability::Replace | Durability::Msync => {
                Ok(())
            }
        };
        if let Err(e) = synced {
            return e;
        }
        durable.store(n + 1, Ordering::SeqCst);
    }
    unreachable!("the loop only ends by an error")
}

/// Content of generation `g` of a `Replace` writer's file.
fn generation(tag: u64, g: u64) -> Vec<u8> {
    (0..REPLACE_RECORDS)
        .flat_map(|k| record(tag, g * REPLACE_RECORDS + k))
        .collect()
}

/// Replace `dir/state` by generation after generation until an error; after each replacement
/// is durable (the directory's fsync returned), store the number of durable generations.
fn replace_generations(dir: &Path, tag: u64, durable: &AtomicU64) -> std::io::Error {
    let run = || -> std::io::Result<()> {
        std::fs::create_dir(dir)?;
        let (tmp, state) = (dir.join("state.tmp"), dir.join("state"));
        for g in 0u64.. {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&generation(tag, g))?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, &state)?;
            std::fs::File::open(dir)?.sync_all()?;
            durable.store(g + 1, Ordering::SeqCst);
        }
        Ok(())
    };
    match run() {
        Ok(()) => unreachable!("the loop only ends by an error"),
        Err(e) => e,
    }
}

struct Writer {
    name: String,
    tag: u64,
    how: Durability,
    durable: Arc<AtomicU64>,
    done: std::sync::mpsc::Receiver<std::io::Error>,
}

/// Run the `Msync` writer process until it exits; mirror its progress file into `durable`.
fn run_mmap_writer(path: &Path, tag: u64, progress: &Path, durable: &AtomicU64) -> std::io::Error {
    let mut child = match std::process::Command::new(env!("CARGO_BIN_EXE_mmap_writer"))
        .arg(path)
        .arg(tag.to_string())
        .arg(MSYNC_RECORDS.to_string())
        .arg(progress)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return e,
    };
    let read_progress = || {
        std::fs::read(progress)
            .ok()
            .and_then(|b| b.get(..8).and_then(|b| b.try_into().ok()))
            .map(u64::from_le_bytes)
            .unwrap_or(0)
    };
    loop {
        match child.try_wait() {
            Ok(None) => {
                durable.store(read_progress(), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(PROGRESS_POLL_MS));
            }
            Ok(Some(status)) => {
                // Exited: its last word is final.
                durable.store(read_progress(), Ordering::SeqCst);
                return std::io::Error::other(format!("mmap writer exited: {status}"));
            }
            Err(e) => return e,
        }
    }
}

fn spawn_writer(dir: &Path, progress: &Path, name: &str, tag: u64, how: Durability) -> Writer {
    let path: PathBuf = dir.join(name);
    let durable = Arc::new(AtomicU64::new(0));
    let (tx, done) = std::sync::mpsc::channel();
    let d = durable.clone();
    let progress = progress.to_path_buf();
    std::thread::spawn(move || {
        let e = match how {
            Durability::Msync => run_mmap_writer(&path, tag, &progress, &d),
            _ => write_records(&path, how, tag, &d),
        };
        let _ = tx.send(e);
    });
    Writer {
        name: name.to_string(),
        tag,
        how,
        durable,
        done,
    }
}

/// Check the secondary's copy of a writer's file: a whole number of records, each intact and in
/// order (a state the primary passed through), and at least every durable one.
fn check_secondary_copy(m: &Mirror, w: &Writer, durable: u64, seed: u64) {
    if let Durability::Replace = w.how {
        return check_secondary_state(m, w, durable, seed);
    }
    let path = m.secondary_dir().join(&w.name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "seed {seed}: {} ({:?}): {durable} records were durable, but the secondary has no file: {e}",
            w.name, w.how
        )
    });
    if let Durability::Msync = w.how {
        // A pre-sized file: the records beyond the durable ones may be anything the
        // kernel wrote back meanwhile.
        assert_eq!(
            bytes.len(),
            MSYNC_RECORDS * RECORD_BYTES,
            "seed {seed}: {}: the secondary's copy has the wrong size",
            w.name
        );
        for (n, chunk) in bytes
            .chunks(RECORD_BYTES)
            .take(durable as usize)
            .enumerate()
        {
            assert!(
                chunk == record(w.tag, n as u64).as_slice(),
                "seed {seed}: {} (Msync): record {n} is missing or corrupt on the secondary ({durable} durable)",
                w.name
            );
        }
        return;
    }
    assert_eq!(
        bytes.len() % RECORD_BYTES,
        0,
        "seed {seed}: {} ({:?}): the secondary holds {} bytes, not a whole number of records",
        w.name,
        w.how,
        bytes.len()
    );
    let held = (bytes.len() / RECORD_BYTES) as u64;
    assert!(
        held >= durable,
        "seed {seed}: {} ({:?}): {durable} records were durable on the primary's word, the secondary holds only {held}",
        w.name,
        w.how
    );
    for (n, chunk) in bytes.chunks(RECORD_BYTES).enumerate() {
        assert!(
            chunk == record(w.tag, n as u64).as_slice(),
            "seed {seed}: {} ({:?}): record {n} of {held} is corrupt on the secondary ({durable} durable)",
            w.name,
            w.how
        );
    }
}

/// Check the secondary's copy of a `Replace` writer's file: one whole generation (the rename
/// is atomic there too), and at least the last durable one.
fn check_secondary_state(m: &Mirror, w: &Writer, durable: u64, seed: u64) {
    if durable == 0 {
        return;
    }
    let path = m.secondary_dir().join(&w.name).join("state");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "seed {seed}: {}: {durable} generations were durable, but the secondary has no state file: {e}",
            w.name
        )
    });
    let first: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .unwrap_or_else(|| {
            panic!(
                "seed {seed}: {}: state file of {} bytes",
                w.name,
                bytes.len()
            )
        });
    let g = u64::from_le_bytes(first) / REPLACE_RECORDS;
    assert!(
        bytes == generation(w.tag, g),
        "seed {seed}: {}: the secondary's state file ({} bytes) is not a whole generation",
        w.name,
        bytes.len()
    );
    assert!(
        g + 1 >= durable,
        "seed {seed}: {}: generation {} was durable on the primary's word, the secondary holds generation {g}",
        w.name,
        durable - 1
    );
}

#[test]
fn fsynced_records_survive_a_killed_primary() {
    if !require_root_and_fuse("fsynced_records_survive_a_killed_primary") {
        return;
    }
    let seed: u64 = std::env::var("MIRRORKIT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("crash test seed: {seed} (set MIRRORKIT_SEED={seed} to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let mut m = Mirror::start(MirrorOpts::default());
    for round in 0..ROUNDS {
        let started = Instant::now();
        let variants = if round % 2 == 0 {
            [
                Durability::Fsync,
                Durability::ODsync,
                Durability::Replace,
                Durability::Msync,
            ]
        } else {
            [
                Durability::Fdatasync,
                Durability::OSync,
                Durability::Replace,
                Durability::Msync,
            ]
        };
        let writers: Vec<Writer> = variants
            .iter()
            .enumerate()
            .map(|(i, how)| {
                let tag = seed ^ ((round * variants.len() + i) as u64 + 1);
                let name = match how {
                    Durability::Replace => format!("round{round}-replace"),
                    Durability::Msync => format!("round{round}-mmap.db"),
                    _ => format!("round{round}-{how:?}.log"),
                };
                let progress = m.base.path().join(format!("round{round}-{i}.progress"));
                spawn_writer(m.primary_dir(), &progress, &name, tag, *how)
            })
            .collect();
        // Kill only once every writer has made progress, at a random moment after that.
        let progressing = wait_until(Duration::from_secs(20), || {
            writers
                .iter()
                .all(|w| w.durable.load(Ordering::SeqCst) >= 2)
        });
        assert!(
            progressing,
            "seed {seed} round {round}: writers made no progress: {:?}\n--- a log\n{}",
            writers
                .iter()
                .map(|w| (
                    w.name.clone(),
                    w.durable.load(Ordering::SeqCst),
                    w.done.try_recv().ok()
                ))
                .collect::<Vec<_>>(),
            m.a.log()
        );
        let delay_ms = rng.gen_range(0..=MAX_KILL_DELAY_MS);
        std::thread::sleep(Duration::from_millis(delay_ms));
        m.a.kill9();
        // Only records acknowledged before the kill count; a writer blocked in a request when
        // the daemon died gets ENOTCONN.
        let mut durable = Vec::new();
        for w in &writers {
            let e = w
                .done
                .recv_timeout(Duration::from_millis(WRITER_EXIT_TIMEOUT_MS))
                .unwrap_or_else(|_| {
                    panic!(
                        "seed {seed} round {round}: writer {} still blocked {WRITER_EXIT_TIMEOUT_MS} ms after the primary died",
                        w.name
                    )
                });
            let n = w.durable.load(Ordering::SeqCst);
            let unit = match w.how {
                Durability::Replace => "generations",
                _ => "records",
            };
            println!(
                "round {round}: {} ({:?}): {n} durable {unit}, stopped by: {e}",
                w.name, w.how
            );
            durable.push(n);
        }
        for (w, n) in writers.iter().zip(&durable) {
            check_secondary_copy(&m, w, *n, seed);
        }
        // The secondary's copy is one the primary passed through: it says so.
        let state = mirrorkit_store::StateFile::new(&m.b.dirs.state)
            .load()
            .expect("secondary's mirror state");
        assert!(
            state.consistent,
            "seed {seed} round {round}: after the primary's crash the secondary's copy is marked inconsistent"
        );

        // Restart: the primary mounts again over the dead mount its predecessor left. Every
        // other round the secondary keeps running, still holding the dead primary's session,
        // which the new primary's session must replace.
        if round % 2 == 0 {
            m.b.stop();
            m.start_secondary();
        }
        m.start_primary();
        m.wait_primary_mode("in-sync", Duration::from_secs(30));
        tree::compare(m.primary_dir(), m.secondary_dir(), 20)
            .unwrap_or_else(|e| panic!("seed {seed} round {round}: after restart: {e}"));
        println!(
            "round {round}: killed after {delay_ms} ms, checked and restarted in {:?}",
            started.elapsed()
        );
    }
}
