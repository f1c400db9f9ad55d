//! `mirrorkit-bench resync`: how long a returning secondary takes to be in sync again, against
//! the tools an administrator would otherwise use, in one run on one disk.
//!
//! - **Incremental**: the same file set on both nodes and in two plain directories; the
//!   secondary stops, the same seeded change of about 1% is applied to the primary (through
//!   its mount) and to one plain directory; then the secondary restarts and is timed until the
//!   primary reports in-sync, and `rsync -a --delete --inplace --no-whole-file` of the changed
//!   directory into the unchanged one is timed to the end of a `syncfs`.
//! - **Full**: the secondary is replaced by an empty one (data and state wiped) and timed until
//!   in-sync; against `cp -a` of the same set into a new directory, with a `syncfs`.
//!
//! Page caches are dropped before every timed part (unless `--no-drop-caches`), the sides
//! alternate which goes first, and every result is checked: both copies of the mirror, and the
//! baseline's destination against its source, must be identical after each repetition.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use mirrorkit_tests::tree::{self, CompareOpts};
use mirrorkit_tests::{Mirror, MirrorOpts, Status};
use serde::Serialize;

use crate::fileset::{self, Change, SetSpec};
use crate::report::{fig, Target};
use crate::stats::{median, min_max};
use crate::tools::{self, ProcUsage, ToolRun, RSYNC_ARGS};
use crate::{load_now, print_footer, tail, workloads, Common, RunHeader, Setup};

/// The targets.
const INCREMENTAL_SPEEDUP: f64 = 10.0;
const FULL_RATIO: f64 = 0.8;
/// How often the primary's status is read while a resync is timed (it is rewritten every
/// 100 ms, which bounds the resolution of the mirror's times).
const POLL: Duration = Duration::from_millis(5);

