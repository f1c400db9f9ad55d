//! The first full synchronisation: a populated primary and a secondary holding stale,
//! conflicting content. After it the secondary must be byte-for-byte the primary (content,
//! holes, modes, owners, times, xattrs, link counts), the stale extras gone, and nothing
//! outside the secondary's root touched; also while an application keeps changing the tree
//! through the mount during the synchronisation.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mirrorkit_store::StateFile;
use mirrorkit_tests::fill::{self, TreeSpec};
use mirrorkit_tests::{require_root_and_fuse, tree, wait_for, Mirror, MirrorOpts};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How long a first synchronisation of these trees may take (debug build, loaded CI).
const SYNC_TIMEOUT: Duration = Duration::from_secs(90);
/// Pause of the application thread between two operations.
const WRITER_PAUSE_MS: u64 = 2;

fn ino(p: &Path) -> u64 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .ino()
}

/// A directory outside both roots, with a file in it, that no synchronisation may touch.
fn outside(m: &Mirror) -> PathBuf {
    let o = m.base.path().join("outside");
    std::fs::create_dir_all(o.join("keep")).unwrap();
    std::fs::write(o.join("keep/sentinel"), b"must survive").unwrap();
    o
}

#[test]
fn first_sync_replaces_stale_secondary() {
    if !require_root_and_fuse("first_sync_replaces_stale_secondary") {
        return;
    }
    let started = Instant::now();
    let mut m = Mirror::new(MirrorOpts::default());
    let outside = outside(&m);
    let outside_before = fill::listing(&outside);
    let data_bytes = fill::populate(&m.a.dirs.data, TreeSpec::default(), 1);
    fill::stale(&m.b.dirs.data, &outside);
    // What the primary holds before anything runs: the secondary must end up exactly so.
    let expected = tree::manifest(&m.a.dirs.data).unwrap();

    m.start_secondary();
    m.start_primary();
    let status = m.wait_primary_mode("in-sync", SYNC_TIMEOUT);

    tree::drop_page_caches().expect("drop page caches (needs root)");
    tree::compare(m.primary_dir(), m.secondary_dir(), 30)
        .unwrap_or_else(|e| panic!("after the first synchronisation: {e}"));
    let got = tree::manifest(m.secondary_dir()).unwrap();
    let d = tree::diff(&expected, &got);
    assert!(
        d.is_empty(),
        "the secondary is not what the primary held before the mount:\n{}",
        d.join("\n")
    );

    // The stale extras are gone (the tree comparison says so too; this names them).
    let s = m.secondary_dir();
    for gone in ["stale", "extra-file", "tree/d03/f99", "tree/d00/f00/inside"] {
        assert!(
            std::fs::symlink_metadata(s.join(gone)).is_err(),
            "stale {gone} survived the synchronisation"
        );
    }
    // Nothing was written through the stale symlink that pointed outside the root.
    assert!(std::fs::symlink_metadata(s.join("tree/d02"))
        .unwrap()
        .is_dir());
    assert_eq!(
        fill::listing(&outside),
        outside_before,
        "the synchronisation wrote outside the secondary's root (through a stale symlink)"
    );
    // Hard links are links again; names that were stale links are distinct files now.
    let one = ino(&s.join("links/one"));
    assert_eq!(ino(&s.join("links/two")), one);
    assert_eq!(ino(&s.join("links/sub/three")), one);
    assert_eq!(std::fs::metadata(s.join("links/one")).unwrap().nlink(), 3);
    assert_ne!(ino(&s.join("tree/d03/f00")), ino(&s.join("tree/d03/f01")));
    // Holes travel as holes: only the data extents were sent (15 MiB of sparse files hold
    // under 200 KB of data), give or take the block rounding of each extent.
    assert!(
        status.sync_data_bytes_sent >= data_bytes
            && status.sync_data_bytes_sent <= data_bytes + (64 << 10),
        "synchronisation sent {} data bytes for {data_bytes} bytes of file data",
        status.sync_data_bytes_sent
    );
    let sstate = StateFile::new(&m.b.dirs.state).load().unwrap();
    assert!(
        sstate.consistent,
        "secondary state after the sync: {sstate:?}"
    );
    let pstate = StateFile::new(&m.a.dirs.state).load().unwrap();
    assert!(
        pstate.peer_in_sync,
        "primary state after the sync: {pstate:?}"
    );
    eprintln!(
        "first_sync_replaces_stale_secondary: {} data bytes synchronised, {:.1} s",
        status.sync_data_bytes_sent,
        started.elapsed().as_secs_f64()
    );
}

