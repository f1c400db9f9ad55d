//! Chaos benchmark (docs/benchmarks.md, "Chaos"): the shipped PostgreSQL module in the
//! namespace lab with a witness, clients committing numbered transactions through the virtual
//! IP and pgbench beside them, and a long run of random faults (`mirrorkit_tests::chaos`):
//! daemons killed (primary, secondary, during a resync), the server killed, the primary cut
//! off, the link between the nodes cut, swaps. It counts the acknowledged writes checked, those
//! lost, the copies found different, and times every failover.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use mirrorkit_tests::chaos::{self, ChaosConfig, Fault};
use mirrorkit_tests::lab::require_lab;
use mirrorkit_tests::postgres::{self, PgChaos, PgLab, PgLoad};

use crate::machine;

#[derive(Args, Debug)]
pub struct ChaosArgs {
    /// Fault cycles (each: a fault, the cluster back to PRIM + SECOND, every acknowledged write
    /// checked).
    #[arg(long, default_value_t = 100)]
    cycles: usize,
    /// Start no new cycle after this many minutes (the summary covers the cycles done).
    #[arg(long)]
    minutes: Option<f64>,
    /// The seed of the faults and their moments [default: $MIRRORKIT_CHAOS_SEED, else random].
    #[arg(long)]
    seed: Option<u64>,
    /// Faults drawn from, comma separated: kill-primary, kill-secondary, kill-app,
    /// isolate-primary, cut-between-nodes, swap, kill-during-resync [default: all].
    #[arg(long, value_delimiter = ',')]
    faults: Vec<String>,
    /// Heartbeat profile of the module: fast, default.
    #[arg(long, default_value = "fast")]
    heartbeat: String,
    /// Clients committing numbered transactions.
    #[arg(long, default_value_t = 3)]
    clients: usize,
    /// pgbench clients beside them (0: no pgbench).
    #[arg(long, default_value_t = 2)]
    pgbench_clients: usize,
    /// pgbench scale factor (pgbench -i -s).
    #[arg(long, default_value_t = 10)]
    scale: u32,
    /// Compare both copies (PostgreSQL frozen on the primary) every this many cycles, and at
    /// the end (0: only at the end).
    #[arg(long, default_value_t = 10)]
    compare_every: usize,
    /// Longest random pause before a fault, ms.
    #[arg(long, default_value_t = 3000)]
    max_pause_ms: u64,
    /// Also write the summary as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

pub fn run(a: &ChaosArgs) -> Result<()> {
    if !require_lab("mirrorkit-bench chaos") {
        bail!("needs root, FUSE and network namespaces");
    }
    if !postgres::require_postgresql("mirrorkit-bench chaos") {
        bail!("needs PostgreSQL (apt-get install postgresql)");
    }
    let hb: &'static str = match a.heartbeat.as_str() {
        "fast" => "fast",
        "default" => "default",
        other => bail!("unknown heartbeat profile {other:?} (default, fast)"),
    };
    let faults = if a.faults.is_empty() {
        Fault::ALL.to_vec()
    } else {
        a.faults
            .iter()
            .map(|f| {
                Fault::parse(f).with_context(|| {
                    format!(
                        "unknown fault {f:?} (one of {})",
                        Fault::ALL.map(|f| f.name()).join(", ")
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?
    };
    let seed = a.seed.unwrap_or_else(chaos::seed_from_env);
    let mut cfg = ChaosConfig::new(seed, a.cycles, faults);
    cfg.compare_every = a.compare_every;
    cfg.max_pause = Duration::from_millis(a.max_pause_ms);
    cfg.time_limit = a.minutes.map(|m| Duration::from_secs_f64(m * 60.0));

    let m = postgres::module(hb);
    let mut pg = PgLab::new(&m, true);
    let mut app = PgChaos::new(
        &m,
        PgLoad {
            clients: a.clients,
            pgbench_clients: a.pgbench_clients,
            pgbench_scale: a.scale,
        },
    );
    let date = machine::utc_now();
    let sum = chaos::run(&mut pg.lab, &mut app, &cfg);

    println!(
        "mirrorkit-bench chaos: PostgreSQL under random faults, namespace cluster with a witness"
    );
    println!("command:    {}", machine::command_line());
    println!("date:       {date}");
    println!(
        "code:       git {}, benchmark {} build, mirrorkit {}",
        machine::git_revision(),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        mirrorkit_tests::mirrorkit_bin().display()
    );
    println!(
        "config:     {} heartbeat profile; {} clients, pgbench {} clients scale {}; compare every {} cycles; pause before a fault up to {} ms",
        hb, a.clients, a.pgbench_clients, a.scale, a.compare_every, a.max_pause_ms
    );
    println!();
    print!("{}", sum.report());
    if let Some(path) = &a.json {
        let j = serde_json::json!({
            "command": machine::command_line(),
            "date_utc": date,
            "git": machine::git_revision(),
            "seed": sum.seed,
            "cycles": sum.cycles,
            "faults": sum.faults,
            "failovers": sum.failovers,
            "swaps": sum.swaps,
            "restarts_in_place": sum.restarts_in_place,
            "spontaneous_failovers": sum.spontaneous,
            "resync_kills_landed": sum.resync_kills_landed,
            "checks": sum.checks,
            "acked_checked": sum.acked_checked,
            "lost": sum.lost,
            "comparisons": sum.comparisons,
            "divergent": sum.divergent,
            "failover_s": sum.failover_s,
            "swap_s": sum.swap_s,
            "restart_s": sum.restart_s,
            "load": sum.load,
            "elapsed_s": sum.elapsed.as_secs_f64(),
            "problems": sum.problems,
            "notes": sum.notes,
            "timeline": sum.timeline,
        });
        std::fs::write(path, serde_json::to_string_pretty(&j)? + "\n")
            .with_context(|| format!("--json {}", path.display()))?;
        println!("json:       {}", path.display());
    }
    if !sum.ok() {
        bail!(
            "the contract did not hold (seed {}): {}",
            sum.seed,
            sum.problems.join("; ")
        );
    }
    Ok(())
}