#[derive(Args, Debug)]
pub struct ResyncArgs {
    /// Size of the file set, GiB [default: 4].
    #[arg(long, conflicts_with = "set_mib")]
    set_gib: Option<u64>,
    /// Size of the file set, MiB (small runs; overrides the default 4 GiB).
    #[arg(long)]
    set_mib: Option<u64>,
    /// Repetitions of each measurement on each side.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Seed of the set's content and of the changes.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Only these parts (comma separated) [default: both].
    #[arg(long, value_delimiter = ',')]
    only: Vec<Part>,
    /// Do not drop the page caches before the timed parts: warm figures, for smoke runs
    /// (dropping them slows everything else running on the machine).
    #[arg(long)]
    no_drop_caches: bool,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Part {
    /// Resync after a 1% change, against rsync.
    Incremental,
    /// Full resync to an empty peer, against cp -a.
    Full,
}

/// What was asked, as run.
#[derive(Debug, Serialize)]
struct Config {
    set_bytes: u64,
    set_files: usize,
    set_mix: String,
    classes: Vec<fileset::Class>,
    reps: usize,
    seed: u64,
    parts: Vec<Part>,
    caches_dropped: bool,
    peer_timeout_ms: u64,
    rsync: Option<String>,
    rsync_args: Vec<&'static str>,
}

/// One timed resync of the mirror: restart (or replacement) of the secondary until the
/// primary's status says in-sync in a new session.
#[derive(Clone, Debug, Default, Serialize)]
struct MirrorRun {
    seconds: f64,
    /// Until the new secondary wrote its status file (the process is up).
    start_seconds: f64,
    /// Until the primary's status shows the new session (connected, synchronising).
    connect_seconds: f64,
    /// From the new session to in-sync.
    sync_seconds: f64,
    /// `sync_recorded_bytes` of the session; `sync_compared_bytes` and `sync_data_bytes_sent`
    /// during it.
    recorded_bytes: u64,
    compared_bytes: u64,
    sent_bytes: u64,
    /// CPU and storage I/O of each node during the run (the secondary is a new process).
    primary: ProcUsage,
    secondary: ProcUsage,
}

#[derive(Debug, Serialize)]
struct IncrementalRep {
    change: Change,
    mirror: MirrorRun,
    rsync: ToolRun,
    /// rsync's time over the mirror's.
    speedup: f64,
}

#[derive(Debug, Serialize)]
struct FullRep {
    set_bytes: u64,
    mirror: MirrorRun,
    mirror_mb_s: f64,
    cp: ToolRun,
    cp_mb_s: f64,
    /// `cp -a` without the `syncfs` (its data partly in the page cache at the end).
    cp_only_mb_s: f64,
    ratio: f64,
}

/// The first synchronisation after both nodes start (not a result: a reference).
#[derive(Debug, Default, Serialize)]
struct Initial {
    what: &'static str,
    seconds: f64,
    compared_bytes: u64,
    sent_bytes: u64,
}

/// One target's verdict.
#[derive(Debug, Serialize)]
struct Figure {
    id: &'static str,
    what: &'static str,
    metric: &'static str,
    mirror: Vec<f64>,
    mirror_median: f64,
    baseline: &'static str,
    baseline_values: Vec<f64>,
    baseline_median: f64,
    /// Incremental: baseline time over mirror time (how many times faster the mirror is).
    /// Full: mirror throughput over baseline throughput.
    ratio: f64,
    paired_ratio_min: f64,
    paired_ratio_max: f64,
    target: Target,
    met: bool,
}

impl Figure {
    /// A figure from its (id, what, metric), its (mirror values, baseline name, baseline
    /// values, paired ratios), the ratio of the medians and the target.
    fn new(
        (id, what, metric): (&'static str, &'static str, &'static str),
        (mirror, baseline, base, paired): (Vec<f64>, &'static str, Vec<f64>, Vec<f64>),
        ratio: f64,
        target: Target,
    ) -> Figure {
        let (paired_ratio_min, paired_ratio_max) = min_max(&paired);
        Figure {
            id,
            what,
            metric,
            mirror_median: median(&mirror),
            mirror,
            baseline,
            baseline_median: median(&base),
            baseline_values: base,
            ratio,
            paired_ratio_min,
            paired_ratio_max,
            met: target.met(ratio),
            target,
        }
    }
}

#[derive(Serialize)]
struct JsonReport<'a> {
    #[serde(flatten)]
    header: RunHeader<'a>,
    config: &'a Config,
    initial: &'a Initial,
    results: &'a [Figure],
    incremental: &'a [IncrementalRep],
    full: &'a [FullRep],
    notes: &'a [String],
    copies_identical: bool,
    targets_missed: usize,
}

pub fn run(args: &ResyncArgs, setup: &Setup) -> Result<()> {
    let set_request = match (args.set_mib, args.set_gib) {
        (Some(m), _) => m.checked_mul(1 << 20),
        (None, Some(g)) => g.checked_mul(1 << 30),
        (None, None) => Some(4 << 30),
    }
    .context("the set size is too large")?;
    if set_request == 0 || args.reps == 0 {
        bail!("the set size and the repetitions must be at least 1");
    }
    let parts: Vec<Part> = if args.only.is_empty() {
        vec![Part::Incremental, Part::Full]
    } else {
        [Part::Incremental, Part::Full]
            .into_iter()
            .filter(|p| args.only.contains(p))
            .collect()
    };
    let rsync = if parts.contains(&Part::Incremental) {
        Some(tools::rsync_version().context(
            "the incremental part's baseline is rsync (or run only the full part: --only full)",
        )?)
    } else {
        None
    };
    let drop = !args.no_drop_caches;
    if drop {
        workloads::drop_caches().context(
            "cannot drop the page caches (/proc/sys/vm/drop_caches); --no-drop-caches measures warm",
        )?;
    }
    let spec = SetSpec::for_bytes(set_request);
    // Copies at the peak: both nodes, the two plain trees, cp's copy; and some room.
    let copies = if parts.contains(&Part::Incremental) {
        5
    } else {
        3
    };
    let needed = spec.bytes() / 10 * 11 * copies;
    let free = free_bytes(&setup.base)?;
    if free < needed {
        bail!(
            "{} has {} MiB free; this run needs about {} MiB ({copies} copies of the set and some \
             room): choose another --base or a smaller set",
            setup.base.display(),
            free >> 20,
            needed >> 20
        );
    }
    let cfg = Config {
        set_bytes: spec.bytes(),
        set_files: spec.files(),
        set_mix: spec.describe(),
        classes: spec.classes.clone(),
        reps: args.reps,
        seed: args.seed,
        parts: parts.clone(),
        caches_dropped: drop,
        peer_timeout_ms: args.common.peer_timeout_ms,
        rsync,
        rsync_args: RSYNC_ARGS.to_vec(),
    };

    setup.print_header(
        "mirrorkit-bench resync: resync of a returning secondary against rsync and cp -a",
        if drop {
            " (the timed parts start from dropped caches anyway)"
        } else {
            " (with --no-drop-caches, what is cached at each timed part varies)"
        },
    );
    println!(
        "set:        {} = {} files, {} MiB; seed {}",
        cfg.set_mix,
        cfg.set_files,
        cfg.set_bytes >> 20,
        cfg.seed
    );
    println!(
        "config:     {} reps; parts {}; page caches {}",
        cfg.reps,
        parts
            .iter()
            .map(|p| match p {
                Part::Incremental => "incremental (vs rsync)",
                Part::Full => "full (vs cp -a)",
            })
            .collect::<Vec<_>>()
            .join(", "),
        if drop {
            "dropped before every timed part (cold)"
        } else {
            "NOT dropped (--no-drop-caches: warm figures)"
        }
    );
    if let Some(v) = &cfg.rsync {
        println!("rsync:      {v}; rsync {} SRC/ DST/", RSYNC_ARGS.join(" "));
    }
    setup.print_warnings();
    println!();

    let mut r = Runner::new(&cfg, &spec)?;
    let outcome = r.run();
    if let Err(e) = outcome {
        bail!(
            "{e:#}\n--- primary log (tail)\n{}\n--- secondary log (tail)\n{}",
            tail(&r.m.a.log(), 20),
            tail(&r.m.b.log(), 20)
        );
    }
    let load_end = load_now();
    let results = r.figures();
    let missed = results.iter().filter(|f| !f.met).count();
    r.print(&results);
    print_footer(&load_end, results.len(), missed);
    if let Some(path) = &args.common.json {
        let j = JsonReport {
            header: setup.header(&load_end),
            config: &cfg,
            initial: &r.initial,
            results: &results,
            incremental: &r.incremental,
            full: &r.full,
            notes: &r.notes,
            copies_identical: r.differences.is_empty(),
            targets_missed: missed,
        };
        let text = serde_json::to_string_pretty(&j)?;
        std::fs::write(path, text + "\n").with_context(|| format!("--json {}", path.display()))?;
        println!("json:       {}", path.display());
    }
    if !r.differences.is_empty() {
        bail!(
            "copies differ after a resync or a baseline run: its figures are not those of a \
             working copy:\n{}",
            r.differences.join("\n")
        );
    }
    Ok(())
}

/// One run: the mirror (with the plain directories beside the nodes', on the same file
/// system) and what was measured so far.
struct Runner<'a> {
    cfg: &'a Config,
    spec: &'a SetSpec,
    m: Mirror,
    /// The plain directories: the changed tree and rsync's destination; `cp -a`'s destination.
    src: PathBuf,
    dst: PathBuf,
    copy: PathBuf,
    timeout: Duration,
    initial: Initial,
    incremental: Vec<IncrementalRep>,
    full: Vec<FullRep>,
    notes: Vec<String>,
    /// Copies found different after a run (each fails the benchmark).
    differences: Vec<String>,
}

impl<'a> Runner<'a> {
    fn new(cfg: &'a Config, spec: &'a SetSpec) -> Result<Runner<'a>> {
        let m = Mirror::new(MirrorOpts {
            peer_timeout_ms: cfg.peer_timeout_ms,
            resync_bandwidth: None,
            log_filter: "info".into(),
            ..MirrorOpts::default()
        });
        let native = m.base.path().join("native");
        std::fs::create_dir_all(&native).with_context(|| format!("{}", native.display()))?;
        Ok(Runner {
            cfg,
            spec,
            src: native.join("src"),
            dst: native.join("dst"),
            copy: native.join("copy"),
            m,
            // Generous: a resync that takes this long is broken, not slow.
            timeout: Duration::from_secs(120 + cfg.set_bytes / 10_000_000),
            initial: Initial::default(),
            incremental: Vec::new(),
            full: Vec::new(),
            notes: Vec::new(),
            differences: Vec::new(),
        })
    }

