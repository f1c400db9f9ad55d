//! A writer for the crash tests, in its own process because it writes through a shared
//! mapping: when the daemon behind the mount dies, touching the mapping may raise SIGBUS,
//! which must not take the test down with it.
//!
//! Usage: `mmap_writer FILE TAG RECORDS PROGRESS`. Creates FILE of RECORDS records, maps it,
//! and writes record after record into the mapping, each followed by `msync(MS_SYNC)`. After
//! each msync returned, writes the number of durable records (u64, little endian) at the start
//! of PROGRESS (a file outside the mount). Exits with status 1 at the first error.

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use mirrorkit_tests::records::{record, RECORD_BYTES};

fn main() {
    if let Err(e) = run() {
        eprintln!("mmap_writer: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let [_, file, tag, records, progress] = args.as_slice() else {
        return Err("usage: mmap_writer FILE TAG RECORDS PROGRESS".into());
    };
    let tag: u64 = tag.parse().map_err(|e| format!("TAG {tag:?}: {e}"))?;
    let records: usize = records
        .parse()
        .map_err(|e| format!("RECORDS {records:?}: {e}"))?;
    let progress = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(progress)
        .map_err(|e| format!("{progress}: {e}"))?;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(file)
        .map_err(|e| format!("{file}: {e}"))?;
    let len = records * RECORD_BYTES;
    f.set_len(len as u64).map_err(|e| format!("set_len: {e}"))?;
    // SAFETY: a fresh shared mapping of a file of `len` bytes; unmapped at exit.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    if map == libc::MAP_FAILED {
        return Err(format!("mmap: {}", std::io::Error::last_os_error()));
    }
    for n in 0..records {
        let r = record(tag, n as u64);
        // SAFETY: record n lies within the mapping, which nothing else aliases.
        let rc = unsafe {
            let at = map.cast::<u8>().add(n * RECORD_BYTES);
            std::ptr::copy_nonoverlapping(r.as_ptr(), at, RECORD_BYTES);
            libc::msync(at.cast(), RECORD_BYTES, libc::MS_SYNC)
        };
        if rc < 0 {
            return Err(format!(
                "msync of record {n}: {}",
                std::io::Error::last_os_error()
            ));
        }
        progress
            .write_all_at(&(n as u64 + 1).to_le_bytes(), 0)
            .map_err(|e| format!("progress: {e}"))?;
    }
    Ok(())
}
