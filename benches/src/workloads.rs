//! The workloads, each run on one directory and timed from the application's side: ordinary
//! system calls, one thread, exactly what an application on the mount would do. Nothing here
//! knows whether the directory is native or mirrored.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Size of one sequential write and of one read call.
pub const CHUNK_BYTES: usize = 1 << 20;
/// Size of one database-commit write.
pub const COMMIT_BYTES: usize = 4 << 10;
/// Size of one small file.
pub const SMALL_FILE_BYTES: usize = 16 << 10;

/// Bytes that neither compress nor repeat within a chunk (xorshift64), so no layer can take a
/// shortcut on them.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Flush every dirty page of the machine, so that one run's writeback does not land in the
/// next run's time.
pub fn sync_all() {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
}

/// Drop the page, dentry and inode caches (needs root). Syncs first: only clean pages drop.
pub fn drop_caches() -> std::io::Result<()> {
    sync_all();
    std::fs::write("/proc/sys/vm/drop_caches", b"3\n")
}

/// Write `size_mib` MiB to a new file in `CHUNK_BYTES` write() calls, then fsync. Returns the
/// time from open to the end of the fsync.
pub fn seq_write(dir: &Path, size_mib: u64) -> std::io::Result<Duration> {
    let buf = pattern(CHUNK_BYTES, 0x5eed);
    let start = Instant::now();
    let mut f = File::create(dir.join("seq-write.dat"))?;
    for _ in 0..size_mib {
        f.write_all(&buf)?;
    }
    f.sync_all()?;
    let elapsed = start.elapsed();
    drop(f);
    Ok(elapsed)
}

/// A database commit loop: append `COMMIT_BYTES` with pwrite, then fsync, `iterations` times.
/// Returns the latency of each iteration (write + fsync).
pub fn fsync_loop(dir: &Path, iterations: usize) -> std::io::Result<Vec<Duration>> {
    let buf = pattern(COMMIT_BYTES, 0xc0ffee);
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(dir.join("commit.log"))?;
    let mut lat = Vec::with_capacity(iterations);
    for i in 0..iterations {
        let start = Instant::now();
        f.write_all_at(&buf, (i * COMMIT_BYTES) as u64)?;
        f.sync_all()?;
        lat.push(start.elapsed());
    }
    Ok(lat)
}

/// Names of the directories the small files are spread over (created before the timed part).
pub fn small_file_dirs(dir: &Path, dirs: usize) -> std::io::Result<Vec<std::path::PathBuf>> {
    (0..dirs)
        .map(|d| {
            let p = dir.join(format!("d{d:04}"));
            std::fs::create_dir_all(&p).map(|()| p)
        })
        .collect()
}

/// Create, write `SMALL_FILE_BYTES` into, and close `files` new files, round robin over
/// `dirs`. Returns the elapsed time.
pub fn small_files(dirs: &[std::path::PathBuf], files: usize) -> std::io::Result<Duration> {
    assert!(!dirs.is_empty(), "small files need at least one directory");
    let buf = pattern(SMALL_FILE_BYTES, 0xf11e);
    let start = Instant::now();
    for i in 0..files {
        let mut f = File::create(dirs[i % dirs.len()].join(format!("f{i:07}")))?;
        f.write_all(&buf)?;
    }
    Ok(start.elapsed())
}

/// Write the file that the read workloads read: `size_mib` MiB, fsynced.
pub fn prepare_read_file(path: &Path, size_mib: u64) -> std::io::Result<()> {
    let buf = pattern(CHUNK_BYTES, 0x4ead);
    let mut f = File::create(path)?;
    for _ in 0..size_mib {
        f.write_all(&buf)?;
    }
    f.sync_all()
}

/// Read `path` from start to end in `CHUNK_BYTES` read() calls. Returns the time from open
/// to end of file and the bytes read.
pub fn read_file(path: &Path) -> std::io::Result<(Duration, u64)> {
    let mut buf = vec![0u8; CHUNK_BYTES];
    let start = Instant::now();
    let mut f = File::open(path)?;
    let mut total = 0u64;
    loop {
        match f.read(&mut buf)? {
            0 => break,
            n => total += n as u64,
        }
    }
    Ok((start.elapsed(), total))
}

/// The fraction of `path`'s pages in the page cache (mmap + mincore; on a FUSE mount, its
/// own page cache, the one a read() on the mount is served from).
pub fn resident_fraction(path: &Path) -> std::io::Result<f64> {
    use std::os::fd::AsRawFd;
    let f = File::open(path)?;
    let len = f.metadata()?.len() as usize;
    if len == 0 {
        return Ok(1.0);
    }
    // SAFETY: a fresh read-only shared mapping of an open file, unmapped below.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let mut vec = vec![0u8; len.div_ceil(page)];
    // SAFETY: `vec` has one byte per page of the mapping.
    let r = unsafe { libc::mincore(addr, len, vec.as_mut_ptr()) };
    let err = std::io::Error::last_os_error();
    // SAFETY: the mapping made above, not used after this.
    unsafe { libc::munmap(addr, len) };
    if r < 0 {
        return Err(err);
    }
    let resident = vec.iter().filter(|b| *b & 1 == 1).count();
    Ok(resident as f64 / vec.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_leave_the_expected_files() {
        let d = tempfile::tempdir().unwrap();
        seq_write(d.path(), 2).unwrap();
        assert_eq!(
            std::fs::metadata(d.path().join("seq-write.dat"))
                .unwrap()
                .len(),
            2 * CHUNK_BYTES as u64
        );
        assert_eq!(fsync_loop(d.path(), 3).unwrap().len(), 3);
        assert_eq!(
            std::fs::metadata(d.path().join("commit.log"))
                .unwrap()
                .len(),
            3 * COMMIT_BYTES as u64
        );
        let dirs = small_file_dirs(&d.path().join("small"), 2).unwrap();
        small_files(&dirs, 5).unwrap();
        assert_eq!(std::fs::read_dir(&dirs[0]).unwrap().count(), 3);
        assert_eq!(std::fs::read_dir(&dirs[1]).unwrap().count(), 2);
        let r = d.path().join("r");
        prepare_read_file(&r, 3).unwrap();
        assert_eq!(read_file(&r).unwrap().1, 3 * CHUNK_BYTES as u64);
        let resident = resident_fraction(&r).unwrap();
        assert!((0.0..=1.0).contains(&resident), "{resident}");
    }

    #[test]
    fn pattern_does_not_repeat_within_a_chunk() {
        let p = pattern(CHUNK_BYTES, 1);
        assert_eq!(p.len(), CHUNK_BYTES);
        assert_ne!(p[..4096], p[4096..8192]);
    }
}
