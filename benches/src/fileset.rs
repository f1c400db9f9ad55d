//! The resync benchmark's file set: a mix of file sizes laid down identically in several
//! directories from a seed, and a seeded change of about 1% of it (random writes of random
//! sizes at random offsets, a few new, removed and renamed files) that gives the same result
//! wherever it is applied to the same tree. Nothing here knows about the mirror.

use std::collections::BTreeSet;
use std::fs::{File, FileTimes, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

const MIB: u64 = 1 << 20;
const KIB: u64 = 1 << 10;

/// Modification (and access) time given to every entry of a new set, as after an earlier
/// `rsync -a` or `cp -a`: rsync's quick check then skips the files a change does not touch.
/// 2026-01-01 00:00:00 UTC.
pub const SET_MTIME_SECS: u64 = 1_767_225_600;

/// Share of the set's bytes that a change writes into existing files, and that it creates.
const WRITE_SHARE: f64 = 0.009;
const CREATE_SHARE: f64 = 0.001;
/// Sizes of the change's writes: log-uniform between these.
const WRITE_MIN: u64 = 512;
const WRITE_MAX: u64 = MIB;

/// A small, fast pseudo-random generator (splitmix64): deterministic for a seed, good enough
/// for file content nothing can compress and for choosing offsets.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, n)`; `n` must be positive.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Log-uniform in `[lo, hi]` (many small values, some large), `0 < lo <= hi`.
    pub fn log_uniform(&mut self, lo: u64, hi: u64) -> u64 {
        let (a, b) = ((lo as f64).ln(), (hi as f64).ln());
        ((a + (b - a) * self.unit()).exp() as u64).clamp(lo, hi)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        let n = rest.len();
        rest.copy_from_slice(&last[..n]);
    }
}

/// A seed derived from another and two indices (independent streams per file and round).
fn mix(seed: u64, a: u64, b: u64) -> u64 {
    let mut r = Rng::new(seed ^ a.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ b.rotate_left(32));
    r.next_u64()
}

/// Files of one size in a set, spread over directories of `per_dir` files.
#[derive(Clone, Debug, Serialize)]
pub struct Class {
    pub name: &'static str,
    pub file_bytes: u64,
    pub files: usize,
    pub per_dir: usize,
}

impl Class {
    fn path(&self, i: usize) -> PathBuf {
        PathBuf::from(format!(
            "{}/d{:03}/f{i:05}",
            self.name,
            i / self.per_dir.max(1)
        ))
    }
}

/// The file set: three classes of file sizes. At 4 GiB: 48 files of 64 MiB (3/4 of the
/// bytes: images, archives, databases), 768 files of 1 MiB (3/16: documents, pictures),
/// 4096 files of 64 KiB (1/16: sources, configuration). Smaller sets keep the proportions
/// with smaller large files (a sixteenth of the set, at least 1 MiB).
#[derive(Clone, Debug, Serialize)]
pub struct SetSpec {
    pub classes: Vec<Class>,
}

impl SetSpec {
    pub fn for_bytes(total: u64) -> SetSpec {
        let big = (total / 16 / MIB).clamp(1, 64) * MIB;
        let class = |name, file_bytes: u64, share: f64, per_dir| Class {
            name,
            file_bytes,
            files: ((total as f64 * share / file_bytes as f64).round() as usize).max(1),
            per_dir,
        };
        SetSpec {
            classes: vec![
                class("big", big, 0.75, 16),
                class("mid", MIB, 0.1875, 64),
                class("small", 64 * KIB, 0.0625, 128),
            ],
        }
    }

    pub fn bytes(&self) -> u64 {
        self.classes
            .iter()
            .map(|c| c.file_bytes * c.files as u64)
            .sum()
    }

    pub fn files(&self) -> usize {
        self.classes.iter().map(|c| c.files).sum()
    }

    /// "48 x 64 MiB + 768 x 1 MiB + 4096 x 64 KiB".
    pub fn describe(&self) -> String {
        self.classes
            .iter()
            .map(|c| format!("{} x {}", c.files, human_size(c.file_bytes)))
            .collect::<Vec<_>>()
            .join(" + ")
    }
}

/// "64 MiB", "64 KiB", "1536 B".
pub fn human_size(b: u64) -> String {
    if b >= MIB && b % MIB == 0 {
        format!("{} MiB", b / MIB)
    } else if b >= KIB && b % KIB == 0 {
        format!("{} KiB", b / KIB)
    } else {
        format!("{b} B")
    }
}

fn at(path: &Path) -> impl FnOnce(std::io::Error) -> std::io::Error + '_ {
    move |e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Lay the set down in every directory of `roots` (created if needed), identically: the same