    fn run(&mut self) -> Result<()> {
        let incremental = self.cfg.parts.contains(&Part::Incremental);
        let (a, b) = (self.m.a.dirs.data.clone(), self.m.b.dirs.data.clone());
        // The full part alone needs no second copy: the secondary starts empty.
        let roots: Vec<&Path> = if incremental {
            vec![&a, &b, &self.src, &self.dst]
        } else {
            vec![&a, &self.src]
        };
        eprintln!(
            "laying down the set ({} MiB) in {} directories",
            self.cfg.set_bytes >> 20,
            roots.len()
        );
        let t = Instant::now();
        fileset::lay_down(self.spec, self.cfg.seed, &roots).context("laying down the set")?;
        eprintln!("  done in {:.1} s", t.elapsed().as_secs_f64());

        self.cold()?;
        eprintln!("starting the mirror (two mirrorkit processes) and its first synchronisation");
        let t = Instant::now();
        self.m.start_secondary();
        self.m.start_primary();
        let s = self.wait_primary("the first synchronisation", |s| s.mode == "in-sync")?;
        self.initial = Initial {
            what: if incremental {
                "identical copies on both nodes: compare mode, every chunk digested on both"
            } else {
                "empty secondary: every file sent"
            },
            seconds: t.elapsed().as_secs_f64(),
            compared_bytes: s.sync_compared_bytes,
            sent_bytes: s.sync_data_bytes_sent,
        };
        eprintln!(
            "  in sync after {:.1} s (compared {} MiB, sent {} MiB)",
            self.initial.seconds,
            s.sync_compared_bytes >> 20,
            s.sync_data_bytes_sent >> 20
        );
        if incremental {
            for rep in 0..self.cfg.reps {
                let r = self
                    .incremental_rep(rep)
                    .with_context(|| format!("incremental part, repetition {}", rep + 1))?;
                self.incremental.push(r);
            }
        }
        if self.cfg.parts.contains(&Part::Full) {
            for rep in 0..self.cfg.reps {
                let r = self
                    .full_rep(rep)
                    .with_context(|| format!("full part, repetition {}", rep + 1))?;
                self.full.push(r);
            }
        }
        Ok(())
    }