/// What the application thread did, and anything that went wrong for it.
#[derive(Default)]
struct WriterLog {
    ops: AtomicU64,
    errors: Mutex<Vec<String>>,
}

/// An application changing the tree through the mount: files in its own directory `w/`
/// (create, write, append, truncate, rename over others, unlink, xattrs, chmod,
/// directories made, renamed and removed) and the populated `tree/` (files rewritten,
/// renamed, removed, created, whole directories renamed), and hard links (written through one
/// name, renamed, made).
struct Writer {
    root: PathBuf,
    rng: StdRng,
    files: BTreeSet<String>,
    dirs: BTreeSet<String>,
    tree_dirs: Vec<String>,
    next: u64,
    /// Whether `links/two` is currently named `links/2`.
    links_renamed: bool,
}

impl Writer {
    fn new(root: &Path, seed: u64, spec: TreeSpec) -> Writer {
        let mut files = BTreeSet::new();
        let mut tree_dirs = Vec::new();
        for d in 0..spec.dirs {
            tree_dirs.push(format!("tree/d{d:02}"));
            for f in 0..spec.files_per_dir {
                files.insert(format!("tree/d{d:02}/f{f:02}"));
            }
        }
        Writer {
            root: root.to_path_buf(),
            rng: StdRng::seed_from_u64(seed),
            files,
            dirs: BTreeSet::new(),
            tree_dirs,
            next: 0,
            links_renamed: false,
        }
    }

    fn pick_file(&mut self) -> Option<String> {
        let n = self.files.len();
        (n > 0).then(|| {
            self.files
                .iter()
                .nth(self.rng.gen_range(0..n))
                .cloned()
                .unwrap_or_default()
        })
    }

    fn fresh(&mut self, dir: &str) -> String {
        self.next += 1;
        format!("{dir}/n{}", self.next)
    }

