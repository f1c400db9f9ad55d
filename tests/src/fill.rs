//! Trees for tests to start from: a populated primary directory with every kind of entry, and
//! a secondary directory holding stale, conflicting content that a synchronisation must
//! replace. Written directly to the directories (before any mount), deterministically.

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

/// Size and shape of `populate`'s tree.
#[derive(Clone, Copy, Debug)]
pub struct TreeSpec {
    /// Directories under `tree/`, each with `files_per_dir` small files and a subdirectory.
    pub dirs: usize,
    pub files_per_dir: usize,
    /// Largest small file.
    pub max_file_bytes: usize,
}

impl Default for TreeSpec {
    fn default() -> Self {
        TreeSpec {
            dirs: 8,
            files_per_dir: 12,
            max_file_bytes: 64 << 10,
        }
    }
}

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("no NUL in test paths")
}

/// Set an extended attribute on a path (not following a final symlink).
pub fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    let n = CString::new(name).expect("no NUL");
    // SAFETY: valid C strings and buffer.
    let r = unsafe {
        libc::lsetxattr(
            c(p).as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        r,
        0,
        "setxattr {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

/// Set owner (not following a final symlink).
pub fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
}

/// Set the modification time (and access time) of a path, not following a final symlink.
pub fn set_mtime(p: &Path, sec: i64, nsec: i64) {
    let t = [libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    }; 2];
    // SAFETY: valid C string and two timespecs.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c(p).as_ptr(),
            t.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(
        r,
        0,
        "utimensat {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

pub fn mkfifo(p: &Path, mode: u32) {
    // SAFETY: valid C string.
    let r = unsafe { libc::mkfifo(c(p).as_ptr(), mode) };
    assert_eq!(
        r,
        0,
        "mkfifo {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

fn random_bytes(rng: &mut StdRng, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rng.fill_bytes(&mut v);
    v
}

/// A sparse file of `size` bytes with random data at `regions` (offset, length); the rest
/// are holes.
pub fn sparse_file(p: &Path, size: u64, regions: &[(u64, usize)], rng: &mut StdRng) {
    let f = std::fs::File::create(p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
    for &(off, len) in regions {
        std::os::unix::fs::FileExt::write_all_at(&f, &random_bytes(rng, len), off)
            .unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    }
    f.set_len(size)
        .unwrap_or_else(|e| panic!("truncate {}: {e}", p.display()));
}

/// Fill `root` with a tree holding every kind of entry the mirror replicates:
/// - `tree/dNN/fMM` small random files and `tree/dNN/sub/` directories (`spec`);
/// - `sparse/big` (8 MiB, three data regions), `sparse/tail` (hole then data), `sparse/empty`
///   (all hole);
/// - `links/one` with two more names (`links/two`, `links/sub/three`);
/// - symlinks (`sym/rel`, `sym/dangling`, `sym/abs` pointing outside, `sym/dir`);
/// - a FIFO, an empty file, an empty directory;
/// - extended attributes on files, directories and the root; other owners, setuid, setgid
///   and sticky modes; modification times set in the past.
///
/// Returns the number of bytes of file data written.
pub fn populate(root: &Path, spec: TreeSpec, seed: u64) -> u64 {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut bytes = 0u64;
    let dir = |p: &Path| {
        std::fs::create_dir_all(p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()))
    };
    for d in 0..spec.dirs {
        let dp = root.join(format!("tree/d{d:02}"));
        dir(&dp.join("sub"));
        for f in 0..spec.files_per_dir {
            let n = rng.gen_range(0..=spec.max_file_bytes);
            let fp = dp.join(format!("f{f:02}"));
            let mut file = std::fs::File::create(&fp).expect("create");
            file.write_all(&random_bytes(&mut rng, n)).expect("write");
            bytes += n as u64;
            if f % 5 == 0 {
                set_xattr(&fp, "user.tag", format!("file {d} {f}").as_bytes());
            }
            if f % 7 == 3 {
                chown(&fp, 1000, 1000);
            }
            set_mtime(&fp, 1_600_000_000 + (d * 100 + f) as i64, 123_456_789);
        }
        let sp = dp.join("sub/inner");
        std::fs::write(&sp, random_bytes(&mut rng, 3000)).expect("write");
        bytes += 3000;
        set_mtime(&dp.join("sub"), 1_500_000_000 + d as i64, 0);
        if d % 3 == 0 {
            set_xattr(&dp, "user.dir", b"directory attribute");
        }
    }
    dir(&root.join("sparse"));
    sparse_file(
        &root.join("sparse/big"),
        8 << 20,
        &[(0, 100_000), (3 << 20, 70_000), ((8 << 20) - 5000, 5000)],
        &mut rng,
    );
    sparse_file(
        &root.join("sparse/tail"),
        2 << 20,
        &[((2 << 20) - 4096, 4096)],
        &mut rng,
    );
    sparse_file(&root.join("sparse/empty"), 5 << 20, &[], &mut rng);
    bytes += 100_000 + 70_000 + 5000 + 4096;

    dir(&root.join("links/sub"));
    std::fs::write(root.join("links/one"), random_bytes(&mut rng, 50_000)).expect("write");
    bytes += 50_000;
    std::fs::hard_link(root.join("links/one"), root.join("links/two")).expect("link");
    std::fs::hard_link(root.join("links/one"), root.join("links/sub/three")).expect("link");
    set_xattr(&root.join("links/one"), "user.linked", b"three names");

    dir(&root.join("sym"));
    symlink("../links/one", root.join("sym/rel")).expect("symlink");
    symlink("nowhere/at/all", root.join("sym/dangling")).expect("symlink");
    symlink("/etc/hostname", root.join("sym/abs")).expect("symlink");
    symlink("../tree", root.join("sym/dir")).expect("symlink");
    std::os::unix::fs::lchown(root.join("sym/rel"), Some(1001), Some(1001)).expect("lchown");
    set_mtime(&root.join("sym/dangling"), 1_400_000_000, 5);

    dir(&root.join("special/empty-dir"));
    mkfifo(&root.join("special/fifo"), 0o640);
    std::fs::write(root.join("special/empty-file"), b"").expect("write");
    let suid = root.join("special/suid");
    std::fs::write(&suid, b"#!/bin/sh\n").expect("write");
    chown(&suid, 1000, 1000);
    chmod(&suid, 0o4755);
    chmod(&root.join("special/empty-dir"), 0o2775);
    chmod(&root.join("special"), 0o1777);
    set_xattr(&root.join("special/fifo"), "trusted.kind", b"fifo");
    set_xattr(root, "user.root", b"root attribute");
    set_xattr(
        &root.join("sparse/big"),
        "user.big",
        &random_bytes(&mut rng, 3000),
    );
    bytes
}

/// Fill a secondary's directory with stale content that conflicts with `populate`'s tree:
/// extra files and directories (deep), names that are files there and directories here (and
/// the reverse), a symlink where a directory must go (pointing at `outside`, which must stay
/// untouched), hard links between names that are distinct files on the primary, a FIFO where
/// a file goes, longer and shorter versions of files, and attributes the primary lacks.
pub fn stale(root: &Path, outside: &Path) {
    let dir = |p: &Path| {
        std::fs::create_dir_all(p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()))
    };
    dir(&root.join("stale/a/b/c/d"));
    std::fs::write(root.join("stale/a/b/c/d/deep"), b"old").expect("write");
    std::fs::write(root.join("stale/top"), vec![1u8; 100_000]).expect("write");
    std::fs::write(root.join("extra-file"), b"remove me").expect("write");
    // A directory (with content) where the primary has a file, and a file where it has a dir.
    dir(&root.join("tree/d00/f00/inside"));
    std::fs::write(root.join("tree/d00/f00/inside/x"), b"x").expect("write");
    std::fs::write(root.join("tree/d01"), b"a file where a directory goes").expect("write");
    // A symlink where a directory goes, pointing outside the root.
    dir(&root.join("tree"));
    symlink(outside, root.join("tree/d02")).expect("symlink");
    // Hard links between names the primary holds as distinct files.
    dir(&root.join("tree/d03"));
    std::fs::write(root.join("tree/d03/f00"), b"shared old content").expect("write");
    std::fs::hard_link(root.join("tree/d03/f00"), root.join("tree/d03/f01")).expect("link");
    std::fs::hard_link(root.join("tree/d03/f00"), root.join("tree/d03/f99")).expect("link");
    // A FIFO where a file goes; a longer file; a symlink where a hard link goes.
    dir(&root.join("links"));
    mkfifo(&root.join("links/one"), 0o600);
    symlink("one", root.join("links/two")).expect("symlink");
    dir(&root.join("sparse"));
    std::fs::write(root.join("sparse/tail"), vec![9u8; 3 << 20]).expect("write");
    std::fs::write(root.join("sparse/empty"), vec![7u8; 4096]).expect("write");
    // A directory where a symlink goes; stale attributes on kept names.
    dir(&root.join("sym/rel/nested"));
    dir(&root.join("special"));
    std::fs::write(root.join("special/empty-file"), b"not empty").expect("write");
    set_xattr(&root.join("special/empty-file"), "user.stale", b"gone");
    set_xattr(root, "user.stale-root", b"gone");
    chmod(root, 0o700);
}

/// Every name beneath `dir` (recursively, sorted), to check that a directory outside the
/// replicated root was not touched.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(root: &Path, p: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(p) else {
            return;
        };
        for e in rd.flatten() {
            let path = e.path();
            let md = std::fs::symlink_metadata(&path).ok();
            let len = md.as_ref().map_or(0, |m| m.len());
            if let Ok(rel) = path.strip_prefix(root) {
                out.push(format!("{} {len}", rel.display()));
            }
            if md.is_some_and(|m| m.is_dir()) {
                walk(root, &path, out);
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}