    /// Flush, then (unless told not to) drop the page, dentry and inode caches.
    fn cold(&self) -> Result<()> {
        if self.cfg.caches_dropped {
            workloads::drop_caches().context("dropping the page caches")?;
        } else {
            workloads::sync_all();
        }
        Ok(())
    }

    /// Wait until the primary's status satisfies `f`; an error (with its status) after the
    /// run's timeout.
    fn wait_primary(&self, what: &str, f: impl Fn(&Status) -> bool) -> Result<Status> {
        mirrorkit_tests::wait_for(self.timeout, || self.m.a.status().filter(|s| f(s))).with_context(
            || {
                format!(
                    "{what}: not reached within {:?}; primary status {:?}",
                    self.timeout,
                    self.m.a.status()
                )
            },
        )
    }

    /// Stop the secondary and wait until the primary continues alone; its status then.
    fn stop_secondary(&mut self) -> Result<Status> {
        let t = Instant::now();
        self.m.b.stop();
        let stopped = t.elapsed();
        let s = self.wait_primary("the primary going alone", |s| s.mode == "alone")?;
        eprintln!(
            "  secondary stopped in {:.2} s; primary alone {:.2} s later",
            stopped.as_secs_f64(),
            (t.elapsed() - stopped).as_secs_f64()
        );
        Ok(s)
    }

    /// Start the secondary and time it until the primary is in sync in a new session.
    fn timed_resync(&mut self, before: &Status) -> Result<MirrorRun> {
        let a_pid = self.m.a.pid().context("the primary is not running")?;
        self.cold()?;
        let a0 = ProcUsage::of(a_pid).unwrap_or_default();
        let t0 = Instant::now();
        self.m.start_secondary();
        let started = t0.elapsed();
        let deadline = t0 + self.timeout;
        let mut session_at = None;
        let s = loop {
            if let Some(s) = self.m.a.status() {
                if s.sessions > before.sessions {
                    session_at.get_or_insert_with(|| t0.elapsed());
                    if s.mode == "in-sync" {
                        break s;
                    }
                }
            }
            if !self.m.b.is_running() {
                bail!("the secondary exited during the resync");
            }
            if Instant::now() >= deadline {
                bail!(
                    "no resync within {:?}; primary status {:?}",
                    self.timeout,
                    self.m.a.status()
                );
            }
            std::thread::sleep(POLL);
        };
        let total = t0.elapsed();
        let session = session_at.unwrap_or(total);
        let primary = ProcUsage::of(a_pid).unwrap_or_default().since(a0);
        let secondary = self.m.b.pid().and_then(ProcUsage::of).unwrap_or_default();
        Ok(MirrorRun {
            seconds: total.as_secs_f64(),
            start_seconds: started.as_secs_f64(),
            connect_seconds: session.saturating_sub(started).as_secs_f64(),
            sync_seconds: total.saturating_sub(session).as_secs_f64(),
            recorded_bytes: s.sync_recorded_bytes,
            compared_bytes: s
                .sync_compared_bytes
                .saturating_sub(before.sync_compared_bytes),
            sent_bytes: s
                .sync_data_bytes_sent
                .saturating_sub(before.sync_data_bytes_sent),
            primary,
            secondary,
        })
    }

