//! Compare two trees exactly: for every entry its kind, mode, owner, link count, modification
//! time, extended attributes, and for files their size, data/hole map and blake3 content hash;
//! for symlinks their target; for devices their number. Access and change times are not
//! compared (reads change the first; the kernel sets the second).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fmt::Write as _;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// Everything compared about one entry, as a printable line.
pub type Manifest = BTreeMap<String, String>;

/// What a comparison includes besides kind, mode, owner, link count, xattrs and content.
#[derive(Clone, Copy, Debug)]
pub struct CompareOpts {
    /// Modification times (of every entry, the root included). Off to compare a mirror
    /// with a native directory that saw the same operations at other instants.
    pub mtimes: bool,
    /// The data/hole map of files. Note that ext4 reports an unwritten (fallocated) range
    /// as data once its pages are in the page cache (read, or faulted by mmap), so two
    /// copies with identical extents can differ here until `drop_page_caches`.
    pub extents: bool,
}

impl Default for CompareOpts {
    fn default() -> Self {
        CompareOpts {
            mtimes: true,
            extents: true,
        }
    }
}

impl CompareOpts {
    /// Everything but modification times.
    pub fn ignore_mtimes() -> Self {
        CompareOpts {
            mtimes: false,
            ..CompareOpts::default()
        }
    }
}

fn xattrs(path: &Path) -> String {
    let c = match CString::new(path.as_os_str().as_bytes()) {
        Ok(c) => c,
        Err(_) => return "?".into(),
    };
    let mut names = mirrorkit_store::sys::list_xattr_names(&c, false).unwrap_or_default();
    names.sort();
    let mut out = String::new();
    for n in names {
        let Ok(nc) = CString::new(n.clone()) else {
            continue;
        };
        let v = mirrorkit_store::sys::get_xattr_value(&c, false, &nc).unwrap_or_default();
        let _ = write!(
            out,
            "{}={} ",
            String::from_utf8_lossy(&n),
            blake3::hash(&v).to_hex()
        );
    }
    out
}

/// Write back dirty pages and drop the clean page cache of the whole machine (needs root),
/// so that unwritten extents read as holes again on every copy: see `CompareOpts::extents`.
pub fn drop_page_caches() -> std::io::Result<()> {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", b"1")
}

/// Data extents of a file as "start-end" ranges (SEEK_DATA / SEEK_HOLE).
fn extents(f: &std::fs::File, size: u64) -> String {
    use std::os::fd::{AsFd, AsRawFd};
    // Drop this file's clean cached pages first, so that the map of a file that was read
    // shows its unwritten extents as holes again (see `CompareOpts::extents`). Best effort,
    // and only for this inode: through the FUSE mount it reaches the mount's cache, not the
    // primary's backing file (`drop_page_caches` does).
    // SAFETY: a valid descriptor; the advice changes no data.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    let mut out = String::new();
    let mut pos = 0;
    while pos < size {
        let Ok(Some(start)) = mirrorkit_store::sys::seek_data_hole(f.as_fd(), pos, libc::SEEK_DATA)
        else {
            break;
        };
        let end = mirrorkit_store::sys::seek_data_hole(f.as_fd(), start, libc::SEEK_HOLE)
            .ok()
            .flatten()
            .unwrap_or(size);
        let _ = write!(out, "{start}-{end} ");
        pos = end;
    }
    out
}

fn file_extents(path: &Path) -> std::io::Result<String> {
    let f = std::fs::File::open(path)?;
    let size = f.metadata()?.len();
    Ok(extents(&f, size))
}

fn content_hash(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().to_hex().to_string())
}

/// Describe every entry beneath `root` (the root itself is "." and its time is included).
pub fn manifest(root: &Path) -> std::io::Result<Manifest> {
    manifest_with(root, CompareOpts::default())
}

/// `manifest`, including only what `opts` asks for.
pub fn manifest_with(root: &Path, opts: CompareOpts) -> std::io::Result<Manifest> {
    let mut out = Manifest::new();
    let mut files = Vec::new();
    walk(root, root, opts, &mut out, &mut files)?;
    // Contents only once every data/hole map is taken: reading a file caches its pages, and
    // the map of another name of the same inode would then show unwritten extents as data.
    for (rel, path) in files {
        let hash = content_hash(&path)?;
        if let Some(line) = out.get_mut(&rel) {
            *line = line.replacen(HASH_PLACEHOLDER, &hash, 1);
        }
    }
    Ok(out)
}

const HASH_PLACEHOLDER: &str = "<blake3>";

