//! `mirrorkit-bench`: the end-to-end benchmark. Runs the same workloads on a native directory
//! and on a mirror's mounted directory (two real `mirrorkit` processes on loopback, started by
//! `mirrorkit-tests`), in one run, alternating sides within every repetition so that machine
//! noise hits both, and prints medians and the ratio mirror/native against the targets.
//!
//! Owns: the workloads, their timing and the report. Never: reaches into or tunes the engine;
//! the mirror is measured from the outside, as an application sees it. How to run it and what
//! the figures mean: docs/benchmarks.md.

mod bench;
mod chaos;
mod daemon;
mod failover;
mod fileset;
mod machine;
mod report;
mod resync;
mod stats;
mod tools;
mod workloads;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use mirrorkit_tests::{tree, Mirror, MirrorOpts};
use serde::Serialize;

use crate::bench::{Bench, CpuWait};
use crate::machine::Machine;
use crate::report::{Row, Skipped, Target, Traffic};

#[derive(Parser, Debug)]
#[command(
    name = "mirrorkit-bench",
    about = "Same workloads on a native directory and on a mirror; medians and ratios mirror/native",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    workloads: WorkloadArgs,
    #[command(flatten)]
    common: Common,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Resync benchmark: a returning secondary after a 1% change against rsync, and a full
    /// resync to an empty peer against cp -a (docs/benchmarks.md, "Resync").
    Resync(resync::ResyncArgs),
    /// Failover and swap benchmark: kill the primary node in a namespace cluster, time until
    /// the demo application answers through the virtual IP from the other node
    /// (docs/benchmarks.md, "Failover").
    Failover(failover::FailoverArgs),
    /// Chaos benchmark: PostgreSQL (modules/postgresql) under random faults with a witness;
    /// every acknowledged commit checked after each fault, both copies compared
    /// (docs/benchmarks.md, "Chaos").
    Chaos(chaos::ChaosArgs),
}

/// The workloads' sizes (the default mode, without a subcommand).
#[derive(Args, Debug)]
struct WorkloadArgs {
    /// Small sizes, for a CI smoke run: proves the benchmark works, figures mean nothing.
    #[arg(long)]
    quick: bool,
    /// Repetitions of every workload on each side [default: 5; quick: 2].
    #[arg(long)]
    reps: Option<usize>,
    /// Sequential write: MiB written per run [default: 1024; quick: 16].
    #[arg(long)]
    write_mib: Option<u64>,
    /// 4 KiB write + fsync loop: iterations per run [default: 2000; quick: 100].
    #[arg(long)]
    fsync_iters: Option<usize>,
    /// Small files: files created per run [default: 5000; quick: 200].
    #[arg(long)]
    files: Option<usize>,
    /// Small files: directories they are spread over [default: 50; quick: 4].
    #[arg(long)]
    file_dirs: Option<usize>,
    /// Reads: size of the file read, MiB [default: 1024; quick: 16].
    #[arg(long)]
    read_mib: Option<u64>,
    /// Only these workloads (comma separated) [default: all].
    #[arg(long, value_delimiter = ',')]
    only: Vec<Workload>,
    /// Skip cold reads (they drop the whole machine's page cache).
    #[arg(long)]
    no_cold: bool,
}

/// Options of every mode.
#[derive(Args, Debug)]
pub struct Common {
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Directory under which the native directory and both nodes' directories are created; it
    /// should be on the local disk (ext4 for reference figures) [default: $MIRRORKIT_TEST_DIR,
    /// else the temp dir].
    #[arg(long, value_name = "DIR")]
    base: Option<PathBuf>,
    /// The mirrorkit binary to run [default: $MIRRORKIT_BIN, else `mirrorkit` next to this
    /// executable, built first with cargo].
    #[arg(long, value_name = "FILE")]
    mirrorkit_bin: Option<PathBuf>,
    /// Do not run `cargo build --bin mirrorkit` before using the binary next to this executable.
    #[arg(long)]
    no_build: bool,
    /// The mirror's peer timeout, ms: a write not acknowledged within it makes the primary
    /// continue alone, which ends the run with an error [default: the daemon's, 3000].
    #[arg(long, default_value_t = 3000)]
    peer_timeout_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Workload {
    SeqWrite,
    #[value(name = "fsync-4k")]
    #[serde(rename = "fsync-4k")]
    Fsync4k,
    SmallFiles,
    ReadCached,
    ReadCold,
}

impl Workload {
    const ALL: [Workload; 5] = [
        Workload::SeqWrite,
        Workload::Fsync4k,
        Workload::SmallFiles,
        Workload::ReadCached,
        Workload::ReadCold,
    ];