    /// Compare two trees (not timed); a difference is recorded and fails the run at the end.
    fn check(&mut self, what: &str, a: &Path, b: &Path, opts: CompareOpts) {
        if self.cfg.caches_dropped {
            // Unwritten extents read as data once cached: see `CompareOpts::extents`.
            let _ = tree::drop_page_caches();
        }
        let t = Instant::now();
        match tree::compare_with(a, b, 10, opts) {
            Ok(()) => eprintln!("  {what}: identical ({:.1} s)", t.elapsed().as_secs_f64()),
            Err(e) => {
                eprintln!("  {what}: DIFFERENT\n{e}");
                self.differences.push(format!("{what}: {e}"));
            }
        }
    }

    fn mirror_check(&mut self, what: &str) {
        let (a, b) = (self.m.a.dirs.data.clone(), self.m.b.dirs.data.clone());
        self.check(what, &a, &b, CompareOpts::default());
    }

    /// A baseline's copy: everything but the data/hole map (the tools do not promise holes).
    fn baseline_check(&mut self, what: &str, dst: &Path) {
        let opts = CompareOpts {
            mtimes: true,
            extents: false,
        };
        let src = self.src.clone();
        self.check(what, &src, dst, opts);
    }

    fn incremental_rep(&mut self, rep: usize) -> Result<IncrementalRep> {
        let reps = self.cfg.reps;
        let before = self.stop_secondary()?;
        // Not timed: the same change on the primary (through its mount, recorded) and on the
        // plain source directory.
        let round = rep as u64;
        let change = fileset::change(
            &self.m.a.dirs.data,
            self.cfg.seed,
            round,
            self.cfg.set_bytes,
        )
        .context("changing the primary's tree")?;
        let same = fileset::change(&self.src, self.cfg.seed, round, self.cfg.set_bytes)
            .context("changing the plain source tree")?;
        if same != change {
            bail!("the change differs between the primary ({change:?}) and the plain tree ({same:?}): the trees diverged");
        }
        eprintln!(
            "rep {}/{reps} incremental: changed {:.1} MiB ({} writes into {} files, {} new files, {} removed, {} renamed)",
            rep + 1,
            change.bytes() as f64 / f64::from(1 << 20),
            change.writes,
            change.files_written,
            change.created,
            change.removed,
            change.renamed
        );
        let mut mirror = None;
        let mut rsync = None;
        for mirror_turn in turns(rep) {
            if mirror_turn {
                let run = self.timed_resync(&before)?;
                eprintln!(
                    "rep {}/{reps} incremental mirror {:.2} s (start {:.2}, connect {:.2}, sync {:.2}); recorded {:.1} MiB, compared {:.1} MiB, sent {:.1} MiB",
                    rep + 1,
                    run.seconds,
                    run.start_seconds,
                    run.connect_seconds,
                    run.sync_seconds,
                    mib(run.recorded_bytes),
                    mib(run.compared_bytes),
                    mib(run.sent_bytes)
                );
                if run.compared_bytes > self.cfg.set_bytes / 2 {
                    self.notes.push(format!(
                        "incremental repetition {}: the resync compared {:.0} MiB, most of the set: \
                         it did not use the dirty record (compare mode)",
                        rep + 1,
                        mib(run.compared_bytes)
                    ));
                }
                mirror = Some(run);
                self.mirror_check("mirror copies");
            } else {
                self.cold()?;
                let run = tools::rsync(&self.src, &self.dst)?;
                eprintln!(
                    "rep {}/{reps} incremental rsync  {:.2} s (rsync {:.2} + syncfs); literal {:.1} MiB, matched {:.1} MiB",
                    rep + 1,
                    run.seconds,
                    run.tool_seconds,
                    mib(run.literal_bytes.unwrap_or(0)),
                    mib(run.matched_bytes.unwrap_or(0))
                );
                rsync = Some(run);
                let dst = self.dst.clone();
                self.baseline_check("rsync destination", &dst);
            }
        }
        let (mirror, rsync) = (mirror.unwrap_or_default(), rsync.unwrap_or_default());
        Ok(IncrementalRep {
            change,
            speedup: rsync.seconds / mirror.seconds,
            mirror,
            rsync,
        })
    }

