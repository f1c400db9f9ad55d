//! Online verify: compare both copies by chunk digests while the application runs and the
//! peer is in sync; report every difference with its path and range; optionally repair.
//!
//! For each group of chunks of each regular file, under the ordering lock (the application's
//! changes wait a moment), the primary reads its digests and submits `VerifyProbe` on the
//! ordinary stream: the peer answers after applying every earlier operation, so both digests
//! are of the same state. Probes are pipelined. Repair records the differing chunks (or the
//! names of files missing or of another size on the peer) and continues alone: the next
//! session's incremental resync sends exactly those.
//!
//! Verifies file data and sizes; attributes, xattrs and the namespace (extra entries on the
//! peer) are not compared here.

use std::collections::{HashSet, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;

use mirrorkit_store::digest::{self, Digester};
use mirrorkit_store::sys;
use mirrorkit_wire::{Op, ProbeFile, RelPath, CHUNK_BYTES, DIGEST_BYTES};
use tracing::{info, warn};

use crate::core::Core;
use crate::link::{Mark, Ticket};

/// Bytes compared per probe: the ordering lock is held while they are read here, and the
/// application's next operation waits on the peer behind the probes it is hashing.
pub const VERIFY_GROUP_BYTES: u64 = 1 << 20;
/// Probes sent and not yet answered (bounds that wait to about this many groups).
pub const MAX_OUTSTANDING_VERIFY: usize = 2;

/// One difference between the copies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    pub path: RelPath,
    /// Byte range of the file that differs (chunk-aligned; the whole file for `what` other than
    /// "content").
    pub start: u64,
    pub end: u64,
    /// "content", "missing on the peer", "other size on the peer", "parent missing on the peer".
    pub what: &'static str,
}

/// What a verify did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub files: u64,
    pub bytes: u64,
    pub differences: u64,
    /// The differences were recorded and the link dropped to alone for a resync.
    pub repairing: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("mirror {mirror}: the peer is not in sync ({mode}): verify needs an in-sync peer")]
    NotInSync { mirror: String, mode: String },
    #[error("mirror {mirror}: the peer left the session during the verify: {reason}")]
    Lost { mirror: String, reason: String },
}

struct Pending {
    ticket: Ticket,
    path: RelPath,
    ino: u64,
    start: u64,
    end: u64,
    ours: Vec<[u8; DIGEST_BYTES]>,
}

struct Verify<'a, F: FnMut(&Difference)> {
    core: &'a Core,
    session: u64,
    digester: Digester,
    outstanding: VecDeque<Pending>,
    report: Report,
    repair: Vec<Mark>,
    /// Files already reported as a whole (missing, other size): their other groups are not.
    whole: HashSet<RelPath>,
    on_diff: F,
}

/// Verify the mirror of `core`; `on_diff` sees every difference as it is found.
pub fn verify(
    core: &Core,
    repair: bool,
    on_diff: impl FnMut(&Difference),
) -> Result<Report, VerifyError> {
    let Some(session) = core.link.in_sync_session() else {
        return Err(VerifyError::NotInSync {
            mirror: core.mirror.clone(),
            mode: core.link.status().0.as_str().into(),
        });
    };
    let c = core.link.counters();
    c.verify_done_bytes.store(0, Ordering::Relaxed);
    c.verify_differences.store(0, Ordering::Relaxed);
    c.verify_running.store(1, Ordering::Relaxed);
    info!(mirror = %core.mirror, repair, "online verify starts");
    let mut v = Verify {
        core,
        session,
        digester: Digester::default(),
        outstanding: VecDeque::new(),
        report: Report::default(),
        repair: Vec::new(),
        whole: HashSet::new(),
        on_diff,
    };
    let result = crate::sync::for_each_file(
        core.root.as_fd(),
        &RelPath::root(),
        core.filter(),
        &|_| false,
        &mut |path, _, _| v.file(path),
    )
    .and_then(|()| v.settle_all());
    c.verify_running.store(0, Ordering::Relaxed);
    let lost = |reason: String| VerifyError::Lost {
        mirror: core.mirror.clone(),
        reason,
    };
    result.map_err(lost)?;
    let mut report = v.report;
    if repair && !v.repair.is_empty() {
        core.link.repair(
            session,
            v.repair,
            format!(
                "online verify found {} difference(s); repairing them by a resync",
                report.differences
            ),
        );
        report.repairing = true;
    }
    info!(mirror = %core.mirror, files = report.files, bytes = report.bytes,
        differences = report.differences, repairing = report.repairing, "online verify complete");
    Ok(report)
}