    fn name(self) -> &'static str {
        match self {
            Workload::SeqWrite => "seq-write",
            Workload::Fsync4k => "fsync-4k",
            Workload::SmallFiles => "small-files",
            Workload::ReadCached => "read-cached",
            Workload::ReadCold => "read-cold",
        }
    }

    /// The figures this workload yields, in the order `Bench::measure` returns them.
    fn rows(self) -> Vec<Row> {
        let row = |id, workload, metric, target| Row {
            id,
            workload,
            metric,
            target,
            native: Vec::new(),
            mirror: Vec::new(),
        };
        match self {
            Workload::SeqWrite => vec![row(
                "seq_write_mb_s",
                "sequential 1 MiB writes + fsync",
                "MB/s",
                Target::at_least(0.45),
            )],
            Workload::Fsync4k => vec![
                row(
                    "fsync_4k_p50_us",
                    "4 KiB write + fsync, p50",
                    "us",
                    Target::at_most(1.5),
                ),
                row(
                    "fsync_4k_p99_us",
                    "4 KiB write + fsync, p99",
                    "us",
                    Target::at_most(2.0),
                ),
            ],
            Workload::SmallFiles => vec![row(
                "small_files_per_s",
                "create+write+close 16 KiB files",
                "files/s",
                Target::at_least(0.5),
            )],
            Workload::ReadCached => vec![row(
                "read_cached_mb_s",
                "read, in page cache",
                "MB/s",
                Target::at_least(0.9),
            )],
            Workload::ReadCold => vec![row(
                "read_cold_mb_s",
                "read, cold (caches dropped)",
                "MB/s",
                Target::at_least(0.9),
            )],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Native,
    Mirror,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Native => "native",
            Side::Mirror => "mirror",
        }
    }
}

/// The sizes actually used (the defaults, or quick's, overridden by explicit options).
#[derive(Clone, Debug, Serialize)]
struct Config {
    quick: bool,
    reps: usize,
    write_mib: u64,
    fsync_iters: usize,
    files: usize,
    file_dirs: usize,
    read_mib: u64,
    peer_timeout_ms: u64,
    workloads: Vec<Workload>,
}

impl Config {
    fn of(cli: &WorkloadArgs, common: &Common) -> Result<Config> {
        let q = cli.quick;
        let cfg = Config {
            quick: q,
            reps: cli.reps.unwrap_or(if q { 2 } else { 5 }),
            write_mib: cli.write_mib.unwrap_or(if q { 16 } else { 1024 }),
            fsync_iters: cli.fsync_iters.unwrap_or(if q { 100 } else { 2000 }),
            files: cli.files.unwrap_or(if q { 200 } else { 5000 }),
            file_dirs: cli.file_dirs.unwrap_or(if q { 4 } else { 50 }),
            read_mib: cli.read_mib.unwrap_or(if q { 16 } else { 1024 }),
            peer_timeout_ms: common.peer_timeout_ms,
            workloads: if cli.only.is_empty() {
                Workload::ALL.to_vec()
            } else {
                Workload::ALL
                    .into_iter()
                    .filter(|w| cli.only.contains(w))
                    .collect()
            },
        };
        if cfg.reps == 0
            || cfg.write_mib == 0
            || cfg.fsync_iters == 0
            || cfg.files == 0
            || cfg.file_dirs == 0
            || cfg.read_mib == 0
        {
            bail!("repetitions, sizes and counts must be at least 1: {cfg:?}");
        }
        Ok(cfg)
    }
}

/// Everything the JSON file holds.
#[derive(Serialize)]
struct JsonReport<'a> {
    #[serde(flatten)]
    header: RunHeader<'a>,
    config: &'a Config,
    results: Vec<report::RowJson>,
    traffic: &'a [Traffic],
    cpu_wait: &'a [CpuWait],
    skipped: &'a [Skipped],
    notes: &'a [String],
    mirror_trees_identical: bool,
    targets_missed: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Resync(args)) => {
            Setup::new(&args.common).and_then(|setup| resync::run(&args, &setup))
        }
        Some(Command::Failover(args)) => failover::run(&args),
        Some(Command::Chaos(args)) => chaos::run(&args),
        None => run(cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mirrorkit-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// What every mode establishes before it measures, and prints in its header: the binary, the
/// base directory, the machine, the code and the load.
pub struct Setup {
    pub command: String,
    pub date: String,
    pub daemon: daemon::Daemon,
    pub base: PathBuf,
    pub machine: Machine,
    pub git: String,
    pub bench_build: &'static str,
    pub load_start: String,
}

/// What every JSON report starts with: the command, the machine, the binary measured.
#[derive(Serialize)]
pub struct RunHeader<'a> {
    command: &'a str,
    date_utc: &'a str,
    machine: &'a Machine,
    base_dir: String,
    git: &'a str,
    bench_build: &'a str,
    mirrorkit_bin: String,
    mirrorkit_bin_how: &'a str,
    load_start: &'a str,
    load_end: &'a str,
}