fn walk(
    root: &Path,
    p: &Path,
    opts: CompareOpts,
    out: &mut Manifest,
    files: &mut Vec<(String, std::path::PathBuf)>,
) -> std::io::Result<()> {
    let md = std::fs::symlink_metadata(p)?;
    let rel = p
        .strip_prefix(root)
        .map(|r| {
            if r.as_os_str().is_empty() {
                ".".to_string()
            } else {
                r.display().to_string()
            }
        })
        .unwrap_or_default();
    let ft = md.file_type();
    let mtime = if opts.mtimes {
        format!("{}.{:09}", md.mtime(), md.mtime_nsec())
    } else {
        "-".into()
    };
    let common = format!(
        "mode={:o} uid={} gid={} nlink={} mtime={} xattrs[{}]",
        md.mode(),
        md.uid(),
        md.gid(),
        md.nlink(),
        mtime,
        xattrs(p)
    );
    let specific = if ft.is_file() {
        let ext = if opts.extents {
            file_extents(p)?
        } else {
            "-".into()
        };
        files.push((rel.clone(), p.to_path_buf()));
        format!(
            "file size={} data[{}] blake3={HASH_PLACEHOLDER}",
            md.len(),
            ext
        )
    } else if ft.is_dir() {
        "dir".to_string()
    } else if ft.is_symlink() {
        format!("symlink -> {}", std::fs::read_link(p)?.display())
    } else if ft.is_fifo() {
        "fifo".into()
    } else if ft.is_socket() {
        "socket".into()
    } else {
        format!("device rdev={}", md.rdev())
    };
    out.insert(rel, format!("{specific} {common}"));
    if ft.is_dir() {
        let mut children: Vec<_> = std::fs::read_dir(p)?.collect::<Result<_, _>>()?;
        children.sort_by_key(|e| e.file_name());
        for c in children {
            walk(root, &c.path(), opts, out, files)?;
        }
    }
    Ok(())
}

/// Every difference between two manifests, one line each; empty when identical.
pub fn diff(a: &Manifest, b: &Manifest) -> Vec<String> {
    let mut d = Vec::new();
    for (k, va) in a {
        match b.get(k) {
            None => d.push(format!("only in first: {k}: {va}")),
            Some(vb) if vb != va => {
                d.push(format!("differs: {k}\n    first:  {va}\n    second: {vb}"))
            }
            _ => {}
        }
    }
    for (k, vb) in b {
        if !a.contains_key(k) {
            d.push(format!("only in second: {k}: {vb}"));
        }
    }
    d
}

/// Compare two trees; the differences (at most `limit` of them) when they differ.
pub fn compare(a: &Path, b: &Path, limit: usize) -> Result<(), String> {
    compare_with(a, b, limit, CompareOpts::default())
}

/// `compare`, including only what `opts` asks for.
pub fn compare_with(a: &Path, b: &Path, limit: usize, opts: CompareOpts) -> Result<(), String> {
    let ma = manifest_with(a, opts).map_err(|e| format!("reading {}: {e}", a.display()))?;
    let mb = manifest_with(b, opts).map_err(|e| format!("reading {}: {e}", b.display()))?;
    report(a, b, diff(&ma, &mb), limit, "entries")
}

/// `Ok` without differences, else the first `limit` of them, saying how many `what` differ.
fn report(a: &Path, b: &Path, d: Vec<String>, limit: usize, what: &str) -> Result<(), String> {
    if d.is_empty() {
        return Ok(());
    }
    let n = d.len();
    let mut s: Vec<String> = d.into_iter().take(limit).collect();
    if n > limit {
        s.push(format!("... and {} more", n - limit));
    }
    Err(format!(
        "{} and {} differ in {n} {what}:\n{}",
        a.display(),
        b.display(),
        s.join("\n")
    ))
}

/// Keep of `m` only what `filter` replicates. Directories keep their kind, mode, owner and
/// extended attributes, but not their link count (subdirectories outside the set count) nor
/// their time (entries outside the set, made or removed, change it on their node only).
pub fn selected(m: &Manifest, filter: &mirrorkit_module::MirrorFilter) -> Manifest {
    let mut out = Manifest::new();
    for (k, v) in m {
        let dir = v.starts_with("dir ");
        let rel = if k == "." { "" } else { k.as_str() };
        if !filter.replicates(Path::new(rel), dir) {
            continue;
        }
        let v = if dir {
            v.split(' ')
                .map(|f| {
                    if f.starts_with("nlink=") {
                        "nlink=-"
                    } else if f.starts_with("mtime=") {
                        "mtime=-"
                    } else {
                        f
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            v.clone()
        };
        out.insert(k.clone(), v);
    }
    out
}

/// `compare_with` of what `filter` replicates of both trees (see `selected`). With the
/// filter that selects everything, the same as `compare_with` (directories included).
pub fn compare_selected(
    a: &Path,
    b: &Path,
    limit: usize,
    filter: &mirrorkit_module::MirrorFilter,
    opts: CompareOpts,
) -> Result<(), String> {
    if filter.selects_everything() {
        return compare_with(a, b, limit, opts);
    }
    let ma = manifest_with(a, opts).map_err(|e| format!("reading {}: {e}", a.display()))?;
    let mb = manifest_with(b, opts).map_err(|e| format!("reading {}: {e}", b.display()))?;
    let d = diff(&selected(&ma, filter), &selected(&mb, filter));
    report(a, b, d, limit, "replicated entries")
}

/// blake3 of a whole tree's manifest: one value to compare or print.
pub fn tree_hash(root: &Path) -> std::io::Result<String> {
    let m = manifest(root)?;
    let mut h = blake3::Hasher::new();
    for (k, v) in &m {
        h.update(k.as_bytes());
        h.update(b"\0");
        h.update(v.as_bytes());
        h.update(b"\n");
    }
    Ok(h.finalize().to_hex().to_string())
}