/// names, content (generated once, written to each) and times. Returns the bytes written to
/// each.
pub fn lay_down(spec: &SetSpec, seed: u64, roots: &[&Path]) -> std::io::Result<u64> {
    let mut buf = vec![0u8; MIB as usize];
    let mut total = 0;
    for (ci, class) in spec.classes.iter().enumerate() {
        for i in 0..class.files {
            let rel = class.path(i);
            let mut files = Vec::with_capacity(roots.len());
            for root in roots {
                let path = root.join(&rel);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(at(parent))?;
                }
                files.push((File::create(&path).map_err(at(&path))?, path));
            }
            let mut rng = Rng::new(mix(seed, ci as u64, i as u64));
            let mut left = class.file_bytes;
            while left > 0 {
                let n = left.min(MIB) as usize;
                rng.fill(&mut buf[..n]);
                for (f, path) in &mut files {
                    f.write_all(&buf[..n]).map_err(at(path))?;
                }
                left -= n as u64;
            }
            total += class.file_bytes;
        }
    }
    for root in roots {
        set_times(root)?;
    }
    Ok(total)
}

/// Give every entry beneath `root` (and `root`) the set's fixed times, children before their
/// directory.
fn set_times(root: &Path) -> std::io::Result<()> {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(SET_MTIME_SECS);
    let times = FileTimes::new().set_accessed(t).set_modified(t);
    let md = std::fs::symlink_metadata(root).map_err(at(root))?;
    if md.is_dir() {
        for e in std::fs::read_dir(root).map_err(at(root))? {
            set_times(&e.map_err(at(root))?.path())?;
        }
    }
    File::open(root)
        .and_then(|f| f.set_times(times))
        .map_err(at(root))
}

/// Every regular file beneath `root`: path relative to it and size, sorted by path.
pub fn files(root: &Path) -> std::io::Result<Vec<(PathBuf, u64)>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, u64)>) -> std::io::Result<()> {
        for e in std::fs::read_dir(dir).map_err(at(dir))? {
            let e = e.map_err(at(dir))?;
            let path = e.path();
            let md = std::fs::symlink_metadata(&path).map_err(at(&path))?;
            if md.is_dir() {
                walk(root, &path, out)?;
            } else if md.is_file() {
                let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
                out.push((rel, md.len()));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, root, &mut out)?;
    out.sort();
    Ok(out)
}

/// What one change did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Change {
    /// Writes into existing files, and their bytes.
    pub writes: usize,
    pub written_bytes: u64,
    /// Existing files that got at least one write.
    pub files_written: usize,
    pub created: usize,
    pub created_bytes: u64,
    pub removed: usize,
    pub renamed: usize,
}

impl Change {
    /// Bytes the application wrote (into existing files and new ones).
    pub fn bytes(&self) -> u64 {
        self.written_bytes + self.created_bytes
    }
}