    fn full_rep(&mut self, rep: usize) -> Result<FullRep> {
        let reps = self.cfg.reps;
        let before = self.stop_secondary()?;
        // A new, empty secondary: no data, no state (no generation: the primary compares,
        // and finds nothing to compare against).
        for d in [self.m.b.dirs.data.clone(), self.m.b.dirs.state.clone()] {
            std::fs::remove_dir_all(&d)
                .and_then(|()| std::fs::create_dir_all(&d))
                .with_context(|| format!("emptying {}", d.display()))?;
        }
        let set_bytes: u64 = fileset::files(&self.src)?.iter().map(|f| f.1).sum();
        let mb_s = |secs: f64| set_bytes as f64 / 1e6 / secs;
        let mut mirror = None;
        let mut cp = None;
        for mirror_turn in turns(rep) {
            if mirror_turn {
                let run = self.timed_resync(&before)?;
                eprintln!(
                    "rep {}/{reps} full mirror {:.2} s = {:.0} MB/s (start {:.2}, connect {:.2}, sync {:.2}); sent {:.1} MiB",
                    rep + 1,
                    run.seconds,
                    mb_s(run.seconds),
                    run.start_seconds,
                    run.connect_seconds,
                    run.sync_seconds,
                    mib(run.sent_bytes)
                );
                if run.sent_bytes < set_bytes {
                    self.notes.push(format!(
                        "full repetition {}: the resync sent {} bytes for a set of {set_bytes}",
                        rep + 1,
                        run.sent_bytes
                    ));
                }
                mirror = Some(run);
                self.mirror_check("mirror copies");
            } else {
                self.cold()?;
                let run = tools::cp_a(&self.src, &self.copy)?;
                eprintln!(
                    "rep {}/{reps} full cp -a   {:.2} s = {:.0} MB/s (cp {:.2} + syncfs)",
                    rep + 1,
                    run.seconds,
                    mb_s(run.seconds),
                    run.tool_seconds
                );
                cp = Some(run);
                let copy = self.copy.clone();
                self.baseline_check("cp -a copy", &copy);
                std::fs::remove_dir_all(&copy)
                    .with_context(|| format!("removing {}", copy.display()))?;
            }
        }
        let (mirror, cp) = (mirror.unwrap_or_default(), cp.unwrap_or_default());
        Ok(FullRep {
            set_bytes,
            mirror_mb_s: mb_s(mirror.seconds),
            cp_mb_s: mb_s(cp.seconds),
            cp_only_mb_s: mb_s(cp.tool_seconds),
            ratio: cp.seconds / mirror.seconds,
            mirror,
            cp,
        })
    }

    fn figures(&self) -> Vec<Figure> {
        let mut out = Vec::new();
        if !self.incremental.is_empty() {
            let mirror: Vec<f64> = self.incremental.iter().map(|r| r.mirror.seconds).collect();
            let base: Vec<f64> = self.incremental.iter().map(|r| r.rsync.seconds).collect();
            let paired: Vec<f64> = self.incremental.iter().map(|r| r.speedup).collect();
            let ratio = median(&base) / median(&mirror);
            out.push(Figure::new(
                ("incremental_resync_s", "resync after a 1% change", "s"),
                (mirror, "rsync", base, paired),
                ratio,
                Target::at_least(INCREMENTAL_SPEEDUP),
            ));
        }
        if !self.full.is_empty() {
            let mirror: Vec<f64> = self.full.iter().map(|r| r.mirror_mb_s).collect();
            let base: Vec<f64> = self.full.iter().map(|r| r.cp_mb_s).collect();
            let paired: Vec<f64> = self.full.iter().map(|r| r.ratio).collect();
            let ratio = median(&mirror) / median(&base);
            out.push(Figure::new(
                ("full_resync_mb_s", "full resync to an empty peer", "MB/s"),
                (mirror, "cp -a", base, paired),
                ratio,
                Target::at_least(FULL_RATIO),
            ));
        }
        out
    }