    /// One operation; `Err` only for something the application should not have seen.
    fn step(&mut self) -> Result<(), String> {
        let r = self.root.clone();
        let k = self.rng.gen_range(0..100);
        let err = |what: &str, p: &str, e: std::io::Error| format!("{what} {p}: {e}");
        match k {
            0..20 => {
                let dir = if self.dirs.is_empty() || self.rng.gen() {
                    "w".to_string()
                } else {
                    let n = self.rng.gen_range(0..self.dirs.len());
                    self.dirs.iter().nth(n).cloned().unwrap_or_default()
                };
                let p = self.fresh(&dir);
                let len = self.rng.gen_range(0..100_000);
                let data: Vec<u8> = (0..len).map(|i| (i as u8) ^ (self.next as u8)).collect();
                std::fs::write(r.join(&p), data).map_err(|e| err("create", &p, e))?;
                self.files.insert(p);
            }
            20..45 => {
                let Some(p) = self.pick_file() else {
                    return Ok(());
                };
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(r.join(&p))
                    .map_err(|e| err("open", &p, e))?;
                let off = self.rng.gen_range(0..200_000);
                let data = vec![self.rng.gen::<u8>(); self.rng.gen_range(1..20_000)];
                std::os::unix::fs::FileExt::write_all_at(&f, &data, off)
                    .map_err(|e| err("write", &p, e))?;
            }
            45..55 => {
                let Some(p) = self.pick_file() else {
                    return Ok(());
                };
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(r.join(&p))
                    .map_err(|e| err("open", &p, e))?;
                std::io::Write::write_all(&mut f, b"appended line\n")
                    .map_err(|e| err("append", &p, e))?;
            }
            55..60 => {
                let Some(p) = self.pick_file() else {
                    return Ok(());
                };
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(r.join(&p))
                    .map_err(|e| err("open", &p, e))?;
                f.set_len(self.rng.gen_range(0..50_000))
                    .map_err(|e| err("truncate", &p, e))?;
            }
            60..72 => {
                // Rename a file within its directory, sometimes over another file.
                let Some(from) = self.pick_file() else {
                    return Ok(());
                };
                let dir = from.rsplit_once('/').map_or("", |(d, _)| d).to_string();
                let over = self
                    .files
                    .iter()
                    .find(|f| f.starts_with(&format!("{dir}/")) && **f != from)
                    .cloned();
                let to = match over {
                    Some(o) if self.rng.gen() => o,
                    _ => self.fresh(&dir),
                };
                std::fs::rename(r.join(&from), r.join(&to)).map_err(|e| err("rename", &from, e))?;
                self.files.remove(&from);
                self.files.insert(to);
            }
            72..80 => {
                let Some(p) = self.pick_file() else {
                    return Ok(());
                };
                std::fs::remove_file(r.join(&p)).map_err(|e| err("unlink", &p, e))?;
                self.files.remove(&p);
            }
            80..85 => {
                let p = self.fresh("w");
                std::fs::create_dir(r.join(&p)).map_err(|e| err("mkdir", &p, e))?;
                self.dirs.insert(p);
            }
            85..90 => {
                // Rename or remove one of the writer's directories with what it holds.
                let n = self.dirs.len();
                if n == 0 {
                    return Ok(());
                }
                let d = self
                    .dirs
                    .iter()
                    .nth(self.rng.gen_range(0..n))
                    .cloned()
                    .unwrap_or_default();
                let prefix = format!("{d}/");
                let inside: Vec<String> = self
                    .files
                    .iter()
                    .filter(|f| f.starts_with(&prefix))
                    .cloned()
                    .collect();
                if inside.is_empty() && self.rng.gen() {
                    std::fs::remove_dir(r.join(&d)).map_err(|e| err("rmdir", &d, e))?;
                    self.dirs.remove(&d);
                } else {
                    let to = self.fresh("w");
                    std::fs::rename(r.join(&d), r.join(&to))
                        .map_err(|e| err("rename dir", &d, e))?;
                    self.dirs.remove(&d);
                    self.dirs.insert(to.clone());
                    for f in inside {
                        self.files.remove(&f);
                        self.files.insert(format!("{to}/{}", &f[prefix.len()..]));
                    }
                }
            }
            90..91 => {
                // Rename a whole populated directory (its `sub/inner` goes along).
                let i = self.rng.gen_range(0..self.tree_dirs.len());
                let d = self.tree_dirs[i].clone();
                let to = format!("tree/r{}", {
                    self.next += 1;
                    self.next
                });
                std::fs::rename(r.join(&d), r.join(&to)).map_err(|e| err("rename dir", &d, e))?;
                let prefix = format!("{d}/");
                let inside: Vec<String> = self
                    .files
                    .iter()
                    .filter(|f| f.starts_with(&prefix))
                    .cloned()
                    .collect();
                for f in inside {
                    self.files.remove(&f);
                    self.files.insert(format!("{to}/{}", &f[prefix.len()..]));
                }
                self.tree_dirs[i] = to;
            }
            91..93 => {
                // Write to a file that has three names (the others must follow).
                let p = "links/one";
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(r.join(p))
                    .map_err(|e| err("open", p, e))?;
                let off = self.rng.gen_range(0..40_000);
                std::os::unix::fs::FileExt::write_all_at(&f, &self.next.to_le_bytes(), off)
                    .map_err(|e| err("write", p, e))?;
                self.next += 1;
            }
            93..94 => {
                // Rename one name of that file back and forth.
                let (from, to) = if self.links_renamed {
                    ("links/2", "links/two")
                } else {
                    ("links/two", "links/2")
                };
                std::fs::rename(r.join(from), r.join(to)).map_err(|e| err("rename", from, e))?;
                self.links_renamed = !self.links_renamed;
            }
            94..96 => {
                // A new name for a file (a hard link made during the synchronisation).
                let Some(p) = self.pick_file() else {
                    return Ok(());
                };
                let dir = p.rsplit_once('/').map_or("", |(d, _)| d).to_string();
                let to = self.fresh(&dir);
                std::fs::hard_link(r.join(&p), r.join(&to)).map_err(|e| err("link", &p, e))?;
                self.files.insert(to);
            }
            96..97 => {
                let Some(p) = self.pick_file() else {
                    return Ok(());
                };
                fill::set_xattr(&r.join(&p), "user.writer", &self.next.to_le_bytes());
            }
            _ => {
                let Some(p) = self.pick_file() else {
                    return Ok(());
                };
                let mode = [0o600, 0o644, 0o640, 0o755][self.rng.gen_range(0..4)];
                std::fs::set_permissions(
                    r.join(&p),
                    std::os::unix::fs::PermissionsExt::from_mode(mode),
                )
                .map_err(|e| err("chmod", &p, e))?;
            }
        }
        Ok(())
    }
}