/// Change about 1% of the set beneath `root`, as an application would while the peer is away:
/// remove two files, rename two (one within its directory, one into another), write 0.9% of
/// `set_bytes` in writes of log-uniform sizes (512 B to 1 MiB, or to an eighth of the budget
/// for small sets) at uniform offsets into files
/// chosen in proportion to their size, and create files worth 0.1% in a new directory.
/// Deterministic for (`seed`, `round`) and the tree it starts from: applied to two identical
/// trees, it leaves them identical (but for times).
pub fn change(root: &Path, seed: u64, round: u64, set_bytes: u64) -> std::io::Result<Change> {
    let mut rng = Rng::new(mix(seed, 0xc4a9_6e00, round));
    let mut list = files(root)?;
    let mut ch = Change::default();
    if list.len() < 8 {
        return Err(std::io::Error::other(format!(
            "{}: {} files, too few to change",
            root.display(),
            list.len()
        )));
    }
    for _ in 0..2 {
        let (rel, _) = list.remove(rng.below(list.len() as u64) as usize);
        let path = root.join(&rel);
        std::fs::remove_file(&path).map_err(at(&path))?;
        ch.removed += 1;
    }
    for k in 0..2u64 {
        let i = rng.below(list.len() as u64) as usize;
        let from = list[i].0.clone();
        let to = if k == 0 {
            let mut name = from.file_name().unwrap_or_default().to_os_string();
            name.push(format!(".r{round}"));
            from.with_file_name(name)
        } else {
            // Into the directory of another file.
            let other = &list[rng.below(list.len() as u64) as usize].0;
            let dir = other.parent().map(Path::to_path_buf).unwrap_or_default();
            dir.join(format!("moved-r{round}-{i}"))
        };
        let (src, dst) = (root.join(&from), root.join(&to));
        std::fs::rename(&src, &dst).map_err(at(&src))?;
        list[i].0 = to;
        ch.renamed += 1;
    }

    let mut cumulative = Vec::with_capacity(list.len());
    let mut sum = 0u64;
    for (_, size) in &list {
        sum += size;
        cumulative.push(sum);
    }
    let mut buf = vec![0u8; WRITE_MAX as usize];
    let mut touched = BTreeSet::new();
    let budget = (set_bytes as f64 * WRITE_SHARE) as u64;
    // Small sets: writes small enough that the last one does not overshoot much.
    let write_max = WRITE_MAX.min(budget / 8).max(WRITE_MIN);
    while ch.written_bytes < budget && sum > 0 {
        let pick = rng.below(sum);
        let i = cumulative.partition_point(|&c| c <= pick);
        let (rel, size) = &list[i];
        let len = rng.log_uniform(WRITE_MIN, write_max).min(*size);
        let off = rng.below(size - len + 1);
        rng.fill(&mut buf[..len as usize]);
        let path = root.join(rel);
        let f = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(at(&path))?;
        f.write_all_at(&buf[..len as usize], off)
            .map_err(at(&path))?;
        ch.writes += 1;
        ch.written_bytes += len;
        touched.insert(i);
    }
    ch.files_written = touched.len();

    let dir = root.join(format!("new-r{round}"));
    std::fs::create_dir_all(&dir).map_err(at(&dir))?;
    let target = ((set_bytes as f64 * CREATE_SHARE) as u64).max(4 * KIB);
    let largest = (target / 2).clamp(4 * KIB, WRITE_MAX);
    while ch.created_bytes < target {
        let len = rng.log_uniform(4 * KIB, largest);
        rng.fill(&mut buf[..len as usize]);
        let path = dir.join(format!("n{:03}", ch.created));
        let mut f = File::create(&path).map_err(at(&path))?;
        f.write_all(&buf[..len as usize]).map_err(at(&path))?;
        ch.created += 1;
        ch.created_bytes += len;
    }
    Ok(ch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_at_4_gib_and_small() {
        let s = SetSpec::for_bytes(4 << 30);
        assert_eq!(s.describe(), "48 x 64 MiB + 768 x 1 MiB + 4096 x 64 KiB");
        assert_eq!(s.bytes(), 4 << 30);
        assert_eq!(s.files(), 48 + 768 + 4096);
        let s = SetSpec::for_bytes(64 << 20);
        assert_eq!(s.describe(), "12 x 4 MiB + 12 x 1 MiB + 64 x 64 KiB");
        assert_eq!(s.bytes(), 64 << 20);
        let tiny = SetSpec::for_bytes(1 << 20);
        assert!(tiny.classes.iter().all(|c| c.files >= 1));
    }

    #[test]
    fn rng_ranges() {
        let mut r = Rng::new(7);
        for _ in 0..1000 {
            assert!(r.below(10) < 10);
            let x = r.log_uniform(512, 1 << 20);
            assert!((512..=1 << 20).contains(&x));
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
        }
        let mut a = [0u8; 13];
        let mut b = [0u8; 13];
        Rng::new(1).fill(&mut a);
        Rng::new(1).fill(&mut b);
        assert_eq!(a, b);
        assert_ne!(a, [0u8; 13]);
    }

    #[test]
    fn a_change_applied_to_identical_trees_keeps_them_identical() {
        let d = tempfile::tempdir().unwrap();
        let (x, y) = (d.path().join("x"), d.path().join("y"));
        let spec = SetSpec::for_bytes(16 << 20);
        let laid = lay_down(&spec, 42, &[&x, &y]).unwrap();
        assert_eq!(laid, spec.bytes());
        let listed = files(&x).unwrap();
        assert_eq!(listed.len(), spec.files());
        let md = std::fs::metadata(x.join(&listed[0].0)).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(md.mtime() as u64, SET_MTIME_SECS);
        mirrorkit_tests::tree::compare(&x, &y, 5).unwrap();
        for round in 0..2 {
            let cx = change(&x, 42, round, spec.bytes()).unwrap();
            let cy = change(&y, 42, round, spec.bytes()).unwrap();
            assert_eq!(cx, cy);
            assert!(cx.written_bytes >= spec.bytes() * 9 / 1000, "{cx:?}");
            assert!(cx.bytes() < spec.bytes() / 50, "{cx:?}");
            assert_eq!((cx.removed, cx.renamed), (2, 2));
            assert!(cx.created > 0 && cx.files_written > 0, "{cx:?}");
            mirrorkit_tests::tree::compare_with(
                &x,
                &y,
                5,
                mirrorkit_tests::tree::CompareOpts::ignore_mtimes(),
            )
            .unwrap();
        }
        assert_ne!(files(&x).unwrap(), listed);
    }
}