/// The last lines of every run: the load at the end and how many targets were met.
pub fn print_footer(load_end: &str, targets: usize, missed: usize) {
    println!("load:       {load_end} at end");
    println!(
        "targets:    {} of {targets} met{}",
        targets - missed,
        if missed > 0 { " (see MISSED)" } else { "" }
    );
}

impl Setup {
    /// The report header of this run, ending with the load at `load_end`.
    pub fn header<'a>(&'a self, load_end: &'a str) -> RunHeader<'a> {
        RunHeader {
            command: &self.command,
            date_utc: &self.date,
            machine: &self.machine,
            base_dir: self.base.display().to_string(),
            git: &self.git,
            bench_build: self.bench_build,
            mirrorkit_bin: self.daemon.path.display().to_string(),
            mirrorkit_bin_how: &self.daemon.how,
            load_start: &self.load_start,
            load_end,
        }
    }

    /// Choose (and build) the binary, check root and /dev/fuse, set up the base directory.
    /// Call while this process has a single thread (it sets environment variables).
    pub fn new(common: &Common) -> Result<Setup> {
        let command = machine::command_line();
        let date = machine::utc_now();
        let daemon = daemon::resolve(common.mirrorkit_bin.clone(), !common.no_build)?;
        if !is_root() || !Path::new("/dev/fuse").exists() {
            bail!("the mirror needs root and /dev/fuse (it mounts a FUSE file system)");
        }
        let base = match &common.base {
            Some(b) => {
                std::fs::create_dir_all(b).with_context(|| format!("--base {}", b.display()))?;
                // The harness creates the mirror's directories under MIRRORKIT_TEST_DIR. Set
                // while this process has a single thread.
                std::env::set_var("MIRRORKIT_TEST_DIR", b);
                b.clone()
            }
            None => std::env::var_os("MIRRORKIT_TEST_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(std::env::temp_dir),
        };
        let git = machine::git_revision();
        Ok(Setup {
            command,
            date,
            daemon,
            machine: Machine::probe(&base),
            base,
            git,
            bench_build: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
            load_start: load_now(),
        })
    }

    /// The header, from the title to the load at the start. `damon_note` ends the line that
    /// says the machine pages out idle cache (what the mode does about it).
    pub fn print_header(&self, title: &str, damon_note: &str) {
        let machine = &self.machine;
        println!("{title}");
        println!("command:    {}", self.command);
        println!("date:       {}", self.date);
        println!(
            "machine:    nproc {}, {}, {:.1} GiB RAM, kernel {}",
            machine.nproc, machine.cpu, machine.memory_gib, machine.kernel
        );
        println!(
            "fs:         {} on {} (mounted at {}, {}), base {}",
            machine.fs_type,
            machine.fs_device,
            machine.fs_mount,
            machine.fs_options,
            self.base.display()
        );
        if machine.damon_pageout {
            println!(
                "memory:     DAMON proactive reclaim is on: page cache it sees as idle is paged out{damon_note}"
            );
        }
        if machine.free_page_reporting {
            println!(
                "memory:     virtio free page reporting is on: memory the guest frees (dropped \
                 caches too) goes back to the hypervisor and is slow to touch again; cold \
                 figures vary more"
            );
        }
        println!(
            "code:       git {}, benchmark {} build",
            self.git, self.bench_build
        );
        println!(
            "mirrorkit:  {} ({})",
            self.daemon.path.display(),
            self.daemon.how
        );
        println!("load:       {} at start", self.load_start);
    }

    /// Warnings that make the figures less than reference figures (after the config line).
    pub fn print_warnings(&self) {
        if cfg!(debug_assertions) {
            println!(
                "WARNING:    debug build: figures are not representative (use cargo run --release)"
            );
        }
        if self.machine.fs_type != "ext4" {
            println!(
                "WARNING:    the base directory is on {}, not ext4: the reference figures are for ext4 on a local disk",
                self.machine.fs_type
            );
        }
    }
}

/// The load averages and the CPU pressure, as the header and footer print them.
pub fn load_now() -> String {
    format!(
        "{} (1, 5, 15 min), CPU pressure {}",
        machine::load_average(),
        machine::cpu_pressure()
    )
}

fn run(cli: Cli) -> Result<()> {
    let cfg = Config::of(&cli.workloads, &cli.common)?;
    let setup = Setup::new(&cli.common)?;
    setup.print_header(
        "mirrorkit-bench: the same workloads on a native directory and on a mirror",
        ", so cached reads are checked with mincore",
    );
    println!(
        "config:     {} reps; seq write {} MiB; fsync loop {} x 4 KiB; {} files x 16 KiB in {} dirs; read {} MiB{}",
        cfg.reps,
        cfg.write_mib,
        cfg.fsync_iters,
        cfg.files,
        cfg.file_dirs,
        cfg.read_mib,
        if cfg.quick { " (--quick: figures not meaningful)" } else { "" }
    );
    setup.print_warnings();

    let mut skipped = Vec::new();
    let mut workloads = cfg.workloads.clone();
    if workloads.contains(&Workload::ReadCold) {
        let why = if cli.workloads.no_cold {
            Some("--no-cold".to_string())
        } else if !is_root() {
            Some("not root: cold reads need `echo 3 > /proc/sys/vm/drop_caches`".to_string())
        } else {
            workloads::drop_caches()
                .err()
                .map(|e| format!("cannot drop caches (/proc/sys/vm/drop_caches: {e})"))
        };
        if let Some(reason) = why {
            println!("skipped:    cold reads ({reason})");
            workloads.retain(|w| *w != Workload::ReadCold);
            skipped.push(Skipped {
                workload: Workload::ReadCold.name(),
                reason,
            });
        }
    }
    println!();

    eprintln!("starting the mirror (two mirrorkit processes)");
    let mirror = Mirror::start(MirrorOpts {
        peer_timeout_ms: cfg.peer_timeout_ms,
        resync_bandwidth: None,
        log_filter: "warn".into(),
        ..MirrorOpts::default()
    });
    let mut bench = Bench::new(&cfg, &mirror)?;
    let result = bench.run(&workloads);
    if let Err(e) = result {
        bail!(
            "{e:#}\n--- primary log (tail)\n{}\n--- secondary log (tail)\n{}",
            tail(&mirror.a.log(), 20),
            tail(&mirror.b.log(), 20)
        );
    }
    // Everything the workloads left (the read files) must be identical on both nodes.
    let identical = match tree::compare(mirror.primary_dir(), mirror.secondary_dir(), 10) {
        Ok(()) => true,
        Err(e) => {
            println!("WARNING: the two copies differ after the run:\n{e}");
            false
        }
    };
    let load_end = load_now();

    let rows: Vec<Row> = bench.rows.clone();
    let missed = rows.iter().filter(|r| !r.met()).count();
    println!(
        "results: medians of {} repetitions; ratio = mirror / native (median over median); \
         paired ratios = range of the per-repetition ratios",
        cfg.reps
    );
    print!("{}", report::table(&rows));
    for s in &skipped {
        println!("{:<34} skipped: {}", s.workload, s.reason);
    }
    println!();
    println!("replication traffic per mirror run (medians):");
    for t in &bench.traffic {
        println!(
            "  {:<12} {:>9.0} operations sent, {:>9.1} MiB of write data",
            t.workload, t.ops_per_run, t.data_mib_per_run
        );
    }
    println!();
    println!(
        "CPU run-queue wait during the timed parts (medians, % of wall time, summed over the \
         benchmark's and the nodes' threads; high = figures taken on a starved machine):"
    );
    for c in &bench.cpu_wait_summary {
        println!(
            "  {:<12} native {:>5.0}%   mirror {:>5.0}%",
            c.workload, c.native_pct, c.mirror_pct
        );
    }
    for n in &bench.notes {
        println!("note: {n}");
    }
    println!(
        "copies identical after the run: {}",
        if identical { "yes" } else { "NO" }
    );
    print_footer(&load_end, rows.len(), missed);

    if let Some(path) = &cli.common.json {
        let j = JsonReport {
            header: setup.header(&load_end),
            config: &cfg,
            results: rows.iter().map(Row::json).collect(),
            traffic: &bench.traffic,
            cpu_wait: &bench.cpu_wait_summary,
            skipped: &skipped,
            notes: &bench.notes,
            mirror_trees_identical: identical,
            targets_missed: missed,
        };
        let text = serde_json::to_string_pretty(&j)?;
        std::fs::write(path, text + "\n").with_context(|| format!("--json {}", path.display()))?;
        println!("json:       {}", path.display());
    }
    if !identical {
        bail!("the mirror's two copies differ: its figures are not those of a working mirror");
    }
    Ok(())
}

pub fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}