impl<F: FnMut(&Difference)> Verify<'_, F> {
    fn open(&self, path: &RelPath) -> Option<OwnedFd> {
        sys::open_beneath(
            self.core.root.as_fd(),
            path,
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NOATIME | libc::O_NONBLOCK,
            0,
        )
        .ok()
    }

    fn file(&mut self, path: &RelPath) -> Result<(), String> {
        self.report.files += 1;
        let mut start = 0u64;
        loop {
            let pending = {
                // Our digests and the probe at one point of the operation order.
                let _order = self.core.order();
                let Some(fd) = self.open(path) else {
                    return Ok(());
                };
                let Ok(st) = sys::fstat(fd.as_fd()) else {
                    return Ok(());
                };
                let size = st.st_size as u64;
                if st.st_mode & libc::S_IFMT != libc::S_IFREG || (start >= size && start > 0) {
                    return Ok(());
                }
                let end =
                    (start + VERIFY_GROUP_BYTES).min(size.div_ceil(CHUNK_BYTES) * CHUNK_BYTES);
                let Ok(data) = digest::data_ranges_in(fd.as_fd(), start, end.min(size)) else {
                    return Ok(());
                };
                let mut ours = Vec::new();
                let mut c = start;
                while c < end {
                    match self
                        .digester
                        .chunk(fd.as_fd(), c, (c + CHUNK_BYTES).min(size), &data)
                    {
                        Ok(d) => ours.push(d),
                        Err(_) => return Ok(()),
                    }
                    c += CHUNK_BYTES;
                }
                let ranges = if end > start {
                    vec![(start, end)]
                } else {
                    Vec::new()
                };
                let ticket = self
                    .core
                    .link
                    .submit_sync(
                        self.session,
                        &Op::VerifyProbe {
                            path: path.clone(),
                            size,
                            ranges,
                        },
                        &[],
                    )
                    .map_err(|e| e.0)?;
                Pending {
                    ticket,
                    path: path.clone(),
                    ino: st.st_ino,
                    start,
                    end,
                    ours,
                }
            };
            let end = pending.end;
            self.outstanding.push_back(pending);
            while self.outstanding.len() > MAX_OUTSTANDING_VERIFY {
                self.settle_one()?;
            }
            if end - start < VERIFY_GROUP_BYTES {
                return Ok(());
            }
            start = end;
        }
    }

    fn settle_all(&mut self) -> Result<(), String> {
        while !self.outstanding.is_empty() {
            self.settle_one()?;
        }
        Ok(())
    }

    fn settle_one(&mut self) -> Result<(), String> {
        let Some(p) = self.outstanding.pop_front() else {
            return Ok(());
        };
        let (file, theirs) = self.core.link.wait_reply(p.ticket).map_err(|e| e.0)?;
        let bytes = p.end - p.start;
        self.report.bytes += bytes;
        self.core
            .link
            .counters()
            .verify_done_bytes
            .fetch_add(bytes, Ordering::Relaxed);
        let what = match file {
            ProbeFile::Kept => None,
            ProbeFile::Missing => Some("missing on the peer"),
            ProbeFile::OtherSize => Some("other size on the peer"),
            ProbeFile::NoParent => Some("parent missing on the peer"),
            ProbeFile::Created => Some("replaced on the peer (unexpected answer)"),
        };
        if let Some(what) = what {
            if self.whole.insert(p.path.clone()) {
                self.differ(Difference {
                    path: p.path.clone(),
                    start: 0,
                    end: u64::MAX,
                    what,
                });
                self.repair.push(Mark::Entry(p.path));
            }
            return Ok(());
        }
        // Runs of differing chunks, reported as ranges.
        let mut run: Option<(u64, u64)> = None;
        for (i, ours) in p.ours.iter().enumerate() {
            let c = p.start + i as u64 * CHUNK_BYTES;
            let same = theirs.get(i * DIGEST_BYTES..(i + 1) * DIGEST_BYTES) == Some(&ours[..]);
            run = match (run, same) {
                (Some((s, _)), false) => Some((s, c + CHUNK_BYTES)),
                (None, false) => Some((c, c + CHUNK_BYTES)),
                (Some(r), true) => {
                    self.content(&p, r);
                    None
                }
                (None, true) => None,
            };
        }
        if let Some(r) = run {
            self.content(&p, r);
        }
        Ok(())
    }

    fn content(&mut self, p: &Pending, (start, end): (u64, u64)) {
        self.differ(Difference {
            path: p.path.clone(),
            start,
            end,
            what: "content",
        });
        self.repair.push(Mark::Data {
            ino: p.ino,
            start,
            end,
        });
    }

    fn differ(&mut self, d: Difference) {
        warn!(mirror = %self.core.mirror, path = %d.path, start = d.start, end = d.end, what = d.what,
            "online verify: the copies differ");
        self.report.differences += 1;
        self.core
            .link
            .counters()
            .verify_differences
            .fetch_add(1, Ordering::Relaxed);
        (self.on_diff)(&d);
    }
}