#[test]
fn first_sync_while_the_application_writes() {
    if !require_root_and_fuse("first_sync_while_the_application_writes") {
        return;
    }
    let started = Instant::now();
    let mut m = Mirror::new(MirrorOpts::default());
    let outside = outside(&m);
    let outside_before = fill::listing(&outside);
    // Big enough that the synchronisation takes a few hundred milliseconds.
    let spec = TreeSpec {
        dirs: 40,
        files_per_dir: 50,
        max_file_bytes: 16 << 10,
    };
    fill::populate(&m.a.dirs.data, spec, 2);
    std::fs::create_dir(m.a.dirs.data.join("w")).unwrap();
    fill::stale(&m.b.dirs.data, &outside);

    // The primary starts alone; the application writes; then the secondary arrives and the
    // synchronisation runs under the application's changes.
    m.start_primary();
    m.wait_primary_mode("alone", Duration::from_secs(10));
    let log = Arc::new(WriterLog::default());
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (log, stop) = (log.clone(), stop.clone());
        let mut w = Writer::new(m.primary_dir(), 7, spec);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Err(e) = w.step() {
                    log.errors.lock().unwrap().push(e);
                }
                log.ops.fetch_add(1, Ordering::Relaxed);
                // An application's pace, not a flood: every renamed directory and rewritten
                // file is sent again by the next catch-up pass.
                std::thread::sleep(Duration::from_millis(WRITER_PAUSE_MS));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    m.start_secondary();
    // Watch the synchronisation: the writer must have worked during it.
    let secondary_started = Instant::now();
    let mut sync_started_ops = None;
    let mut sync_started = secondary_started;
    let in_sync = wait_for(SYNC_TIMEOUT, || {
        let s = m.a.status()?;
        if s.mode == "syncing" && sync_started_ops.is_none() {
            sync_started_ops = Some(log.ops.load(Ordering::Relaxed));
            sync_started = Instant::now();
        }
        (s.mode == "in-sync").then_some(s)
    })
    .unwrap_or_else(|| {
        panic!(
            "no in-sync within {SYNC_TIMEOUT:?}: {:?}\n--- primary log\n{}",
            m.a.status(),
            m.a.log()
        )
    });
    let ops_at_sync_end = log.ops.load(Ordering::Relaxed);
    let (connect_s, sync_s) = (
        (sync_started - secondary_started).as_secs_f64(),
        sync_started.elapsed().as_secs_f64(),
    );
    // Keep writing for a while in sync, then stop.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let errors = log.errors.lock().unwrap().clone();
    assert!(
        errors.is_empty(),
        "the application saw errors: {errors:?}\n--- primary log\n{}",
        m.a.log()
    );
    let during = ops_at_sync_end - sync_started_ops.expect("the status never showed syncing");
    assert!(
        during >= 10,
        "only {during} application operations ran during the synchronisation: the test did not test concurrency"
    );
    std::thread::sleep(Duration::from_millis(300));
    let s = m.a.status().unwrap();
    assert!(
        s.mode == "in-sync" && s.sessions == 1 && s.times_alone == 0,
        "the link left in-sync after the synchronisation: {s:?}\n--- primary log\n{}",
        m.a.log()
    );
    // The application's operations in sync were timed; the synchroniser's were not.
    assert!(
        s.acks > in_sync.acks && s.acks <= s.ops_sent,
        "acks {} (at in-sync {}), operations sent {}",
        s.acks,
        in_sync.acks,
        s.ops_sent
    );
    assert_eq!(s.ack_latency_buckets.iter().sum::<u64>(), s.acks);
    assert!(
        s.ack_latency_us_sum > 0 && s.ack_latency_recent_us > 0,
        "{s:?}"
    );

    tree::drop_page_caches().expect("drop page caches (needs root)");
    tree::compare(m.primary_dir(), m.secondary_dir(), 30).unwrap_or_else(|e| {
        panic!(
            "after a synchronisation under writes: {e}\n--- primary log\n{}",
            m.a.log()
        )
    });
    assert_eq!(fill::listing(&outside), outside_before);
    assert!(std::fs::symlink_metadata(m.secondary_dir().join("stale")).is_err());
    eprintln!(
        "first_sync_while_the_application_writes: {} application operations ({during} during the synchronisation of {} data bytes; connected after {connect_s:.1} s, synchronised in {sync_s:.1} s), {:.1} s",
        log.ops.load(Ordering::Relaxed),
        in_sync.sync_data_bytes_sent,
        started.elapsed().as_secs_f64()
    );
}
