//! One run of the benchmark: the native and mirrored directories, the alternation of sides
//! within each repetition, and the checks that make a mirror figure a mirror figure (the
//! primary stayed in sync and sent every byte written).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mirrorkit_engine::status::STATUS_INTERVAL_MS;
use mirrorkit_tests::{Mirror, Status};
use serde::Serialize;

use crate::report::{Row, Traffic};
use crate::stats::{median, percentile};
use crate::workloads::{self, COMMIT_BYTES, SMALL_FILE_BYTES};
use crate::{machine, Config, Side, Workload};

/// What the primary sent to its peer during one run.
struct Sent {
    ops: u64,
    data_bytes: u64,
}

/// One run of the benchmark: the two directories and what was measured so far.
pub struct Bench<'a> {
    cfg: &'a Config,
    mirror: &'a Mirror,
    native_root: PathBuf,
    mirror_root: PathBuf,
    pub rows: Vec<Row>,
    pub traffic: Vec<Traffic>,
    /// Anything that makes a figure less than it claims to be, for the report.
    pub notes: Vec<String>,
    /// Per run: run-queue wait of the benchmark's thread and the nodes' threads, in % of the
    /// timed part's wall time (summed over threads, so it can exceed 100).
    cpu_wait: Vec<(Workload, Side, f64)>,
    pub cpu_wait_summary: Vec<CpuWait>,
}

/// Median CPU run-queue wait of one workload's runs on each side.
#[derive(Debug, Serialize)]
pub struct CpuWait {
    pub workload: &'static str,
    pub native_pct: f64,
    pub mirror_pct: f64,
}

/// Reads of the file before a cached read is measured, at most, until it is all in cache.
const WARM_READS_MAX: usize = 3;
/// Fraction of a file's pages in the page cache that counts as all of it.
const FULLY_RESIDENT: f64 = 0.999;