    fn print(&self, figures: &[Figure]) {
        let med = |v: Vec<f64>| median(&v);
        println!(
            "results: medians of {} repetitions; baselines timed to the end of a syncfs of their \
             destination, the mirror to its primary's in-sync (the secondary syncfs'ed before)",
            self.cfg.reps
        );
        println!(
            "{:<30} {:<5} {:>10} {:>10} {:<8} {:>8} {:>8}  {:<6} {:>13}",
            "figure", "unit", "mirrorkit", "baseline", "", "ratio", "target", "", "paired ratios"
        );
        for f in figures {
            println!(
                "{:<30} {:<5} {:>10} {:>10} {:<8} {:>8} {:>8}  {:<6} {:>13}",
                f.what,
                f.metric,
                fig(f.mirror_median),
                fig(f.baseline_median),
                f.baseline,
                if f.id == "incremental_resync_s" {
                    format!("{:.1}x", f.ratio)
                } else {
                    format!("{:.3}", f.ratio)
                },
                format!("{} {}", f.target.op, f.target.ratio),
                if f.met { "ok" } else { "MISSED" },
                format!("{:.2}..{:.2}", f.paired_ratio_min, f.paired_ratio_max),
            );
        }
        println!(
            "  (incremental ratio: rsync's time over the mirror's; full ratio: the mirror's \
             throughput over cp -a's)"
        );
        println!();
        println!(
            "first synchronisation ({}): {:.1} s, compared {:.0} MiB ({:.0} MB/s), sent {:.1} MiB",
            self.initial.what,
            self.initial.seconds,
            mib(self.initial.compared_bytes),
            self.initial.compared_bytes as f64 / 1e6 / self.initial.seconds,
            mib(self.initial.sent_bytes)
        );
        let r = &self.incremental;
        if !r.is_empty() {
            println!();
            println!("incremental, medians per repetition:");
            println!(
                "  change:  {:.1} MiB written by the application ({:.0} writes into {:.0} files, {:.0} new files; 2 removed, 2 renamed)",
                mib(med(r.iter().map(|x| x.change.bytes() as f64).collect()) as u64),
                med(r.iter().map(|x| x.change.writes as f64).collect()),
                med(r.iter().map(|x| x.change.files_written as f64).collect()),
                med(r.iter().map(|x| x.change.created as f64).collect()),
            );
            println!(
                "  mirror:  {:.2} s = start of the secondary {:.2} + connection {:.2} + synchronisation {:.2} (status resolution 0.1 s)",
                med(r.iter().map(|x| x.mirror.seconds).collect()),
                med(r.iter().map(|x| x.mirror.start_seconds).collect()),
                med(r.iter().map(|x| x.mirror.connect_seconds).collect()),
                med(r.iter().map(|x| x.mirror.sync_seconds).collect()),
            );
            println!(
                "           record listed {:.1} MiB, compared {:.1} MiB, sent {:.1} MiB of file data",
                mib(med(r.iter().map(|x| x.mirror.recorded_bytes as f64).collect()) as u64),
                mib(med(r.iter().map(|x| x.mirror.compared_bytes as f64).collect()) as u64),
                mib(med(r.iter().map(|x| x.mirror.sent_bytes as f64).collect()) as u64),
            );
            print_usage("           ", r.iter().map(|x| &x.mirror));
            println!(
                "  rsync:   {:.2} s = rsync {:.2} + syncfs; literal {:.1} MiB, matched {:.0} MiB; CPU {:.1} s, disk read {:.0} MiB, written {:.0} MiB",
                med(r.iter().map(|x| x.rsync.seconds).collect()),
                med(r.iter().map(|x| x.rsync.tool_seconds).collect()),
                mib(med(r.iter().map(|x| x.rsync.literal_bytes.unwrap_or(0) as f64).collect()) as u64),
                mib(med(r.iter().map(|x| x.rsync.matched_bytes.unwrap_or(0) as f64).collect()) as u64),
                med(r.iter().map(|x| x.rsync.cpu_seconds).collect()),
                mib(med(r.iter().map(|x| x.rsync.read_bytes as f64).collect()) as u64),
                mib(med(r.iter().map(|x| x.rsync.written_bytes as f64).collect()) as u64),
            );
            println!(
                "  without the wait for the connection: rsync / the mirror's synchronisation alone = {:.1}x",
                med(r.iter().map(|x| x.rsync.seconds).collect())
                    / med(r.iter().map(|x| x.mirror.sync_seconds).collect())
            );
        }
        let r = &self.full;
        if !r.is_empty() {
            println!();
            println!("full, medians per repetition:");
            println!(
                "  mirror:  {:.2} s = start of the secondary {:.2} + connection {:.2} + synchronisation {:.2}; sent {:.0} MiB; {:.0} MB/s end to end, {:.0} MB/s during the synchronisation",
                med(r.iter().map(|x| x.mirror.seconds).collect()),
                med(r.iter().map(|x| x.mirror.start_seconds).collect()),
                med(r.iter().map(|x| x.mirror.connect_seconds).collect()),
                med(r.iter().map(|x| x.mirror.sync_seconds).collect()),
                mib(med(r.iter().map(|x| x.mirror.sent_bytes as f64).collect()) as u64),
                med(r.iter().map(|x| x.mirror_mb_s).collect()),
                med(r
                    .iter()
                    .map(|x| x.set_bytes as f64 / 1e6 / x.mirror.sync_seconds)
                    .collect()),
            );
            print_usage("           ", r.iter().map(|x| &x.mirror));
            println!(
                "  cp -a:   {:.2} s = cp {:.2} + syncfs; {:.0} MB/s with the syncfs, {:.0} MB/s without (ratio {:.3}); CPU {:.1} s",
                med(r.iter().map(|x| x.cp.seconds).collect()),
                med(r.iter().map(|x| x.cp.tool_seconds).collect()),
                med(r.iter().map(|x| x.cp_mb_s).collect()),
                med(r.iter().map(|x| x.cp_only_mb_s).collect()),
                med(r.iter().map(|x| x.mirror_mb_s).collect())
                    / med(r.iter().map(|x| x.cp_only_mb_s).collect()),
                med(r.iter().map(|x| x.cp.cpu_seconds).collect()),
            );
            println!(
                "  during the synchronisation alone: the mirror / cp -a = {:.3}",
                med(r
                    .iter()
                    .map(|x| x.set_bytes as f64 / 1e6 / x.mirror.sync_seconds)
                    .collect())
                    / med(r.iter().map(|x| x.cp_mb_s).collect())
            );
        }
        println!();
        for n in &self.notes {
            println!("note: {n}");
        }
        println!(
            "copies identical after every run: {}",
            if self.differences.is_empty() {
                "yes (mirror: both nodes; baselines: destination and source)"
            } else {
                "NO"
            }
        );
    }
}