impl<'a> Bench<'a> {
    pub fn new(cfg: &'a Config, mirror: &'a Mirror) -> Result<Bench<'a>> {
        // Both on the same file system: the native directory beside the nodes' directories.
        let native_root = mirror.base.path().join("native");
        let mirror_root = mirror.primary_dir().join("bench");
        for d in [&native_root, &mirror_root] {
            std::fs::create_dir_all(d).with_context(|| format!("{}", d.display()))?;
        }
        Ok(Bench {
            cfg,
            mirror,
            native_root,
            mirror_root,
            rows: Vec::new(),
            traffic: Vec::new(),
            notes: Vec::new(),
            cpu_wait: Vec::new(),
            cpu_wait_summary: Vec::new(),
        })
    }

    fn root(&self, side: Side) -> &Path {
        match side {
            Side::Native => &self.native_root,
            Side::Mirror => &self.mirror_root,
        }
    }

    pub fn run(&mut self, workloads: &[Workload]) -> Result<()> {
        if workloads
            .iter()
            .any(|w| matches!(w, Workload::ReadCached | Workload::ReadCold))
        {
            for side in [Side::Native, Side::Mirror] {
                let dir = self.root(side).join("read");
                std::fs::create_dir_all(&dir)?;
                eprintln!(
                    "writing the {} MiB file the reads read ({})",
                    self.cfg.read_mib,
                    side.name()
                );
                workloads::prepare_read_file(&dir.join("data"), self.cfg.read_mib)
                    .with_context(|| format!("preparing the read file ({})", side.name()))?;
            }
        }
        let mut rows: Vec<Vec<Row>> = workloads.iter().map(|w| w.rows()).collect();
        let mut traffic: Vec<(Vec<f64>, Vec<f64>)> =
            vec![(Vec::new(), Vec::new()); workloads.len()];
        for rep in 0..self.cfg.reps {
            for (i, &w) in workloads.iter().enumerate() {
                // Alternate which side goes first, so that neither always follows the other.
                let sides = if (rep + i) % 2 == 0 {
                    [Side::Native, Side::Mirror]
                } else {
                    [Side::Mirror, Side::Native]
                };
                for side in sides {
                    let (figures, sent) = self.measure(w, side).with_context(|| {
                        format!(
                            "{} on the {} directory, repetition {}",
                            w.name(),
                            side.name(),
                            rep + 1
                        )
                    })?;
                    let shown: Vec<String> = rows[i]
                        .iter()
                        .zip(&figures)
                        .map(|(r, f)| format!("{f:.1} {}", r.metric))
                        .collect();
                    let wait = self.cpu_wait.last().map_or(f64::NAN, |c| c.2);
                    eprintln!(
                        "rep {}/{} {:<12} {:<6} {} (cpu wait {wait:.0}%)",
                        rep + 1,
                        self.cfg.reps,
                        w.name(),
                        side.name(),
                        shown.join(", ")
                    );
                    for (r, f) in rows[i].iter_mut().zip(figures) {
                        match side {
                            Side::Native => r.native.push(f),
                            Side::Mirror => r.mirror.push(f),
                        }
                    }
                    if let Some(sent) = sent {
                        traffic[i].0.push(sent.ops as f64);
                        traffic[i]
                            .1
                            .push(sent.data_bytes as f64 / f64::from(1 << 20));
                    }
                }
            }
        }
        self.rows = rows.into_iter().flatten().collect();
        self.traffic = workloads
            .iter()
            .zip(traffic)
            .map(|(w, (ops, mib))| Traffic {
                workload: w.name(),
                ops_per_run: median(&ops),
                data_mib_per_run: median(&mib),
            })
            .collect();
        self.cpu_wait_summary = workloads
            .iter()
            .map(|&w| {
                let of = |side| {
                    let v: Vec<f64> = self
                        .cpu_wait
                        .iter()
                        .filter(|c| c.0 == w && c.1 == side)
                        .map(|c| c.2)
                        .collect();
                    median(&v)
                };
                CpuWait {
                    workload: w.name(),
                    native_pct: of(Side::Native),
                    mirror_pct: of(Side::Mirror),
                }
            })
            .collect();
        Ok(())
    }

    /// One run of `w` on `side`: its figures (as `Workload::rows` lists them) and, on the
    /// mirror, the operations and write bytes the primary sent meanwhile.
    fn measure(&mut self, w: Workload, side: Side) -> Result<(Vec<f64>, Option<Sent>)> {
        let dir = self.root(side).join(w.name());
        let read_file = self.root(side).join("read/data");
        let before = match side {
            Side::Mirror => Some(self.settled_status()?),
            Side::Native => None,
        };
        let mb = |bytes: u64, t: Duration| bytes as f64 / 1e6 / t.as_secs_f64();
        let nodes: Vec<u32> = [self.mirror.a.pid(), self.mirror.b.pid()]
            .into_iter()
            .flatten()
            .collect();
        // The CPU wait is measured over the timed part only: each arm marks its start.
        let mark = || (machine::run_delay_ns(&nodes), Instant::now());
        let window;
        let (figures, data_bytes) = match w {
            Workload::SeqWrite => {
                std::fs::create_dir_all(&dir)?;
                workloads::sync_all();
                window = mark();
                let bytes = self.cfg.write_mib << 20;
                let t = workloads::seq_write(&dir, self.cfg.write_mib)?;
                (vec![mb(bytes, t)], bytes)
            }
            Workload::Fsync4k => {
                std::fs::create_dir_all(&dir)?;
                workloads::sync_all();
                window = mark();
                let lat = workloads::fsync_loop(&dir, self.cfg.fsync_iters)?;
                let us: Vec<f64> = lat.iter().map(|d| d.as_secs_f64() * 1e6).collect();
                let bytes = (self.cfg.fsync_iters * COMMIT_BYTES) as u64;
                (vec![percentile(&us, 50.0), percentile(&us, 99.0)], bytes)
            }
            Workload::SmallFiles => {
                let dirs = workloads::small_file_dirs(&dir, self.cfg.file_dirs)?;
                workloads::sync_all();
                window = mark();
                let t = workloads::small_files(&dirs, self.cfg.files)?;
                let bytes = (self.cfg.files * SMALL_FILE_BYTES) as u64;
                (vec![self.cfg.files as f64 / t.as_secs_f64()], bytes)
            }
            Workload::ReadCached => {
                workloads::sync_all();
                // Fill the page cache and check that it holds the whole file: a machine's
                // memory manager may page out cache it considers cold (DAMON reclaim does).
                let mut resident = 0.0;
                for _ in 0..WARM_READS_MAX {
                    workloads::read_file(&read_file)?;
                    resident = workloads::resident_fraction(&read_file)?;
                    if resident >= FULLY_RESIDENT {
                        break;
                    }
                }
                if resident < FULLY_RESIDENT {
                    self.notes.push(format!(
                        "read-cached on the {} directory: only {:.1}% of the file in the page cache \
                         after {WARM_READS_MAX} reads; that run is partly a cold read",
                        side.name(),
                        resident * 100.0
                    ));
                }
                window = mark();
                let (t, bytes) = workloads::read_file(&read_file)?;
                (vec![mb(bytes, t)], 0)
            }
            Workload::ReadCold => {
                workloads::drop_caches()?;
                window = mark();
                let (t, bytes) = workloads::read_file(&read_file)?;
                (vec![mb(bytes, t)], 0)
            }
        };
        let waited_ns = machine::run_delay_ns(&nodes).saturating_sub(window.0);
        let cpu_wait_pct = 100.0 * waited_ns as f64 / window.1.elapsed().as_nanos() as f64;
        self.cpu_wait.push((w, side, cpu_wait_pct));
        let sent = match before {
            Some(before) => Some(self.check_mirrored(&before, data_bytes)?),
            None => None,
        };
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("cleaning {}", dir.display()))?;
        }
        Ok((figures, sent))
    }

    /// The primary's status once it reflects everything done so far (it is rewritten every
    /// `STATUS_INTERVAL_MS`).
    fn settled_status(&self) -> Result<Status> {
        std::thread::sleep(Duration::from_millis(2 * STATUS_INTERVAL_MS));
        self.mirror
            .a
            .status()
            .context("the primary wrote no status")
    }

    /// After a run on the mirror: the primary must still be in sync, never having gone alone,
    /// and must have sent at least the run's write data; otherwise the figures would not be
    /// those of a mirror. Returns the operations and write bytes sent during the run.
    fn check_mirrored(&self, before: &Status, data_bytes: u64) -> Result<Sent> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let after = loop {
            let s = self.settled_status()?;
            if s.mode != "in-sync" || s.times_alone != before.times_alone {
                bail!(
                    "the primary left in-sync during the run (mode {}, {}): its figures would not \
                     be mirrored ones; a loaded machine may need a longer --peer-timeout-ms",
                    s.mode,
                    s.reason
                );
            }
            if s.data_bytes_sent >= before.data_bytes_sent + data_bytes {
                break s;
            }
            if std::time::Instant::now() >= deadline {
                bail!(
                    "the primary sent {} bytes of write data for a run that wrote {data_bytes}",
                    s.data_bytes_sent - before.data_bytes_sent
                );
            }
        };
        Ok(Sent {
            ops: after.ops_sent - before.ops_sent,
            data_bytes: after.data_bytes_sent - before.data_bytes_sent,
        })
    }
}