/// The nodes' CPU time and storage I/O during the mirror's runs (medians).
fn print_usage<'r>(indent: &str, runs: impl Iterator<Item = &'r MirrorRun> + Clone) {
    let med = |f: &dyn Fn(&MirrorRun) -> f64| median(&runs.clone().map(f).collect::<Vec<_>>());
    println!(
        "{indent}CPU: primary {:.1} s, secondary {:.1} s; disk read: primary {:.0} MiB, secondary {:.0} MiB; written by the secondary {:.0} MiB",
        med(&|r| r.primary.cpu_seconds),
        med(&|r| r.secondary.cpu_seconds),
        med(&|r| r.primary.read_bytes as f64) / f64::from(1 << 20),
        med(&|r| r.secondary.read_bytes as f64) / f64::from(1 << 20),
        med(&|r| r.secondary.written_bytes as f64) / f64::from(1 << 20),
    );
}

/// Bytes available to this user on the file system holding `dir`.
fn free_bytes(dir: &Path) -> Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .with_context(|| format!("{}: not a valid path", dir.display()))?;
    // SAFETY: statvfs fills the struct it is given.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("statvfs {}", dir.display()));
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Which side goes first alternates between repetitions: true for the mirror's turn.
fn turns(rep: usize) -> [bool; 2] {
    if rep % 2 == 0 {
        [true, false]
    } else {
        [false, true]
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / f64::from(1 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides_alternate() {
        assert_eq!(turns(0), [true, false]);
        assert_eq!(turns(1), [false, true]);
    }

    #[test]
    fn set_sizes_are_described() {
        use crate::fileset::human_size;
        assert_eq!(human_size(64 << 20), "64 MiB");
        assert_eq!(human_size(64 << 10), "64 KiB");
        assert_eq!(human_size(1500), "1500 B");
    }
}
